"""The progress display: a live bar on a terminal (rich), a plain line every few seconds otherwise.

Both take the monitor's snapshots; neither reads the driver's state directly.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

log = logging.getLogger("zmqmr.driver")

LINE_INTERVAL = 5.0


def _clock(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _rate(snapshot: dict) -> str:
    return f"{snapshot['progress']['bytes_per_second'] / 1e6:.1f} MB/s"


def describe(snapshot: dict) -> str:
    """One line: tasks done per phase, workers, input rate, elapsed time and ETA."""
    p, job = snapshot["progress"], snapshot["job"]
    return (f"{job['state'].lower()}: maps {p['maps_done']}/{p['maps_total']}, "
            f"reduces {p['reduces_done']}/{p['reduces_total']}, {job['workers_alive']} workers, "
            f"{_rate(snapshot)}, elapsed {_clock(job['elapsed'])}, ETA {_clock(p['eta_seconds'])}")


class LineProgress:
    """For logs and pipes: a status line every LINE_INTERVAL seconds, and one at the end."""

    def __init__(self):
        self.last = time.monotonic()

    def update(self, snapshot: dict) -> None:
        now = time.monotonic()
        if now - self.last >= LINE_INTERVAL:
            self.last = now
            log.info("%s", describe(snapshot))

    def close(self, snapshot: dict) -> None:
        log.info("%s", describe(snapshot))


class TerminalProgress:
    """Two live bars (map and reduce tasks) with workers, MB/s, elapsed time and ETA."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bars = Progress(
            TextColumn("[bold]{task.description:>6}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), console=Console(file=stream), refresh_per_second=4,
        )
        self.maps = self.bars.add_task("map", total=None, info="")
        self.reduces = self.bars.add_task("reduce", total=None, info="")
        self.bars.start()

    def update(self, snapshot: dict) -> None:
        p, job = snapshot["progress"], snapshot["job"]
        info = (f"{_rate(snapshot)}  {job['workers_alive']} workers  elapsed {_clock(job['elapsed'])}  "
                f"ETA {_clock(p['eta_seconds'])}")
        self.bars.update(self.maps, total=p["maps_total"], completed=p["maps_done"], info=info)
        reduce_info = f"state {job['state'].lower()}"
        self.bars.update(self.reduces, total=p["reduces_total"], completed=p["reduces_done"], info=reduce_info)

    def close(self, snapshot: dict) -> None:
        self.update(snapshot)
        self.bars.stop()


def start_progress(stream):
    return TerminalProgress(stream) if stream.isatty() else LineProgress()
