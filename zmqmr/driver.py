"""The driver: a ROUTER socket and one poll loop around the Scheduler.

The loop decodes and validates, hands typed messages to the scheduler, carries out the
actions it returns, and sleeps until the scheduler's next deadline. Nothing here
decides what happens to a task.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import zmq

from . import protocol
from .errors import OutputError, ProtocolError
from .journal import FinishedTask, Journal, JournalError
from .staging import Staging
from .security import Curve, Gate, serve
from .workdir import JobDir, default_work_dir, new_probe_token, remove_stale, write_probe
from .executor import reduce_output_path
from .output import SUCCESS, OutputDir
from .plan import JobPlan
from .procutil import raise_file_limit
from .monitor import SNAPSHOT_INTERVAL, Monitor, failure_report, print_counters, split_bytes
from .progress import start_progress
from .scheduler import (MAP, REDUCE, TERMINAL, Assign, AttemptFailed, CommitOutput, Greet, JobFailure, JobFinished,
                        JobState, Scheduler, SchedulerConfig, Send, TaskFinished)

log = logging.getLogger("zmqmr.driver")

MAX_MESSAGES_PER_ROUND = 1000
BUNDLE_HEAD_BYTES = 64  # a bundle's own bytes besides its items
HEALTH_CHECK_INTERVAL = 0.2
_WELCOME = object()  # in a worker's outgoing messages: the job's Welcome frame goes here
MAX_POLL_SECONDS = 1.0
HANDSHAKE_MS = 10_000  # a connection must finish its ZMTP (and CURVE) handshake within this
BAD_MESSAGE_LOG_INTERVAL = 10.0
COUNTERS_FILE = "_counters.json"
BAD_RECORDS_FILE = os.path.join("_bad_records", "bad-records.jsonl")


def _has_size(path: str, size: int) -> bool:
    """The driver sees this file (of this size; -1: any)."""
    if size < 0:
        return os.path.isfile(path)
    try:
        return os.path.getsize(path) == size
    except OSError:
        return False


def counters_json(totals: Dict[str, Dict[str, int]]) -> str:
    return json.dumps(totals, indent=2, ensure_ascii=False) + "\n"


@dataclass(frozen=True)
class DriverSettings:
    bind_host: str = "127.0.0.1"
    port: int = 5555
    heartbeat_interval: float = 1.0
    scheduler: SchedulerConfig = SchedulerConfig()
    http_port: Optional[int] = None  # serve the status page there
    counters_json: Optional[str] = None  # instead of OUTPUT/_counters.json
    progress: bool = True  # a progress display (a bar on a terminal, else a line every few seconds)
    quiet: bool = False  # no counters table at the end
    staging: str = "auto"  # input and output through the driver: auto (where workers cannot see them), always, never
    curve: Optional[Curve] = None  # CURVE server keys and the client keys admitted; None: plain text


class BadMessageLog:
    """Counts dropped messages by reason and logs them at a limited rate."""

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.unlogged = 0
        self.last_logged = float("-inf")

    def record(self, reason: str, detail: str, now: float) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.unlogged += 1
        if now - self.last_logged >= BAD_MESSAGE_LOG_INTERVAL:
            log.warning("dropped %d bad message(s); latest: %s (totals: %s)", self.unlogged, detail, self.counts)
            self.unlogged = 0
            self.last_logged = now


class Driver:
    def __init__(self, plan: JobPlan, settings: DriverSettings = DriverSettings()):
        self.plan = plan
        self.settings = settings
        limit = plan.job.skip_bad_records  # the job's own setting, also when resumed from a journal
        config = dataclasses.replace(settings.scheduler, skip_bad_records=None if limit < 0 else limit)
        self.scheduler = Scheduler(len(plan.splits), plan.reducers, config)
        self.scheduler.job_id = plan.job_id
        self.output = OutputDir(plan.output, plan.job_id)
        self.splits = [tuple(split) for split in plan.splits]
        self.routes: Dict[str, bytes] = {}
        self.bad = BadMessageLog()
        self.monitor = Monitor(self.scheduler, plan.job_id, plan.job.name, self.output.path,
                               [split_bytes(s) for s in plan.splits], len(plan.inputs),
                               sum(f.size for f in plan.inputs))
        self.monitor.dropped = self.bad.counts
        self.monitor.detailed = settings.http_port is not None
        self.status_server = None
        self.progress = None
        self.health_checks: List = []  # callables: a reason to give up the job, or ""
        self.journal = Journal(plan.work_dir) if plan.work_dir and plan.journaled else None
        self.interrupted = False
        self.reduce_inputs: Optional[List[List[protocol.MapOutput]]] = None
        self.reduce_inputs_generation = -1
        self.failure: Optional[JobFailure] = None
        self.succeeded = False
        self.probe = new_probe_token()
        self.job_dir: Optional[JobDir] = None
        self.seen_roots: List[str] = []  # where files that workers report may lie (see _sees)
        self.staging = Staging(self.splits)
        self.scheduler.sees = self._sees
        self.welcome_frame = protocol.encode(protocol.Welcome(
            job_id=plan.job_id, job=plan.job, reducers=plan.reducers,
            heartbeat_interval=settings.heartbeat_interval, work_dir=plan.work_dir,
            worker_timeout=settings.scheduler.worker_timeout, staging=settings.staging, probe=self.probe,
            peer_keys=tuple(sorted(k.decode() for k in settings.curve.authorized)) if settings.curve else (),
        ))
        self.gate: Optional[Gate] = None
        self.identities: Dict[str, str] = {}  # with CURVE: worker name -> the public key that registered it
        self.context: Optional[zmq.Context] = None
        self.sock = None
        self.endpoint = ""

    def bind(self) -> str:
        """Prepare the output and bind the socket; port 0 picks a free port. Returns the endpoint."""
        if self.journal is not None:
            self.journal.lock()  # one driver per work dir: a second one must not touch this job's files
        success = os.path.join(self.output.path, SUCCESS)
        if self.plan.resume is not None and os.path.exists(success) and \
                os.path.getmtime(success) >= self.plan.resume.created:
            raise JournalError(f"the job of this journal already succeeded ({self.output.path} has _SUCCESS); "
                               f"remove {self.journal.path} to run it again")
        self.output.prepare(self.plan.force, [f.path for f in self.plan.inputs], resume=self.plan.resume is not None)
        write_probe(self.output.temp_dir, self.probe)  # workers that read it there write the output directly
        if self.plan.work_dir:
            for path in remove_stale(self.plan.work_dir, keep=self.plan.job_id):
                log.info("removed %s, left by a job that failed or was killed", path)
            self.job_dir = JobDir(self.plan.work_dir, self.plan.job_id)
            write_probe(self.job_dir.path, self.probe)  # workers that read it there keep map output here
        self.seen_roots = [os.path.realpath(d) + os.sep for d in (
            self.output.temp_dir, os.path.join(default_work_dir(), self.plan.job_id),
            os.path.join(self.plan.work_dir, self.plan.job_id) if self.plan.work_dir else None) if d]
        raise_file_limit()  # every connection, even one that never speaks, holds a descriptor
        self.context = zmq.Context()
        if self.settings.curve is not None:  # the ZAP handler runs before anyone can connect
            self.gate = Gate(self.context, self.settings.curve.authorized)
        self.sock = self.context.socket(zmq.ROUTER)
        serve(self.sock, self.settings.curve)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_DRIVER_MESSAGE_BYTES)
        self.sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)  # idle connections that never speak ZMTP go
        host = self.settings.bind_host
        address = f"[{host}]" if ":" in host else host
        try:
            if self.settings.port == 0:
                self.sock.bind(f"tcp://{address}:*")
            else:
                self.sock.bind(f"tcp://{address}:{self.settings.port}")
        except zmq.ZMQError as exc:
            self.close()
            if self.plan.resume is None:
                self.output.abort()
            raise OutputError(f"cannot listen on {host}:{self.settings.port}: {exc}") from None
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.settings.http_port is not None:
            self._serve_status_page()
        return self.endpoint

    def _serve_status_page(self) -> None:
        from .webstatus import StatusServer

        self.status_server = StatusServer(self.settings.bind_host, self.settings.http_port,
                                          lambda: self.monitor.snapshot)
        try:
            port = self.status_server.start()
        except Exception:
            self.close()
            if self.plan.resume is None:
                self.output.abort()
            raise
        host = self.settings.bind_host
        log.info("status page on http://%s:%d/", f"[{host}]" if ":" in host else host, port)

    def run(self) -> int:
        """Run the job to its end; 0 when it succeeded, 1 when it failed."""
        if self.sock is None:
            self.bind()
        log.info("job %s: %d map and %d reduce tasks; listening on %s",
                 self.plan.job_id, len(self.plan.splits), self.plan.reducers, self.endpoint)
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.settings.progress:
            self.progress = start_progress(sys.stderr)
            self.monitor.listeners.append(self.progress.update)
        watched = bool(self.monitor.listeners or self.status_server)
        longest_poll = SNAPSHOT_INTERVAL if watched else MAX_POLL_SECONDS
        try:
            now = time.monotonic()
            self._open_journal(now)
            self.monitor.refresh(now, force=True)
            checked_health = now
            while not self.scheduler.can_stop(now):
                deadline = self.scheduler.next_deadline()
                timeout = longest_poll if deadline is None else min(max(deadline - now, 0.0), longest_poll)
                if poller.poll(timeout * 1000):
                    self._drain()
                now = time.monotonic()
                self._carry_out(self.scheduler.on_tick(now), now)
                if now - checked_health >= HEALTH_CHECK_INTERVAL or self.scheduler.state in TERMINAL:
                    checked_health = now
                    for check in self.health_checks:
                        problem = check()
                        if problem:
                            self._carry_out(self.scheduler.abort(problem, now), now)
                if self.journal is not None:
                    self.journal.sync()
                self._forget_routes()
                if self.staging.uploads:
                    self.staging.keep_only(self.scheduler.attempts)
                if watched:  # nobody reads snapshots otherwise; a status query builds its own
                    self.monitor.refresh(now)
        except KeyboardInterrupt:
            self.interrupted = True
            self._tell_everyone(protocol.Exit(reason="the driver was interrupted", ok=False))
            raise
        finally:
            final = self.monitor.refresh(time.monotonic(), force=True)
            if self.progress is not None:
                self.progress.close(final)
            self._clean_up()
            self.close()
        self._report_counters()
        return 0 if self.succeeded else 1

    def _clean_up(self) -> None:
        """A job that ended leaves nothing behind; an interrupted one with a journal keeps what resuming needs."""
        if self.interrupted and self.journal is not None and not self.succeeded:
            self.journal.close()
            log.warning("interrupted; finished tasks are kept: go on with zmqmr-driver --resume %s",
                        self.plan.work_dir)
            return
        if not self.succeeded:
            self.output.abort()
        self._remove_intermediate()
        if self.journal is not None:
            self.journal.remove()

    def _open_journal(self, now: float) -> None:
        if self.journal is None:
            return
        if self.plan.resume is None:
            self.journal.start(self.plan.journal_plan(), self.scheduler.next_attempt)
            return
        self._restore(self.plan.resume, now)
        self.journal.resume(self.scheduler.next_attempt)

    def _restore(self, replay, now: float) -> None:
        """Take back the finished tasks whose output still exists; the rest run again."""
        scheduler = self.scheduler
        scheduler.next_attempt = max(scheduler.next_attempt, replay.attempts_below)
        scheduler.adopt_below = replay.attempts_below
        finished = {(f.kind, f.index): f for f in replay.finished}
        for f in finished.values():
            if f.kind == MAP and all(self._sees(p.path, p.size) for p in f.parts):
                scheduler.restore_finished(MAP, f.index, f.parts, f.stats, f.counters, f.bad_records, f.bad_count,
                                           f.attempt)
        if scheduler.finished_counts[MAP] == scheduler.num_maps:
            for f in finished.values():
                if f.kind == REDUCE and os.path.isfile(f.output) and self.output.contains(f.output):
                    scheduler.restore_finished(REDUCE, f.index, f.output, f.stats, f.counters, f.bad_records,
                                               f.bad_count, f.attempt)
        kept, rerun = scheduler.finished_counts, len(finished) - sum(scheduler.finished_counts.values())
        log.info("resumed job %s from its journal: kept %d of %d map and %d of %d reduce tasks; %d finished "
                 "task(s) lost their output and run again", self.plan.job_id, kept[MAP], scheduler.num_maps,
                 kept[REDUCE], scheduler.num_reduces, rerun,
                 extra={"event": "resumed", "maps_kept": kept[MAP], "reduces_kept": kept[REDUCE], "rerun": rerun})
        if scheduler.state == JobState.COMMITTING:
            outputs = tuple(scheduler.tasks[(REDUCE, i)].output for i in range(scheduler.num_reduces))
            self._carry_out([CommitOutput(outputs)], now)

    def _sees(self, path: str, size: int) -> bool:
        """A file a worker reported is one the driver sees: in the output's temporary directory (reduce
        output), or in this job's directory of the driver's --work-dir or of the default work dir of
        workers on this host (map output); never anywhere else."""
        real = os.path.realpath(path)
        return any(real.startswith(root) for root in self.seen_roots) and _has_size(real, size)

    def close(self) -> None:
        self.staging.close()
        if self.job_dir is not None:
            self.job_dir.release()
        if self.journal is not None:
            self.journal.unlock()
        if self.status_server is not None:
            self.status_server.stop()
            self.status_server = None
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        if self.gate is not None:
            self.gate.stop()
            self.gate = None
        if self.context is not None:
            self.context.term()
            self.context = None

    # --- receiving -----------------------------------------------------------------------

    def _drain(self) -> None:
        curve = self.settings.curve is not None
        for _ in range(MAX_MESSAGES_PER_ROUND):
            try:
                if curve:  # the frames' metadata says whose key sent them
                    frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    user = frames[-1].get("User-Id") if len(frames) == 2 else ""
                    self._on_frames([f.bytes for f in frames], time.monotonic(), user)
                else:
                    self._on_frames(self.sock.recv_multipart(zmq.NOBLOCK), time.monotonic())
            except zmq.Again:
                return

    def _on_frames(self, frames: List[bytes], now: float, user: str = "") -> None:
        if len(frames) != 2:
            self.bad.record("frames", f"{len(frames)} frames", now)
            return
        route, body = frames
        try:
            message = protocol.decode(body, protocol.TO_DRIVER)
        except ProtocolError as exc:
            self.bad.record(exc.reason, str(exc), now)
            if exc.message_type == "hello":
                self._refuse_bad_hello(route, exc)
            return
        if self.settings.curve is not None and isinstance(message, protocol.WorkerMessage) and \
                not self._speaks_for_itself(message, user, now):
            return
        if isinstance(message, protocol.StatusQuery):
            self._send_frame(route, protocol.encode(self._status(message, now)))
            return
        if isinstance(message, (protocol.ReadInput, protocol.Upload)):
            self._send_frame(route, protocol.encode(self._stage(message, now)))
            return
        if isinstance(message, protocol.Batch):
            actions = []
            for item in message.items:
                if isinstance(item, protocol.Rejected):
                    item = self._rejected(item, now)
                    if item is None:
                        continue
                actions += self.scheduler.on_message(item, now)
        else:
            actions = self.scheduler.on_message(message, now)
        self._carry_out(actions, now, sender=(message.worker, route))
        registered = self.scheduler.workers.get(message.worker)
        if registered is not None and registered.inc == message.inc:  # not a replaced process's route
            self.routes[message.worker] = route

    def _speaks_for_itself(self, message: protocol.WorkerMessage, user: str, now: float) -> bool:
        """With CURVE, a worker is its authenticated key: a name belongs to the key that registered it
        while it is registered, and a worker's shuffle service must be its own key's."""
        owner = self.identities.get(message.worker)
        if owner is not None and owner != user and message.worker in self.scheduler.workers:
            self.bad.record("impersonation", f"a message for worker {message.worker!r} from another key", now)
            return False
        if isinstance(message, protocol.Hello):
            if message.shuffle_key != user:  # reducers connect to its service with this key
                self.bad.record("impersonation", f"worker {message.worker!r} offers a shuffle key not its own", now)
                return False
            if len(self.identities) >= 2 * protocol.MAX_WORKERS:
                self.identities = {n: k for n, k in self.identities.items() if n in self.scheduler.workers}
            self.identities[message.worker] = user
        return True

    def _rejected(self, item: protocol.Rejected, now: float) -> Optional[protocol.Failed]:
        """A batch item that failed validation is dropped and counted. If it was an attempt's report,
        the attempt fails: otherwise the task would wait for a report that can never arrive."""
        self.bad.record(item.reason, item.detail, now)
        if item.attempt is None:
            return None
        error = protocol.TaskError(kind="ProtocolError", host="",
                                   message=f"the attempt's report was refused: {item.detail}"[:protocol.MAX_TEXT_LEN])
        return protocol.Failed(worker=item.worker, inc=item.inc, attempt=item.attempt, error=error)

    def _refuse_bad_hello(self, route: bytes, error: ProtocolError) -> None:
        """A worker whose hello is refused is told why, rather than left waiting for a driver."""
        if error.reason == "version":
            reason = f"protocol version mismatch: this driver speaks version {protocol.PROTOCOL_VERSION}"
        else:
            reason = f"the driver refused this worker's hello: {error}"
        self._send_frame(route, protocol.encode(protocol.Exit(reason=reason, ok=False)))

    def _stage(self, message, now: float) -> protocol.Message:
        """Input bytes for, or output bytes from, a live attempt of a registered worker (--staging)."""
        scheduler = self.scheduler
        kind = scheduler.live_attempt(message.worker, message.inc, message.attempt, now)
        if isinstance(message, protocol.ReadInput):
            if kind != MAP:
                return protocol.Chunk(tag=message.tag, offset=message.offset,
                                      error=f"attempt {message.attempt} is no live map attempt of this worker")
            return self.staging.read_input(message, scheduler.attempts[message.attempt].task[1])
        if kind != REDUCE:
            return protocol.UploadAck(attempt=message.attempt,
                                      error=f"attempt {message.attempt} is no live reduce attempt of this worker")
        index = scheduler.attempts[message.attempt].task[1]
        return self.staging.receive(message, reduce_output_path(self.output.temp_dir, index, message.attempt))

    # --- acting ---------------------------------------------------------------------------

    def _carry_out(self, actions, now: float, sender: Tuple[str, bytes] = ("", b"")) -> None:
        """Carry out the actions; what goes to one worker leaves in as few frames as it can."""
        pending = deque(actions)
        outgoing: Dict[str, List] = {}  # worker -> messages (and the Welcome marker), in order
        journal = self.journal
        while pending:
            action = pending.popleft()
            kind = type(action)  # the actions are final classes: one lookup, not a chain of isinstance
            if kind is Assign:
                if journal is not None:
                    journal.reserve(action.attempt + 1)
                messages = outgoing.get(action.worker)
                if messages is None:
                    messages = outgoing[action.worker] = []
                messages.append(action)
            elif kind is TaskFinished:
                if journal is not None:
                    journal.finished(self._finished_record(action))
            elif kind is Send:
                outgoing.setdefault(action.worker, []).append(action.message)
            elif kind is Greet:
                outgoing.setdefault(action.worker, []).append(_WELCOME)
            elif kind is CommitOutput:
                pending += self._commit(action, now)
            elif kind is JobFinished:
                self._on_finished(action)
            elif kind is AttemptFailed:
                self.monitor.attempt_failed(action)
            if not pending and outgoing:
                for worker, messages in outgoing.items():
                    pending += self._deliver(worker, messages, sender, now)
                outgoing = {}

    def _deliver(self, worker: str, messages: List, sender: Tuple[str, bytes], now: float) -> List:
        """Send one worker's messages in order: the Welcome alone, the rest as one frame (a bundle
        when there are several). Returns what the scheduler says of tasks that could not be sent."""
        actions: List = []
        group: List[Tuple[protocol.Message, Optional[Assign]]] = []
        for message in messages:
            if type(message) is Assign:
                group.append((self._task_message(message), message))
            elif message is _WELCOME:
                actions += self._send_group(worker, group, sender, now)
                group = []
                self._send_to(worker, self.welcome_frame, sender)
            else:
                group.append((message, None))
        return actions + self._send_group(worker, group, sender, now)

    def _send_group(self, worker: str, group: List[Tuple[protocol.Message, Optional[Assign]]],
                    sender: Tuple[str, bytes], now: float) -> List:
        actions: List = []
        if not group:
            return actions
        encode = protocol.encode if len(group) == 1 else protocol.encode_item
        limit = protocol.MAX_MESSAGE_BYTES - BUNDLE_HEAD_BYTES
        chunks: List[List[Tuple[bytes, Optional[Assign]]]] = [[]]
        size = 0
        for message, assign in group:  # bundles stay below the frame limit
            try:
                item = encode(message)
                if len(item) > limit:
                    raise ProtocolError("too_large", f"{len(item)} bytes")
            except ProtocolError as exc:
                if assign is not None:
                    actions += self.scheduler.abort(f"{assign.kind} task {assign.index} cannot be sent to a "
                                                    f"worker ({exc}); use more --mappers", now)
                else:
                    log.error("could not send a %s message to %s: %s", message.TYPE, worker, exc)
                continue
            if size + len(item) > limit:
                chunks.append([])
                size = 0
            chunks[-1].append((item, assign))
            size += len(item)
        for chunk in chunks:
            if not chunk:
                continue
            frame = chunk[0][0] if len(group) == 1 else protocol.bundle_frame([item for item, _ in chunk])
            if not self._send_to(worker, frame, sender):
                for _, assign in chunk:
                    if assign is not None:
                        actions += self.scheduler.assignment_undeliverable(assign.attempt, now)
        return actions

    def _finished_record(self, action: TaskFinished) -> FinishedTask:
        task = self.scheduler.tasks[(action.kind, action.index)]
        return FinishedTask(kind=task.kind, index=task.index, attempt=action.attempt,
                            parts=tuple(task.output) if task.kind == MAP else (),
                            output=task.output if task.kind == REDUCE else "",
                            stats=task.stats, counters=task.counters, bad_records=task.bad_records,
                            bad_count=task.bad_count)

    def _send_to(self, worker: str, frame: bytes, sender: Tuple[str, bytes]) -> bool:
        route = sender[1] if worker == sender[0] else self.routes.get(worker)
        return route is not None and self._send_frame(route, frame)

    def _send_frame(self, route: bytes, frame: bytes) -> bool:
        try:
            self.sock.send_multipart([route, frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError as exc:  # the peer is gone (ROUTER_MANDATORY) or its queue is full
            log.debug("could not send to a worker: %s", exc)
            return False

    def _tell_everyone(self, message: protocol.Message) -> None:
        frame = protocol.encode(message)
        for route in self.routes.values():
            self._send_frame(route, frame)

    def _forget_routes(self) -> None:
        if len(self.routes) > len(self.scheduler.workers):
            self.routes = {n: r for n, r in self.routes.items() if n in self.scheduler.workers}

    def _task_message(self, action: Assign) -> protocol.Task:
        if action.kind == MAP:
            skip = self.scheduler.tasks[(MAP, action.index)].skip
            return protocol.Task(job_id=self.plan.job_id, kind=MAP, index=action.index, attempt=action.attempt,
                                 segments=self.splits[action.index],
                                 skip=tuple(sorted(skip, key=lambda p: (p.segment, p.offset))) if skip else ())
        return protocol.Task(job_id=self.plan.job_id, kind=REDUCE, index=action.index, attempt=action.attempt,
                             sources=tuple(self._reduce_inputs()[action.index]), output_dir=self.output.temp_dir)

    def _reduce_inputs(self) -> List[List[protocol.MapOutput]]:
        """Map output files per partition, and where each lives; built again only when map output was lost."""
        if self.reduce_inputs is None or self.reduce_inputs_generation != self.scheduler.map_generation:
            inputs: List[List[protocol.MapOutput]] = [[] for _ in range(self.plan.reducers)]
            for index in range(len(self.plan.splits)):
                task = self.scheduler.tasks[(MAP, index)]
                for part in task.output:
                    inputs[part.partition].append(protocol.MapOutput(map=index, path=part.path, size=part.size,
                                                                     shuffle=task.shuffle,
                                                                     shuffle_key=task.shuffle_key))
            self.reduce_inputs = inputs
            self.reduce_inputs_generation = self.scheduler.map_generation
        return self.reduce_inputs

    def _commit(self, action: CommitOutput, now: float):
        extra = {}
        if self.settings.counters_json is None:
            extra[COUNTERS_FILE] = counters_json(self.monitor.counter_totals())
        bad = self.scheduler.bad_records()
        if bad:
            extra[BAD_RECORDS_FILE] = "".join(
                json.dumps({"task": f"{kind} {index}", **protocol.to_fields(record)}, ensure_ascii=False) + "\n"
                for (kind, index), record in bad)
        try:
            if self.journal is not None:
                self.journal.sync()
            self.output.commit(action.reduce_outputs, extra)
        except (OSError, OutputError) as exc:
            return self.scheduler.commit_failed(f"could not commit the output: {exc}", now)
        log.info("output committed to %s", self.output.path)
        return self.scheduler.output_committed(now)

    def _on_finished(self, action: JobFinished) -> None:
        self.succeeded = action.ok
        self.failure = action.failure
        if self.staging.bytes_sent or self.staging.bytes_received:
            log.info("staging: sent %d bytes of input to workers that cannot read it, received %d bytes of output",
                     self.staging.bytes_sent, self.staging.bytes_received)
        if action.ok:
            totals = self.scheduler.totals()
            log.info("job %s succeeded in %.2f s: %d input records (%d bytes) mapped, %d records written",
                     self.plan.job_id, (self.scheduler.ended_at or 0) - (self.scheduler.started_at or 0),
                     totals[MAP].records_in, totals[MAP].bytes_in, totals[REDUCE].records_out)
        else:
            print(failure_report(action.failure, self.plan.job_id), file=sys.stderr, flush=True)

    def _report_counters(self) -> None:
        totals = self.monitor.counter_totals()
        if not self.settings.quiet:
            print_counters(totals)
        if self.settings.counters_json is not None:
            try:
                with open(self.settings.counters_json, "w", encoding="utf-8") as f:
                    f.write(counters_json(totals))
            except OSError as exc:
                log.error("could not write the counters to %s: %s", self.settings.counters_json, exc.strerror)

    def _remove_intermediate(self) -> None:
        if self.plan.work_dir:
            shutil.rmtree(os.path.join(self.plan.work_dir, self.plan.job_id), ignore_errors=True)

    # --- status ---------------------------------------------------------------------------

    def _status(self, query: protocol.StatusQuery, now: float) -> protocol.StatusReply:
        scheduler = self.scheduler
        if query.what == "task":
            data = scheduler.task_status(query.kind, query.index, now)
            if data is None:
                return protocol.StatusReply(ok=False, error=f"no {query.kind} task {query.index}")
            return protocol.StatusReply(ok=True, data=data)
        if query.what == "workers":
            return protocol.StatusReply(ok=True, data=scheduler.workers_status(now))
        if query.what == "tasks":
            return protocol.StatusReply(ok=True, data=scheduler.tasks_status(now))
        snapshot = self.monitor.build(now)
        if query.what == "counters":
            return protocol.StatusReply(ok=True, data=snapshot["counters"])
        return protocol.StatusReply(ok=True, data={**snapshot["job"], "progress": snapshot["progress"]})
