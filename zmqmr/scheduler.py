"""The driver's brain: task states, workers, liveness and retries, as a pure state machine.

No sockets and no clock: every call takes `now` and returns the actions the driver
must carry out. That is what lets the tests drive hours of job time in microseconds.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Deque, Dict, List, Optional, Set, Tuple

from . import protocol
from .protocol import TaskError, record

log = logging.getLogger("zmqmr.scheduler")
task_events = logging.getLogger("zmqmr.events.task")

MAP = "map"
REDUCE = "reduce"
FRAMEWORK_GROUP = "zmqmr"
TaskKey = Tuple[str, int]
MAX_REPLACED_INCS = 16  # incarnations remembered per worker name (see Scheduler.replaced)


class TaskState(str, Enum):
    BLOCKED = "BLOCKED"
    READY = "READY"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"


class JobState(str, Enum):
    MAPPING = "MAPPING"
    REDUCING = "REDUCING"
    COMMITTING = "COMMITTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


TERMINAL = (JobState.SUCCEEDED, JobState.FAILED)


@dataclass(frozen=True)
class SchedulerConfig:
    worker_timeout: float = 5.0
    max_attempts: int = 4
    max_worker_losses: int = 8
    retry_after: float = 1.0
    exit_grace: float = 3.0
    blacklist_after: int = 3  # failed attempts on one worker before it gets no more tasks; 0: never
    task_timeout: Optional[float] = None  # seconds an attempt may run before it is cancelled and retried
    skip_bad_records: Optional[int] = None  # how many failing records the job may skip; None: none
    speculation: bool = True  # start a backup attempt of a straggler when workers sit idle
    speculation_factor: float = 2.0  # a straggler has run longer than this times its phase's median...
    speculation_min_seconds: float = 10.0  # ...and at least this long


@dataclass
class TaskRecord:
    kind: str
    index: int
    state: TaskState
    attempt: Optional[int] = None
    worker: Optional[str] = None
    backup: Optional[int] = None  # a second, speculative attempt of a straggler
    backup_worker: Optional[str] = None
    winner: Optional[int] = None  # the attempt whose output a FINISHED task keeps
    attempts: int = 0
    failures: int = 0
    worker_losses: int = 0
    output: object = None
    stats: Optional[protocol.TaskStats] = None
    counters: Tuple[protocol.CounterValue, ...] = ()
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    last_error: Optional[TaskError] = None
    records: int = 0  # progress of the running attempt, from heartbeats
    location: str = ""
    position: Optional[protocol.RecordPosition] = None
    skip: Set[protocol.RecordPosition] = field(default_factory=set)  # records earlier attempts hung on
    bad_records: Tuple[protocol.BadRecord, ...] = ()
    bad_count: int = 0
    winner_worker: str = ""  # the worker whose attempt won: where a map task's output lives
    shuffle: str = ""  # that worker's shuffle service
    shuffle_key: str = ""  # and its public key, with CURVE
    output_safe: bool = False  # a map output the driver itself sees: it outlives its worker
    fetch_failures: int = 0  # reduce attempts that could not fetch map output

    @property
    def key(self) -> TaskKey:
        return (self.kind, self.index)

    @property
    def name(self) -> str:
        return f"{self.kind} task {self.index}"


@dataclass
class WorkerRecord:
    name: str
    inc: str
    host: str
    pid: int
    registered_at: float
    last_seen: float
    shuffle: str = ""  # where it serves its map output
    shuffle_key: str = ""
    running: Set[int] = field(default_factory=set)  # every attempt it holds, queued ones included
    queued: Set[int] = field(default_factory=set)  # held attempts not known to have started
    waiting: bool = False
    told_exit: bool = False
    tasks_done: int = 0
    tasks_failed: int = 0
    failed_tasks: Set[TaskKey] = field(default_factory=set)  # distinct tasks that failed here


@dataclass
class AttemptRecord:
    """A live attempt. `started_at` is None while it waits in its worker's queue: a queued
    attempt cannot straggle or time out."""

    attempt: int
    task: TaskKey
    worker: str
    assigned_at: float
    started_at: Optional[float]


@dataclass(frozen=True)
class JobFailure:
    task: TaskKey
    reason: str
    error: Optional[TaskError]


# --- actions the driver carries out ------------------------------------------------


@record
class Send:
    worker: str
    message: protocol.Message


@record
class Greet:
    """Send the job's Welcome to this worker."""

    worker: str


@record
class Assign:
    """Send attempt `attempt` of task (`kind`, `index`) to this worker."""

    worker: str
    kind: str
    index: int
    attempt: int


@record
class CommitOutput:
    """Every reduce task is FINISHED: move these files into the output directory."""

    reduce_outputs: Tuple[str, ...]


@record
class AttemptFailed:
    """Tell the user at once: an attempt failed (and whether the task will be retried)."""

    kind: str
    index: int
    attempt: int
    worker: str
    error: TaskError
    lost: bool


@record
class TaskFinished:
    """A task's winning attempt finished: worth journaling, so a restarted driver keeps it."""

    kind: str
    index: int
    attempt: int


@record
class JobFinished:
    ok: bool
    failure: Optional[JobFailure] = None


Action = object


class Scheduler:
    """Hands out map tasks, then reduce tasks, and keeps every task in exactly one state."""

    def __init__(self, num_maps: int, num_reduces: int, config: SchedulerConfig = SchedulerConfig()):
        if num_maps < 1 or num_reduces < 1:
            raise ValueError("a job needs at least one map and one reduce task")
        self.config = config
        self.tasks: Dict[TaskKey, TaskRecord] = {}
        for i in range(num_maps):
            self.tasks[(MAP, i)] = TaskRecord(MAP, i, TaskState.READY)
        for i in range(num_reduces):
            self.tasks[(REDUCE, i)] = TaskRecord(REDUCE, i, TaskState.BLOCKED)
        self.num_maps = num_maps
        self.num_reduces = num_reduces
        self.ready: Deque[TaskKey] = deque((MAP, i) for i in range(num_maps))
        self.workers: Dict[str, WorkerRecord] = {}
        self.attempts: Dict[int, AttemptRecord] = {}
        self.next_attempt = 1
        self.finished_counts = Counter()
        self.state = JobState.MAPPING
        self.failure: Optional[JobFailure] = None
        self.exit_deadline: Optional[float] = None
        self.dropped: Counter = Counter()
        self.workers_lost = 0
        self.blacklist: Dict[str, str] = {}
        self.replaced: Dict[str, Set[str]] = {}  # name -> incarnations that a restart replaced
        self.progress: Dict[int, protocol.Progress] = {}  # the latest progress of live attempts
        self.adopt_below = 0  # attempt ids below it came from a killed driver of this job (see _adopt)
        self.job_id = ""  # set by the driver; adopted attempts must belong to this job
        self.backups_started = 0
        self.started_at: Optional[float] = None
        self.reduce_opened_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self.maps_rerun = 0  # finished map tasks run again because their output was lost
        self.map_generation = 0  # changes whenever a finished map task's output is lost
        # Does the driver see this file (path, size)? Set by the driver; None: no files to look at.
        self.sees: Optional[Callable[[str, int], bool]] = None
        self.max_workers = protocol.MAX_WORKERS

    # --- entry points ----------------------------------------------------------------

    def on_message(self, msg: protocol.Message, now: float) -> List[Action]:
        if self.started_at is None:
            self.started_at = now
        if isinstance(msg, protocol.Hello):
            return self._on_hello(msg, now)
        worker = self._known_worker(msg, now)
        if worker is None:
            if self.state in TERMINAL:
                return [Send(msg.worker, self._exit_message())]
            if msg.inc in self.replaced.get(msg.worker, ()):
                return self._send_replaced_away(msg.worker)
            self.dropped["unknown_worker"] += 1
            return [Send(msg.worker, protocol.Reregister(reason="unknown worker; say hello"))]
        worker.last_seen = now
        if self.state in TERMINAL:
            return self._tell_exit(worker)
        if isinstance(msg, protocol.Request):
            return self._on_request(worker, msg, now)
        if isinstance(msg, protocol.Heartbeat):
            self._note_started(worker, msg.queued, now)
            return self._note_progress(worker, msg.progress, now) + [Send(worker.name, protocol.Ack())]
        if isinstance(msg, protocol.Done):
            return self._on_done(worker, msg, now)
        if isinstance(msg, protocol.Failed):
            return self._on_failed(worker, msg, now)
        self.dropped["unexpected_type"] += 1
        return []

    def on_tick(self, now: float) -> List[Action]:
        """Expire silent workers (their running tasks go back to READY) and overdue attempts."""
        actions: List[Action] = []
        limit = now - self.config.worker_timeout
        for worker in [w for w in self.workers.values() if w.last_seen <= limit]:
            silent = now - worker.last_seen
            actions += self._lose_worker(worker, now, f"silent for {silent:.1f} s")
        timeout = self.config.task_timeout
        if timeout is not None and self.state not in TERMINAL:
            overdue = [r for r in self.attempts.values() if r.started_at is not None and r.started_at + timeout <= now]
            for record in overdue:
                if self.state in TERMINAL:
                    break
                actions += self._time_out(record, now)
        return actions

    def next_deadline(self) -> Optional[float]:
        """When `on_tick` next has something to do; the driver polls until then."""
        deadlines = [w.last_seen + self.config.worker_timeout for w in self.workers.values()]
        if self.config.task_timeout is not None and self.state not in TERMINAL:
            started = [r.started_at for r in self.attempts.values() if r.started_at is not None]
            if started:
                deadlines.append(min(started) + self.config.task_timeout)
        if self.exit_deadline is not None:
            deadlines.append(self.exit_deadline)
        return min(deadlines) if deadlines else None

    def can_stop(self, now: float) -> bool:
        """The job is over and every live worker was told, or the grace period ran out."""
        if self.state not in TERMINAL:
            return False
        if all(w.told_exit for w in self.workers.values()):
            return True
        return self.exit_deadline is not None and now >= self.exit_deadline

    def restore_finished(self, kind: str, index: int, output: object, stats: protocol.TaskStats,
                         counters: Tuple[protocol.CounterValue, ...] = (),
                         bad_records: Tuple[protocol.BadRecord, ...] = (), bad_count: int = 0,
                         attempt: Optional[int] = None) -> None:
        """Replay a journaled finished task into a fresh scheduler (a restarted driver's)."""
        task = self.tasks[(kind, index)]
        if task.state == TaskState.FINISHED:
            return
        if task.state == TaskState.RUNNING or (kind == REDUCE and self.state == JobState.MAPPING
                                               and self.finished_counts[MAP] < self.num_maps):
            raise ValueError(f"cannot restore {task.name} in state {task.state.value} before its maps")
        if task.key in self.ready:
            self.ready.remove(task.key)
        task.state = TaskState.FINISHED
        task.winner = attempt
        task.output, task.stats, task.counters = output, stats, tuple(counters)
        task.bad_records, task.bad_count = tuple(bad_records), bad_count
        self.finished_counts[kind] += 1
        if kind == MAP and self.finished_counts[MAP] == self.num_maps:
            self.state = JobState.REDUCING
            for i in range(self.num_reduces):
                if self.tasks[(REDUCE, i)].state == TaskState.BLOCKED:
                    self.tasks[(REDUCE, i)].state = TaskState.READY
                    self.ready.append((REDUCE, i))
        if kind == REDUCE and self.finished_counts[REDUCE] == self.num_reduces:
            self.state = JobState.COMMITTING  # the driver commits the output next

    def live_attempt(self, worker: str, inc: str, attempt: int, now: float) -> str:
        """The kind of task (MAP or REDUCE) of a live attempt of this registered worker, else "".
        Counts as a sign of life: a worker staging a big file says nothing else meanwhile."""
        record = self.workers.get(worker)
        if record is None or record.inc != inc:
            return ""
        record.last_seen = now
        held = self.attempts.get(attempt)
        if held is None or held.worker != worker or self.state in TERMINAL:
            return ""
        return held.task[0]

    def told_exit(self) -> Set[str]:
        """Workers that were told the job is over."""
        return {w.name for w in self.workers.values() if w.told_exit}

    def assignment_undeliverable(self, attempt: int, now: float) -> List[Action]:
        """The driver could not send an Assign: the task goes back without penalty."""
        record = self.attempts.get(attempt)
        if record is None:
            return []
        worker = self.workers.get(record.worker)
        if worker is not None:
            worker.running.discard(attempt)
            worker.queued.discard(attempt)
        return self._requeue(self.tasks[record.task], attempt, now)

    def output_committed(self, now: float) -> List[Action]:
        self.state = JobState.SUCCEEDED
        return [JobFinished(ok=True)] + self._end(now)

    def commit_failed(self, reason: str, now: float) -> List[Action]:
        return self.abort(reason, now)

    def abort(self, reason: str, now: float) -> List[Action]:
        """The driver cannot go on (no output commit, a task it cannot send, no workers left)."""
        if self.state in TERMINAL:
            return []
        return self._fail_job(None, reason, None, now)

    # --- message handlers ------------------------------------------------------------

    def _on_hello(self, msg: protocol.Hello, now: float) -> List[Action]:
        known = self.workers.get(msg.worker)
        if self.state in TERMINAL:
            if known is not None and known.inc == msg.inc:
                return self._tell_exit(known)
            return [Send(msg.worker, self._exit_message())]
        actions: List[Action] = []
        if known is not None and known.inc != msg.inc:
            if msg.inc in self.replaced.get(msg.worker, ()):
                return self._send_replaced_away(msg.worker)
            self._note_replaced(msg.worker, known.inc)
            actions += self._lose_worker(known, now, "it restarted as a new process", coming_back=True)
            known = None
            if self.state in TERMINAL:
                return actions + [Send(msg.worker, self._exit_message())]
        if known is None:
            if len(self.workers) >= self.max_workers:
                self.dropped["too_many_workers"] += 1
                reason = f"the driver already has {len(self.workers)} workers, its limit (MAX_WORKERS)"
                return actions + [Send(msg.worker, protocol.Exit(reason=reason, ok=False))]
            self.workers[msg.worker] = WorkerRecord(
                msg.worker, msg.inc, msg.host, msg.pid, registered_at=now, last_seen=now, shuffle=msg.shuffle,
                shuffle_key=msg.shuffle_key,
            )
            log.info("worker %s registered (host %s, pid %d, shuffle %s)", msg.worker, msg.host or "?", msg.pid,
                     msg.shuffle or "none", extra={"event": "registered", "worker": msg.worker, "host": msg.host,
                                                   "pid": msg.pid, "shuffle": msg.shuffle})
        else:
            known.last_seen = now
            log.info("worker %s reconnected", msg.worker, extra={"event": "reconnected", "worker": msg.worker})
        return actions + [Greet(msg.worker)]

    def _note_replaced(self, name: str, inc: str) -> None:
        """Remember a replaced incarnation, within bounds: a flood of restarts cannot grow memory."""
        incs = self.replaced.pop(name, set())  # re-inserted last: the dict stays in order of use
        if len(incs) >= MAX_REPLACED_INCS:
            incs.pop()
        incs.add(inc)
        self.replaced[name] = incs
        while len(self.replaced) > self.max_workers:
            del self.replaced[next(iter(self.replaced))]

    def _send_replaced_away(self, name: str) -> List[Action]:
        """A process we took for dead speaks again: two live workers share one name."""
        self.dropped["replaced_incarnation"] += 1
        reason = f"another worker process registered as {name!r} after this one; give each worker its own --name"
        return [Send(name, protocol.Exit(reason=reason, ok=False))]

    def _on_request(self, worker: WorkerRecord, msg: protocol.Request, now: float) -> List[Action]:
        """Hand out up to `want` READY tasks; a worker holding nothing may get a straggler's backup."""
        actions: List[Action] = []
        held = set(msg.running)
        for attempt in sorted(worker.running - held):
            # Assigned but unknown to the worker: the Task message was lost on the way.
            worker.running.discard(attempt)
            worker.queued.discard(attempt)
            log.warning("worker %s never received attempt %d; re-queueing", worker.name, attempt)
            actions += self._requeue(self.tasks[self.attempts[attempt].task], attempt, now)
        self._note_started(worker, msg.queued, now)
        worker.waiting = False
        if msg.want == 0:
            return actions
        if worker.name in self.blacklist:
            return actions + [Send(worker.name, protocol.Wait(retry_after=self.config.retry_after))]
        if not self.ready:
            straggler = None if worker.running else self._straggler_for(worker, now)
            if straggler is not None:
                return actions + self._start_backup(straggler, worker, now)
            worker.waiting = True
            return actions + [Send(worker.name, protocol.Wait(retry_after=self.config.retry_after))]
        usable = sum(1 for name in self.workers if name not in self.blacklist)
        grant = min(msg.want, -(-len(self.ready) // usable))  # a fair share of what is READY
        for _ in range(grant):
            task = self.tasks[self.ready.popleft()]
            starts = not worker.running  # the first task of an idle worker starts at once; others queue
            attempt = self._new_attempt(task, worker, now, starts)
            task.state = TaskState.RUNNING
            task.attempt = attempt
            task.worker = worker.name
            task.started_at = now if starts else None
            task.records, task.location, task.position = 0, "", None
            actions.append(Assign(worker.name, task.kind, task.index, attempt))
        return actions

    def _note_started(self, worker: WorkerRecord, queued, now: float) -> None:
        """The worker's held attempts that it no longer lists as queued have started by now."""
        if not worker.queued:
            return
        still = set(queued)
        for attempt in [a for a in worker.queued if a not in still]:
            self._started(worker, attempt, now)

    def _started(self, worker: WorkerRecord, attempt: int, now: float) -> None:
        worker.queued.discard(attempt)
        record = self.attempts.get(attempt)
        if record is None or record.started_at is not None:
            return
        record.started_at = now
        task = self.tasks[record.task]
        if task.attempt == attempt and task.started_at is None:
            task.started_at = now

    def _new_attempt(self, task: TaskRecord, worker: WorkerRecord, now: float, starts: bool = True) -> int:
        attempt = self.next_attempt
        self.next_attempt += 1
        task.attempts += 1
        self.attempts[attempt] = AttemptRecord(attempt, task.key, worker.name, now, now if starts else None)
        worker.running.add(attempt)
        if not starts:
            worker.queued.add(attempt)
        if task_events.isEnabledFor(logging.INFO):
            task_events.info("assigned %s attempt %d to %s", task.name, attempt, worker.name,
                             extra={"event": "assigned", "task": task.name, "attempt": attempt,
                                    "worker": worker.name})
        return attempt

    def _straggler_for(self, worker: WorkerRecord, now: float) -> Optional[TaskRecord]:
        """The running task of this phase slowest beyond the speculation rule, not already backed up.

        The rule: running longer than speculation_factor times the median time of the
        phase's finished tasks, and at least speculation_min_seconds. A job without
        stragglers never runs a task twice.
        """
        config = self.config
        phase = {JobState.MAPPING: MAP, JobState.REDUCING: REDUCE}.get(self.state)
        if not config.speculation or phase is None:
            return None
        tasks = [t for t in self.tasks.values() if t.kind == phase]
        durations = sorted(t.finished_at - t.started_at for t in tasks
                           if t.state == TaskState.FINISHED and t.started_at is not None)
        if not durations:
            return None
        median = durations[len(durations) // 2] if len(durations) % 2 else \
            (durations[len(durations) // 2 - 1] + durations[len(durations) // 2]) / 2
        threshold = max(config.speculation_factor * median, config.speculation_min_seconds)
        slow = [t for t in tasks if t.state == TaskState.RUNNING and t.backup is None and t.worker != worker.name
                and t.started_at is not None and now - t.started_at > threshold]
        return min(slow, key=lambda t: t.started_at) if slow else None

    def _start_backup(self, task: TaskRecord, worker: WorkerRecord, now: float) -> List[Action]:
        attempt = self._new_attempt(task, worker, now)
        task.backup, task.backup_worker = attempt, worker.name
        self.backups_started += 1
        log.info("%s has run %.1f s on %s; starting backup attempt %d on %s", task.name, now - task.started_at,
                 task.worker, attempt, worker.name,
                 extra={"event": "backup", "task": task.name, "attempt": attempt, "worker": worker.name})
        return [Assign(worker.name, task.kind, task.index, attempt)]

    def _current_attempt(self, worker: WorkerRecord, attempt: int) -> Optional[TaskRecord]:
        """The task whose live attempt this is, or None for a stale or foreign attempt."""
        record = self.attempts.get(attempt)
        if record is None or record.worker != worker.name:
            self.dropped["stale_attempt"] += 1
            return None
        return self.tasks[record.task]

    def _on_done(self, worker: WorkerRecord, msg: protocol.Done, now: float) -> List[Action]:
        actions: List[Action] = []
        if msg.attempt not in self.attempts and self._from_earlier_driver(msg.attempt, msg.kind, msg.index,
                                                                          msg.job_id):
            actions = self._adopt(worker, msg.attempt, msg.kind, msg.index, now)
        task = self._current_attempt(worker, msg.attempt)
        if task is None:
            return actions
        problem = self._check_output(task, msg)
        if problem:
            self.dropped["bad_completion"] += 1
            error = TaskError(kind="ProtocolError", message=problem, host=worker.host)
            return actions + self._attempt_failed(worker, task, msg.attempt, error, False, now)
        record = self.attempts.pop(msg.attempt)
        worker.running.discard(msg.attempt)
        worker.queued.discard(msg.attempt)
        if task.started_at is None:  # it ran while queued as far as we knew: its own run time says when
            task.started_at = record.started_at if record.started_at is not None else \
                max(record.assigned_at, now - msg.stats.seconds)
        worker.tasks_done += 1
        actions += self._cancel_other_attempt(task, msg.attempt)
        task.state = TaskState.FINISHED
        task.attempt = None
        task.winner = msg.attempt
        task.output = msg.parts if task.kind == MAP else msg.output
        task.winner_worker, task.shuffle, task.shuffle_key = worker.name, worker.shuffle, worker.shuffle_key
        task.output_safe = task.kind == MAP and self.sees is not None and \
            all(self.sees(part.path, part.size) for part in msg.parts)
        task.stats = msg.stats
        task.counters = msg.counters
        task.bad_records, task.bad_count = msg.bad_records, msg.bad_count
        task.finished_at = now
        if msg.bad_count:
            too_many = self._too_many_bad_records(now)
            if too_many:
                return actions + too_many
        self.finished_counts[task.kind] += 1
        actions.append(TaskFinished(task.kind, task.index, msg.attempt))
        if task_events.isEnabledFor(logging.INFO):
            seconds = round(now - task.started_at, 3)
            task_events.info("%s attempt %d finished on %s in %.2f s", task.name, msg.attempt, worker.name, seconds,
                             extra={"event": "finished", "task": task.name, "attempt": msg.attempt,
                                    "worker": worker.name, "seconds": seconds})
        if task.kind == MAP and self.finished_counts[MAP] == self.num_maps:
            return actions + self._open_reduce_phase(now)
        if task.kind == REDUCE and self.finished_counts[REDUCE] == self.num_reduces:
            self.state = JobState.COMMITTING
            outputs = tuple(self.tasks[(REDUCE, i)].output for i in range(self.num_reduces))
            return actions + [CommitOutput(outputs)]
        return actions

    def _cancel_other_attempt(self, task: TaskRecord, winner: int) -> List[Action]:
        """The first attempt to finish wins; the other one (a backup, or the original) is cancelled."""
        other, other_worker = (task.backup, task.backup_worker) if winner == task.attempt else \
            (task.attempt, task.worker)
        task.backup = task.backup_worker = None
        if other is None or other == winner:
            return []
        self.attempts.pop(other, None)
        loser = self.workers.get(other_worker)
        if loser is None:
            return []
        loser.running.discard(other)
        loser.queued.discard(other)
        log.info("%s: attempt %d finished first; cancelling attempt %d on %s", task.name, winner, other,
                 other_worker)
        reason = f"attempt {winner} of {task.name} finished first"
        return [Send(other_worker, protocol.Cancel(attempt=other, reason=reason, kind=task.kind, index=task.index))]

    def bad_records(self) -> List[Tuple[TaskKey, protocol.BadRecord]]:
        """Records skipped by the winning attempts, task by task."""
        return [(t.key, b) for t in self.tasks.values() if t.state == TaskState.FINISHED for b in t.bad_records]

    def _too_many_bad_records(self, now: float) -> List[Action]:
        limit = self.config.skip_bad_records
        total = sum(t.bad_count for t in self.tasks.values() if t.state == TaskState.FINISHED)
        if limit is None or total <= limit:
            return []
        first = self.bad_records()[:3]
        listed = "; ".join(f"{b.location}: {b.message}" for _, b in first)
        reason = f"{total} bad records, more than --skip-bad-records {limit}; the first: {listed}"
        return self._fail_job(None, reason, None, now)

    def _check_output(self, task: TaskRecord, msg: protocol.Done) -> str:
        if task.kind == REDUCE:
            if not msg.output:
                return "a reduce completion without an output file"
            if self.sees is not None and not self.sees(msg.output, -1):
                return (f"the driver does not see the attempt's output {msg.output} (with --staging never, "
                        "every worker must write into the driver's output directory)")
            return ""
        for part in msg.parts:
            if part.partition >= self.num_reduces:
                return f"partition {part.partition} is out of range"
        return ""

    def _on_failed(self, worker: WorkerRecord, msg: protocol.Failed, now: float) -> List[Action]:
        task = self._current_attempt(worker, msg.attempt)
        if task is None:
            return []
        if msg.fetch_failed and task.kind == REDUCE:
            return self._fetch_failed(worker, task, msg, now)
        return self._attempt_failed(worker, task, msg.attempt, msg.error, msg.lost, now)

    def _fetch_failed(self, worker: WorkerRecord, task: TaskRecord, msg: protocol.Failed, now: float) -> List[Action]:
        """A reduce attempt could not fetch some map output, after retries: that output is lost, not the
        reduce's fault. The workers holding it are lost (their other output is unreachable too), their
        finished map tasks run again, and the reduce waits for them; --max-worker-losses bounds the rounds."""
        record = self.attempts[msg.attempt]
        worker.running.discard(msg.attempt)
        worker.queued.discard(msg.attempt)
        task.last_error = msg.error
        task.fetch_failures += 1
        actions: List[Action] = [AttemptFailed(task.kind, task.index, msg.attempt, worker.name, msg.error, False)]
        holders = set()
        for index in msg.fetch_failed:
            source = self.tasks.get((MAP, index))
            # A map that finished again after this attempt was handed out has new output: not lost.
            if source is not None and source.state == TaskState.FINISHED and \
                    (source.finished_at is None or source.finished_at <= record.assigned_at):
                holders.add(source.winner_worker)
        for name in sorted(holders):
            holder = self.workers.get(name)
            if holder is not None and holder is not worker:
                actions += self._lose_worker(holder, now, "reducers cannot fetch its map output")
            if self.state in TERMINAL:
                return actions
            actions += self._remake_map_output(name, "reducers cannot fetch it", now, all_of_it=True)
        if task.fetch_failures >= self.config.max_worker_losses:
            self._stop_attempt(task, msg.attempt)
            return actions + self._fail_job(task, f"{task.name} could not fetch its input {task.fetch_failures} "
                                                  f"times (--max-worker-losses {self.config.max_worker_losses})",
                                            msg.error, now)
        log.info("%s attempt %d could not fetch map output; it runs again once that output is re-made", task.name,
                 msg.attempt, extra={"event": "retried", "task": task.name, "attempt": msg.attempt})
        return actions + self._requeue(task, msg.attempt, now)

    def _remake_map_output(self, holder: str, why: str, now: float, all_of_it: bool = False) -> List[Action]:
        """Finished map tasks whose output lived on `holder` (only there, unless `all_of_it`) run again
        while some reduce task still needs it. Reduce tasks not yet running wait for them."""
        if self.state in TERMINAL or self.finished_counts[REDUCE] == self.num_reduces:
            return []
        lost = [t for t in self.tasks.values() if t.kind == MAP and t.state == TaskState.FINISHED
                and t.winner_worker == holder and (all_of_it or not t.output_safe)]
        if not lost:
            return []
        for task in reversed(lost):
            task.state = TaskState.READY
            task.winner = None
            task.output_safe = False
            self.finished_counts[MAP] -= 1
            self.ready.appendleft(task.key)
            log.warning("re-running map task %d: its output was on worker %s and %s", task.index, holder, why,
                        extra={"event": "rerun", "task": task.name, "worker": holder})
        self.maps_rerun += len(lost)
        self.map_generation += 1
        actions: List[Action] = []
        if self.state == JobState.REDUCING:
            self.state = JobState.MAPPING
            for key in [k for k in self.ready if k[0] == REDUCE]:
                self.ready.remove(key)
                self.tasks[key].state = TaskState.BLOCKED
            actions += self._recall_fetching_reduces(holder)
        return actions + self._wake_waiting()

    def _recall_fetching_reduces(self, holder: str) -> List[Action]:
        """Reduce attempts that have not reduced a key yet (queued, or still fetching) would wait out
        their fetch retries on the lost output, holding their workers from the maps that re-make it:
        cancel them, and they wait BLOCKED. Those already reducing hold all their input: they go on."""
        actions: List[Action] = []
        reason = f"map output it needs was lost with worker {holder}; it runs again once that is re-made"
        for task in [t for t in self.tasks.values() if t.kind == REDUCE and t.state == TaskState.RUNNING
                     and t.records == 0]:
            for attempt, name in ((task.attempt, task.worker), (task.backup, task.backup_worker)):
                if attempt is None:
                    continue
                self.attempts.pop(attempt, None)
                self.progress.pop(attempt, None)
                worker = self.workers.get(name)
                if worker is not None:
                    worker.running.discard(attempt)
                    worker.queued.discard(attempt)
                    actions.append(Send(name, protocol.Cancel(attempt=attempt, reason=reason, kind=REDUCE,
                                                              index=task.index)))
            task.state, task.attempt, task.worker, task.started_at = TaskState.BLOCKED, None, None, None
            task.backup = task.backup_worker = None
            log.info("%s: %s", task.name, reason, extra={"event": "recalled", "task": task.name})
        return actions

    # --- transitions -----------------------------------------------------------------

    def _attempt_failed(
        self, worker: WorkerRecord, task: TaskRecord, attempt: int, error: TaskError, lost: bool, now: float
    ) -> List[Action]:
        worker.running.discard(attempt)
        worker.queued.discard(attempt)
        worker.tasks_failed += 1
        worker.failed_tasks.add(task.key)
        task.last_error = error
        report = AttemptFailed(task.kind, task.index, attempt, worker.name, error, lost)
        if lost:
            task.worker_losses += 1
            actions = [report] + self._retry_or_fail(task, attempt, now, "lost its process")
        else:
            task.failures += 1
            actions = [report] + self._retry_or_fail(task, attempt, now, "failed")
        return actions + self._maybe_blacklist(worker, error, now)

    def _maybe_blacklist(self, worker: WorkerRecord, error: TaskError, now: float) -> List[Action]:
        """A worker where different tasks of this job keep failing (a bad disk, a missing library)
        gets no more. One task failing again and again is the task's problem, not the worker's."""
        limit = self.config.blacklist_after
        failed = len(worker.failed_tasks)
        if not limit or failed < limit or worker.name in self.blacklist or self.state in TERMINAL:
            return []
        self.blacklist[worker.name] = f"{failed} different tasks failed on this worker (--blacklist-after {limit})"
        log.warning("worker %s gets no more tasks: %s", worker.name, self.blacklist[worker.name],
                    extra={"event": "blacklisted", "worker": worker.name})
        return self._fail_if_no_usable_worker(error, now)

    def _fail_if_no_usable_worker(self, error: Optional[TaskError], now: float) -> List[Action]:
        """Waiting for workers is fine; waiting on workers that may not take tasks would hang."""
        if self.state in TERMINAL or not self.workers or any(n not in self.blacklist for n in self.workers):
            return []
        return self._fail_job(None, "every worker is blacklisted after repeated failures", error, now)

    def _time_out(self, record: AttemptRecord, now: float) -> List[Action]:
        task = self.tasks[record.task]
        worker = self.workers[record.worker]
        progress = self.progress.get(record.attempt) or protocol.Progress(attempt=record.attempt)
        if self.config.skip_bad_records is not None and progress.position is not None:
            task.skip.add(progress.position)  # the next attempt skips the record this one hung on
        where = f" while reading {progress.location}" if progress.location else ""
        message = (f"{task.name} attempt {record.attempt} ran longer than --task-timeout "
                   f"{self.config.task_timeout:g} s{where} ({progress.records} records read)")
        error = TaskError(kind="TaskTimeout", message=message, location=progress.location, host=worker.host)
        cancel = Send(worker.name, protocol.Cancel(attempt=record.attempt, reason=message, kind=task.kind,
                                                   index=task.index))
        return [cancel] + self._attempt_failed(worker, task, record.attempt, error, False, now)

    def _from_earlier_driver(self, attempt: int, kind: str, index: int, job_id: str) -> bool:
        """An attempt a killed driver of this same job handed out before this one resumed it."""
        return attempt < self.adopt_below and job_id == self.job_id != "" and (kind, index) in self.tasks

    def _adopt(self, worker: WorkerRecord, attempt: int, kind: str, index: int, now: float) -> List[Action]:
        """Take over an earlier driver's attempt that a worker is still running, so its work counts."""
        task = self.tasks[(kind, index)]
        if task.state == TaskState.FINISHED and task.winner == attempt:
            return []  # its report again: the task already has this attempt's output, which must stay
        if task.state == TaskState.READY and task.key in self.ready:
            self.ready.remove(task.key)
            task.state, task.attempt, task.worker, task.started_at = TaskState.RUNNING, attempt, worker.name, now
        elif task.state == TaskState.RUNNING and task.backup is None and task.worker != worker.name:
            task.backup, task.backup_worker = attempt, worker.name
        else:
            reason = f"{task.name} is {task.state.value.lower()} without this attempt"
            return [Send(worker.name, protocol.Cancel(attempt=attempt, reason=reason, kind=kind, index=index))]
        task.attempts += 1
        self.attempts[attempt] = AttemptRecord(attempt, task.key, worker.name, now, now)
        worker.running.add(attempt)
        log.info("adopted attempt %d of %s, started before the driver restarted, on %s", attempt, task.name,
                 worker.name, extra={"event": "adopted", "task": task.name, "attempt": attempt, "worker": worker.name})
        return []

    def _note_progress(self, worker: WorkerRecord, progress, now: float) -> List[Action]:
        """Per attempt (a task's two attempts are at different records); the task shows its main one's.

        An attempt this driver never handed out is adopted if an earlier driver did, else cancelled.
        """
        actions: List[Action] = []
        for p in progress:
            if p.attempt not in self.attempts and p.kind:
                if self._from_earlier_driver(p.attempt, p.kind, p.index, p.job_id):
                    actions += self._adopt(worker, p.attempt, p.kind, p.index, now)
                else:
                    actions.append(Send(worker.name, protocol.Cancel(
                        attempt=p.attempt, reason="the driver has no use for this attempt (it was given up, or "
                                                  "belongs to another job)", kind=p.kind, index=p.index)))
            record = self.attempts.get(p.attempt)
            if record is not None and record.worker == worker.name:
                if record.started_at is None:
                    self._started(worker, p.attempt, now)
                self.progress[p.attempt] = p
                task = self.tasks[record.task]
                if task.attempt == p.attempt:
                    task.records, task.location, task.position = p.records, p.location, p.position
        if len(self.progress) > 2 * len(self.attempts) + 64:  # forget attempts that ended
            self.progress = {a: p for a, p in self.progress.items() if a in self.attempts}
        return actions

    def _retry_or_fail(self, task: TaskRecord, attempt: int, now: float, what: str) -> List[Action]:
        reason = ""
        if task.failures >= self.config.max_attempts:
            reason = f"{task.name} failed {task.failures} times (--max-attempts {self.config.max_attempts})"
        elif task.worker_losses >= self.config.max_worker_losses:
            reason = (
                f"{task.name} lost its worker {task.worker_losses} times "
                f"(--max-worker-losses {self.config.max_worker_losses})"
            )
        if reason:
            self._stop_attempt(task, attempt)
            return self._fail_job(task, reason, task.last_error, now)
        log.info("%s attempt %d %s; retrying", task.name, attempt, what,
                 extra={"event": "retried", "task": task.name, "attempt": attempt})
        return self._requeue(task, attempt, now)

    def _stop_attempt(self, task: TaskRecord, attempt: int) -> bool:
        """Forget a live attempt. True if the task has none left and is READY again (not queued);
        False if the attempt was stale or the task's other attempt goes on."""
        self.attempts.pop(attempt, None)
        if task.state != TaskState.RUNNING:
            return False
        if attempt == task.backup:
            task.backup = task.backup_worker = None
            return False
        if attempt != task.attempt:
            return False
        if task.backup is not None:  # the backup carries on as the task's attempt
            task.attempt, task.worker = task.backup, task.backup_worker
            task.backup = task.backup_worker = None
            return False
        task.state = TaskState.READY
        task.attempt = None
        task.worker = None
        return True

    def _requeue(self, task: TaskRecord, attempt: int, now: float) -> List[Action]:
        """Put a running task back to READY, at the front so that retries go first; a reduce task whose
        map output is being re-made waits BLOCKED."""
        if not self._stop_attempt(task, attempt):
            return []
        if task.kind == REDUCE and self.state == JobState.MAPPING:
            task.state = TaskState.BLOCKED
            return []
        self.ready.appendleft(task.key)
        return self._wake_waiting()

    def _wake_waiting(self) -> List[Action]:
        actions: List[Action] = []
        for worker in self.workers.values():
            if worker.waiting:
                worker.waiting = False
                actions.append(Send(worker.name, protocol.Wake()))
        return actions

    def _open_reduce_phase(self, now: float) -> List[Action]:
        self.state = JobState.REDUCING
        self.map_generation += 1  # where map output lives is settled again: reduce tasks read it afresh
        self.reduce_opened_at = now
        blocked = [t for t in self.tasks.values() if t.kind == REDUCE and t.state == TaskState.BLOCKED]
        log.info("all %d map tasks finished; starting %d reduce tasks", self.num_maps, len(blocked))
        for task in blocked:
            task.state = TaskState.READY
            self.ready.append(task.key)
        return self._wake_waiting()

    def _lose_worker(self, worker: WorkerRecord, now: float, why: str, coming_back: bool = False) -> List[Action]:
        """Requeue the worker's attempts. `coming_back`: it restarted and registers again at once."""
        del self.workers[worker.name]
        self.workers_lost += 1
        actions: List[Action] = []
        if self.state in TERMINAL:
            return actions
        if not coming_back:
            actions += self._fail_if_no_usable_worker(None, now)
        if self.state in TERMINAL:
            return actions
        log.warning("worker %s lost: %s", worker.name, why, extra={"event": "lost", "worker": worker.name})
        for attempt in sorted(worker.running):
            record = self.attempts.get(attempt)
            if record is None:
                continue
            task = self.tasks[record.task]
            task.worker_losses += 1
            task.last_error = TaskError(kind="WorkerLost", message=f"worker {worker.name} {why}", host=worker.host)
            actions += self._retry_or_fail(task, attempt, now, f"lost worker {worker.name}")
            if self.state in TERMINAL:
                break
        return actions + self._remake_map_output(worker.name, "that worker was lost", now)

    def _fail_job(self, task: Optional[TaskRecord], reason: str, error: Optional[TaskError], now: float):
        self.state = JobState.FAILED
        self.failure = JobFailure(task.key if task else ("job", 0), reason, error)
        log.debug("job failed: %s", reason)
        return [JobFinished(ok=False, failure=self.failure)] + self._end(now)

    def _end(self, now: float) -> List[Action]:
        self.ended_at = now
        self.exit_deadline = now + self.config.exit_grace
        self.ready.clear()
        actions: List[Action] = []
        for worker in self.workers.values():
            if worker.waiting:
                actions += self._tell_exit(worker)
        return actions

    def _tell_exit(self, worker: WorkerRecord) -> List[Action]:
        worker.told_exit = True
        worker.waiting = False
        return [Send(worker.name, self._exit_message())]

    def _exit_message(self) -> protocol.Exit:
        return protocol.Exit(reason="the job is over", ok=self.state == JobState.SUCCEEDED)

    def _known_worker(self, msg: protocol.Message, now: float) -> Optional[WorkerRecord]:
        worker = self.workers.get(getattr(msg, "worker", ""))
        if worker is None or worker.inc != msg.inc:
            return None
        return worker

    # --- status ----------------------------------------------------------------------

    def task_status(self, kind: str, index: int, now: float) -> Optional[dict]:
        task = self.tasks.get((kind, index))
        if task is None:
            return None
        seconds = None
        if task.started_at is not None:
            seconds = round((task.finished_at if task.finished_at is not None else now) - task.started_at, 3)
        status = {
            "kind": task.kind,
            "index": task.index,
            "state": task.state.value,
            "worker": task.worker,
            "attempt": task.attempt,
            "backup_attempt": task.backup,
            "backup_worker": task.backup_worker,
            "attempts": task.attempts,
            "failures": task.failures,
            "worker_losses": task.worker_losses,
            "seconds": seconds,
        }
        if task.state == TaskState.RUNNING:
            status.update(records=task.records, location=task.location)
        if task.last_error is not None:
            status["last_error"] = protocol.to_fields(task.last_error)
        if task.stats is not None:
            status["stats"] = protocol.to_fields(task.stats)
        return status

    def totals(self) -> Dict[str, protocol.TaskStats]:
        """Summed stats of the finished (winning) attempts, per phase."""
        sums = {}
        for kind in (MAP, REDUCE):
            stats = [t.stats for t in self.tasks.values() if t.kind == kind and t.stats is not None]
            sums[kind] = protocol.TaskStats(
                records_in=sum(s.records_in for s in stats), bytes_in=sum(s.bytes_in for s in stats),
                records_out=sum(s.records_out for s in stats), seconds=sum(s.seconds for s in stats),
            )
        return sums

    def counter_values(self) -> List[protocol.CounterValue]:
        """The winning attempts' counters, plus what only the scheduler can count."""
        values = [c for task in self.tasks.values() for c in task.counters]
        values += [
            protocol.CounterValue(FRAMEWORK_GROUP, "failed attempts", sum(t.failures for t in self.tasks.values())),
            protocol.CounterValue(FRAMEWORK_GROUP, "retried attempts",
                                  sum(max(0, t.attempts - 1) for t in self.tasks.values())),
            protocol.CounterValue(FRAMEWORK_GROUP, "speculative attempts", self.backups_started),
            protocol.CounterValue(FRAMEWORK_GROUP, "lost workers", self.workers_lost),
            protocol.CounterValue(FRAMEWORK_GROUP, "map tasks re-run for lost output", self.maps_rerun),
        ]
        return values

    def tasks_status(self, now: float) -> List[dict]:
        return [self.task_status(kind, index, now) for kind, index in self.tasks]

    def job_status(self, now: float) -> dict:
        counts = {MAP: Counter(), REDUCE: Counter()}
        for task in self.tasks.values():
            counts[task.kind][task.state.value] += 1
        elapsed = 0.0
        if self.started_at is not None:
            elapsed = (self.ended_at if self.ended_at is not None else now) - self.started_at
        status = {
            "state": self.state.value,
            "maps": {s.value: counts[MAP][s.value] for s in TaskState},
            "reduces": {s.value: counts[REDUCE][s.value] for s in TaskState},
            "workers_alive": len(self.workers),
            "workers_lost": self.workers_lost,
            "dropped_messages": dict(self.dropped),
            "elapsed": round(elapsed, 3),
        }
        if self.failure is not None:
            status["failure"] = self.failure.reason
        return status

    def workers_status(self, now: float) -> List[dict]:
        out = []
        for worker in self.workers.values():
            running = [self.attempts[a].task for a in sorted(worker.running) if a in self.attempts]
            out.append(
                {
                    "name": worker.name,
                    "host": worker.host,
                    "pid": worker.pid,
                    "shuffle": worker.shuffle,
                    "last_seen_ago": round(now - worker.last_seen, 3),
                    "running": [f"{kind} {index}" for kind, index in running],
                    "tasks_done": worker.tasks_done,
                    "tasks_failed": worker.tasks_failed,
                    "blacklisted": self.blacklist.get(worker.name),
                }
            )
        return out
