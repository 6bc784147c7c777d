"""zmqmr-local: a driver in this process and N worker processes forked from it, cleaned up however it ends."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from .driver import Driver, DriverSettings
from .plan import JobPlan
from .procutil import describe_exit

log = logging.getLogger("zmqmr.local")

WORKER_EXIT_WAIT = 5.0


class ForkedWorker:
    """A worker process forked from this one, before this process has a ZeroMQ context. It waits
    for the driver's endpoint on a pipe, so it starts while the driver binds, with nothing to
    import. Has the parts of subprocess.Popen that the rest of this module uses."""

    def __init__(self, pid: int, endpoint_pipe: int):
        self.pid = pid
        self.endpoint_pipe = endpoint_pipe
        self.returncode: Optional[int] = None

    def send_endpoint(self, endpoint: str) -> None:
        try:
            os.write(self.endpoint_pipe, endpoint.encode() + b"\n")
        except OSError:
            pass  # it died already; all_gone will say so
        self.close_pipe()

    def close_pipe(self) -> None:
        if self.endpoint_pipe >= 0:
            os.close(self.endpoint_pipe)
            self.endpoint_pipe = -1

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def fork_workers(count: int, options: Sequence[str] = ()) -> List[ForkedWorker]:
    """Fork `count` workers that start work once `send_endpoint` tells them where the driver is."""
    from .cli import worker_main

    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    workers: List[ForkedWorker] = []
    for i in range(count):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(write_end)
                for sibling in workers:
                    sibling.close_pipe()
                endpoint = _read_line(read_end)
                if endpoint:
                    code = worker_main(["--driver", endpoint, "--parent-pid", str(parent),
                                        "--name", local_worker_name(i), *options])
            except BaseException:  # nothing may escape into the launcher's code
                code = 1
            finally:
                os._exit(code)
        os.close(read_end)
        workers.append(ForkedWorker(pid, write_end))
    return workers


def _read_line(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            return ""
        data += chunk
    os.close(fd)
    return data.decode().strip()


def all_gone(workers: List[ForkedWorker]) -> str:
    """Why the job cannot go on if no local worker is left, else ""."""
    if any(proc.poll() is None for proc in workers):
        return ""
    ends = ", ".join(f"{local_worker_name(i)} {describe_exit(p.returncode)}" for i, p in enumerate(workers))
    return f"every local worker has exited ({ends})"


def local_worker_name(index: int) -> str:
    return f"local-{index}"


def stop_workers(workers: List[ForkedWorker], told: Sequence[bool] = (), wait: float = WORKER_EXIT_WAIT) -> None:
    """Give workers that were told the job is over a moment to leave by themselves, then kill the rest.

    A worker that started too late to take part was never told; it is killed at once
    rather than left waiting for a driver that is gone.
    """
    deadline = time.monotonic() + wait
    for proc, was_told in zip(workers, told):
        if was_told:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    for proc in workers:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_local(plan: JobPlan, settings: DriverSettings, workers: int, worker_options: Sequence[str] = ()) -> int:
    """Run the job with `workers` local worker processes, started with `worker_options` (logging)."""
    own_work_dir = None
    if not plan.work_dir:
        own_work_dir = plan.work_dir = tempfile.mkdtemp(prefix="zmqmr-local-")
        plan.journaled = False  # nothing could resume from a directory removed at exit
    driver = Driver(plan, settings)
    procs: List[ForkedWorker] = []
    try:
        procs = fork_workers(workers, worker_options)  # before any ZeroMQ context exists here
        endpoint = driver.bind()
        for proc in procs:
            proc.send_endpoint(endpoint)
        driver.health_checks.append(lambda: all_gone(procs))
        code = driver.run()
        told = driver.scheduler.told_exit()
        stop_workers(procs, [local_worker_name(i) in told for i in range(workers)])
        return code
    finally:
        for proc in procs:
            proc.close_pipe()  # a worker still waiting for the endpoint leaves
        stop_workers(procs)
        driver.close()
        if own_work_dir:
            shutil.rmtree(own_work_dir, ignore_errors=True)
