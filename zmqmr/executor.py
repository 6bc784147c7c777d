"""The task process: user code runs here, apart from the worker's socket loop.

A CPU-bound mapper cannot starve the worker's heartbeats, and a mapper that kills its
process (os._exit, a segfault, the OOM killer) costs one attempt, not the worker. The
worker talks to it over a pipe with protocol-encoded messages.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
from typing import Optional

import msgpack

from . import counters, protocol
from .errors import JobLoadError, ProtocolError, UserCodeError
from .job import load_job
from .procutil import describe_exit, die_with_parent
from .tasks import (ATTEMPT, IN_BLOCK, LINE, OFFSET, PROGRESS_SLOTS, RECORDS, SEGMENT, BadRecords, NoProgress,
                    progress_of, run_map, run_reduce)
from .usercode import user_traceback


def map_output_dir(work_dir: str, job_id: str, index: int, attempt: int) -> str:
    return os.path.join(work_dir, job_id, f"map-{index:05d}-a{attempt}")


def reduce_output_path(output_dir: str, index: int, attempt: int) -> str:
    return os.path.join(output_dir, f"attempt-{attempt}", f"part-{index:05d}")


def run_assignment(welcome: protocol.Welcome, task: protocol.Task, work_dir: str,
                   worker: str, inc: str, progress=NoProgress()) -> protocol.Message:
    """Run one attempt and describe its end as the Done or Failed message for the driver."""
    host = socket.gethostname()
    counters.start_attempt()
    for slot, value in ((ATTEMPT, task.attempt), (RECORDS, 0), (SEGMENT, -1), (OFFSET, -1), (LINE, 0), (IN_BLOCK, 0)):
        progress[slot] = value
    limit = welcome.job.skip_bad_records
    bad = BadRecords(limit, task.skip) if limit >= 0 else None
    try:
        job = load_job(welcome.job)
        if task.kind == "map":
            out_dir = map_output_dir(work_dir, welcome.job_id, task.index, task.attempt)
            parts, stats = run_map(job, task.segments, welcome.reducers, out_dir,
                                   welcome.job.encoding, welcome.job.encoding_errors, progress, bad,
                                   memory_limit=welcome.job.memory_limit)
            done = dict(parts=tuple(parts))
        else:
            out_path = reduce_output_path(task.output_dir, task.index, task.attempt)
            stats = run_reduce(job, task.inputs, out_path, progress, bad, memory_limit=welcome.job.memory_limit)
            done = dict(output=out_path)
        if bad is not None:
            done.update(bad_records=tuple(bad.found), bad_count=bad.count)
        return protocol.Done(worker=worker, inc=inc, attempt=task.attempt, kind=task.kind, index=task.index,
                             job_id=task.job_id, stats=stats, counters=counters.attempt_counters(), **done)
    except UserCodeError as exc:
        error = protocol.TaskError(kind="UserCodeError", message=_clip(exc.message),
                                   traceback=_clip(exc.traceback_text), location=_clip(exc.location), host=host)
    except JobLoadError as exc:
        error = protocol.TaskError(kind="JobLoadError", message=_clip(str(exc)), host=host)
    except OSError as exc:
        error = protocol.TaskError(kind=type(exc).__name__, message=_clip(str(exc)), host=host)
    except Exception as exc:  # a bug in zmqmr: report it in full rather than hang the job
        error = protocol.TaskError(kind=type(exc).__name__, message=_clip(f"internal error: {exc}"),
                                   traceback=_clip(user_traceback(exc)), host=host)
    return protocol.Failed(worker=worker, inc=inc, attempt=task.attempt, error=error)


def _clip(text: str, limit: int = protocol.MAX_TEXT_LEN) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n...(cut)"


def _child_main(conn, progress, parent_pid: int, worker: str, inc: str) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the worker's to handle
    while True:
        try:
            request = msgpack.unpackb(conn.recv_bytes())
        except (EOFError, OSError):
            return
        welcome = protocol.decode(request["welcome"], protocol.TO_WORKER)
        task = protocol.decode(request["task"], protocol.TO_WORKER)
        reply = run_assignment(welcome, task, request["work_dir"], worker, inc, progress)
        try:
            frame = protocol.encode(reply)
        except ProtocolError as exc:
            error = protocol.TaskError(kind="ProtocolError", host=socket.gethostname(),
                                       message=f"the attempt's report cannot be sent to the driver: {exc}")
            frame = protocol.encode(protocol.Failed(worker=worker, inc=inc, attempt=task.attempt, error=error))
        conn.send_bytes(frame)


class Executor:
    """Handle on the task process, owned by the worker's loop."""

    def __init__(self, worker: str, inc: str, start_method: str = "fork"):
        context = multiprocessing.get_context(start_method)
        self.conn, child_conn = context.Pipe()
        self.progress = context.RawArray("q", PROGRESS_SLOTS)
        self.process = context.Process(
            target=_child_main, args=(child_conn, self.progress, os.getpid(), worker, inc), name="zmqmr-task"
        )
        self.process.start()
        child_conn.close()

    def fileno(self) -> int:
        return self.conn.fileno()

    def submit(self, welcome_frame: bytes, task_frame: bytes, work_dir: str) -> None:
        self.conn.send_bytes(msgpack.packb({"welcome": welcome_frame, "task": task_frame, "work_dir": work_dir}))

    def receive(self) -> Optional[bytes]:
        """The reply frame, or None when the process has died."""
        try:
            return self.conn.recv_bytes()
        except (EOFError, OSError):
            return None

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
