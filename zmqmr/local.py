"""zmqmr-local: a driver in this process and N worker processes, cleaned up however it ends."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Sequence

from .driver import Driver, DriverSettings
from .plan import JobPlan
from .procutil import describe_exit

log = logging.getLogger("zmqmr.local")

WORKER_EXIT_WAIT = 5.0


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_workers(endpoint: str, count: int, options: Sequence[str] = ()) -> List[subprocess.Popen]:
    """Start worker processes that die with this process (zmqmr need not be installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_parent(), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "zmqmr", "worker", "--driver", endpoint, "--parent-pid", str(os.getpid()),
               *options]
    return [subprocess.Popen(command + ["--name", local_worker_name(i)], env=env, stdin=subprocess.DEVNULL)
            for i in range(count)]


def all_gone(workers: List[subprocess.Popen]) -> str:
    """Why the job cannot go on if no local worker is left, else ""."""
    if any(proc.poll() is None for proc in workers):
        return ""
    ends = ", ".join(f"{local_worker_name(i)} {describe_exit(p.returncode)}" for i, p in enumerate(workers))
    return f"every local worker has exited ({ends})"


def local_worker_name(index: int) -> str:
    return f"local-{index}"


def stop_workers(workers: List[subprocess.Popen], told: Sequence[bool] = (), wait: float = WORKER_EXIT_WAIT) -> None:
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
    procs: List[subprocess.Popen] = []
    try:
        endpoint = driver.bind()
        procs = start_workers(endpoint, workers, worker_options)
        driver.health_checks.append(lambda: all_gone(procs))
        code = driver.run()
        told = driver.scheduler.told_exit()
        stop_workers(procs, [local_worker_name(i) in told for i in range(workers)])
        return code
    finally:
        stop_workers(procs)
        driver.close()
        if own_work_dir:
            shutil.rmtree(own_work_dir, ignore_errors=True)
