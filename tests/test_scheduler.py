"""Tests for zmqmr.scheduler: the driver's pure state machine.

No sockets and no sleeps: the clock is a float that the tests pass in.
The second half is a Hypothesis rule-based state machine that drives the
scheduler with a population of fake workers and checks it against a small
reference model after every step.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from zmqmr.protocol import (
    Ack,
    Cancel,
    CounterValue,
    Done,
    Exit,
    Failed,
    Heartbeat,
    Hello,
    PartFile,
    Progress,
    RecordPosition,
    Reregister,
    Request,
    TaskError,
    TaskStats,
    Wait,
    Wake,
)
from zmqmr.scheduler import (
    MAP,
    REDUCE,
    Assign,
    CommitOutput,
    Greet,
    JobFailure,
    AttemptFailed,
    JobFinished,
    TaskFinished,
    JobState,
    Scheduler,
    SchedulerConfig,
    Send,
    TaskState,
)

TIMEOUT = 5.0
GRACE = 3.0
RETRY_AFTER = 1.0
ERR = TaskError(kind="ValueError", message="bad record", traceback="tb", location="job.py:3", host="h1")


def config(**overrides) -> SchedulerConfig:
    values = dict(
        worker_timeout=TIMEOUT, max_attempts=3, max_worker_losses=3, retry_after=RETRY_AFTER, exit_grace=GRACE,
        blacklist_after=0, speculation=False,
    )
    values.update(overrides)
    return SchedulerConfig(**values)


# --- a fake cluster for the example-based tests -------------------------------------


class Sim:
    """A scheduler, a clock, and well-behaved fake workers that remember what they hold."""

    def __init__(self, num_maps: int = 2, num_reduces: int = 2, shared_storage: bool = True, **cfg):
        self.s = Scheduler(num_maps, num_reduces, config(**cfg))
        if shared_storage:  # map output outlives its worker; see the lost-output tests for the other case
            self.s.sees = lambda path, size: True
        self.now = 0.0
        self.inc: Dict[str, str] = {}
        self.held: Dict[str, Set[int]] = defaultdict(set)
        self.kind_of: Dict[int, Tuple[str, int]] = {}

    def send(self, msg) -> list:
        actions = self.s.on_message(msg, self.now)
        for action in actions:
            if isinstance(action, Assign):
                self.held[action.worker].add(action.attempt)
                self.kind_of[action.attempt] = (action.kind, action.index)
        return actions

    def _inc(self, worker: str, inc: Optional[str]) -> str:
        return self.inc.get(worker, "1") if inc is None else inc

    def hello(self, worker: str, inc: str = "1") -> list:
        if self.inc.get(worker) != inc:
            self.held[worker] = set()  # a new process holds nothing
        self.inc[worker] = inc
        return self.send(Hello(worker=worker, inc=inc, host=f"host-{worker}", pid=100))

    def request(self, worker: str, running=None, inc=None) -> list:
        running = sorted(self.held[worker]) if running is None else running
        return self.send(Request(worker=worker, inc=self._inc(worker, inc), running=tuple(running)))

    def assign(self, worker: str) -> Assign:
        """Request and expect exactly one Assign."""
        actions = self.request(worker)
        assigns = [a for a in actions if isinstance(a, Assign)]
        assert len(assigns) == 1, actions
        return assigns[0]

    def heartbeat(self, worker: str, inc=None) -> list:
        return self.send(Heartbeat(worker=worker, inc=self._inc(worker, inc), running=tuple(sorted(self.held[worker]))))

    def done(self, worker: str, attempt: int, parts=None, output=None, inc=None) -> list:
        kind = self.kind_of.get(attempt, (MAP, 0))[0]
        if kind == MAP:
            if parts is None:
                parts = [PartFile(partition=p, path=f"m{attempt}-p{p}", size=1) for p in range(self.s.num_reduces)]
            msg = Done(worker=worker, inc=self._inc(worker, inc), attempt=attempt, parts=tuple(parts),
                       stats=TaskStats(records_in=1))
        else:
            output = f"out-{attempt}" if output is None else output
            msg = Done(worker=worker, inc=self._inc(worker, inc), attempt=attempt, output=output)
        self.held[worker].discard(attempt)
        return self.send(msg)

    def fail(self, worker: str, attempt: int, error: TaskError = ERR, lost: bool = False, inc=None) -> list:
        self.held[worker].discard(attempt)
        return self.send(Failed(worker=worker, inc=self._inc(worker, inc), attempt=attempt, error=error, lost=lost))

    def tick(self, now: float) -> list:
        self.now = now
        return self.s.on_tick(now)

    # views

    def state(self, kind: str, index: int) -> TaskState:
        return self.s.tasks[(kind, index)].state

    def states(self) -> Dict[Tuple[str, int], str]:
        return {key: t.state.value for key, t in self.s.tasks.items()}

    def snapshot(self):
        return {
            key: (t.state, t.attempt, t.worker, t.attempts, t.failures, t.worker_losses, t.output, t.finished_at)
            for key, t in self.s.tasks.items()
        }

    def finish_maps(self, worker: str = "mapper") -> list:
        """Register `worker` and run every map task to completion on it; return the last actions."""
        if worker not in self.s.workers:
            self.hello(worker)
        actions = []
        for _ in range(self.s.num_maps):
            a = self.assign(worker)
            assert a.kind == MAP
            actions = self.done(worker, a.attempt)
        return actions


def sent(actions, message_type) -> List[str]:
    """The workers to which `actions` send a message of this type."""
    return [a.worker for a in actions if isinstance(a, Send) and isinstance(a.message, message_type)]


def assigns(actions) -> List[Assign]:
    return [a for a in actions if isinstance(a, Assign)]


def finished(actions) -> List[JobFinished]:
    return [a for a in actions if isinstance(a, JobFinished)]


# --- construction --------------------------------------------------------------------


def test_needs_at_least_one_map_and_one_reduce():
    with pytest.raises(ValueError):
        Scheduler(0, 1, config())
    with pytest.raises(ValueError):
        Scheduler(1, 0, config())


def test_hello_greets_and_registers():
    sim = Sim()
    assert sim.hello("w1") == [Greet("w1")]
    assert "w1" in sim.s.workers
    assert sim.s.workers["w1"].host == "host-w1"


# --- gating --------------------------------------------------------------------------


def test_reduce_tasks_start_blocked_and_maps_ready():
    sim = Sim(3, 2)
    assert [sim.state(MAP, i) for i in range(3)] == [TaskState.READY] * 3
    assert [sim.state(REDUCE, i) for i in range(2)] == [TaskState.BLOCKED] * 2
    assert sim.s.state == JobState.MAPPING


def test_no_reduce_assigned_before_every_map_finished():
    sim = Sim(2, 2)
    for w in ("w1", "w2", "w3"):
        sim.hello(w)
    a1 = sim.assign("w1")
    a2 = sim.assign("w2")
    assert {(a1.kind, a1.index), (a2.kind, a2.index)} == {(MAP, 0), (MAP, 1)}
    # Nothing READY while maps run: the idle worker waits, no reduce leaks out.
    assert sim.request("w3") == [Send("w3", Wait(retry_after=RETRY_AFTER))]
    # One map finished: it is journaled, reduces stay BLOCKED and nobody is woken.
    assert sim.done("w1", a1.attempt) == [TaskFinished(MAP, a1.index, a1.attempt)]
    assert sim.state(REDUCE, 0) == TaskState.BLOCKED
    assert sim.state(REDUCE, 1) == TaskState.BLOCKED
    assert sim.request("w1") == [Send("w1", Wait(retry_after=RETRY_AFTER))]
    assert sim.s.state == JobState.MAPPING
    # The last map finished: reduces become READY and both waiting workers are woken.
    actions = sim.done("w2", a2.attempt)
    assert actions[0] == TaskFinished(MAP, a2.index, a2.attempt)  # journaled before anyone is woken
    assert sorted(sent(actions[1:], Wake)) == ["w1", "w3"] and len(actions) == 3
    assert assigns(actions) == []
    assert sim.s.state == JobState.REDUCING
    assert [sim.state(REDUCE, i) for i in range(2)] == [TaskState.READY] * 2
    r = sim.assign("w3")
    assert (r.kind, r.index) == (REDUCE, 0)


def test_waiting_worker_is_woken_only_once_and_request_clears_waiting():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.hello("w2")
    a = sim.assign("w1")
    assert sent(sim.request("w2"), Wait) == ["w2"]
    assert sim.s.workers["w2"].waiting
    assert sent(sim.done("w1", a.attempt), Wake) == ["w2"]
    assert not sim.s.workers["w2"].waiting
    r = sim.assign("w2")
    assert r.kind == REDUCE


def test_waiting_worker_is_woken_when_a_task_is_requeued():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.hello("w2")
    a = sim.assign("w1")
    sim.request("w2")  # Wait
    actions = sim.fail("w1", a.attempt)
    assert sent(actions, Wake) == ["w2"]
    assert sim.state(MAP, 0) == TaskState.READY
    b = sim.assign("w2")
    assert (b.kind, b.index) == (MAP, 0)
    assert b.attempt != a.attempt


# --- completions: first wins, stale ones are dropped ----------------------------------


def test_first_successful_completion_wins():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.hello("w2")
    first = sim.assign("w1")
    # w1 goes silent and is lost; w2 keeps talking and takes the task over.
    sim.now = 3.0
    sim.heartbeat("w2")
    sim.tick(TIMEOUT)
    assert "w1" not in sim.s.workers
    second = sim.assign("w2")
    assert (second.kind, second.index) == (MAP, 0)
    winner = [PartFile(partition=0, path="from-w2", size=5)]
    sim.done("w2", second.attempt, parts=winner)
    task = sim.s.tasks[(MAP, 0)]
    assert task.state == TaskState.FINISHED
    assert task.output == tuple(winner)
    before = sim.snapshot()
    counts = dict(sim.s.finished_counts)
    # A duplicate of the winning completion is dropped...
    assert sim.done("w2", second.attempt, parts=[PartFile(partition=0, path="dup", size=1)]) == []
    # ...and so is the first attempt's completion once w1 is back.
    sim.hello("w1")
    assert sim.done("w1", first.attempt, parts=[PartFile(partition=0, path="from-w1", size=1)]) == []
    assert sim.s.dropped["stale_attempt"] == 2
    assert sim.snapshot() == before
    assert dict(sim.s.finished_counts) == counts
    assert task.output == tuple(winner)


def _one_running_map():
    sim = Sim(2, 1)
    sim.hello("w1", inc="a")
    sim.hello("w2", inc="b")
    a = sim.assign("w1")
    b = sim.assign("w2")
    return sim, a, b


@pytest.mark.parametrize(
    "case, reason",
    [
        ("unknown_attempt", "stale_attempt"),
        ("foreign_attempt", "stale_attempt"),
        ("unknown_worker", "unknown_worker"),
        ("wrong_incarnation", "unknown_worker"),
    ],
)
@pytest.mark.parametrize("what", ["done", "failed"])
def test_bad_completions_are_dropped_and_change_nothing(case, reason, what):
    sim, a, b = _one_running_map()
    before = sim.snapshot()
    attempts_before = dict(sim.s.attempts)
    running_before = {n: set(w.running) for n, w in sim.s.workers.items()}
    worker, attempt, inc = {
        "unknown_attempt": ("w1", 999, "a"),
        "foreign_attempt": ("w1", b.attempt, "a"),  # b belongs to w2
        "unknown_worker": ("ghost", a.attempt, "a"),
        "wrong_incarnation": ("w1", a.attempt, "old"),
    }[case]
    if what == "done":
        msg = Done(worker=worker, inc=inc, attempt=attempt, parts=(PartFile(partition=0, path="x"),))
    else:
        msg = Failed(worker=worker, inc=inc, attempt=attempt, error=ERR)
    actions = sim.s.on_message(msg, 1.0)
    if reason == "unknown_worker":
        assert actions == [Send(worker, Reregister(reason="unknown worker; say hello"))]
    else:
        assert actions == []
    assert sim.s.dropped == Counter({reason: 1})
    assert sim.snapshot() == before
    assert sim.s.attempts == attempts_before
    assert {n: set(w.running) for n, w in sim.s.workers.items()} == running_before
    assert sim.s.finished_counts[MAP] == 0


def test_wrong_incarnation_does_not_refresh_liveness():
    sim = Sim(1, 1)
    sim.hello("w1", inc="new")
    sim.now = 4.0
    sim.heartbeat("w1", inc="old")
    assert sim.s.dropped["unknown_worker"] == 1
    assert sim.s.workers["w1"].last_seen == 0.0
    assert sim.s.next_deadline() == TIMEOUT


def test_lost_workers_late_done_changes_nothing():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.hello("w2")
    first = sim.assign("w1")
    sim.now = 4.0
    sim.heartbeat("w2")
    actions = sim.tick(6.0)  # w1 silent for 6 s > 5 s
    assert "w1" not in sim.s.workers
    assert sim.s.workers_lost == 1
    assert sim.state(MAP, 0) == TaskState.READY
    assert actions == []  # nobody was waiting
    second = sim.assign("w2")
    assert (second.kind, second.index) == (MAP, 0) and second.attempt != first.attempt
    before = sim.snapshot()
    # The late Done from the lost worker: it is unknown now, told to say hello again.
    late = sim.done("w1", first.attempt)
    assert late == [Send("w1", Reregister(reason="unknown worker; say hello"))]
    assert sim.s.dropped["unknown_worker"] == 1
    assert sim.snapshot() == before
    task = sim.s.tasks[(MAP, 0)]
    assert task.state == TaskState.RUNNING and task.worker == "w2" and task.attempt == second.attempt
    assert sim.s.finished_counts[MAP] == 0
    # Still nothing after it re-registers with the same incarnation.
    sim.hello("w1")
    assert sim.s.on_message(Done(worker="w1", inc="1", attempt=first.attempt), sim.now) == []
    assert sim.s.dropped["stale_attempt"] == 1
    assert sim.snapshot() == before
    # The live attempt still completes normally.
    sim.done("w2", second.attempt)
    assert task.state == TaskState.FINISHED


# --- liveness ------------------------------------------------------------------------


def test_silent_worker_is_lost_on_tick_and_its_task_goes_back_to_ready():
    sim = Sim(2, 1)
    sim.now = 10.0
    sim.hello("w1")
    a = sim.assign("w1")
    assert sim.s.next_deadline() == 10.0 + TIMEOUT
    assert sim.tick(14.9) == []
    assert "w1" in sim.s.workers
    assert sim.state(a.kind, a.index) == TaskState.RUNNING
    sim.tick(15.0)
    assert "w1" not in sim.s.workers
    assert sim.s.workers_lost == 1
    task = sim.s.tasks[(a.kind, a.index)]
    assert task.state == TaskState.READY
    assert task.attempt is None and task.worker is None
    assert task.worker_losses == 1 and task.failures == 0
    assert task.last_error is not None and task.last_error.kind == "WorkerLost"
    assert a.attempt not in sim.s.attempts
    assert sim.s.ready[0] == (a.kind, a.index)  # retries go first
    assert sim.s.next_deadline() is None


def test_next_deadline_is_earliest_last_seen_plus_timeout():
    sim = Sim()
    assert sim.s.next_deadline() is None
    sim.now = 1.0
    sim.hello("w1")
    sim.now = 2.5
    sim.hello("w2")
    assert sim.s.next_deadline() == 1.0 + TIMEOUT
    sim.now = 3.0
    sim.request("w1")  # any message counts as a sign of life
    assert sim.s.next_deadline() == 2.5 + TIMEOUT
    assert sim.s.workers["w1"].last_seen == 3.0


def test_heartbeat_keeps_worker_alive_and_is_acked():
    sim = Sim(1, 1)
    sim.hello("w1")
    a = sim.assign("w1")
    for t in (4.0, 8.0, 12.0):
        sim.now = t
        assert sim.heartbeat("w1") == [Send("w1", Ack())]
        assert sim.tick(t + TIMEOUT - 0.5) == []
        assert sim.s.next_deadline() == t + TIMEOUT
    assert "w1" in sim.s.workers
    assert sim.state(MAP, 0) == TaskState.RUNNING
    assert sim.s.tasks[(MAP, 0)].attempt == a.attempt
    sim.tick(12.0 + TIMEOUT)
    assert "w1" not in sim.s.workers
    assert sim.state(MAP, 0) == TaskState.READY


def test_tick_loss_wakes_waiting_workers():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.hello("w2")
    sim.assign("w1")
    sim.now = 3.0
    assert sent(sim.request("w2"), Wait) == ["w2"]
    actions = sim.tick(TIMEOUT)
    assert sent(actions, Wake) == ["w2"]


# --- retry limits --------------------------------------------------------------------


def test_task_failing_max_attempts_times_fails_the_job():
    sim = Sim(2, 1, max_attempts=3)
    sim.hello("w1")
    errors = [TaskError(kind="ValueError", message=f"boom {i}") for i in range(3)]
    for i, error in enumerate(errors):
        a = sim.assign("w1")
        assert (a.kind, a.index) == (MAP, 0)  # the failed task goes first
        actions = sim.fail("w1", a.attempt, error=error)
        if i < 2:
            assert finished(actions) == []
            assert sim.state(MAP, 0) == TaskState.READY
            assert sim.s.tasks[(MAP, 0)].failures == i + 1
    assert finished(actions) == [JobFinished(ok=False, failure=sim.s.failure)]
    failure = sim.s.failure
    assert isinstance(failure, JobFailure)
    assert failure.task == (MAP, 0)
    assert "map task 0" in failure.reason
    assert failure.error == errors[-1]
    assert sim.s.state == JobState.FAILED
    assert sim.s.job_status(sim.now)["failure"] == failure.reason


def test_lost_failures_do_not_count_against_max_attempts_but_losses_are_limited():
    sim = Sim(1, 1, max_attempts=1, max_worker_losses=4)
    sim.hello("w1")
    lost = TaskError(kind="Killed", message="signal 9")
    for i in range(3):
        a = sim.assign("w1")
        assert finished(sim.fail("w1", a.attempt, error=lost, lost=True)) == []
        task = sim.s.tasks[(MAP, 0)]
        assert task.failures == 0 and task.worker_losses == i + 1
        assert task.state == TaskState.READY
    a = sim.assign("w1")
    actions = sim.fail("w1", a.attempt, error=lost, lost=True)
    [fin] = finished(actions)
    assert not fin.ok
    assert fin.failure.task == (MAP, 0)
    assert "map task 0" in fin.failure.reason and "lost" in fin.failure.reason
    assert fin.failure.error == lost
    assert sim.s.state == JobState.FAILED


def test_one_real_failure_with_max_attempts_one_fails_the_job():
    sim = Sim(1, 1, max_attempts=1, max_worker_losses=4)
    sim.hello("w1")
    a = sim.assign("w1")
    [fin] = finished(sim.fail("w1", a.attempt))
    assert fin.failure.task == (MAP, 0) and fin.failure.error == ERR


def test_timeouts_count_as_worker_losses():
    sim = Sim(1, 1, max_worker_losses=2, max_attempts=1)
    sim.hello("w1")
    sim.assign("w1")
    assert finished(sim.tick(TIMEOUT)) == []
    task = sim.s.tasks[(MAP, 0)]
    assert task.worker_losses == 1 and task.failures == 0 and task.state == TaskState.READY
    sim.hello("w2")
    sim.assign("w2")
    actions = sim.tick(2 * TIMEOUT)
    [fin] = finished(actions)
    assert not fin.ok
    assert fin.failure.task == (MAP, 0)
    assert "map task 0" in fin.failure.reason
    assert fin.failure.error.kind == "WorkerLost"
    assert sim.s.state == JobState.FAILED
    assert sim.s.workers_lost == 2


def test_restart_counts_as_a_worker_loss():
    sim = Sim(1, 1, max_worker_losses=1)
    sim.hello("w1", inc="a")
    sim.assign("w1")
    actions = sim.hello("w1", inc="b")
    [fin] = finished(actions)
    assert fin.failure.task == (MAP, 0)
    # The restarted process cannot take part in a job that is over (and failed).
    assert actions[-1] == Send("w1", Exit(reason="the job is over", ok=False))
    assert Greet("w1") not in actions


# --- lost in transit -----------------------------------------------------------------


def test_request_omitting_an_assigned_attempt_requeues_it_without_penalty():
    sim = Sim(2, 1, max_attempts=1, max_worker_losses=1)
    sim.hello("w1")
    a = sim.assign("w1")
    # The Task never arrived: the worker asks again holding nothing.
    actions = sim.request("w1", running=[])
    [b] = assigns(actions)
    assert (b.kind, b.index) == (a.kind, a.index)  # re-queued at the front
    assert b.attempt != a.attempt
    assert finished(actions) == []
    task = sim.s.tasks[(a.kind, a.index)]
    assert task.failures == 0 and task.worker_losses == 0
    assert task.attempt == b.attempt
    assert a.attempt not in sim.s.attempts
    assert sim.s.workers["w1"].running == {b.attempt}
    assert sim.s.state == JobState.MAPPING
    # The old attempt is stale now.
    assert sim.done("w1", a.attempt) == []
    assert sim.s.dropped["stale_attempt"] == 1


def test_request_listing_its_attempt_keeps_it():
    sim = Sim(2, 1)
    sim.hello("w1")
    a = sim.assign("w1")
    b = sim.assign("w1")  # running=[a]
    assert (b.kind, b.index) != (a.kind, a.index)
    assert sim.s.tasks[(a.kind, a.index)].attempt == a.attempt
    assert sim.s.workers["w1"].running == {a.attempt, b.attempt}


def test_assignment_undeliverable_requeues_without_penalty():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.hello("w2")
    a = sim.assign("w1")
    sim.request("w2")  # Wait
    actions = sim.s.assignment_undeliverable(a.attempt, 1.0)
    assert sent(actions, Wake) == ["w2"]
    task = sim.s.tasks[(MAP, 0)]
    assert task.state == TaskState.READY and task.failures == 0 and task.worker_losses == 0
    assert sim.s.workers["w1"].running == set()
    assert sim.s.attempts == {}
    assert sim.s.assignment_undeliverable(a.attempt, 1.0) == []
    assert sim.s.assignment_undeliverable(12345, 1.0) == []


# --- hello: restart vs reconnect -----------------------------------------------------


def test_hello_with_new_incarnation_requeues_old_tasks():
    sim = Sim(2, 1)
    sim.hello("w1", inc="a")
    a = sim.assign("w1")
    b = sim.assign("w1")
    actions = sim.hello("w1", inc="b")
    assert actions == [Greet("w1")]
    assert sim.s.workers["w1"].inc == "b"
    assert sim.s.workers["w1"].running == set()
    assert sim.s.workers_lost == 1
    for x in (a, b):
        task = sim.s.tasks[(x.kind, x.index)]
        assert task.state == TaskState.READY
        assert task.worker_losses == 1 and task.failures == 0
    assert sim.s.attempts == {}
    # The old process's completion is from a replaced incarnation now: two processes share a name.
    [late] = sim.s.on_message(Done(worker="w1", inc="a", attempt=a.attempt), sim.now)
    assert late.worker == "w1" and isinstance(late.message, Exit) and not late.message.ok
    assert "another worker process registered as 'w1'" in late.message.reason
    assert sim.s.dropped["replaced_incarnation"] == 1
    assert sim.state(a.kind, a.index) == TaskState.READY


def test_hello_with_same_incarnation_keeps_tasks():
    sim = Sim(2, 1)
    sim.hello("w1", inc="a")
    a = sim.assign("w1")
    sim.now = 4.0
    assert sim.hello("w1", inc="a") == [Greet("w1")]
    assert sim.s.workers_lost == 0
    assert sim.s.workers["w1"].running == {a.attempt}
    assert sim.s.workers["w1"].last_seen == 4.0
    task = sim.s.tasks[(a.kind, a.index)]
    assert task.state == TaskState.RUNNING and task.attempt == a.attempt and task.worker_losses == 0
    sim.done("w1", a.attempt)
    assert task.state == TaskState.FINISHED


# --- the end of a job ----------------------------------------------------------------


def _all_reduces_done(num_reduces=3, order=None):
    sim = Sim(1, num_reduces)
    sim.finish_maps("w1")
    reduce_attempts = {}
    for _ in range(num_reduces):
        r = sim.assign("w1")
        assert r.kind == REDUCE
        reduce_attempts[r.index] = r.attempt
    order = order or list(range(num_reduces))
    actions = []
    for n, index in enumerate(order):
        sim.now += 0.5  # completions at distinct times, in `order`
        sim.heartbeat("w1")
        actions = sim.done("w1", reduce_attempts[index], output=f"out-{index}")
        if n < len(order) - 1:
            assert not [a for a in actions if isinstance(a, CommitOutput)]
            assert sim.s.state == JobState.REDUCING
    return sim, actions


def test_last_reduce_done_commits_outputs_in_reduce_index_order():
    sim, actions = _all_reduces_done(3, order=[2, 0, 1])
    [last] = [a for a, key in sim.kind_of.items() if key == (REDUCE, 1)]
    # The last reduce is journaled first, then the commit follows.
    assert actions == [TaskFinished(REDUCE, 1, last), CommitOutput(("out-0", "out-1", "out-2"))]
    assert sim.s.state == JobState.COMMITTING
    assert sim.s.finished_counts == Counter({MAP: 1, REDUCE: 3})
    assert not sim.s.can_stop(sim.now)


def test_output_committed_finishes_the_job_and_every_message_gets_exit():
    sim, _ = _all_reduces_done(2)
    sim.hello("idle")
    assert sent(sim.request("idle"), Wait) == ["idle"]
    sim.now = 10.0
    actions = sim.s.output_committed(sim.now)
    assert actions[0] == JobFinished(ok=True)
    # The waiting worker is told at once.
    assert actions[1:] == [Send("idle", Exit(reason="the job is over", ok=True))]
    assert sim.s.state == JobState.SUCCEEDED
    assert sim.s.ended_at == 10.0
    exit_ok = Exit(reason="the job is over", ok=True)
    for msg in (
        Request(worker="w1", inc="1", running=()),
        Heartbeat(worker="w1", inc="1"),
        Done(worker="w1", inc="1", attempt=1),
        Failed(worker="w1", inc="1", attempt=1, error=ERR),
        Hello(worker="w1", inc="1"),
        Hello(worker="newcomer", inc="1"),
        Request(worker="stranger", inc="1"),
    ):
        out = sim.s.on_message(msg, sim.now)
        assert out == [Send(msg.worker, exit_ok)], msg
    assert "newcomer" not in sim.s.workers
    assert sim.s.job_status(sim.now)["state"] == "SUCCEEDED"


def test_can_stop_once_all_live_workers_were_told():
    sim, _ = _all_reduces_done(1)
    sim.hello("w2")
    assert not sim.s.can_stop(sim.now)
    sim.s.output_committed(sim.now)
    assert not sim.s.can_stop(sim.now)  # nobody told yet
    sim.heartbeat("w1")
    assert not sim.s.can_stop(sim.now)  # w2 not told yet
    assert sim.request("w2") == [Send("w2", Exit(reason="the job is over", ok=True))]
    assert sim.s.can_stop(sim.now)


def test_can_stop_after_exit_grace_even_if_a_worker_never_answers():
    sim, _ = _all_reduces_done(1)
    sim.now = 20.0
    sim.heartbeat("w1")
    sim.s.output_committed(20.0)
    assert sim.s.next_deadline() == 20.0 + GRACE  # the exit deadline comes before w1's timeout
    assert not sim.s.can_stop(20.0 + GRACE - 0.01)
    assert sim.s.can_stop(20.0 + GRACE)


def test_can_stop_when_the_untold_workers_time_out():
    sim, _ = _all_reduces_done(1)
    last_seen = sim.s.workers["w1"].last_seen
    sim.s.output_committed(last_seen)
    assert not sim.s.can_stop(last_seen)
    assert sim.tick(last_seen + TIMEOUT) == []  # losing a worker after the end does nothing else
    assert sim.s.workers == {}
    assert sim.s.can_stop(last_seen + TIMEOUT)


def test_no_assign_after_the_job_failed_and_exit_is_not_ok():
    sim = Sim(2, 1, max_attempts=1)
    sim.hello("w1")
    sim.hello("w2")
    a = sim.assign("w1")
    sim.fail("w1", a.attempt)
    assert sim.s.state == JobState.FAILED
    assert sim.s.ready == type(sim.s.ready)()  # nothing left to hand out
    out = sim.request("w2")
    assert out == [Send("w2", Exit(reason="the job is over", ok=False))]
    assert sim.s.workers["w2"].told_exit
    assert sim.s.on_tick(100.0) == []


def test_commit_failed_fails_the_job():
    sim, _ = _all_reduces_done(1)
    actions = sim.s.commit_failed("disk full", 5.0)
    [fin] = finished(actions)
    assert not fin.ok
    assert fin.failure == JobFailure(("job", 0), "disk full", None)
    assert sim.s.state == JobState.FAILED
    assert sim.request("w1") == [Send("w1", Exit(reason="the job is over", ok=False))]


# --- bad completions -----------------------------------------------------------------


def test_map_done_with_out_of_range_partition_is_a_failed_attempt():
    sim = Sim(1, 2, max_attempts=2)
    sim.hello("w1")
    a = sim.assign("w1")
    bad = [PartFile(partition=0, path="p0"), PartFile(partition=2, path="p2")]
    [report] = sim.done("w1", a.attempt, parts=bad)
    assert isinstance(report, AttemptFailed) and (report.kind, report.index, report.attempt) == (MAP, 0, a.attempt)
    assert sim.s.dropped["bad_completion"] == 1
    task = sim.s.tasks[(MAP, 0)]
    assert task.state == TaskState.READY
    assert task.failures == 1
    assert task.output is None
    assert task.last_error.kind == "ProtocolError" and "partition 2" in task.last_error.message
    assert sim.s.finished_counts[MAP] == 0
    assert sim.state(REDUCE, 0) == TaskState.BLOCKED
    assert a.attempt not in sim.s.attempts
    assert sim.s.workers["w1"].running == set()
    # Counted against max_attempts like any failure.
    b = sim.assign("w1")
    [fin] = finished(sim.done("w1", b.attempt, parts=[PartFile(partition=7, path="p7")]))
    assert fin.failure.task == (MAP, 0)
    assert fin.failure.error.kind == "ProtocolError"


def test_partition_equal_to_num_reduces_is_out_of_range_but_last_valid_one_is_fine():
    sim = Sim(2, 3)
    sim.hello("w1")
    a = sim.assign("w1")
    sim.done("w1", a.attempt, parts=[PartFile(partition=3, path="p")])
    assert sim.s.dropped["bad_completion"] == 1
    b = sim.assign("w1")
    sim.done("w1", b.attempt, parts=[PartFile(partition=2, path="p")])
    assert sim.s.tasks[(b.kind, b.index)].state == TaskState.FINISHED


def test_reduce_done_without_output_is_a_failed_attempt():
    sim = Sim(1, 1)
    sim.finish_maps("w1")
    r = sim.assign("w1")
    [report] = sim.done("w1", r.attempt, output="")
    assert isinstance(report, AttemptFailed) and "without an output file" in report.error.message
    assert sim.s.dropped["bad_completion"] == 1
    assert sim.state(REDUCE, 0) == TaskState.READY
    assert sim.s.tasks[(REDUCE, 0)].failures == 1
    assert sim.s.state == JobState.REDUCING


# --- status --------------------------------------------------------------------------


def test_status_methods_return_sensible_dicts():
    sim = Sim(2, 1)
    sim.now = 1.0
    sim.hello("w1")
    a = sim.assign("w1")
    sim.now = 3.0
    sim.done("w1", a.attempt)
    b = sim.assign("w1")
    sim.fail("w1", b.attempt)
    c = sim.assign("w1")
    sim.s.on_message(Done(worker="ghost", inc="x", attempt=1), sim.now)
    now = 4.5

    job = sim.s.job_status(now)
    assert job["state"] == "MAPPING"
    assert job["maps"] == {"BLOCKED": 0, "READY": 0, "RUNNING": 1, "FINISHED": 1}
    assert job["reduces"] == {"BLOCKED": 1, "READY": 0, "RUNNING": 0, "FINISHED": 0}
    assert job["workers_alive"] == 1 and job["workers_lost"] == 0
    assert job["dropped_messages"] == {"unknown_worker": 1}
    assert job["elapsed"] == 3.5
    assert "failure" not in job

    t = sim.s.task_status(c.kind, c.index, now)
    assert t["kind"] == MAP and t["index"] == c.index
    assert t["state"] == "RUNNING"
    assert t["worker"] == "w1" and t["attempt"] == c.attempt
    assert t["attempts"] == 2 and t["failures"] == 1 and t["worker_losses"] == 0
    assert t["seconds"] == 1.5
    assert t["last_error"]["kind"] == "ValueError" and t["last_error"]["message"] == "bad record"

    done = sim.s.task_status(a.kind, a.index, now)
    assert done["state"] == "FINISHED" and done["attempt"] is None
    assert done["seconds"] == 2.0
    assert done["stats"]["records_in"] == 1

    blocked = sim.s.task_status(REDUCE, 0, now)
    assert blocked["state"] == "BLOCKED" and blocked["seconds"] is None and blocked["attempts"] == 0
    assert sim.s.task_status(REDUCE, 5, now) is None
    assert sim.s.task_status("shuffle", 0, now) is None

    tasks = sim.s.tasks_status(now)
    assert [(t["kind"], t["index"]) for t in tasks] == [(MAP, 0), (MAP, 1), (REDUCE, 0)]
    assert all(t["state"] in {"BLOCKED", "READY", "RUNNING", "FINISHED"} for t in tasks)

    [w] = sim.s.workers_status(now)
    assert w["name"] == "w1" and w["host"] == "host-w1" and w["pid"] == 100
    assert w["last_seen_ago"] == 1.5
    assert w["running"] == [f"map {c.index}"]
    assert w["tasks_done"] == 1 and w["tasks_failed"] == 1


def test_job_status_reports_failure_and_frozen_elapsed():
    sim = Sim(1, 1, max_attempts=1)
    sim.now = 2.0
    sim.hello("w1")
    a = sim.assign("w1")
    sim.now = 5.0
    sim.fail("w1", a.attempt)
    job = sim.s.job_status(100.0)
    assert job["state"] == "FAILED"
    assert "map task 0" in job["failure"]
    assert job["elapsed"] == 3.0


# --- the job's end: who is told, and what is left running -----------------------------


def test_hello_after_end_from_registered_worker_counts_as_told():
    sim, _ = _all_reduces_done(1)
    sim.s.output_committed(sim.now)
    out = sim.s.on_message(Hello(worker="w1", inc="1"), sim.now)
    assert out == [Send("w1", Exit(reason="the job is over", ok=True))]
    # w1 is the only live worker and it has been told to exit.
    assert sim.s.can_stop(sim.now)


def test_exit_after_failed_job_is_not_ok_for_every_sender():
    sim = Sim(1, 1, max_attempts=1)
    sim.hello("w1")
    a = sim.assign("w1")
    sim.fail("w1", a.attempt)
    assert sim.s.state == JobState.FAILED
    # A registered worker is told ok=False ...
    assert sim.request("w1") == [Send("w1", Exit(reason="the job is over", ok=False))]
    # ... but a newcomer's Hello and an unknown worker's message are told ok=True.
    assert sim.s.on_message(Hello(worker="late", inc="1"), 1.0) == [
        Send("late", Exit(reason="the job is over", ok=False))
    ]
    assert sim.s.on_message(Request(worker="ghost", inc="1"), 1.0) == [
        Send("ghost", Exit(reason="the job is over", ok=False))
    ]


def test_task_that_failed_the_job_is_not_left_running():
    sim = Sim(1, 1, max_attempts=1)
    sim.hello("w1")
    a = sim.assign("w1")
    sim.fail("w1", a.attempt)
    assert sim.s.state == JobState.FAILED
    task = sim.s.tasks[(MAP, 0)]
    # Expected: no RUNNING task without a worker that holds its attempt.
    assert not (task.state == TaskState.RUNNING and a.attempt not in sim.s.workers["w1"].running)
    assert sim.s.job_status(2.0)["maps"]["RUNNING"] == 0


# --- the stateful test: fake workers against a reference model -----------------------

NAMES = ("w1", "w2", "w3")
LOST_ERR = TaskError(kind="Killed", message="signal 9")
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED)



class ModelWorker:
    def __init__(self, inc: str, now: float):
        self.inc = inc
        self.last_seen = now
        self.running: Set[int] = set()
        self.queued: Set[int] = set()  # held attempts not known to have started
        self.waiting = False
        self.told = False
        self.failed_tasks: Set[Tuple[str, int]] = set()  # distinct tasks that failed on this process


def norm(action):
    """A comparable form of an action (ignoring free-text reasons and Exit.ok)."""
    if isinstance(action, Send):
        m = action.message
        if isinstance(m, Wait):
            return ("Wait", action.worker, m.retry_after)
        if isinstance(m, Cancel):
            return ("Cancel", action.worker, m.attempt, (m.kind, m.index))
        return (type(m).__name__, action.worker)
    if isinstance(action, Greet):
        return ("Greet", action.worker)
    if isinstance(action, CommitOutput):
        return ("Commit", action.reduce_outputs)
    if isinstance(action, JobFinished):
        f = action.failure
        return ("JobFinished", action.ok, f.task if f else None, f.error.kind if f and f.error else None)
    if isinstance(action, AttemptFailed):
        e = action.error
        return ("AttemptFailed", (action.kind, action.index), action.attempt, action.worker, action.lost, e.kind,
                e.location)
    if isinstance(action, TaskFinished):
        return ("TaskFinished", (action.kind, action.index), action.attempt)
    raise AssertionError(f"unexpected action {action!r}")


class SchedulerMachine(RuleBasedStateMachine):
    """Workers w1..w3 (processes that may restart) talk to one scheduler.

    The model predicts every action, in order, except which READY task an Assign picks
    and which of the equally old stragglers gets a backup; and the scheduler's task
    states, live attempts (original and backup), workers, blacklist, counters, progress
    and deadlines. The journal of TaskFinished actions is replayed after every step.
    """

    # --- set-up ----------------------------------------------------------------

    @initialize(
        num_maps=st.integers(1, 4),
        num_reduces=st.integers(1, 3),
        max_attempts=st.sampled_from([1, 2, 3, 5]),
        max_losses=st.sampled_from([1, 2, 4, 8]),
        speculation=st.sampled_from([True, True, False]),
        factor=st.sampled_from([0.5, 0.5, 1.0, 1.5]),
        min_seconds=st.sampled_from([0.1, 0.5, 2.0]),
        blacklist_after=st.sampled_from([0, 2, 3]),
        task_timeout=st.sampled_from([None, 2.5, 6.0]),
        workers=st.sampled_from([1, 2, 3, 3]),
    )
    def setup(self, num_maps, num_reduces, max_attempts, max_losses, speculation, factor, min_seconds,
              blacklist_after, task_timeout, workers):
        self.cfg = config(max_attempts=max_attempts, max_worker_losses=max_losses, speculation=speculation,
                          speculation_factor=factor, speculation_min_seconds=min_seconds,
                          blacklist_after=blacklist_after, task_timeout=task_timeout)
        self.s = Scheduler(num_maps, num_reduces, self.cfg)
        self.s.sees = lambda path, size: True  # shared storage: lost output is tested by example, below
        self.nm, self.nr = num_maps, num_reduces
        self.now = 0.0
        # The fake processes.
        self.proc_inc: Dict[str, str] = {}
        self.old_incs: Dict[str, List[str]] = defaultdict(list)
        self.inc_counter = 0
        self.held: Dict[str, Set[int]] = defaultdict(set)
        self.task_of: Dict[int, Tuple[str, int]] = {}  # every attempt ever assigned
        # The reference model.
        self.m_workers: Dict[str, ModelWorker] = {}
        self.m_live: Dict[int, Tuple[Tuple[str, int], str, Optional[float]]] = {}  # attempt -> (task, worker, started)
        self.m_assigned: Dict[int, float] = {}
        self.m_finished: Set[Tuple[str, int]] = set()
        self.m_finished_at: Dict[Tuple[str, int], float] = {}
        self.m_started: Dict[Tuple[str, int], Optional[float]] = {}  # when the task's attempt last started
        self.m_outputs: Dict[int, str] = {}
        self.m_failures: Counter = Counter()
        self.m_losses: Counter = Counter()
        self.m_attempts: Counter = Counter()
        self.m_backups = 0
        self.m_blacklist: Set[str] = set()
        self.m_replaced: Dict[str, Set[str]] = defaultdict(set)
        self.m_progress: Dict[Tuple[str, int], Tuple[int, str]] = {}  # the task's latest (records, location)
        self.m_attempt_location: Dict[int, str] = {}  # each attempt's own latest location
        self.m_state = JobState.MAPPING
        self.m_dropped: Counter = Counter()
        self.m_exit_deadline: Optional[float] = None
        self.m_workers_lost = 0
        # Observations.
        self.journal: List[tuple] = []  # restore_finished arguments of every TaskFinished, in order
        self.max_finished: Counter = Counter()
        self.frozen = None  # task states at the moment the job ended
        self.steps_after_end = 0
        for name in NAMES[:workers]:  # workers from the start keep most rules enabled
            self.hello(name, restart=False)
        self.everyone_asks()

    # --- the model ---------------------------------------------------------------

    def m_terminal(self) -> bool:
        return self.m_state in TERMINAL

    def m_maps_done(self) -> bool:
        return all((MAP, i) in self.m_finished for i in range(self.nm))

    def m_live_of(self, key) -> List[int]:
        """The task's live attempts, oldest (the original) first."""
        return sorted(a for a, (k, _, _) in self.m_live.items() if k == key)

    def m_task_state(self, key) -> TaskState:
        if key in self.m_finished:
            return TaskState.FINISHED
        if self.m_live_of(key):
            return TaskState.RUNNING
        if key[0] == REDUCE and not self.m_maps_done():
            return TaskState.BLOCKED
        return TaskState.READY

    def m_ready(self) -> List[Tuple[str, int]]:
        return [k for k in self.s.tasks if self.m_task_state(k) == TaskState.READY]

    def m_stragglers(self, name: str) -> Dict[Tuple[str, int], float]:
        """Tasks that may get a backup on worker `name`, with their start times."""
        phase = {JobState.MAPPING: MAP, JobState.REDUCING: REDUCE}.get(self.m_state)
        if not self.cfg.speculation or phase is None:
            return {}
        durations = [self.m_finished_at[k] - self.m_started[k] for k in self.m_finished if k[0] == phase]
        if not durations:
            return {}
        threshold = max(self.cfg.speculation_factor * statistics.median(durations), self.cfg.speculation_min_seconds)
        out = {}
        for key in self.s.tasks:
            live = self.m_live_of(key)
            if key[0] == phase and len(live) == 1 and self.m_live[live[0]][1] != name \
                    and self.m_started[key] is not None and self.now - self.m_started[key] > threshold:
                out[key] = self.m_started[key]
        return out

    def m_start(self, w: ModelWorker, attempt: int) -> None:
        """The attempt has started on its worker by now (it said so, or reported progress)."""
        w.queued.discard(attempt)
        live = self.m_live.get(attempt)
        if live is None or live[2] is not None:
            return
        event("a queued attempt started")
        self.m_live[attempt] = (live[0], live[1], self.now)
        if self.m_live_of(live[0])[0] == attempt and self.m_started[live[0]] is None:
            self.m_started[live[0]] = self.now

    def m_note_started(self, w: ModelWorker, queued) -> None:
        for attempt in sorted(w.queued - set(queued)):
            self.m_start(w, attempt)

    def m_wake(self) -> list:
        out = []
        for name, w in self.m_workers.items():
            if w.waiting:
                w.waiting = False
                out.append(("Wake", name))
        return out

    def m_stop(self, attempt: int) -> bool:
        """Forget a live attempt; True if its task has none left (and is READY again)."""
        key = self.m_live.pop(attempt)[0]
        if self.m_live_of(key):
            event("the other attempt carries on")
            return False
        return True

    def m_requeue(self, attempt: int) -> list:
        return self.m_wake() if self.m_stop(attempt) else []

    def m_end(self) -> list:
        self.m_exit_deadline = self.now + self.cfg.exit_grace
        out = []
        for name, w in self.m_workers.items():
            if w.waiting:
                w.told, w.waiting = True, False
                out.append(("Exit", name))
        return out

    def m_fail(self, key, error_kind) -> list:
        self.m_state = JobState.FAILED
        return [("JobFinished", False, key, error_kind)] + self.m_end()

    def m_retry_or_fail(self, key, attempt, error_kind) -> list:
        if self.m_failures[key] >= self.cfg.max_attempts or self.m_losses[key] >= self.cfg.max_worker_losses:
            self.m_stop(attempt)  # the attempt that failed the job is not left RUNNING
            return self.m_fail(key, error_kind)
        return self.m_requeue(attempt)

    def m_fail_if_no_usable_worker(self, error_kind) -> list:
        if self.m_terminal() or not self.m_workers or any(n not in self.m_blacklist for n in self.m_workers):
            return []
        event("every worker blacklisted")
        return self.m_fail(("job", 0), error_kind)

    def m_maybe_blacklist(self, name: str, w: ModelWorker, error_kind) -> list:
        limit = self.cfg.blacklist_after
        if not limit or len(w.failed_tasks) < limit or name in self.m_blacklist or self.m_terminal():
            return []
        event("blacklisted a worker")
        self.m_blacklist.add(name)
        return self.m_fail_if_no_usable_worker(error_kind)

    def m_lose(self, name: str, coming_back: bool = False) -> list:
        w = self.m_workers.pop(name)
        self.m_workers_lost += 1
        if self.m_terminal():
            return []
        out = [] if coming_back else self.m_fail_if_no_usable_worker(None)  # a restart registers at once
        if self.m_terminal():
            return out
        for attempt in sorted(w.running):
            key = self.m_live[attempt][0]
            self.m_losses[key] += 1
            out += self.m_retry_or_fail(key, attempt, "WorkerLost")
            if self.m_terminal():
                break
        return out

    def m_attempt_failed(self, name: str, attempt: int, error_kind: str, location, lost: bool) -> list:
        w = self.m_workers[name]
        key = self.m_live[attempt][0]
        w.running.discard(attempt)
        w.queued.discard(attempt)
        w.failed_tasks.add(key)
        report = [("AttemptFailed", key, attempt, name, lost, error_kind, location)]
        if lost:
            self.m_losses[key] += 1
        else:
            self.m_failures[key] += 1
        out = report + self.m_retry_or_fail(key, attempt, error_kind)
        return out + self.m_maybe_blacklist(name, w, error_kind)

    def m_replaced_speaks(self, name: str) -> list:
        self.m_dropped["replaced_incarnation"] += 1
        event("a replaced incarnation speaks")
        return [("Exit", name)]

    def m_hello(self, name: str, inc: str) -> list:
        if self.m_terminal():
            known = self.m_workers.get(name)
            if known is not None and known.inc == inc:
                known.told, known.waiting = True, False
            return [("Exit", name)]
        out = []
        known = self.m_workers.get(name)
        if known is not None and known.inc != inc:
            if inc in self.m_replaced[name]:
                return self.m_replaced_speaks(name)
            self.m_replaced[name].add(known.inc)
            out += self.m_lose(name, coming_back=True)
            known = None
            if self.m_terminal():
                return out + [("Exit", name)]
        if known is None:
            self.m_workers[name] = ModelWorker(inc, self.now)
        else:
            known.last_seen = self.now
        return out + [("Greet", name)]

    def m_message(self, msg) -> Tuple[list, object]:
        """Predicted actions (normalized, in order) and which Assign is expected: None (no Assign),
        "ready" (of a READY task), or {task: started} (a backup of one of these stragglers)."""
        if isinstance(msg, Hello):
            return self.m_hello(msg.worker, msg.inc), None
        w = self.m_workers.get(msg.worker)
        if w is None or w.inc != msg.inc:
            if self.m_terminal():
                return [("Exit", msg.worker)], None
            if msg.inc in self.m_replaced[msg.worker]:
                return self.m_replaced_speaks(msg.worker), None
            self.m_dropped["unknown_worker"] += 1
            return [("Reregister", msg.worker)], None
        w.last_seen = self.now
        if self.m_terminal():
            w.told, w.waiting = True, False
            return [("Exit", msg.worker)], None
        if isinstance(msg, Heartbeat):
            self.m_note_started(w, msg.queued)
            for p in msg.progress:
                live = self.m_live.get(p.attempt)
                if live is not None and live[1] == msg.worker:
                    self.m_start(w, p.attempt)
                    if p.attempt == self.m_live_of(live[0])[0]:  # the task shows its original's progress
                        self.m_progress[live[0]] = (p.records, p.location)
                    self.m_attempt_location[p.attempt] = p.location
            return [("Ack", msg.worker)], None
        if isinstance(msg, Request):
            out = []
            for attempt in sorted(w.running - set(msg.running)):
                event("lost in transit")
                w.running.discard(attempt)
                w.queued.discard(attempt)
                out += self.m_requeue(attempt)
            self.m_note_started(w, msg.queued)
            w.waiting = False
            if msg.want == 0:
                event("a request for nothing")
                return out, None
            if msg.worker in self.m_blacklist:
                event("a blacklisted worker asks")
                return out + [("Wait", msg.worker, self.cfg.retry_after)], None
            if not self.m_ready():
                stragglers = {} if w.running else self.m_stragglers(msg.worker)
                if stragglers:
                    return out, stragglers
                if w.running:
                    event("a busy worker finds nothing READY")
                w.waiting = True
                return out + [("Wait", msg.worker, self.cfg.retry_after)], None
            usable = sum(1 for n in self.m_workers if n not in self.m_blacklist)
            grant = min(msg.want, -(-len(self.m_ready()) // usable))
            if grant > 1:
                event("several tasks in one answer")
            return out, ("ready", grant)
        # Done or Failed
        live = self.m_live.get(msg.attempt)
        if live is None or live[1] != msg.worker:
            self.m_dropped["stale_attempt"] += 1
            event("stale attempt")
            return [], None
        key = live[0]
        if isinstance(msg, Failed):
            return self.m_attempt_failed(msg.worker, msg.attempt, msg.error.kind, msg.error.location, msg.lost), None
        bad = (not msg.output) if key[0] == REDUCE else any(p.partition >= self.nr for p in msg.parts)
        if bad:
            self.m_dropped["bad_completion"] += 1
            return self.m_attempt_failed(msg.worker, msg.attempt, "ProtocolError", "", False), None
        w.running.discard(msg.attempt)
        w.queued.discard(msg.attempt)
        started = self.m_live.pop(msg.attempt)[2]
        if self.m_started[key] is None:
            event("finished without a known start")
            self.m_started[key] = started if started is not None else \
                max(self.m_assigned[msg.attempt], self.now - msg.stats.seconds)
        out = []
        for other in self.m_live_of(key):  # the first to finish wins; the other attempt is cancelled
            event("the slower attempt is cancelled")
            owner = self.m_live.pop(other)[1]
            self.m_workers[owner].running.discard(other)
            self.m_workers[owner].queued.discard(other)
            out.append(("Cancel", owner, other, key))
        self.m_finished.add(key)
        self.m_finished_at[key] = self.now
        out.append(("TaskFinished", key, msg.attempt))
        if key[0] == REDUCE:
            self.m_outputs[key[1]] = msg.output
        if key[0] == MAP and self.m_maps_done():
            self.m_state = JobState.REDUCING
            return out + self.m_wake(), None
        if key[0] == REDUCE and all((REDUCE, i) in self.m_finished for i in range(self.nr)):
            self.m_state = JobState.COMMITTING
            return out + [("Commit", tuple(self.m_outputs[i] for i in range(self.nr)))], None
        return out, None

    def m_tick(self) -> list:
        out = []
        limit = self.now - self.cfg.worker_timeout
        for name in [n for n, w in self.m_workers.items() if w.last_seen <= limit]:
            out += self.m_lose(name)
        timeout = self.cfg.task_timeout
        if timeout is None or self.m_terminal():
            return out
        overdue = [a for a, (_, _, t0) in self.m_live.items() if t0 is not None and t0 + timeout <= self.now]
        for attempt in sorted(overdue):
            if self.m_terminal():
                break
            event("task timeout")
            key, owner, _ = self.m_live[attempt]
            location = self.m_attempt_location.get(attempt, "")  # its own record, not its twin's
            out.append(("Cancel", owner, attempt, key))
            out += self.m_attempt_failed(owner, attempt, "TaskTimeout", location, False)
        return out

    # --- driving the scheduler -------------------------------------------------------

    def check_actions(self, actual, expected, expect_assign, was_terminal):
        got_assigns = [a for a in actual if isinstance(a, Assign)]
        others = [norm(a) for a in actual if not isinstance(a, Assign)]
        assert others == expected, (actual, expected)
        if was_terminal or self.m_terminal():
            assert got_assigns == [], "an Assign after the job ended"
        assert len(got_assigns) == expect_assign, (actual, expect_assign)
        if got_assigns:
            assert actual[-len(got_assigns):] == got_assigns, "the Assigns come last"
        return got_assigns

    def observe(self, actual, msg):
        """What the fake workers and the journal make of the actions."""
        for action in actual:
            if isinstance(action, Send) and isinstance(action.message, Cancel):
                self.held[action.worker].discard(action.message.attempt)  # the worker obeys
            if isinstance(action, TaskFinished):
                key = (action.kind, action.index)
                assert isinstance(msg, Done) and msg.attempt == action.attempt
                assert key not in {(e[0], e[1]) for e in self.journal}, f"{key} FINISHED twice"
                output = msg.parts if action.kind == MAP else msg.output
                self.journal.append((action.kind, action.index, output, msg.stats, msg.counters, msg.bad_records,
                                     msg.bad_count))

    def send(self, msg, deliver: bool = True):
        was_terminal = self.m_terminal()
        ready_before = set(self.m_ready()) if isinstance(msg, Request) else set()
        maps_finished_before = self.m_maps_done()
        actual = self.s.on_message(msg, self.now)
        expected, expect = self.m_message(msg)
        count = 0 if expect is None else expect[1] if isinstance(expect, tuple) else 1
        idle = msg.worker in self.m_workers and not self.m_workers[msg.worker].running
        for n, a in enumerate(self.check_actions(actual, expected, count, was_terminal)):
            key = (a.kind, a.index)
            assert a.worker == msg.worker
            assert a.attempt not in self.task_of, "attempt numbers are never reused"
            starts = idle and n == 0  # an idle worker starts its first task at once; the rest wait in its queue
            if isinstance(expect, tuple):
                assert key in set(self.m_ready()) | ready_before, f"{key} was not READY"
                event(f"assigned a {a.kind}")
                if a.kind == REDUCE:
                    assert maps_finished_before and self.m_maps_done(), "reduce assigned before every map finished"
                    assert all(self.s.tasks[(MAP, i)].state == TaskState.FINISHED for i in range(self.nm))
                self.m_started[key] = self.now if starts else None
                self.m_progress[key] = (0, "")
            else:
                assert key in expect, f"backup of {key}, which is no straggler: {expect}"
                assert expect[key] == min(expect.values()), "the backup is not of the longest-running straggler"
                event(f"backup of a {a.kind}")
                self.m_backups += 1
            self.task_of[a.attempt] = key
            self.m_live[a.attempt] = (key, msg.worker, self.now if starts else None)
            self.m_assigned[a.attempt] = self.now
            self.m_attempts[key] += 1
            self.m_workers[msg.worker].running.add(a.attempt)
            if not starts:
                self.m_workers[msg.worker].queued.add(a.attempt)
            if deliver:
                self.held[msg.worker].add(a.attempt)
            else:  # the driver could not send it
                event("undeliverable")
                self.m_workers[msg.worker].running.discard(a.attempt)
                self.m_workers[msg.worker].queued.discard(a.attempt)
                expected = self.m_requeue(a.attempt)
                again = self.s.assignment_undeliverable(a.attempt, self.now)
                assert [norm(x) for x in again] == expected
        self.observe(actual, msg)
        self.after_step()
        return actual

    def lively(self) -> bool:
        """Whether rules other than `tick` are enabled: a few steps after the job's end are
        worth it (everyone is told to exit), many more only waste examples."""
        return self.steps_after_end < 12

    def after_step(self):
        if self.m_terminal():
            self.steps_after_end += 1
        if self.m_terminal() and self.frozen is None:
            event(f"job {self.m_state.value}")
            self.frozen = {k: t.state for k, t in self.s.tasks.items()}

    def started(self) -> List[str]:
        return [n for n in NAMES if n in self.proc_inc]

    # --- rules ---------------------------------------------------------------------

    @precondition(lambda self: self.lively())
    @rule(name=st.sampled_from(NAMES), restart=st.sampled_from([False, False, True]))
    def hello(self, name, restart):
        if restart or name not in self.proc_inc:
            if name in self.proc_inc:
                self.old_incs[name].append(self.proc_inc[name])
            self.inc_counter += 1
            self.proc_inc[name] = f"inc{self.inc_counter}"
            self.held[name] = set()  # a new process holds nothing
        self.send(Hello(worker=name, inc=self.proc_inc[name]))

    @precondition(lambda self: self.lively() and any(self.old_incs.values()))
    @rule(data=st.data())
    def zombie_hello(self, data):
        """A process that was replaced by a restart (or taken for dead) says hello again."""
        name = data.draw(st.sampled_from(sorted(n for n in self.old_incs if self.old_incs[n])), label="worker")
        inc = data.draw(st.sampled_from(self.old_incs[name]), label="inc")
        self.send(Hello(worker=name, inc=inc))

    @precondition(lambda self: self.lively() and self.started())
    @rule(data=st.data(), deliver=st.sampled_from([True, True, True, False]), forget=st.booleans(),
          want=st.sampled_from([1, 1, 2, 3, 0]))
    def request(self, data, deliver, forget, want):
        name = data.draw(st.sampled_from(self.started()), label="worker")
        if forget and self.held[name]:
            # A Task message that never arrived: the worker does not hold it.
            lost = data.draw(st.sampled_from(sorted(self.held[name])), label="lost in transit")
            self.held[name].discard(lost)
        self.send(Request(worker=name, inc=self.proc_inc[name], running=tuple(sorted(self.held[name])),
                          queued=self.draw_queued(data, name), want=want), deliver)

    def draw_queued(self, data, name) -> Tuple[int, ...]:
        """Which held attempts the fake worker says have not started yet."""
        return tuple(data.draw(st.sets(st.sampled_from(sorted(self.held[name]))), label="queued")
                     if self.held[name] else ())

    @precondition(lambda self: self.lively() and self.started())
    @rule(data=st.data())
    def heartbeat(self, data):
        name = data.draw(st.sampled_from(self.started()), label="worker")
        progress = []
        for attempt in sorted(self.held[name]):
            records = data.draw(st.none() | st.integers(0, 40), label=f"records of {attempt}")
            if records is not None:
                position = RecordPosition(segment=0, offset=records * 10)
                progress.append(Progress(attempt=attempt, records=records, location=f"a{attempt} line {records}",
                                         position=position))
        self.send(Heartbeat(worker=name, inc=self.proc_inc[name], running=tuple(sorted(self.held[name])),
                            queued=self.draw_queued(data, name), progress=tuple(progress)))

    def done_message(self, name, inc, attempt, data, bad=False):
        kind, index = self.task_of[attempt]
        stats = TaskStats(records_in=attempt, records_out=index, seconds=0.5)
        counters = (CounterValue("app", "attempt", attempt),)
        if kind == MAP:
            partitions = data.draw(st.sets(st.integers(0, self.nr - 1), max_size=self.nr), label="partitions")
            if bad:
                partitions = set(partitions) | {self.nr}
            parts = tuple(PartFile(partition=p, path=f"m{index}-a{attempt}-p{p}") for p in sorted(partitions))
            return Done(worker=name, inc=inc, attempt=attempt, parts=parts, stats=stats, counters=counters)
        output = "" if bad else f"r{index}-a{attempt}"
        return Done(worker=name, inc=inc, attempt=attempt, output=output, stats=stats, counters=counters)

    @precondition(lambda self: self.lively() and any(self.held.values()))
    @rule(data=st.data(), bad=st.sampled_from([False] * 7 + [True]))
    def done(self, data, bad):
        name = data.draw(st.sampled_from(sorted(n for n in self.held if self.held[n])), label="worker")
        attempt = data.draw(st.sampled_from(sorted(self.held[name])), label="attempt")
        self.held[name].discard(attempt)
        self.send(self.done_message(name, self.proc_inc[name], attempt, data, bad))

    @precondition(lambda self: self.lively() and any(self.held.values()))
    @rule(data=st.data())
    def done_then_request(self, data):
        """The usual cycle of a worker: report a good completion and ask for more."""
        name = data.draw(st.sampled_from(sorted(n for n in self.held if self.held[n])), label="worker")
        attempt = data.draw(st.sampled_from(sorted(self.held[name])), label="attempt")
        self.held[name].discard(attempt)
        self.send(self.done_message(name, self.proc_inc[name], attempt, data))
        self.send(Request(worker=name, inc=self.proc_inc[name], running=tuple(sorted(self.held[name]))))

    @precondition(lambda self: self.lively() and any(self.held.values()))
    @rule(data=st.data(), lost=st.booleans())
    def failed(self, data, lost):
        name = data.draw(st.sampled_from(sorted(n for n in self.held if self.held[n])), label="worker")
        attempt = data.draw(st.sampled_from(sorted(self.held[name])), label="attempt")
        self.held[name].discard(attempt)
        error = LOST_ERR if lost else ERR
        self.send(Failed(worker=name, inc=self.proc_inc[name], attempt=attempt, error=error, lost=lost))

    @precondition(lambda self: self.lively() and self.started())
    @rule(dt=st.floats(0.1, 3.0))
    def time_passes_with_everyone_alive(self, dt):
        """Every worker heartbeats, the clock moves on: long-running tasks, but no losses."""
        for name in self.started():
            self.send(Heartbeat(worker=name, inc=self.proc_inc[name], running=tuple(sorted(self.held[name]))))
        self.tick(dt)

    @precondition(lambda self: self.lively() and self.started())
    @rule()
    def everyone_asks(self):
        """Every worker asks for (more) work, as after a Wait's retry_after: idle ones may get backups."""
        for name in self.started():
            self.send(Request(worker=name, inc=self.proc_inc[name], running=tuple(sorted(self.held[name]))))

    @precondition(lambda self: self.lively() and self.started())
    @rule(data=st.data(), dt=st.floats(0.1, 3.0))
    def a_round_of_work(self, data, dt):
        """Time passes with everyone alive, one attempt finishes, everyone asks: a finisher that asks
        while a slower attempt still runs is what speculation is for."""
        self.time_passes_with_everyone_alive(dt)
        if any(self.held.values()) and self.lively():
            self.done_then_request(data)
        if self.lively():
            self.everyone_asks()

    @precondition(lambda self: self.lively() and self.task_of and self.started())
    @rule(data=st.data(), failure=st.sampled_from([False, False, True]))
    def stale_report(self, data, failure):
        """A duplicate, late (cancelled), foreign or old-incarnation report of any attempt ever seen."""
        name = data.draw(st.sampled_from(self.started()), label="worker")
        attempt = data.draw(st.sampled_from(sorted(self.task_of)), label="attempt")
        incs = [self.proc_inc[name]] + self.old_incs[name]
        inc = data.draw(st.sampled_from(incs), label="inc")
        if inc == self.proc_inc[name]:
            self.held[name].discard(attempt)
        if failure:
            self.send(Failed(worker=name, inc=inc, attempt=attempt, error=ERR))
        else:
            self.send(self.done_message(name, inc, attempt, data))

    @rule(
        dt=st.one_of(
            st.floats(0, 1.0), st.floats(0, 2.0), st.floats(0, 3.0),  # usually short
            st.floats(TIMEOUT - 0.5, 2.5 * TIMEOUT), st.just(TIMEOUT),  # sometimes past the timeout
        )
    )
    def tick(self, dt):
        self.now += dt
        was_terminal = self.m_terminal()
        actual = self.s.on_tick(self.now)
        expected = self.m_tick()
        self.check_actions(actual, expected, 0, was_terminal)
        self.observe(actual, None)
        self.after_step()

    @precondition(lambda self: self.lively() and self.m_state == JobState.COMMITTING)
    @rule(ok=st.sampled_from([True, True, True, False]))
    def commit(self, ok):
        if ok:
            actual = self.s.output_committed(self.now)
            self.m_state = JobState.SUCCEEDED
            expected = [("JobFinished", True, None, None)] + self.m_end()
        else:
            actual = self.s.commit_failed("disk full", self.now)
            expected = self.m_fail(("job", 0), None)
        self.check_actions(actual, expected, 0, False)
        self.after_step()

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def every_task_in_exactly_one_state(self):
        counts = Counter(t.state for t in self.s.tasks.values())
        assert sum(counts.values()) == self.nm + self.nr
        assert all(isinstance(t.state, TaskState) for t in self.s.tasks.values())
        for kind, n in ((MAP, self.nm), (REDUCE, self.nr)):
            status = self.s.job_status(self.now)["maps" if kind == MAP else "reduces"]
            assert sum(status.values()) == n
            assert set(status) == {"BLOCKED", "READY", "RUNNING", "FINISHED"}

    @invariant()
    def at_most_two_live_attempts_per_task(self):
        per_task = Counter(r.task for r in self.s.attempts.values())
        assert all(n <= 2 for n in per_task.values()), per_task
        if not self.cfg.speculation:
            assert all(n == 1 for n in per_task.values()), per_task
            assert all(t.backup is None and t.backup_worker is None for t in self.s.tasks.values())
            assert self.s.backups_started == 0

    @invariant()
    def running_tasks_and_only_they_have_owned_attempts(self):
        if self.m_terminal():
            return  # see test_task_that_failed_the_job_is_not_left_running
        running_attempts = set()
        for key, task in self.s.tasks.items():
            if task.state == TaskState.RUNNING:
                assert task.attempt is not None
                live = [(task.attempt, task.worker)]
                if task.backup is not None:
                    assert task.backup_worker != task.worker, "both attempts of a task on one worker"
                    live.append((task.backup, task.backup_worker))
                else:
                    assert task.backup_worker is None
                for attempt, worker in live:
                    record = self.s.attempts[attempt]
                    assert record.task == key and record.worker == worker
                    assert worker in self.s.workers
                    assert attempt in self.s.workers[worker].running
                    running_attempts.add(attempt)
            else:
                assert task.attempt is None and task.backup is None and task.backup_worker is None
                if task.state != TaskState.FINISHED:  # a FINISHED task remembers who ran it
                    assert task.worker is None
        # `attempts` holds only live attempts of RUNNING tasks, and workers hold only live attempts.
        assert set(self.s.attempts) == running_attempts
        for name, w in self.s.workers.items():
            assert all(self.s.attempts[a].worker == name for a in w.running)
        assert set().union(*[w.running for w in self.s.workers.values()]) == running_attempts

    @invariant()
    def ready_queue_matches_ready_tasks(self):
        if self.m_terminal():
            assert len(self.s.ready) == 0
            return
        ready = [k for k, t in self.s.tasks.items() if t.state == TaskState.READY]
        assert sorted(self.s.ready) == sorted(ready)
        assert len(set(self.s.ready)) == len(self.s.ready)

    @invariant()
    def reduces_blocked_until_all_maps_finished(self):
        maps_done = all(self.s.tasks[(MAP, i)].state == TaskState.FINISHED for i in range(self.nm))
        for i in range(self.nr):
            if not maps_done:
                assert self.s.tasks[(REDUCE, i)].state == TaskState.BLOCKED

    @invariant()
    def finished_counts_never_decrease(self):
        for kind in (MAP, REDUCE):
            count = self.s.finished_counts[kind]
            assert count >= self.max_finished[kind]
            self.max_finished[kind] = count
            assert count == sum(1 for k, t in self.s.tasks.items() if k[0] == kind and t.state == TaskState.FINISHED)

    @invariant()
    def agrees_with_the_model(self):
        assert self.s.state == self.m_state
        assert dict(self.s.dropped) == {k: v for k, v in self.m_dropped.items() if v}
        assert list(self.s.workers) == list(self.m_workers)
        assert {n: w.inc for n, w in self.s.workers.items()} == {n: w.inc for n, w in self.m_workers.items()}
        assert self.s.workers_lost == self.m_workers_lost
        assert set(self.s.blacklist) == self.m_blacklist
        for name, w in self.s.workers.items():
            assert w.failed_tasks == self.m_workers[name].failed_tasks
        for key, task in self.s.tasks.items():
            assert task.failures == self.m_failures[key]
            assert task.worker_losses == self.m_losses[key]
            assert task.attempts == self.m_attempts[key]
            if key in self.m_progress:
                assert (task.records, task.location) == self.m_progress[key]
        if not self.m_terminal():
            for key, task in self.s.tasks.items():
                assert task.state == self.m_task_state(key), key
                live = self.m_live_of(key)
                assert [task.attempt, task.backup] == (live + [None, None])[:2], key
                if live:
                    assert task.worker == self.m_live[live[0]][1]
                    assert task.backup_worker == (self.m_live[live[1]][1] if len(live) == 2 else None)
                    assert task.started_at == self.m_started[key]
            assert set(self.s.attempts) == set(self.m_live)
            assert {a: r.started_at for a, r in self.s.attempts.items()} == {a: t for a, (_, _, t) in
                                                                             self.m_live.items()}
            for name, w in self.s.workers.items():
                assert w.running == self.m_workers[name].running
                assert w.waiting == self.m_workers[name].waiting
        elif self.frozen is not None:
            # Nothing moves once the job is over.
            assert {k: t.state for k, t in self.s.tasks.items()} == self.frozen

    @invariant()
    def counters_agree_with_the_model(self):
        values = {(c.group, c.name): c.value for c in self.s.counter_values() if c.group == "zmqmr"}
        assert values[("zmqmr", "speculative attempts")] == self.m_backups == self.s.backups_started
        assert values[("zmqmr", "failed attempts")] == sum(self.m_failures.values())
        assert values[("zmqmr", "retried attempts")] == sum(max(0, n - 1) for n in self.m_attempts.values())
        assert values[("zmqmr", "lost workers")] == self.m_workers_lost
        user = sorted(c.value for c in self.s.counter_values() if c.group == "app")
        assert user == sorted(c.value for e in self.journal for c in e[4])  # the winners' counters only

    @invariant()
    def replaying_the_journal_gives_the_same_state(self):
        replay = Scheduler(self.nm, self.nr, self.cfg)
        for entry in self.journal:
            replay.restore_finished(*entry)

        def finished(s):
            return {k for k, t in s.tasks.items() if t.state == TaskState.FINISHED}

        assert finished(replay) == finished(self.s)
        for key in finished(self.s):
            live, again = self.s.tasks[key], replay.tasks[key]
            assert (again.output, again.stats, again.counters) == (live.output, live.stats, live.counters), key
            assert (again.bad_records, again.bad_count) == (live.bad_records, live.bad_count)
        assert replay.finished_counts == self.s.finished_counts
        assert not replay.attempts and not replay.workers
        maps_done = self.s.finished_counts[MAP] == self.nm
        if maps_done:  # the reduce phase is open in both
            todo = [(REDUCE, i) for i in range(self.nr) if (REDUCE, i) not in finished(self.s)]
            # ...and when every reduce finished, the replayed driver goes on to commit the output.
            assert replay.state == (JobState.REDUCING if todo else JobState.COMMITTING)
            assert self.s.state != JobState.MAPPING and (todo or self.s.state != JobState.REDUCING)
            assert all(self.s.tasks[(REDUCE, i)].state != TaskState.BLOCKED for i in range(self.nr))
        else:
            assert replay.state == JobState.MAPPING
            assert all(replay.tasks[(REDUCE, i)].state == TaskState.BLOCKED for i in range(self.nr))
            todo = [(MAP, i) for i in range(self.nm) if (MAP, i) not in finished(self.s)]
        assert sorted(replay.ready) == todo
        assert all(replay.tasks[k].state == TaskState.READY for k in todo)

    @invariant()
    def deadlines_and_stopping(self):
        deadlines = [w.last_seen + self.cfg.worker_timeout for w in self.m_workers.values()]
        if self.cfg.task_timeout is not None and not self.m_terminal():
            started = [t for _, _, t in self.m_live.values() if t is not None]
            if started:
                deadlines.append(min(started) + self.cfg.task_timeout)
        if self.m_exit_deadline is not None:
            deadlines.append(self.m_exit_deadline)
        assert self.s.next_deadline() == (min(deadlines) if deadlines else None)
        if self.m_terminal():
            told = all(w.told for w in self.m_workers.values())
            expected = told or self.now >= self.m_exit_deadline
        else:
            expected = False
        assert self.s.can_stop(self.now) == expected


SchedulerMachine.TestCase.settings = settings(
    max_examples=180,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_scheduler_state_machine = SchedulerMachine.TestCase


# --- blacklisting and task timeouts ----------------------------------------------------


def test_a_worker_where_different_tasks_fail_gets_no_more_tasks():
    sim = Sim(5, 1, max_attempts=4, blacklist_after=3)
    sim.hello("bad")
    sim.hello("good")
    for _ in range(3):  # three different tasks fail on "bad" (a retry goes first, so "good" takes it)
        a = sim.assign("bad")
        sim.fail("bad", a.attempt)
        b = sim.assign("good")
        assert (b.kind, b.index) == (a.kind, a.index)
        sim.done("good", b.attempt)
    assert "3 different tasks failed" in sim.s.blacklist["bad"]
    actions = sim.request("bad")
    assert assigns(actions) == [] and sent(actions, Wait) == ["bad"]
    assert sim.s.workers_status(0.0)[0]["blacklisted"].startswith("3 different tasks")
    assert assigns(sim.request("good"))  # the job goes on on the good worker


def test_one_task_failing_repeatedly_does_not_blacklist_its_worker():
    sim = Sim(2, 1, max_attempts=4, blacklist_after=3)
    sim.hello("w1")
    for _ in range(3):
        sim.fail("w1", sim.assign("w1").attempt)
    assert sim.s.blacklist == {}
    [fin] = finished(sim.fail("w1", sim.assign("w1").attempt))
    assert "map task 0 failed 4 times" in fin.failure.reason  # the task's fault, named as such


def test_the_job_fails_rather_than_hangs_when_every_worker_is_blacklisted():
    sim = Sim(4, 1, max_attempts=4, blacklist_after=2)
    sim.hello("w1")
    sim.fail("w1", sim.assign("w1").attempt)
    sim.done("w1", sim.assign("w1").attempt)  # the retry of map 0 succeeds
    actions = sim.fail("w1", sim.assign("w1").attempt)  # a second different task fails
    [fin] = finished(actions)
    assert fin.failure.reason == "every worker is blacklisted after repeated failures"
    assert fin.failure.error == ERR


def test_blacklisting_survives_a_restart_under_the_same_name():
    sim = Sim(3, 1, max_attempts=4, blacklist_after=1)
    sim.hello("w1")
    sim.hello("w2")
    sim.fail("w1", sim.assign("w1").attempt)
    sim.hello("w1", inc="2")
    assert assigns(sim.request("w1")) == []


def test_an_attempt_past_the_task_timeout_is_cancelled_and_retried_naming_its_record():
    sim = Sim(1, 1, max_attempts=2, task_timeout=30.0)
    sim.hello("w1")
    a = sim.assign("w1")
    assert sim.s.next_deadline() == 5.0  # the worker timeout comes first
    sim.now = 4.0
    sim.send(Heartbeat(worker="w1", inc="1", running=(a.attempt,),
                       progress=(Progress(attempt=a.attempt, records=17, location="in.txt at byte 99 (line 17)"),)))
    assert sim.s.task_status(MAP, 0, 4.0)["records"] == 17
    for t in range(5, 30, 4):  # keep the worker alive
        sim.now = float(t)
        sim.heartbeat("w1")
    assert sim.s.next_deadline() == 30.0
    actions = sim.tick(30.0)
    [cancel] = [x.message for x in actions if isinstance(x, Send) and isinstance(x.message, Cancel)]
    assert cancel.attempt == a.attempt
    [report] = [x for x in actions if isinstance(x, AttemptFailed)]
    assert report.error.kind == "TaskTimeout" and report.error.location == "in.txt at byte 99 (line 17)"
    assert "ran longer than --task-timeout 30 s while reading in.txt at byte 99 (line 17)" in report.error.message
    assert sim.state(MAP, 0) == TaskState.READY
    assert sim.s.tasks[(MAP, 0)].failures == 1
    # A late Done of the cancelled attempt changes nothing.
    assert sim.done("w1", a.attempt) == [] and sim.s.dropped["stale_attempt"] == 1
    b = sim.assign("w1")
    sim.now = 60.0
    sim.heartbeat("w1")
    [fin] = finished(sim.tick(60.0))
    assert "failed 2 times" in fin.failure.reason and fin.failure.error.kind == "TaskTimeout"
    assert b.attempt != a.attempt


def test_no_task_timeout_by_default():
    sim = Sim(1, 1)
    sim.hello("w1")
    sim.assign("w1")
    for t in range(4, 400, 4):
        sim.now = float(t)
        sim.heartbeat("w1")
        assert not [x for x in sim.tick(float(t)) if isinstance(x, AttemptFailed)]


# --- speculative execution -------------------------------------------------------------


def spec_sim(num_maps=3, **cfg):
    return Sim(num_maps, 1, speculation=True, speculation_factor=2.0, speculation_min_seconds=10.0, **cfg)


def keep_alive(sim, until: float, *workers):
    t = sim.now
    while t < until:
        t = min(until, t + 2.0)
        sim.now = t
        for w in workers:
            sim.heartbeat(w)


def test_an_idle_worker_gets_a_backup_of_a_straggler_and_the_first_finisher_wins():
    sim = spec_sim()
    for w in ("slow", "fast"):
        sim.hello(w)
    straggler = sim.assign("slow")
    for _ in range(2):  # the fast worker does the other maps in 3 s each
        a = sim.assign("fast")
        sim.now += 3.0
        sim.done("fast", a.attempt)
    assert sent(sim.request("fast"), Wait) == ["fast"]  # 6 s < max(2 * 3 s, 10 s): no backup yet
    keep_alive(sim, 10.5, "slow", "fast")
    [backup] = assigns(sim.request("fast"))
    assert (backup.kind, backup.index) == (straggler.kind, straggler.index) and backup.attempt != straggler.attempt
    assert sim.s.task_status(MAP, straggler.index, sim.now)["backup_attempt"] == backup.attempt
    assert sent(sim.request("fast", running=[backup.attempt]), Wait) == ["fast"]  # one backup per task
    actions = sim.done("fast", backup.attempt)
    [cancel] = [a for a in actions if isinstance(a, Send) and isinstance(a.message, Cancel)]
    assert cancel.worker == "slow" and cancel.message.attempt == straggler.attempt
    assert cancel.message.kind == MAP and cancel.message.index == straggler.index
    assert sim.state(MAP, straggler.index) == TaskState.FINISHED
    assert sim.s.tasks[(MAP, straggler.index)].output[0].path.startswith(f"m{backup.attempt}-")
    assert sim.done("slow", straggler.attempt) == []  # the loser's late report changes nothing
    assert sim.s.dropped["stale_attempt"] == 1
    values = {(c.group, c.name): c.value for c in sim.s.counter_values()}
    assert values[("zmqmr", "speculative attempts")] == 1


def test_no_task_runs_twice_without_a_straggler():
    sim = spec_sim(num_maps=4)
    sim.hello("w1")
    sim.hello("w2")
    for _ in range(2):
        a, b = sim.assign("w1"), sim.assign("w2")
        keep_alive(sim, sim.now + 30.0, "w1", "w2")  # slow tasks, but all equally slow
        sim.done("w1", a.attempt)
        sim.done("w2", b.attempt)
    assert all(t.attempts == 1 for t in sim.s.tasks.values() if t.kind == MAP)
    assert sim.s.backups_started == 0


def straggler_and_backup(sim):
    """Worker "slow" holds a map while "fast" does the others; at 12 s "fast" gets its backup."""
    sim.hello("slow")
    sim.hello("fast")
    straggler = sim.assign("slow")
    for _ in range(2):
        a = sim.assign("fast")
        sim.now += 1.0
        sim.done("fast", a.attempt)
    keep_alive(sim, 12.0, "slow", "fast")
    [backup] = assigns(sim.request("fast"))
    return straggler, backup


def test_a_failing_backup_leaves_the_original_running():
    sim = spec_sim(max_attempts=3)
    straggler, backup = straggler_and_backup(sim)
    actions = sim.fail("fast", backup.attempt)
    assert assigns(actions) == [] and not finished(actions)
    task = sim.s.tasks[(MAP, straggler.index)]
    assert task.state == TaskState.RUNNING and task.attempt == straggler.attempt and task.backup is None
    sim.done("slow", straggler.attempt)
    assert task.state == TaskState.FINISHED


def test_when_the_original_is_lost_the_backup_carries_on():
    sim = spec_sim()
    straggler, backup = straggler_and_backup(sim)
    keep_alive(sim, 20.0, "fast")  # "slow" falls silent
    sim.tick(20.0)
    task = sim.s.tasks[(MAP, straggler.index)]
    assert "slow" not in sim.s.workers
    assert task.state == TaskState.RUNNING and task.attempt == backup.attempt and task.worker == "fast"
    assert list(sim.s.ready) == []  # not queued a third time
    sim.done("fast", backup.attempt)
    assert task.state == TaskState.FINISHED


def test_no_backups_with_speculation_off():
    sim = Sim(3, 1, speculation=False)
    sim.hello("slow")
    sim.hello("fast")
    sim.assign("slow")
    for _ in range(2):
        a = sim.assign("fast")
        sim.done("fast", a.attempt)
    keep_alive(sim, 500.0, "slow", "fast")
    assert assigns(sim.request("fast")) == []


def _straggler_and_backup(**cfg):
    """`slow` runs map 0 (the straggler), `fast` did maps 1 and 2 and holds a backup of map 0."""
    sim = spec_sim(**cfg)
    straggler, backup = straggler_and_backup(sim)
    assert (backup.kind, backup.index) == (straggler.kind, straggler.index)
    return sim, straggler, backup


def test_when_the_original_wins_the_backup_is_cancelled_before_the_task_is_journaled():
    sim, straggler, backup = _straggler_and_backup()
    actions = sim.done("slow", straggler.attempt)
    reason = f"attempt {straggler.attempt} of map task {straggler.index} finished first"
    assert actions == [
        Send("fast", Cancel(attempt=backup.attempt, reason=reason, kind=MAP, index=straggler.index)),
        TaskFinished(MAP, straggler.index, straggler.attempt),
    ]  # nobody waits, so nobody is woken
    # The last map finished: the reduce phase opens, and the backup's worker holds nothing now.
    assert sim.s.state == JobState.REDUCING
    assert sim.s.workers["fast"].running == set() and backup.attempt not in sim.s.attempts
    task = sim.s.tasks[(MAP, straggler.index)]
    assert task.backup is None and task.backup_worker is None and task.worker == "slow"
    assert sim.done("fast", backup.attempt) == [] and sim.s.dropped["stale_attempt"] == 1


def test_a_lost_backup_counts_as_a_worker_loss_of_the_task_while_the_original_goes_on():
    sim, straggler, backup = _straggler_and_backup(max_worker_losses=2)
    actions = sim.hello("fast", inc="2")  # the backup's process restarted
    assert actions == [Greet("fast")]  # no Wake: nothing became READY
    task = sim.s.tasks[(MAP, straggler.index)]
    assert task.worker_losses == 1 and task.failures == 0
    assert task.state == TaskState.RUNNING and task.attempt == straggler.attempt and task.backup is None
    assert list(sim.s.ready) == []
    # The loss counts: one more loss of the original fails the job (--max-worker-losses 2).
    keep_alive(sim, 20.0, "fast")
    [fin] = finished(sim.tick(20.0))
    assert fin.failure.task == (MAP, straggler.index) and "lost its worker 2 times" in fin.failure.reason


def test_an_original_past_the_task_timeout_hands_the_task_to_its_backup():
    sim, straggler, backup = _straggler_and_backup(task_timeout=13.0, max_attempts=2)
    assert sim.s.next_deadline() == 13.0  # the original started at 0 s, the backup at 12 s
    keep_alive(sim, 13.0, "slow", "fast")
    sim.request("fast", running=[backup.attempt])  # waiting: a Wake would show a re-queue
    actions = sim.tick(13.0)
    assert [type(a) for a in actions] == [Send, AttemptFailed]  # a Cancel and the report; no Wake
    assert actions[0].worker == "slow" and actions[0].message.attempt == straggler.attempt
    assert actions[1].error.kind == "TaskTimeout" and actions[1].attempt == straggler.attempt
    task = sim.s.tasks[(MAP, straggler.index)]
    assert task.failures == 1 and task.state == TaskState.RUNNING
    assert (task.attempt, task.worker, task.backup) == (backup.attempt, "fast", None)
    assert sim.s.next_deadline() == min(12.0 + 13.0, 13.0 + TIMEOUT)
    actions = sim.done("fast", backup.attempt)
    assert actions[0] == TaskFinished(MAP, straggler.index, backup.attempt)  # nothing left to cancel


def test_a_request_that_omits_the_backup_drops_only_the_backup():
    sim, straggler, backup = _straggler_and_backup()
    actions = sim.request("fast", running=[])  # the backup's Task never arrived
    task = sim.s.tasks[(MAP, straggler.index)]
    assert task.attempt == straggler.attempt and task.failures == task.worker_losses == 0
    assert backup.attempt not in sim.s.attempts and sent(actions, Wake) == []  # no re-queue
    # ...and, still idle, "fast" is given a new backup of the same straggler.
    [again] = assigns(actions)
    assert (again.kind, again.index) == (MAP, straggler.index) and again.attempt != backup.attempt
    assert (task.backup, task.backup_worker) == (again.attempt, "fast") and sim.s.backups_started == 2


def test_a_blacklisted_worker_is_never_woken_and_its_running_attempt_still_counts():
    sim = Sim(4, 1, max_attempts=4, blacklist_after=2)
    sim.hello("bad")
    sim.hello("good")
    for _ in range(2):
        a = sim.assign("bad")
        sim.fail("bad", a.attempt)
        sim.done("good", sim.assign("good").attempt)
    assert "bad" in sim.s.blacklist
    held = sim.assign("good")
    actions = sim.request("bad")
    assert actions == [Send("bad", Wait(retry_after=RETRY_AFTER))]
    assert sim.s.workers["bad"].waiting is False  # so it gets no Wake...
    assert sent(sim.fail("good", held.attempt), Wake) == []  # ...when a task is re-queued
    # An attempt it already held when it was blacklisted is still a good completion.
    sim2 = Sim(3, 1, max_attempts=4, blacklist_after=1)
    sim2.hello("w1")
    sim2.hello("w2")
    a, b = sim2.assign("w1"), sim2.assign("w1")
    sim2.fail("w1", a.attempt)
    assert "w1" in sim2.s.blacklist
    assert sim2.done("w1", b.attempt)[0] == TaskFinished(b.kind, b.index, b.attempt)


def test_losing_the_last_usable_worker_fails_the_job_when_only_blacklisted_ones_remain():
    sim = Sim(3, 1, max_attempts=4, blacklist_after=1)
    sim.hello("bad")
    sim.hello("good")
    sim.fail("bad", sim.assign("bad").attempt)
    sim.assign("good")
    sim.now = 4.0
    sim.heartbeat("bad")
    [fin] = finished(sim.tick(TIMEOUT))  # "good" falls silent
    assert fin.failure.reason == "every worker is blacklisted after repeated failures"
    assert fin.failure.error is None and fin.failure.task == ("job", 0)


def test_a_restart_of_the_only_usable_worker_does_not_fail_the_job():
    sim = Sim(3, 1, max_attempts=4, blacklist_after=1)
    sim.hello("bad")
    sim.hello("good")
    sim.fail("bad", sim.assign("bad").attempt)
    assert "bad" in sim.s.blacklist and "good" not in sim.s.blacklist
    actions = sim.hello("good", inc="2")  # the good worker's process restarts
    assert finished(actions) == []
    assert actions == [Greet("good")]
    assert sim.s.state == JobState.MAPPING


def test_a_timeout_names_the_record_its_own_attempt_hung_on():
    sim, straggler, backup = _straggler_and_backup(task_timeout=14.0, skip_bad_records=5)
    hung = RecordPosition(segment=0, offset=100)
    fine = RecordPosition(segment=0, offset=900)
    sim.send(Heartbeat(worker="slow", inc="1", running=(straggler.attempt,),
                       progress=(Progress(attempt=straggler.attempt, records=10, location="in.txt line 10",
                                          position=hung),)))
    sim.send(Heartbeat(worker="fast", inc="1", running=(backup.attempt,),
                       progress=(Progress(attempt=backup.attempt, records=90, location="in.txt line 90",
                                          position=fine),)))
    keep_alive(sim, 14.0, "slow", "fast")
    [report] = [a for a in sim.tick(14.0) if isinstance(a, AttemptFailed)]
    assert report.attempt == straggler.attempt
    assert report.error.location == "in.txt line 10"
    assert sim.s.tasks[(MAP, straggler.index)].skip == {hung}


# --- journal replay ------------------------------------------------------------------


def test_replaying_the_journal_rebuilds_finished_tasks_and_opens_the_reduce_phase():
    sim = Sim(2, 2)
    journal = []
    sim.hello("w1")
    for _ in range(2):
        a = sim.assign("w1")
        [fin] = [x for x in sim.done("w1", a.attempt) if isinstance(x, TaskFinished)]
        t = sim.s.tasks[(fin.kind, fin.index)]
        journal.append((fin.kind, fin.index, t.output, t.stats, t.counters))
    r = sim.assign("w1")
    sim.done("w1", r.attempt, output="out-r")
    journal.append((REDUCE, r.index, "out-r", TaskStats(), ()))

    again = Scheduler(2, 2, config())
    for entry in journal[:1]:
        again.restore_finished(*entry)
    assert again.state == JobState.MAPPING and list(again.ready) == [(MAP, 1 - journal[0][1])]
    with pytest.raises(ValueError):  # a reduce cannot finish before its maps
        again.restore_finished(*journal[2])
    for entry in journal[1:] + journal:  # a task journaled twice is restored once
        again.restore_finished(*entry)
    assert again.finished_counts == Counter({MAP: 2, REDUCE: 1})
    assert again.state == JobState.REDUCING and list(again.ready) == [(REDUCE, 1 - r.index)]
    assert again.tasks[(REDUCE, r.index)].output == "out-r"
    # The restarted driver goes on from there.
    again.on_message(Hello(worker="w9", inc="1"), 0.0)
    [left] = assigns(again.on_message(Request(worker="w9", inc="1"), 0.0))
    assert (left.kind, left.index) == (REDUCE, 1 - r.index)
    out = again.on_message(Done(worker="w9", inc="1", attempt=left.attempt, output="out-left"), 0.0)
    outputs = {r.index: "out-r", left.index: "out-left"}
    assert out == [TaskFinished(REDUCE, left.index, left.attempt), CommitOutput((outputs[0], outputs[1]))]


# --- a restarted driver adopts attempts that an earlier driver handed out ------------------------


def test_a_restarted_driver_adopts_a_running_attempt_of_the_killed_one():
    sim = Sim(2, 1)
    sim.s.job_id = "job"
    sim.s.adopt_below = sim.s.next_attempt = 100
    sim.hello("w1")
    actions = sim.send(Heartbeat(worker="w1", inc="1", running=(42,),
                                 progress=(Progress(attempt=42, records=7, kind=MAP, index=1, job_id="job"),)))
    assert sent(actions, Ack) == ["w1"] and not sent(actions, Cancel)
    task = sim.s.tasks[(MAP, 1)]
    assert task.state == TaskState.RUNNING and task.attempt == 42 and task.worker == "w1"
    assert (MAP, 1) not in sim.s.ready
    done = Done(worker="w1", inc="1", attempt=42, kind=MAP, index=1, job_id="job",
                parts=(PartFile(partition=0, path="m1-a42", size=1),))
    assert [a for a in sim.send(done) if isinstance(a, TaskFinished)] == [TaskFinished(MAP, 1, 42)]
    assert sim.state(MAP, 1) == TaskState.FINISHED


def test_a_done_from_before_the_restart_is_adopted_when_it_arrives_first():
    sim = Sim(1, 1)
    sim.s.job_id = "job"
    sim.s.adopt_below = sim.s.next_attempt = 100
    sim.hello("w1")
    done = Done(worker="w1", inc="1", attempt=7, kind=MAP, index=0, job_id="job",
                parts=(PartFile(partition=0, path="p"),))
    sim.send(done)
    assert sim.state(MAP, 0) == TaskState.FINISHED and sim.state(REDUCE, 0) == TaskState.READY


def test_attempts_this_driver_gave_up_or_finished_are_cancelled_not_adopted():
    sim = Sim(1, 1)
    sim.s.job_id = "job"
    sim.s.adopt_below = sim.s.next_attempt = 100
    sim.hello("w1")
    sim.hello("w2")
    given_up = sim.send(Heartbeat(worker="w2", inc="1",
                                  progress=(Progress(attempt=150, kind=MAP, index=0, job_id="job"),)))
    assert [a.message.attempt for a in given_up if isinstance(a, Send) and isinstance(a.message, Cancel)] == [150]
    a = sim.assign("w1")
    sim.done("w1", a.attempt)
    late = sim.send(Heartbeat(worker="w2", inc="1", progress=(Progress(attempt=9, kind=MAP, index=0, job_id="job"),)))
    [cancel] = [x.message for x in late if isinstance(x, Send) and isinstance(x.message, Cancel)]
    assert cancel.attempt == 9 and "finished" in cancel.reason
    assert sim.s.tasks[(MAP, 0)].attempts == 1


def test_a_finished_attempts_report_sent_again_is_ignored_not_cancelled():
    """After a restart a worker sends its recent reports again; the one whose output the task kept
    must not be cancelled (a cancel removes the attempt's files)."""
    sim = Sim(2, 1)
    sim.s.job_id = "job"
    sim.s.adopt_below = sim.s.next_attempt = 100
    sim.s.restore_finished(MAP, 0, (PartFile(partition=0, path="m0-a7"),), TaskStats(), attempt=7)
    sim.hello("w1")
    again = Done(worker="w1", inc="1", attempt=7, kind=MAP, index=0, job_id="job",
                 parts=(PartFile(partition=0, path="m0-a7"),))
    assert sim.send(again) == []
    other = Done(worker="w1", inc="1", attempt=8, kind=MAP, index=0, job_id="job",
                 parts=(PartFile(partition=0, path="m0-a8"),))
    [cancel] = [a.message for a in sim.send(other) if isinstance(a, Send) and isinstance(a.message, Cancel)]
    assert cancel.attempt == 8
    foreign = Done(worker="w1", inc="1", attempt=9, kind=MAP, index=1, job_id="another job",
                   parts=(PartFile(partition=0, path="m1-a9"),))
    sim.send(foreign)
    assert sim.state(MAP, 1) == TaskState.READY  # never adopted from another job


# --- prefetch: several tasks per request, and attempts queued on a worker ---------------


def test_a_request_for_several_tasks_gets_at_most_a_fair_share_of_what_is_ready():
    sim = Sim(10, 1)
    sim.hello("a")
    sim.hello("b")
    got = assigns(sim.send(Request(worker="a", inc="1", want=8)))
    assert len(got) == 5  # ten READY maps, two workers
    assert [a.attempt for a in got] == sorted(a.attempt for a in got)
    more = assigns(sim.send(Request(worker="b", inc="1", want=2)))
    assert len(more) == 2
    assert {(a.kind, a.index) for a in got + more} == {(MAP, i) for i in range(7)}


def test_a_request_for_nothing_is_not_answered_but_still_reports_what_is_held():
    sim = Sim(2, 1)
    sim.hello("w")
    first = sim.assign("w")
    assert sim.send(Request(worker="w", inc="1", running=(first.attempt,), want=0)) == []
    assert not sim.s.workers["w"].waiting
    actions = sim.send(Request(worker="w", inc="1", running=(), want=0))  # the attempt never arrived
    assert assigns(actions) == [] and sim.state(MAP, first.index) == TaskState.READY


def test_queued_attempts_neither_time_out_nor_straggle_until_they_start():
    sim = Sim(3, 1, task_timeout=5.0, speculation=True, speculation_min_seconds=1.0)
    sim.hello("w")
    running, queued = assigns(sim.send(Request(worker="w", inc="1", want=2)))
    record = sim.s.attempts[queued.attempt]
    assert sim.s.attempts[running.attempt].started_at == 0.0 and record.started_at is None
    assert sim.s.tasks[(MAP, queued.index)].started_at is None
    sim.now = 4.0
    sim.heartbeat("w")  # lists both as running, neither as queued: both have started by now
    assert record.started_at == 4.0 and sim.s.tasks[(MAP, queued.index)].started_at == 4.0
    sim.send(Heartbeat(worker="w", inc="1", running=(running.attempt, queued.attempt)))
    assert sim.s.next_deadline() == 5.0  # the first attempt's timeout, then the second's at 9.0
    timed_out = sim.tick(5.0)
    assert sent(timed_out, Cancel) == ["w"] and running.attempt not in sim.s.attempts
    assert queued.attempt in sim.s.attempts and sim.s.next_deadline() == 9.0


def test_a_worker_says_which_held_attempts_wait_in_its_queue():
    sim = Sim(3, 1, task_timeout=5.0)
    sim.hello("w")
    first, second = assigns(sim.send(Request(worker="w", inc="1", want=2)))
    sim.now = 3.0
    sim.send(Heartbeat(worker="w", inc="1", running=(first.attempt, second.attempt), queued=(second.attempt,)))
    assert sim.s.attempts[second.attempt].started_at is None
    sim.now = 6.0
    sim.send(Heartbeat(worker="w", inc="1", running=(first.attempt, second.attempt), queued=(second.attempt,),
                       progress=(Progress(attempt=second.attempt, records=3),)))
    assert sim.s.attempts[second.attempt].started_at == 6.0  # its progress says it runs


def test_an_attempt_finished_before_it_was_seen_to_start_counts_its_own_run_time():
    sim = Sim(2, 1)
    sim.hello("w")
    first, second = assigns(sim.send(Request(worker="w", inc="1", want=2)))
    sim.now = 10.0
    sim.done("w", first.attempt)
    sim.held["w"].discard(second.attempt)
    sim.send(Done(worker="w", inc="1", attempt=second.attempt, parts=(), stats=TaskStats(seconds=2.5)))
    task = sim.s.tasks[(MAP, second.index)]
    assert task.started_at == 7.5 and task.finished_at == 10.0
    assert sim.s.task_status(MAP, second.index, 10.0)["seconds"] == 2.5


def test_a_busy_worker_gets_no_backup_and_an_idle_one_does():
    sim = Sim(3, 1, speculation=True, speculation_min_seconds=1.0, speculation_factor=1.0)
    sim.hello("slow")
    sim.hello("fast")
    straggler = sim.assign("slow")
    a = sim.assign("fast")
    b = sim.assign("fast")
    sim.now = 1.0
    sim.done("fast", a.attempt)  # ran 1 s
    sim.now = 5.0
    sim.heartbeat("slow")
    sim.heartbeat("fast")
    assert sent(sim.request("fast"), Wait) == ["fast"]  # it still holds b
    sim.done("fast", b.attempt)
    backup = assigns(sim.request("fast"))
    assert [(x.kind, x.index) for x in backup] == [(MAP, straggler.index)]


# --- map output that lives only on its worker (no shared storage) ------------------------


def _fetch_failed(sim, worker, attempt, maps):
    sim.held[worker].discard(attempt)
    error = TaskError(kind="TransferFailed", message="no answer from tcp://h:1", host="h")
    return sim.send(Failed(worker=worker, inc=sim._inc(worker, None), attempt=attempt, error=error,
                           fetch_failed=tuple(maps)))


def _maps_on(sim, layout):
    """Run map task i on worker layout[i]; every worker registers first."""
    for worker in sorted(set(layout)):
        sim.hello(worker)
    for index, worker in enumerate(layout):
        a = sim.assign(worker)
        assert (a.kind, a.index) == (MAP, index)
        sim.done(worker, a.attempt)


def test_a_lost_workers_map_output_is_remade_while_finished_reduces_stay_finished():
    sim = Sim(3, 2, shared_storage=False)
    _maps_on(sim, ["w1", "w1", "w2"])
    assert sim.s.state == JobState.REDUCING
    r0 = sim.assign("w2")
    sim.done("w2", r0.attempt)
    sim.now = 4.0
    sim.heartbeat("w2")
    sim.tick(6.0)  # w1 is silent past the timeout: its two map outputs are gone with it
    assert "w1" not in sim.s.workers
    assert sim.state(REDUCE, r0.index) == TaskState.FINISHED
    other = 1 - r0.index
    assert sim.state(REDUCE, other) == TaskState.BLOCKED  # waits for the map output again
    assert [sim.state(MAP, i) for i in range(3)] == [TaskState.READY, TaskState.READY, TaskState.FINISHED]
    assert sim.s.state == JobState.MAPPING
    assert CounterValue("zmqmr", "map tasks re-run for lost output", 2) in sim.s.counter_values()
    for index in (0, 1):
        a = sim.assign("w2")
        assert (a.kind, a.index) == (MAP, index)
        sim.done("w2", a.attempt, parts=[PartFile(partition=p, path=f"new-{index}-{p}", size=1) for p in range(2)])
    assert sim.s.state == JobState.REDUCING
    r1 = sim.assign("w2")
    assert (r1.kind, r1.index) == (REDUCE, other)
    assert sim.s.tasks[(MAP, 0)].output[0].path == "new-0-0" and sim.s.tasks[(MAP, 0)].winner_worker == "w2"
    actions = sim.done("w2", r1.attempt)
    assert [a for a in actions if isinstance(a, CommitOutput)]


def test_output_the_driver_sees_outlives_its_worker():
    sim = Sim(2, 1)  # shared storage: the driver sees every map output file
    _maps_on(sim, ["w1", "w2"])
    sim.now = 4.0
    sim.heartbeat("w2")
    sim.tick(6.0)
    assert "w1" not in sim.s.workers
    assert sim.state(MAP, 0) == TaskState.FINISHED and sim.s.state == JobState.REDUCING
    assert sim.s.maps_rerun == 0


def test_a_reducer_that_cannot_fetch_gets_the_output_remade_and_the_holder_comes_back():
    sim = Sim(2, 1, shared_storage=False)
    _maps_on(sim, ["w1", "w2"])
    r = sim.assign("w2")
    actions = _fetch_failed(sim, "w2", r.attempt, [0])
    assert [a for a in actions if isinstance(a, AttemptFailed)]
    assert "w1" not in sim.s.workers  # its shuffle service is unreachable: lost, and its output with it
    assert sim.state(MAP, 0) == TaskState.READY and sim.state(MAP, 1) == TaskState.FINISHED
    reduce = sim.s.tasks[(REDUCE, 0)]
    assert reduce.state == TaskState.BLOCKED and reduce.failures == 0 and reduce.fetch_failures == 1
    # w1 speaks again: it is told to register, and may then take work like any worker.
    assert sim.heartbeat("w1") == [Send("w1", Reregister(reason="unknown worker; say hello"))]
    sim.held["w1"] = set()
    assert Greet("w1") in sim.hello("w1")
    a = sim.assign("w1")
    assert (a.kind, a.index) == (MAP, 0)
    sim.done("w1", a.attempt)
    again = sim.assign("w2")
    assert (again.kind, again.index) == (REDUCE, 0) and again.attempt != r.attempt
    assert sim.s.tasks[(MAP, 0)].finished_at == sim.now


def test_a_fetch_failure_about_output_remade_since_changes_nothing():
    sim = Sim(2, 1, shared_storage=False)
    _maps_on(sim, ["w1", "w2"])
    r = sim.assign("w2")
    sim.now = 1.0
    sim.tick(1.0)
    task = sim.s.tasks[(MAP, 0)]
    task.finished_at = 2.0  # as if map 0 had been re-made after the reduce attempt was handed out
    _fetch_failed(sim, "w2", r.attempt, [0])
    assert "w1" in sim.s.workers and task.state == TaskState.FINISHED
    assert sim.state(REDUCE, 0) == TaskState.READY


def test_a_reduce_that_can_never_fetch_fails_the_job_after_max_worker_losses():
    sim = Sim(1, 1, shared_storage=False, max_worker_losses=2)
    sim.hello("w2")
    for round_ in range(2):
        a = sim.assign("w2")
        assert a.kind == MAP
        sim.done("w2", a.attempt)
        r = sim.assign("w2")
        actions = _fetch_failed(sim, "w2", r.attempt, [0])
        sim.hello("w2") if "w2" not in sim.s.workers else None
    assert finished(actions) and not finished(actions)[0].ok
    assert "could not fetch its input 2 times" in sim.s.failure.reason


def test_reduces_not_yet_reducing_are_recalled_when_output_is_lost_and_reducing_ones_go_on():
    sim = Sim(2, 3, shared_storage=False)
    _maps_on(sim, ["w1", "w2"])
    sim.hello("w3")
    reducing = sim.assign("w2")
    sim.send(Heartbeat(worker="w2", inc="1", running=(reducing.attempt,),
                       progress=(Progress(attempt=reducing.attempt, records=5),)))  # past its fetches
    fetching = sim.assign("w3")
    queued = sim.assign("w3")  # a second one, held in w3's queue
    sim.now = 4.0
    sim.heartbeat("w2")
    sim.heartbeat("w3")
    actions = sim.tick(6.0)  # w1, holding map 0's output, is lost
    assert "w1" not in sim.s.workers
    cancelled = sorted(a.message.attempt for a in actions if isinstance(a, Send) and isinstance(a.message, Cancel))
    assert cancelled == sorted([fetching.attempt, queued.attempt])
    assert sim.state(REDUCE, reducing.index) == TaskState.RUNNING
    assert {sim.state(REDUCE, a.index) for a in (fetching, queued)} == {TaskState.BLOCKED}
    assert sim.s.tasks[(REDUCE, fetching.index)].failures == 0 and sim.s.workers["w3"].running == set()
    # Map 0 is made again; the recalled reduces run again, with its new location.
    again = sim.assign("w3")
    assert (again.kind, again.index) == (MAP, 0)
    sim.done("w3", again.attempt)
    assert {a.index for a in (sim.assign("w3"), sim.assign("w3"))} == {fetching.index, queued.index}
