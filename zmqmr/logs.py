"""Logging for the driver and workers: terminal, optional file, optional JSON lines.

Per-task events (assigned, finished) go to the logger TASK_EVENTS; on a terminal with
a live progress bar they are left out (the bar shows them), unless -v.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Optional

TASK_EVENTS = "zmqmr.events.task"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now, so a live progress display can redirect it."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, logger, message, and any extra fields."""

    def __init__(self, process: str):
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "process": self.process, "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class DropTaskEvents(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != TASK_EVENTS


def setup_logging(process: str, terminal_level: int, file_level: int, log_file: Optional[str] = None,
                  as_json: bool = False, hide_task_events: bool = False) -> None:
    if as_json:
        formatter: logging.Formatter = JsonFormatter(process)
    else:
        formatter = logging.Formatter(f"%(asctime)s {process} %(levelname)s %(message)s", "%H:%M:%S")
    terminal = CurrentStderrHandler()
    terminal.setLevel(terminal_level)
    terminal.setFormatter(formatter)
    if hide_task_events:
        terminal.addFilter(DropTaskEvents())
    handlers = [terminal]
    if log_file:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setLevel(file_level)
        to_file.setFormatter(formatter if as_json else logging.Formatter(
            f"%(asctime)s.%(msecs)03d {process} %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handlers.append(to_file)
    root = logging.getLogger("zmqmr")
    root.handlers[:] = handlers
    root.setLevel(min(h.level for h in handlers))
    root.propagate = False
