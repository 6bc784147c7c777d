"""The task process: user code runs here, apart from the worker's socket loop.

A CPU-bound mapper cannot starve the worker's heartbeats, and a mapper that kills its
process (os._exit, a segfault, the OOM killer) costs one attempt, not the worker. The
worker talks to it over a pipe: batches of tasks one way, their reports (already encoded as
items of the worker's next batch to the driver) the other.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import counters, protocol
from .errors import JobLoadError, UserCodeError
from .job import Job, load_job
from .procutil import describe_exit, die_with_parent
from .transfer import Peers, TransferFailed, fetch_map_outputs, readable_input, stage_segment, upload
from .workdir import shares
from .tasks import (ATTEMPT, IN_BLOCK, LINE, OFFSET, PROGRESS_SLOTS, RECORDS, SEGMENT, BadRecords, NoProgress,
                    progress_of, run_map, run_reduce)
from .usercode import user_traceback


_HOST = socket.gethostname()
REPORT_FLUSH_SECONDS = 0.02  # a batch's finished reports go back at least this often
MAX_REPORT_BYTES = protocol.MAX_DRIVER_MESSAGE_BYTES - 64 * 1024  # room for the batch around it


def map_output_dir(work_dir: str, job_id: str, index: int, attempt: int) -> str:
    return os.path.join(work_dir, job_id, f"map-{index:05d}-a{attempt}")


def reduce_output_path(output_dir: str, index: int, attempt: int) -> str:
    return os.path.join(output_dir, f"attempt-{attempt}", f"part-{index:05d}")


def attempt_scratch(work_dir: str, job_id: str, kind: str, attempt: int) -> str:
    """Where an attempt keeps what it fetched or staged; removed when it ends."""
    return os.path.join(work_dir, job_id, f"{kind}-a{attempt}-scratch")


@dataclass(frozen=True)
class Reach:
    """How a task process reaches what is not on its host: the driver (input and output staged
    through it) and its sockets. `worker` and `inc` name the worker in what it sends."""

    worker: str
    inc: str
    driver: str = ""
    peers: Peers = field(default_factory=Peers)


def run_assignment(welcome: protocol.Welcome, task: protocol.Task, work_dir: str,
                   worker: str, inc: str, progress=NoProgress(), job: Optional[Job] = None,
                   reach: Optional[Reach] = None) -> protocol.Message:
    """Run one attempt and describe its end as the Done or Failed message for the driver.

    `job`: the job `welcome` names, already loaded (the task process loads it once per job).
    `reach`: how to get input, map output and the output directory that this host cannot see."""
    counters.start_attempt()
    progress[ATTEMPT] = task.attempt
    progress[RECORDS] = 0
    progress[SEGMENT] = progress[OFFSET] = -1
    progress[LINE] = progress[IN_BLOCK] = 0
    spec = welcome.job
    bad = BadRecords(spec.skip_bad_records, task.skip) if spec.skip_bad_records >= 0 else None
    reach = reach or Reach(worker, inc)
    scratch = attempt_scratch(work_dir, welcome.job_id, task.kind, task.attempt)
    staging = _segments_to_stage(welcome, task, reach) if task.kind == "map" else ()
    uses_scratch = task.kind != "map" or bool(staging)  # a map attempt makes one only to stage input
    try:
        if job is None:
            job = load_job(spec)
        if task.kind == "map":
            out_dir = map_output_dir(work_dir, welcome.job_id, task.index, task.attempt)
            segments = _staged_segments(task, staging, scratch, reach)
            parts, stats = run_map(job, segments, welcome.reducers, out_dir, spec.encoding,
                                   spec.encoding_errors, progress, bad, memory_limit=spec.memory_limit)
            if bad is None:
                return protocol.Done(worker=worker, inc=inc, attempt=task.attempt, kind=task.kind, index=task.index,
                                     job_id=task.job_id, stats=stats, counters=counters.attempt_counters(),
                                     parts=tuple(parts))
            done = dict(parts=tuple(parts))
        else:
            roots = [os.path.join(d, welcome.job_id) for d in (work_dir, welcome.work_dir) if d]
            inputs = fetch_map_outputs(task.sources, os.path.join(scratch, "fetched"), reach.peers, roots)
            _check_output_dir(task.output_dir, welcome.job_id)
            out_path = reduce_output_path(task.output_dir, task.index, task.attempt)
            if _uploads(welcome, task.output_dir, reach):
                local = os.path.join(scratch, os.path.basename(out_path))
                stats = run_reduce(job, inputs, local, progress, bad, memory_limit=spec.memory_limit)
                upload(local, task.attempt, reach.driver, worker, inc, reach.peers)
            else:
                stats = run_reduce(job, inputs, out_path, progress, bad, memory_limit=spec.memory_limit)
            done = dict(output=out_path)
        if bad is not None:
            done.update(bad_records=tuple(bad.found), bad_count=bad.count)
        return protocol.Done(worker=worker, inc=inc, attempt=task.attempt, kind=task.kind, index=task.index,
                             job_id=task.job_id, stats=stats, counters=counters.attempt_counters(), **done)
    except TransferFailed as exc:
        error = protocol.TaskError(kind="TransferFailed", message=_clip(str(exc)), host=_HOST)
        return protocol.Failed(worker=worker, inc=inc, attempt=task.attempt, error=error, fetch_failed=exc.maps)
    except UserCodeError as exc:
        error = protocol.TaskError(kind="UserCodeError", message=_clip(exc.message),
                                   traceback=_clip(exc.traceback_text), location=_clip(exc.location), host=_HOST)
    except JobLoadError as exc:
        error = protocol.TaskError(kind="JobLoadError", message=_clip(str(exc)), host=_HOST)
    except OSError as exc:
        error = protocol.TaskError(kind=type(exc).__name__, message=_clip(str(exc)), host=_HOST)
    except Exception as exc:  # a bug in zmqmr: report it in full rather than hang the job
        error = protocol.TaskError(kind=type(exc).__name__, message=_clip(f"internal error: {exc}"),
                                   traceback=_clip(user_traceback(exc)), host=_HOST)
    finally:
        if uses_scratch and os.path.isdir(scratch):
            shutil.rmtree(scratch, ignore_errors=True)
    return protocol.Failed(worker=worker, inc=inc, attempt=task.attempt, error=error)


def staged_input_path(scratch: str, segment: int) -> str:
    """Where a map attempt keeps its copy of a segment read from the driver (see --staging)."""
    return os.path.join(scratch, f"input-{segment:05d}")


def as_read(task: protocol.Task, work_dir: str, job_id: str) -> protocol.Task:
    """The task as its attempt reads it: segments copied from the driver point at their copies, so a
    record's position is worked out in the bytes the attempt reads."""
    if task.kind != "map":
        return task
    scratch = attempt_scratch(work_dir, job_id, "map", task.attempt)
    if not os.path.isdir(scratch):  # nothing staged (one look, however many segments)
        return task
    staged = [p if os.path.exists(p) else None
              for p in (staged_input_path(scratch, i) for i in range(len(task.segments)))]
    if not any(staged):
        return task
    return dataclasses.replace(task, segments=tuple(
        dataclasses.replace(s, path=p) if p else s for s, p in zip(task.segments, staged)))


def _check_output_dir(output_dir: str, job_id: str) -> None:
    """A reduce writes only into OUTPUT/_temporary/JOB: whatever a driver sends, nowhere else."""
    parent, name = os.path.split(os.path.normpath(output_dir))
    if not os.path.isabs(output_dir) or name != job_id or os.path.basename(parent) != "_temporary":
        raise OSError(f"the driver named {output_dir!r} as the output directory, not OUTPUT/_temporary/{job_id}")


def _segments_to_stage(welcome: protocol.Welcome, task: protocol.Task, reach: Reach) -> Tuple[int, ...]:
    """Which of the task's segments this host cannot read and must copy from the driver (--staging)."""
    if welcome.staging == "never" or not reach.driver:
        return ()
    return tuple(i for i, segment in enumerate(task.segments)
                 if welcome.staging == "always" or not readable_input(segment))


def _staged_segments(task: protocol.Task, staging: Tuple[int, ...], scratch: str, reach: Reach):
    """The task's segments, those in `staging` copied from the driver first and read from their copies."""
    if not staging:
        return task.segments
    segments = list(task.segments)
    for i in staging:
        segments[i] = stage_segment(segments[i], i, task.attempt, staged_input_path(scratch, i),
                                    reach.driver, reach.worker, reach.inc, reach.peers)
    return segments


def _uploads(welcome: protocol.Welcome, output_dir: str, reach: Reach) -> bool:
    """Whether reduce output goes to the driver over the socket: always, or when this host does not
    see the driver's output directory (its probe file says)."""
    if welcome.staging == "never" or not reach.driver:
        return False
    return welcome.staging == "always" or not shares(output_dir, welcome.probe)


def _clip(text: str, limit: int = protocol.MAX_TEXT_LEN) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n...(cut)"


def report_item(report: protocol.Message, worker: str, inc: str) -> bytes:
    """The report as a batch item; one the driver's socket would refuse for its size says so instead."""
    item = protocol.encode_item(report)
    if len(item) <= MAX_REPORT_BYTES:
        return item
    message = f"the attempt's report cannot be sent to the driver: {len(item)} bytes, more than {MAX_REPORT_BYTES}"
    error = protocol.TaskError(kind="ProtocolError", message=message, host=_HOST)
    return protocol.encode_item(protocol.Failed(worker=worker, inc=inc, attempt=report.attempt, error=error))


class _Jobs:
    """The task process's jobs by id: each Welcome decoded, and its code loaded, once."""

    def __init__(self):
        self.welcomes: Dict[str, protocol.Welcome] = {}
        self.loaded: Dict[str, Job] = {}

    def get(self, job_id: str, welcome_frame: Optional[bytes]) -> Tuple[protocol.Welcome, Optional[Job]]:
        if welcome_frame is not None:
            self.welcomes[job_id] = protocol.decode(welcome_frame, protocol.TO_WORKER)
            self.loaded.pop(job_id, None)
        welcome = self.welcomes[job_id]
        job = self.loaded.get(job_id)
        if job is None:
            try:
                job = self.loaded[job_id] = load_job(welcome.job)
            except JobLoadError:
                job = None  # run_assignment loads it again and reports the failure per attempt
        return welcome, job


def _child_main(conn, progress, parent_pid: int, worker: str, inc: str, driver: str, keys) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    jobs = _Jobs()
    reach = Reach(worker, inc, driver, Peers(keys))
    while True:
        try:
            job_id, welcome_frame, work_dir, tasks = conn.recv()
        except (EOFError, OSError):
            return
        welcome, job = jobs.get(job_id, welcome_frame)
        reports = []
        flushed = time.monotonic()
        for position, task in enumerate(tasks, start=1):
            started = time.monotonic()
            report = run_assignment(welcome, task, work_dir, worker, inc, progress, job, reach)
            progress[ATTEMPT] = 0  # between attempts: a death now is no attempt's fault
            now = time.monotonic()
            reports.append((task.attempt, now - started, report_item(report, worker, inc)))
            if now - flushed >= REPORT_FLUSH_SECONDS and position < len(tasks):  # the last goes with "over"
                conn.send((False, reports))  # a long task later in the batch must not hold these back
                reports, flushed = [], now
        conn.send((True, reports))


class Executor:
    """Handle on the task process, owned by the worker's loop.

    The worker hands it a batch of tasks at once and gets their reports back in one or a few
    messages; the job's Welcome crosses the pipe once per job."""

    def __init__(self, worker: str, inc: str, start_method: str = "fork", driver: str = "", keys=None):
        context = multiprocessing.get_context(start_method)
        self.conn, child_conn = context.Pipe()
        self.progress = context.RawArray("q", PROGRESS_SLOTS)
        self.process = context.Process(
            target=_child_main, args=(child_conn, self.progress, os.getpid(), worker, inc, driver, keys),
            name="zmqmr-task")
        self.process.start()
        child_conn.close()
        self.jobs_sent: set = set()
        self.busy = False  # a batch was submitted and its last reply ("over") has not come back

    def fileno(self) -> int:
        return self.conn.fileno()

    def submit(self, welcome_frame: bytes, job_id: str, tasks: List[protocol.Task], work_dir: str) -> None:
        """Run these tasks, in order; `receive` then yields their reports."""
        welcome = None if job_id in self.jobs_sent else welcome_frame
        self.jobs_sent.add(job_id)
        self.conn.send((job_id, welcome, work_dir, tasks))
        self.busy = True

    def receive(self) -> Optional[Tuple[bool, List[Tuple[int, float, bytes]]]]:
        """(whether the batch is over, [(attempt, seconds, report item)]), or None when the process died."""
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            return None
        if reply[0]:
            self.busy = False
        return reply

    def running_attempt(self) -> int:
        """The attempt the task process is running now, or 0."""
        return self.progress[ATTEMPT]

    def progress_of(self, task: protocol.Task) -> Optional[protocol.Progress]:
        """Records read by `task`'s attempt so far, and where its current record starts."""
        return progress_of(self.progress[:PROGRESS_SLOTS], task)

    def death_reason(self) -> str:
        self.process.join(timeout=1.0)
        return f"the task process {describe_exit(self.process.exitcode)}"

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5.0)
        self.conn.close()
