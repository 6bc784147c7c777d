"""The driver's journal: what a restarted driver needs to go on without redoing finished work.

One JSON object per line in WORK_DIR/journal.zmqmr (see docs/journal.md). The first
line holds the job's plan; then a line per finished task, fsync'ed as it is written, and
attempt-id watermarks so a restarted driver never reuses an attempt id.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import __version__, protocol
from .errors import UsageError

JOURNAL_NAME = "journal.zmqmr"
FORMAT = 1
ATTEMPT_BLOCK = 1000  # attempt ids are reserved in blocks, one journal line each


class JournalError(UsageError):
    """A journal that cannot be used: another job's, another version's, or unreadable."""


def journal_path(work_dir: str) -> str:
    return os.path.join(work_dir, JOURNAL_NAME)


@dataclass(frozen=True)
class JournalPlan:
    """The job as first planned: enough to resume it with `--resume WORK_DIR` alone."""

    job_id: str
    job: protocol.JobSpec
    inputs: Tuple[Tuple[str, str, int, bool, int], ...]  # key, path, size, gzip, mtime_ns
    splits: Tuple[Tuple[protocol.Segment, ...], ...]
    reducers: int
    output: str
    work_dir: str

    def fingerprint(self) -> str:
        """Changes when anything that decides the answer changes: the code, the input, the shape."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self._fields(), sort_keys=True).encode())
        return digest.hexdigest()

    def _fields(self) -> Dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job": protocol.to_fields(self.job),
            "inputs": [list(i) for i in self.inputs],
            "splits": [[protocol.to_fields(s) for s in split] for split in self.splits],
            "reducers": self.reducers,
            "output": self.output,
            "work_dir": self.work_dir,
        }

    def to_header(self) -> Dict[str, Any]:
        return {"t": "job", "format": FORMAT, "zmqmr": __version__, "created": time.time(),
                "fingerprint": self.fingerprint(), "plan": self._fields()}

    @classmethod
    def from_header(cls, header: Dict[str, Any], path: str) -> "JournalPlan":
        try:
            plan = header["plan"]
            return cls(
                job_id=plan["job_id"],
                job=protocol.from_fields(protocol.JobSpec, plan["job"], "job"),
                inputs=tuple((k, p, int(s), bool(g), int(m)) for k, p, s, g, m in plan["inputs"]),
                splits=tuple(tuple(protocol.from_fields(protocol.Segment, s, "segment") for s in split)
                             for split in plan["splits"]),
                reducers=int(plan["reducers"]),
                output=plan["output"],
                work_dir=plan["work_dir"],
            )
        except (KeyError, TypeError, ValueError, protocol.ProtocolError) as exc:
            raise JournalError(f"the journal {path} has a damaged first line ({exc})") from None


@dataclass(frozen=True)
class FinishedTask:
    kind: str
    index: int
    attempt: int
    parts: Tuple[protocol.PartFile, ...]
    output: str
    stats: protocol.TaskStats
    counters: Tuple[protocol.CounterValue, ...]
    bad_records: Tuple[protocol.BadRecord, ...]
    bad_count: int

    def to_line(self) -> Dict[str, Any]:
        return {"t": "finished", "kind": self.kind, "index": self.index, "attempt": self.attempt,
                "parts": [protocol.to_fields(p) for p in self.parts], "output": self.output,
                "stats": protocol.to_fields(self.stats),
                "counters": [protocol.to_fields(c) for c in self.counters],
                "bad_records": [protocol.to_fields(b) for b in self.bad_records], "bad_count": self.bad_count}

    @classmethod
    def from_line(cls, line: Dict[str, Any]) -> "FinishedTask":
        return cls(
            kind=line["kind"], index=int(line["index"]), attempt=int(line["attempt"]),
            parts=tuple(protocol.from_fields(protocol.PartFile, p, "part") for p in line["parts"]),
            output=line["output"],
            stats=protocol.from_fields(protocol.TaskStats, line["stats"], "stats"),
            counters=tuple(protocol.from_fields(protocol.CounterValue, c, "counter") for c in line["counters"]),
            bad_records=tuple(protocol.from_fields(protocol.BadRecord, b, "bad") for b in line["bad_records"]),
            bad_count=int(line["bad_count"]),
        )


@dataclass
class Replay:
    plan: JournalPlan
    finished: List[FinishedTask]
    attempts_below: int  # every attempt id the old driver may have used is below this
    created: float = 0.0  # when the job's journal was started (time.time())


def read(work_dir: str) -> Optional[Replay]:
    """The journal in work_dir, or None if there is none. A torn last line is ignored."""
    path = journal_path(work_dir)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise JournalError(f"cannot read the journal {path}: {exc.strerror}") from None
    records = list(_parse(lines, path))
    if not records or records[0].get("t") != "job":
        raise JournalError(f"{path} is not a zmqmr journal")
    header = records[0]
    if header.get("format") != FORMAT:
        raise JournalError(f"the journal {path} has format {header.get('format')!r}; this zmqmr "
                           f"({__version__}) reads format {FORMAT}")
    plan = JournalPlan.from_header(header, path)
    if plan.fingerprint() != header.get("fingerprint"):
        raise JournalError(f"the journal {path} is damaged: its plan does not match its fingerprint")
    finished, below = [], 1
    for record in records[1:]:
        try:
            if record.get("t") == "finished":
                finished.append(FinishedTask.from_line(record))
            elif record.get("t") == "attempts":
                below = max(below, int(record["below"]))
        except (KeyError, TypeError, ValueError, protocol.ProtocolError) as exc:
            raise JournalError(f"the journal {path} has a damaged line ({exc})") from None
    below = max([below] + [f.attempt + 1 for f in finished])
    created = header.get("created")
    return Replay(plan, finished, below, float(created) if isinstance(created, (int, float)) else 0.0)


def _parse(lines: List[str], path: str) -> Iterator[Dict[str, Any]]:
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == last:
                return  # the driver died while writing this line
            raise JournalError(f"the journal {path} is damaged at line {number + 1}") from None
        if isinstance(record, dict):
            yield record


class Journal:
    """Appends to the journal. Attempt-id reservations are on disk (fsync) before the ids are
    used; finished tasks are written at once and synced together by `sync`, once per round of
    the driver's loop: a task whose line a crash loses is merely run again."""

    def __init__(self, work_dir: str):
        self.path = journal_path(work_dir)
        self.file = None
        self.lock_file = None
        self.attempts_below = 0
        self.unsynced = False

    def lock(self) -> None:
        """Hold the work dir for this driver; a second driver of the same job is refused."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.lock_file = open(self.path + ".lock", "w")
        try:
            fcntl.flock(self.lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.close()
            self.lock_file = None
            raise JournalError(f"another driver is running a job from {os.path.dirname(self.path)}") from None

    def unlock(self) -> None:
        if self.lock_file is not None:
            self.lock_file.close()
            self.lock_file = None

    def start(self, plan: JournalPlan, attempts_below: int = 1) -> None:
        """A new journal for a new job (replacing none: the caller checked there is none)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(plan.to_header()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._open()
        self.reserve(attempts_below)

    def resume(self, attempts_below: int) -> None:
        self._cut_torn_line()
        self._open()
        self.reserve(attempts_below)

    def _cut_torn_line(self) -> None:
        """A line the killed driver did not finish would swallow the next one: cut it off."""
        with open(self.path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep < len(data):
                f.truncate(keep)

    def _open(self) -> None:
        self.file = open(self.path, "a", encoding="utf-8")

    def reserve(self, next_attempt: int) -> None:
        """Before attempt id `next_attempt` is used, make sure the journal says ids reach past it."""
        if next_attempt < self.attempts_below:
            return
        self.attempts_below = next_attempt + ATTEMPT_BLOCK
        self._append({"t": "attempts", "below": self.attempts_below})

    def finished(self, task: FinishedTask) -> None:
        self._append(task.to_line(), sync=False)

    def sync(self) -> None:
        """Make every line written so far durable."""
        if self.unsynced and self.file is not None:
            os.fsync(self.file.fileno())
            self.unsynced = False

    def _append(self, record: Dict[str, Any], sync: bool = True) -> None:
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()  # in the operating system's hands: it survives the driver being killed
        if sync:
            os.fsync(self.file.fileno())
        self.unsynced = not sync

    def close(self) -> None:
        if self.file is not None:
            self.sync()
            self.file.close()
            self.file = None

    def remove(self) -> None:
        """The job is over (succeeded or failed): there is nothing to resume."""
        self.close()
        for path in (self.path, self.path + ".lock"):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
