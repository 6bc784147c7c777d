"""What the user sees of a running job: snapshots, failure reports and the counters.

The driver's loop calls in here; nothing here changes the job. A snapshot is a plain
dict rebuilt at most every SNAPSHOT_INTERVAL and swapped in whole, so the status
page's thread and the progress display read it without locks.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from typing import Deque, Dict, Optional, Sequence

from . import counters, protocol
from .scheduler import MAP, REDUCE, AttemptFailed, JobFailure, Scheduler, TaskState

log = logging.getLogger("zmqmr.driver")

SNAPSHOT_INTERVAL = 0.5
RECENT_ERRORS = 20


def split_bytes(segments: Sequence[protocol.Segment]) -> int:
    return sum(s.end - s.start for s in segments)


class Monitor:
    def __init__(self, scheduler: Scheduler, job_id: str, job_name: str, output: str,
                 split_sizes: Sequence[int], input_files: int, input_bytes: int):
        self.scheduler = scheduler
        self.job_id = job_id
        self.job_name = job_name
        self.output = output
        self.split_sizes = list(split_sizes)
        self.input_files = input_files
        self.input_bytes = input_bytes
        self.errors: Deque[dict] = deque(maxlen=RECENT_ERRORS)
        self.reported = set()
        self.dropped: Dict[str, int] = {}
        self.snapshot: dict = {}
        self.snapshot_at = float("-inf")
        self.build_seconds = 0.0
        self.detailed = True  # per-task and per-worker tables; only the status page needs them
        self.listeners = []

    # --- events ---------------------------------------------------------------------

    def attempt_failed(self, event: AttemptFailed, host: str = "") -> None:
        """Show the user's traceback at once, the first time an error is seen; one line after that."""
        error = event.error
        task = f"{event.kind} task {event.index}"
        self.errors.append({
            "time": time.time(), "task": f"{event.kind} {event.index}", "attempt": event.attempt,
            "worker": event.worker, "host": error.host or host, "kind": error.kind, "message": error.message,
            "location": error.location, "traceback": error.traceback,
        })
        signature = (error.kind, error.message, error.traceback)
        if signature in self.reported:
            log.warning("%s attempt %d failed again on %s: %s", task, event.attempt, event.worker, error.message)
            return
        self.reported.add(signature)
        lines = [f"{task} attempt {event.attempt} failed on worker {event.worker}"
                 + (f" (host {error.host})" if error.host else "")]
        lines += describe_error(error)
        log.error("%s", "\n".join(lines))

    def refresh(self, now: float, force: bool = False) -> dict:
        """Rebuild the snapshot every SNAPSHOT_INTERVAL, or less often when building it is slow
        (a job of a hundred thousand tasks), so that it never takes more than 5% of the loop."""
        if force or now - self.snapshot_at >= max(SNAPSHOT_INTERVAL, 20 * self.build_seconds):
            started = time.monotonic()
            self.snapshot = self.build(now)
            self.build_seconds = time.monotonic() - started
            self.snapshot_at = now
            for listener in self.listeners:
                listener(self.snapshot)
        return self.snapshot

    # --- building -------------------------------------------------------------------

    def counter_totals(self) -> Dict[str, Dict[str, int]]:
        dropped = sum(self.dropped.values()) + sum(self.scheduler.dropped.values())
        extra = [protocol.CounterValue(counters.FRAMEWORK, "bad messages dropped", dropped)]
        return counters.total(self.scheduler.counter_values() + extra)

    def build(self, now: float) -> dict:
        scheduler = self.scheduler
        job = scheduler.job_status(now)
        job["dropped_messages"] = {**job["dropped_messages"], **self.dropped}
        job.update(job_id=self.job_id, job=self.job_name, output=self.output, inputs=self.input_files,
                   input_bytes=self.input_bytes)
        return {
            "job": job,
            "progress": self._progress(now, job["elapsed"]),
            "tasks": scheduler.tasks_status(now) if self.detailed else [],
            "workers": scheduler.workers_status(now) if self.detailed else [],
            "counters": self.counter_totals(),
            "errors": list(self.errors),
        }

    def _progress(self, now: float, elapsed: float) -> dict:
        scheduler = self.scheduler
        maps = [scheduler.tasks[(MAP, i)] for i in range(scheduler.num_maps)]
        maps_done = [t for t in maps if t.state == TaskState.FINISHED]
        bytes_done = sum(self.split_sizes[t.index] for t in maps_done)
        bytes_total = sum(self.split_sizes)
        reduces_done = scheduler.finished_counts[REDUCE]
        rate = bytes_done / elapsed if elapsed > 0 else 0.0
        return {
            "maps_done": len(maps_done), "maps_total": scheduler.num_maps,
            "reduces_done": reduces_done, "reduces_total": scheduler.num_reduces,
            "map_bytes_done": bytes_done, "map_bytes_total": bytes_total,
            "bytes_per_second": round(rate, 1), "eta_seconds": self._eta(now, bytes_done, bytes_total),
        }

    def _eta(self, now: float, bytes_done: int, bytes_total: int) -> Optional[float]:
        """Remaining time of the current phase at its rate so far; None until there is a rate."""
        scheduler = self.scheduler
        if scheduler.started_at is None or scheduler.ended_at is not None:
            return None if scheduler.ended_at is None else 0.0
        if scheduler.finished_counts[MAP] < scheduler.num_maps:
            if bytes_done == 0:
                return None
            return round((bytes_total - bytes_done) * (now - scheduler.started_at) / bytes_done, 1)
        opened = scheduler.reduce_opened_at or now
        done = scheduler.finished_counts[REDUCE]
        if done == 0:
            return None
        return round((scheduler.num_reduces - done) * (now - opened) / done, 1)


def describe_error(error: protocol.TaskError, host: bool = False) -> list:
    lines = [f"  error:  {error.kind}: {error.message}"]
    if error.location:
        lines.append(f"  input:  {error.location}")
    if host and error.host:
        lines.append(f"  host:   {error.host}")
    if error.traceback:
        lines.append("")
        lines += ["  " + line for line in error.traceback.splitlines()]
    return lines


def failure_report(failure: Optional[JobFailure], job_id: str) -> str:
    """What the user reads when a job fails: which task, where in the input, and the traceback."""
    if failure is None:
        return "zmqmr: job failed"
    lines = [f"zmqmr: job {job_id} failed: {failure.reason}"]
    if failure.error is not None:
        lines += describe_error(failure.error, host=True)
    lines.append("no _SUCCESS was written; the output directory holds no partial results")
    return "\n".join(lines)


def print_counters(totals: Dict[str, Dict[str, int]], stream=None) -> None:
    print(counters.format_table(totals), file=stream or sys.stderr, flush=True)
