"""The wire protocol: message types, their schema, and a codec that never trusts its input.

Every message is one ZeroMQ frame holding a msgpack map with the protocol version
under "v", the message type under "t", and the type's fields. The ROUTER side sees a
routing-id frame in front of it. See docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Tuple, Type

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 1

# Limits: named so that docs/protocol.md and the sockets use the same figures.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_NAME_LEN = 256
MAX_PATH_LEN = 4096
MAX_TEXT_LEN = 64 * 1024
MAX_SOURCE_LEN = 8 * 1024 * 1024
MAX_LIST_LEN = 1_000_000
MAX_ATTEMPT_ID = 2**62
MAX_TASK_ID = 10_000_000
MAX_COUNTERS = 1000
MIN_MEMORY_LIMIT = 16 * 1024 * 1024  # a task process needs about this much for Python itself
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024


# --- field checks ----------------------------------------------------------------


class Check:
    """Validates one decoded field and returns the value to store."""

    def __call__(self, value: Any, where: str) -> Any:
        raise NotImplementedError


_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = _short.maxother = 40


def shown(value: Any) -> str:
    """A short repr that is safe on hostile values (deep nesting, huge strings)."""
    return _short.repr(value)


def _fail(where: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError("schema", f"{where}: expected {expected}, got {shown(value)}")


@dataclass(frozen=True)
class Text(Check):
    max_len: int = MAX_NAME_LEN
    min_len: int = 0

    def __call__(self, value, where):
        if not isinstance(value, str) or not self.min_len <= len(value) <= self.max_len:
            raise _fail(where, f"a string of {self.min_len}..{self.max_len} characters", value)
        return value


@dataclass(frozen=True)
class Int(Check):
    low: int = 0
    high: int = MAX_ATTEMPT_ID

    def __call__(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise _fail(where, f"an integer in {self.low}..{self.high}", value)
        return value


@dataclass(frozen=True)
class Float(Check):
    low: float = 0.0
    high: float = 1e9

    def __call__(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, "a number", value)
        if not self.low <= value <= self.high:  # also rejects NaN
            raise _fail(where, f"a number in {self.low}..{self.high}", value)
        return float(value)


@dataclass(frozen=True)
class Flag(Check):
    def __call__(self, value, where):
        if not isinstance(value, bool):
            raise _fail(where, "true or false", value)
        return value


@dataclass(frozen=True)
class OneOf(Check):
    choices: Tuple[str, ...]

    def __call__(self, value, where):
        if value not in self.choices or not isinstance(value, str):
            raise _fail(where, f"one of {', '.join(self.choices)}", value)
        return value


@dataclass(frozen=True)
class ListOf(Check):
    item: Check
    max_len: int = MAX_LIST_LEN

    def __call__(self, value, where):
        if not isinstance(value, (list, tuple)) or len(value) > self.max_len:
            raise _fail(where, f"a list of at most {self.max_len} items", value)
        return tuple(self.item(v, f"{where}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class Maybe(Check):
    inner: Check

    def __call__(self, value, where):
        return None if value is None else self.inner(value, where)


@dataclass(frozen=True)
class Nested(Check):
    record: type

    def __call__(self, value, where):
        return from_fields(self.record, value, where)


@dataclass(frozen=True)
class Plain(Check):
    """Any msgpack value built from maps, lists, strings and numbers: status replies only."""

    def __call__(self, value, where):
        return value


def check(spec: Check, default: Any = dataclasses.MISSING) -> Any:
    """Declare a message field with its validator (and an optional default)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple default")
    return field(default=default, metadata={"check": spec})


def from_fields(record: type, value: Any, where: str) -> Any:
    """Build a dataclass `record` from a decoded map, checking every declared field."""
    if not isinstance(value, dict):
        raise _fail(where, "a map", value)
    kwargs = {}
    for f in dataclasses.fields(record):
        if f.name not in value:
            if f.default is dataclasses.MISSING:
                raise ProtocolError("schema", f"{where}.{f.name}: missing")
            continue
        kwargs[f.name] = f.metadata["check"](value[f.name], f"{where}.{f.name}")
    return record(**kwargs)


def to_fields(record: Any) -> Dict[str, Any]:
    """The inverse of `from_fields`: a plain map of a (possibly nested) record."""
    out = {}
    for f in dataclasses.fields(record):
        out[f.name] = _plain(getattr(record, f.name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_fields(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# --- records carried inside messages ---------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A byte range of one input file; `key` is the path as the user gave it."""

    key: str = check(Text(MAX_PATH_LEN))
    path: str = check(Text(MAX_PATH_LEN, 1))
    start: int = check(Int(0, 2**62))
    end: int = check(Int(0, 2**62))
    gzip: bool = check(Flag(), False)


@dataclass(frozen=True)
class JobSpec:
    """What a worker needs to load the user's code: a shipped file or a module name."""

    name: str = check(Text(MAX_PATH_LEN, 1))
    source: Optional[str] = check(Maybe(Text(MAX_SOURCE_LEN)), None)
    sha256: str = check(Text(64), "")
    encoding: str = check(Text(64), "utf-8")
    encoding_errors: str = check(Text(64), "strict")
    skip_bad_records: int = check(Int(-1, 2**62), -1)  # -1: a failing record fails the attempt
    memory_limit: int = check(Int(MIN_MEMORY_LIMIT, 2**50), DEFAULT_MEMORY_LIMIT)  # bytes per task process


@dataclass(frozen=True)
class TaskError:
    """Why an attempt failed, in the words a user needs."""

    kind: str = check(Text(MAX_NAME_LEN))
    message: str = check(Text(MAX_TEXT_LEN))
    traceback: str = check(Text(MAX_TEXT_LEN), "")
    location: str = check(Text(MAX_TEXT_LEN), "")
    host: str = check(Text(MAX_NAME_LEN), "")


@dataclass(frozen=True)
class PartFile:
    """One non-empty partition written by a map attempt."""

    partition: int = check(Int(0, MAX_TASK_ID))
    path: str = check(Text(MAX_PATH_LEN, 1))
    size: int = check(Int(0, 2**62), 0)


@dataclass(frozen=True)
class CounterValue:
    """One named count of a finished attempt (see zmqmr.counters)."""

    group: str = check(Text(MAX_NAME_LEN, 1))
    name: str = check(Text(MAX_NAME_LEN, 1))
    value: int = check(Int(-(2**62), 2**62))


@dataclass(frozen=True)
class BadRecord:
    """A record the user's code failed on, skipped under --skip-bad-records."""

    location: str = check(Text(MAX_TEXT_LEN))
    kind: str = check(Text(MAX_NAME_LEN))
    message: str = check(Text(MAX_TEXT_LEN))
    traceback: str = check(Text(MAX_TEXT_LEN), "")


@dataclass(frozen=True)
class RecordPosition:
    """Where a record starts: the segment of the task's split and the byte offset."""

    segment: int = check(Int(0, MAX_LIST_LEN))
    offset: int = check(Int(0, 2**62))


@dataclass(frozen=True)
class Progress:
    """How far a running attempt got: records read, and where the current one starts."""

    attempt: int = check(Int())
    records: int = check(Int(0, 2**62), 0)
    location: str = check(Text(MAX_TEXT_LEN), "")
    position: Optional[RecordPosition] = check(Maybe(Nested(RecordPosition)), None)
    kind: str = check(Text(16), "")  # with index and job: the task, so a restarted driver can adopt the attempt
    index: int = check(Int(0, MAX_TASK_ID), 0)
    job_id: str = check(Text(64), "")


@dataclass(frozen=True)
class TaskStats:
    records_in: int = check(Int(0, 2**62), 0)
    bytes_in: int = check(Int(0, 2**62), 0)
    records_out: int = check(Int(0, 2**62), 0)
    seconds: float = check(Float(0, 1e9), 0.0)


# --- messages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


@dataclass(frozen=True)
class WorkerMessage(Message):
    """Every message a worker sends names the worker and the process incarnation."""

    worker: str = check(Text(MAX_NAME_LEN, 1))
    inc: str = check(Text(64, 1))


@dataclass(frozen=True)
class Hello(WorkerMessage):
    """First message of a worker, and again after any `reregister`."""

    TYPE: ClassVar[str] = "hello"
    host: str = check(Text(MAX_NAME_LEN), "")
    pid: int = check(Int(0, 2**32), 0)
    software: str = check(Text(64), "")


@dataclass(frozen=True)
class Request(WorkerMessage):
    """Ask for a task; `running` lists the attempts the worker still holds."""

    TYPE: ClassVar[str] = "request"
    running: Tuple[int, ...] = check(ListOf(Int(), 1024), ())


@dataclass(frozen=True)
class Heartbeat(WorkerMessage):
    """Sent when the worker has been silent for a heartbeat interval; carries task progress."""

    TYPE: ClassVar[str] = "heartbeat"
    running: Tuple[int, ...] = check(ListOf(Int(), 1024), ())
    progress: Tuple[Progress, ...] = check(ListOf(Nested(Progress), 1024), ())


@dataclass(frozen=True)
class Done(WorkerMessage):
    """An attempt finished: a map lists its partition files, a reduce its output file."""

    TYPE: ClassVar[str] = "done"
    attempt: int = check(Int())
    kind: str = check(Text(16), "")  # with index and job: the task, so a restarted driver can adopt the attempt
    index: int = check(Int(0, MAX_TASK_ID), 0)
    job_id: str = check(Text(64), "")
    parts: Tuple[PartFile, ...] = check(ListOf(Nested(PartFile), MAX_TASK_ID), ())
    output: str = check(Text(MAX_PATH_LEN), "")
    stats: TaskStats = check(Nested(TaskStats), TaskStats())
    counters: Tuple[CounterValue, ...] = check(ListOf(Nested(CounterValue), MAX_COUNTERS), ())
    bad_records: Tuple[BadRecord, ...] = check(ListOf(Nested(BadRecord)), ())
    bad_count: int = check(Int(0, 2**62), 0)  # may exceed len(bad_records), which is capped


@dataclass(frozen=True)
class Failed(WorkerMessage):
    """An attempt failed; `lost` means its process died rather than raised."""

    TYPE: ClassVar[str] = "failed"
    attempt: int = check(Int())
    error: TaskError = check(Nested(TaskError))
    lost: bool = check(Flag(), False)


@dataclass(frozen=True)
class StatusQuery(Message):
    """From any client: `what` is job, workers, tasks, counters or task (with kind and index)."""

    TYPE: ClassVar[str] = "status"
    what: str = check(OneOf(("job", "workers", "tasks", "task", "counters")))
    kind: str = check(Text(16), "")
    index: int = check(Int(0, MAX_TASK_ID), 0)


@dataclass(frozen=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    job_id: str = check(Text(64, 1))
    job: JobSpec = check(Nested(JobSpec))
    reducers: int = check(Int(1, MAX_TASK_ID))
    heartbeat_interval: float = check(Float(0.001, 3600))
    work_dir: str = check(Text(MAX_PATH_LEN), "")
    worker_timeout: float = check(Float(0, 1e6), 0.0)  # a worker's own interval must stay well below it


@dataclass(frozen=True)
class Task(Message):
    """One attempt of a task. A map carries its segments, a reduce its input files."""

    TYPE: ClassVar[str] = "task"
    job_id: str = check(Text(64, 1))
    kind: str = check(OneOf(("map", "reduce")))
    index: int = check(Int(0, MAX_TASK_ID))
    attempt: int = check(Int())
    segments: Tuple[Segment, ...] = check(ListOf(Nested(Segment)), ())
    inputs: Tuple[str, ...] = check(ListOf(Text(MAX_PATH_LEN, 1)), ())
    output_dir: str = check(Text(MAX_PATH_LEN), "")
    skip: Tuple[RecordPosition, ...] = check(ListOf(Nested(RecordPosition)), ())  # records an attempt hung on


@dataclass(frozen=True)
class Wait(Message):
    """Nothing is READY: ask again after `retry_after` seconds, or on a `wake`."""

    TYPE: ClassVar[str] = "wait"
    retry_after: float = check(Float(0, 3600))


@dataclass(frozen=True)
class Wake(Message):
    """Work became READY: a waiting worker should ask now."""

    TYPE: ClassVar[str] = "wake"


@dataclass(frozen=True)
class Cancel(Message):
    """Stop this attempt and remove its files: it timed out (and was counted as failed), or
    another attempt of the task finished first."""

    TYPE: ClassVar[str] = "cancel"
    attempt: int = check(Int())
    reason: str = check(Text(MAX_TEXT_LEN), "")
    kind: str = check(Text(16), "")  # with index: whose attempt files the worker removes
    index: int = check(Int(0, MAX_TASK_ID), 0)


@dataclass(frozen=True)
class Ack(Message):
    """The driver's answer to a heartbeat: proof to the worker that the driver lives."""

    TYPE: ClassVar[str] = "ack"


@dataclass(frozen=True)
class Reregister(Message):
    """The driver does not know this worker (any more): send `hello` again."""

    TYPE: ClassVar[str] = "reregister"
    reason: str = check(Text(MAX_TEXT_LEN), "")


@dataclass(frozen=True)
class Exit(Message):
    """The job is over (or this worker cannot take part): leave."""

    TYPE: ClassVar[str] = "exit"
    reason: str = check(Text(MAX_TEXT_LEN), "")
    ok: bool = check(Flag(), True)


@dataclass(frozen=True)
class StatusReply(Message):
    TYPE: ClassVar[str] = "status_reply"
    ok: bool = check(Flag())
    data: Any = check(Plain(), None)
    error: str = check(Text(MAX_TEXT_LEN), "")


TO_DRIVER: Dict[str, Type[Message]] = {
    m.TYPE: m for m in (Hello, Request, Heartbeat, Done, Failed, StatusQuery)
}
TO_WORKER: Dict[str, Type[Message]] = {
    m.TYPE: m for m in (Welcome, Task, Wait, Wake, Cancel, Ack, Reregister, Exit, StatusReply)
}


# --- codec -------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """One frame; ProtocolError("too_large") rather than a frame the peer would drop."""
    body = {"v": PROTOCOL_VERSION, "t": message.TYPE}
    body.update(to_fields(message))
    frame = msgpack.packb(body, use_bin_type=True)
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"a {message.TYPE} message of {len(frame)} bytes, "
                                         f"more than {MAX_MESSAGE_BYTES}")
    return frame


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("malformed", f"msgpack extension type {code} is not allowed")


def peek_envelope(frame: bytes) -> Tuple[Any, Any, Any]:
    """Decode a frame into (version, type, map) without checking the schema."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{len(frame)} bytes")
    try:
        body = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            timestamp=0,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types on junk
        raise ProtocolError("malformed", f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(body, dict):
        raise ProtocolError("malformed", "not a map")
    return body.get("v"), body.get("t"), body


def decode(frame: bytes, allowed: Dict[str, Type[Message]]) -> Message:
    """Decode and validate one message frame, or raise ProtocolError with a reason."""
    version, mtype, body = peek_envelope(frame)
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {shown(version)}, expected {PROTOCOL_VERSION}")
    cls = allowed.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise ProtocolError("unknown_type", shown(mtype))
    try:
        return from_fields(cls, body, mtype)
    except RecursionError:
        raise ProtocolError("malformed", "nested too deeply") from None
