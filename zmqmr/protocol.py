"""The wire protocol: message types, their schema, and a codec that never trusts its input.

Every message is one ZeroMQ frame holding a msgpack map with the protocol version
under "v", the message type under "t", and the type's fields. The ROUTER side sees a
routing-id frame in front of it. See docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 3

# Limits: named so that docs/protocol.md and the sockets use the same figures.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_DRIVER_MESSAGE_BYTES = 2 * 1024 * 1024  # what the driver takes: one message decodes to at most ~120 MB of
# objects (an empty array is one byte); tasks and replies to workers may be bigger
MAX_CONTAINERS = 200_000  # maps and arrays in one message (see _container_budget)
MAX_NAME_LEN = 256
MAX_PATH_LEN = 4096
MAX_TEXT_LEN = 64 * 1024
MAX_SOURCE_LEN = 8 * 1024 * 1024
MAX_LIST_LEN = 1_000_000
MAX_ATTEMPT_ID = 2**62
MAX_TASK_ID = 10_000_000
MAX_COUNTERS = 1000
MAX_PREFETCH = 256  # tasks a worker may ask for in one request
MAX_BATCH_ITEMS = 1024  # messages in one batch or bundle
MIN_MEMORY_LIMIT = 16 * 1024 * 1024  # a task process needs about this much for Python itself
DEFAULT_MEMORY_LIMIT = 256 * 1024 * 1024
MAX_CHUNK_BYTES = 1024 * 1024  # file bytes in one chunk, upload or fetch
STAGING_MODES = ("auto", "always", "never")  # how workers reach input and output (see Welcome.staging)
CURVE_KEY_LEN = 40  # a CURVE public key in z85
MAX_PEER_KEYS = 10_000  # authorized keys a welcome may carry
MAX_WORKERS = 4096  # workers the driver tracks at once; more are told to leave


# --- field checks ----------------------------------------------------------------


class Check:
    """Validates one decoded field and returns the value to store.

    A check raises `Bad` without saying where; `from_fields` and `ListOf` add the path on
    the way out, so a valid message never pays for formatting error messages.
    """

    def __call__(self, value: Any) -> Any:
        raise NotImplementedError


_short = reprlib.Repr()
_short.maxlevel = 3
_short.maxstring = _short.maxother = 40


def shown(value: Any) -> str:
    """A short repr that is safe on hostile values (deep nesting, huge strings)."""
    return _short.repr(value)


class Bad(Exception):
    """A field failed its check; `path` grows (innermost first) as the error travels out."""

    def __init__(self, expected: str, value: Any = None, missing: bool = False):
        super().__init__(expected)
        self.expected, self.value, self.missing = expected, value, missing
        self.path: List[str] = []

    def error(self, where: str) -> ProtocolError:
        path = where + "".join(reversed(self.path))
        if self.missing:
            return ProtocolError("schema", f"{path}: missing")
        return ProtocolError("schema", f"{path}: expected {self.expected}, got {shown(self.value)}")


@dataclass(frozen=True)
class Text(Check):
    max_len: int = MAX_NAME_LEN
    min_len: int = 0

    def __call__(self, value):
        if type(value) is not str or not self.min_len <= len(value) <= self.max_len:
            raise Bad(f"a string of {self.min_len}..{self.max_len} characters", value)
        return value


@dataclass(frozen=True)
class Int(Check):
    low: int = 0
    high: int = MAX_ATTEMPT_ID

    def __call__(self, value):
        if type(value) is not int or not self.low <= value <= self.high:  # type(): bool is no int here
            raise Bad(f"an integer in {self.low}..{self.high}", value)
        return value


@dataclass(frozen=True)
class Float(Check):
    low: float = 0.0
    high: float = 1e9

    def __call__(self, value):
        if type(value) is not float and type(value) is not int:
            raise Bad("a number", value)
        if not self.low <= value <= self.high:  # also rejects NaN
            raise Bad(f"a number in {self.low}..{self.high}", value)
        return float(value)


@dataclass(frozen=True)
class Bin(Check):
    max_len: int = MAX_CHUNK_BYTES

    def __call__(self, value):
        if type(value) is not bytes or len(value) > self.max_len:
            raise Bad(f"bytes, at most {self.max_len}", value)
        return value


@dataclass(frozen=True)
class Flag(Check):
    def __call__(self, value):
        if type(value) is not bool:
            raise Bad("true or false", value)
        return value


@dataclass(frozen=True)
class OneOf(Check):
    choices: Tuple[str, ...]

    def __call__(self, value):
        if type(value) is not str or value not in self.choices:
            raise Bad(f"one of {', '.join(self.choices)}", value)
        return value


@dataclass(frozen=True)
class ListOf(Check):
    item: Check
    max_len: int = MAX_LIST_LEN

    def __call__(self, value):
        if (type(value) is not list and type(value) is not tuple) or len(value) > self.max_len:
            raise Bad(f"a list of at most {self.max_len} items", value)
        item = self.item
        out = []
        for v in value:
            try:
                out.append(item(v))
            except Bad as exc:
                exc.path.append(f"[{len(out)}]")
                raise
        return tuple(out)


@dataclass(frozen=True)
class Maybe(Check):
    inner: Check

    def __call__(self, value):
        return None if value is None else self.inner(value)


@dataclass(frozen=True)
class Nested(Check):
    record: type

    def __call__(self, value):
        return _build(self.record, value)


@dataclass(frozen=True)
class Plain(Check):
    """Any msgpack value built from maps, lists, strings and numbers: status replies only."""

    def __call__(self, value):
        return value


def check(spec: Check, default: Any = dataclasses.MISSING) -> Any:
    """Declare a message field with its validator (and an optional default)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple default")
    return field(default=default, metadata={"check": spec})


_MISSING = dataclasses.MISSING
_schemas: Dict[type, Tuple[Tuple[str, Check, Any], ...]] = {}


def _schema(record: type) -> Tuple[Tuple[str, Check, Any], ...]:
    """(name, check, default) of every field, worked out once per record type."""
    schema = _schemas.get(record)
    if schema is None:
        schema = _schemas[record] = tuple((f.name, f.metadata["check"], f.default)
                                          for f in dataclasses.fields(record))
    return schema


def _build(record: type, value: Any) -> Any:
    """The record of a decoded map: the compiled check first, the generic one for the error."""
    try:
        return (_fast_builders.get(record) or _fast_builder_of(record))(value)
    except _Slow:
        return _build_checked(record, value)


def _build_checked(record: type, value: Any) -> Any:
    """Field by field through the Check objects; slow, but says exactly what is wrong."""
    if type(value) is not dict:
        raise Bad("a map", value)
    kwargs = {}
    for name, chk, default in _schema(record):
        if name in value:
            try:
                kwargs[name] = chk(value[name])
            except Bad as exc:
                exc.path.append("." + name)
                raise
        elif default is _MISSING:
            exc = Bad("", missing=True)
            exc.path.append("." + name)
            raise exc
    return record(**kwargs)


def from_fields(record: type, value: Any, where: str) -> Any:
    """Build a dataclass `record` from a decoded map, checking every declared field."""
    try:
        return _build(record, value)
    except Bad as exc:
        raise exc.error(where) from None


_names: Dict[type, Tuple[Tuple[str, Any], ...]] = {}


def _fields_of(record: type) -> Tuple[Tuple[str, Any], ...]:
    names = _names.get(record)
    if names is None:
        names = _names[record] = tuple((f.name, f.default) for f in dataclasses.fields(record))
    return names


def to_fields(record: Any) -> Dict[str, Any]:
    """The inverse of `from_fields`: a plain map of a (possibly nested) record."""
    plain = _fast_plains.get(type(record))
    if plain is None:
        plain = _fast_plains[type(record)] = _compile_plain(type(record))
    return plain(record)


_LEAVES = frozenset((str, int, float, bool, type(None), bytes))


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is tuple or kind is list:
        return [_plain(v) for v in value]
    if kind in _names or dataclasses.is_dataclass(kind):
        if issubclass(kind, Message):  # a message inside a batch or bundle
            return _plain_item(value)
        return to_fields(value)
    return value


# --- compiled codecs --------------------------------------------------------------
#
# Decoding every field through a Check object costs a call per field; a task report has
# about thirty. So each record type gets, on first use, straight-line code generated from
# its checks: it raises _Slow on anything doubtful, and the Check objects then say why.

class _Slow(Exception):
    """Raised by compiled checks on anything doubtful."""


_fast_builders: Dict[type, Any] = {}
_fast_plains: Dict[type, Any] = {}


class _Source:
    def __init__(self):
        self.lines: List[str] = []
        self.names: Dict[str, Any] = {"_Slow": _Slow, "_MISSING": _MISSING, "_new": object.__new__,
                                      "_set": object.__setattr__, "_build": _build, "_plain": _plain,
                                      "_plain_item": None}
        self.counter = 0

    def name(self, value: Any) -> str:
        self.counter += 1
        key = f"_c{self.counter}"
        self.names[key] = value
        return key

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _check_code(src: _Source, chk: Check, var: str, indent: int) -> None:
    """Lines that check (and normalize) `var` in place, or raise _Slow."""
    if isinstance(chk, Text):
        src.add(indent, f"if type({var}) is not str or not {chk.min_len} <= len({var}) <= {chk.max_len}: raise _Slow")
    elif isinstance(chk, Int):
        src.add(indent, f"if type({var}) is not int or not {chk.low} <= {var} <= {chk.high}: raise _Slow")
    elif isinstance(chk, Float):
        src.add(indent, f"if type({var}) is int: {var} = float({var})")
        src.add(indent, f"if type({var}) is not float or not {chk.low!r} <= {var} <= {chk.high!r}: raise _Slow")
    elif isinstance(chk, Flag):
        src.add(indent, f"if type({var}) is not bool: raise _Slow")
    elif isinstance(chk, Bin):
        src.add(indent, f"if type({var}) is not bytes or len({var}) > {chk.max_len}: raise _Slow")
    elif isinstance(chk, OneOf):
        src.add(indent, f"if type({var}) is not str or {var} not in {src.name(frozenset(chk.choices))}: raise _Slow")
    elif isinstance(chk, Maybe):
        src.add(indent, f"if {var} is not None:")
        _check_code(src, chk.inner, var, indent + 1)
    elif isinstance(chk, Nested):
        src.add(indent, f"{var} = {src.name(_fast_builder_of(chk.record))}({var})")
    elif isinstance(chk, ListOf):
        src.add(indent, f"if type({var}) is not list and type({var}) is not tuple or len({var}) > {chk.max_len}: "
                        "raise _Slow")
        if isinstance(chk.item, Nested):
            build = src.name(_fast_builder_of(chk.item.record))
            src.add(indent, f"{var} = tuple([{build}(_x) for _x in {var}])")
        else:
            item = f"{var}_item"
            src.add(indent, f"for {item} in {var}:")
            _check_code(src, chk.item, item, indent + 1)
            src.add(indent, f"{var} = tuple({var})")
    else:  # Plain, Items and anything new: the Check object itself
        src.add(indent, f"{var} = {src.name(chk)}({var})")


def _fast_builder_of(record: type) -> Any:
    fast = _fast_builders.get(record)
    if fast is None:
        fast = _fast_builders[record] = _compile_builder(record)
    return fast


def _compile_builder(record: type) -> Any:
    src = _Source()
    src.names["_record"] = record
    src.add(0, "def build(value):")
    src.add(1, "if type(value) is not dict: raise _Slow")
    src.add(1, "get = value.get")
    names = []
    for i, (name, chk, default) in enumerate(_schema(record)):
        var = f"v{i}"
        names.append((name, var))
        src.add(1, f"{var} = get({name!r}, _MISSING)")
        src.add(1, f"if {var} is _MISSING:")
        if default is _MISSING:
            src.add(2, "raise _Slow")
        else:
            src.add(2, f"{var} = {src.name(default)}")
        src.add(1, "else:")
        try:
            _check_code(src, chk, var, 2)
        except Exception:  # a check this compiler does not know: the generic path
            return _always_slow
    src.add(1, "obj = _new(_record)")
    src.add(1, "_set(obj, '__dict__', {" + ", ".join(f"{name!r}: {var}" for name, var in names) + "})")
    src.add(1, "return obj")
    exec("\n".join(src.lines), src.names)
    return src.names["build"]


def _always_slow(value: Any) -> Any:
    raise _Slow


def _plain_code(src: _Source, chk: Check, expr: str) -> str:
    """An expression for the plain (msgpack-ready) form of `expr`, a value that passed `chk`."""
    if isinstance(chk, (Text, Int, Float, Flag, OneOf, Bin)):
        return expr
    if isinstance(chk, Maybe):
        inner = _plain_code(src, chk.inner, "_m")
        return expr if inner == "_m" else f"(None if {expr} is None else (lambda _m: {inner})({expr}))"
    if isinstance(chk, Nested):
        return f"{src.name(to_fields)}({expr})"
    if isinstance(chk, ListOf):
        item = _plain_code(src, chk.item, "_x")
        return f"list({expr})" if item == "_x" else f"[{item} for _x in {expr}]"
    return f"_plain({expr})"


_fast_items: Dict[type, Any] = {}


def _compile_item(record: type) -> Any:
    """Like _compile_plain for a batch item: with "t", without identity and default values."""
    src = _Source()
    src.add(0, "def item(o):")
    src.add(1, f"d = {{'t': {record.TYPE!r}}}")
    for name, chk, default in _schema(record):
        if name in _IDENTITY:
            continue
        value = _plain_code(src, chk, "o." + name)
        if default is _MISSING:
            src.add(1, f"d[{name!r}] = {value}")
        elif type(default) in (str, int, float, bool, tuple) or default is None:
            src.add(1, f"if o.{name} != {src.name(default)}: d[{name!r}] = {value}")
        else:
            src.add(1, f"d[{name!r}] = {value}")
    src.add(1, "return d")
    exec("\n".join(src.lines), src.names)
    return src.names["item"]


def _compile_plain(record: type) -> Any:
    src = _Source()
    parts = [f"{name!r}: {_plain_code(src, chk, 'o.' + name)}" for name, chk, _ in _schema(record)]
    src.add(0, "def plain(o):")
    src.add(1, "return {" + ", ".join(parts) + "}")
    exec("\n".join(src.lines), src.names)
    return src.names["plain"]


# --- records carried inside messages ---------------------------------------------


def record(cls: type) -> type:
    """`@dataclass(frozen=True)` with an `__init__` that stores every field in one step. The
    dataclass's own sets them one `object.__setattr__` at a time, which costs twice as much, and a job
    makes several records per task (its message, the report, the report's stats)."""
    cls = dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    space: Dict[str, Any] = {"_set": object.__setattr__}
    params = []
    for f in dataclasses.fields(cls):
        if f.default is _MISSING:
            params.append(f.name)
        else:
            space[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    exec(f"def __init__(self, {', '.join(params)}):\n"
         f"    _set(self, '__dict__', {{{', '.join(f'{n!r}: {n}' for n in names)}}})", space)
    init = space["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


@record
class Segment:
    """A byte range of one input file; `key` is the path as the user gave it."""

    key: str = check(Text(MAX_PATH_LEN))
    path: str = check(Text(MAX_PATH_LEN, 1))
    start: int = check(Int(0, 2**62))
    end: int = check(Int(0, 2**62))
    gzip: bool = check(Flag(), False)
    size: int = check(Int(-1, 2**62), -1)  # the whole file's, with mtime_ns: how a worker tells that its
    mtime_ns: int = check(Int(-1, 2**62), -1)  # own copy of `path` is this file (-1: unknown)


@record
class JobSpec:
    """What a worker needs to load the user's code: a shipped file or a module name."""

    name: str = check(Text(MAX_PATH_LEN, 1))
    source: Optional[str] = check(Maybe(Text(MAX_SOURCE_LEN)), None)
    sha256: str = check(Text(64), "")
    encoding: str = check(Text(64), "utf-8")
    encoding_errors: str = check(Text(64), "strict")
    skip_bad_records: int = check(Int(-1, 2**62), -1)  # -1: a failing record fails the attempt
    memory_limit: int = check(Int(MIN_MEMORY_LIMIT, 2**50), DEFAULT_MEMORY_LIMIT)  # bytes per task process


@record
class TaskError:
    """Why an attempt failed, in the words a user needs."""

    kind: str = check(Text(MAX_NAME_LEN))
    message: str = check(Text(MAX_TEXT_LEN))
    traceback: str = check(Text(MAX_TEXT_LEN), "")
    location: str = check(Text(MAX_TEXT_LEN), "")
    host: str = check(Text(MAX_NAME_LEN), "")


@record
class PartFile:
    """One non-empty partition written by a map attempt, at `path` on the worker that ran it."""

    partition: int = check(Int(0, MAX_TASK_ID))
    path: str = check(Text(MAX_PATH_LEN, 1))
    size: int = check(Int(0, 2**62), 0)


@record
class MapOutput:
    """Where a reduce task finds one map task's file of its partition: `path` if it can read it (the
    same host, or shared storage; `size` tells), else fetched from `shuffle`, the map worker's service."""

    map: int = check(Int(0, MAX_TASK_ID))
    path: str = check(Text(MAX_PATH_LEN, 1))
    size: int = check(Int(0, 2**62))
    shuffle: str = check(Text(MAX_NAME_LEN), "")
    shuffle_key: str = check(Text(CURVE_KEY_LEN), "")  # with CURVE: that service's public key


@record
class CounterValue:
    """One named count of a finished attempt (see zmqmr.counters)."""

    group: str = check(Text(MAX_NAME_LEN, 1))
    name: str = check(Text(MAX_NAME_LEN, 1))
    value: int = check(Int(-(2**62), 2**62))


@record
class BadRecord:
    """A record the user's code failed on, skipped under --skip-bad-records."""

    location: str = check(Text(MAX_TEXT_LEN))
    kind: str = check(Text(MAX_NAME_LEN))
    message: str = check(Text(MAX_TEXT_LEN))
    traceback: str = check(Text(MAX_TEXT_LEN), "")


@record
class RecordPosition:
    """Where a record starts: the segment of the task's split and the byte offset."""

    segment: int = check(Int(0, MAX_LIST_LEN))
    offset: int = check(Int(0, 2**62))


@record
class Progress:
    """How far a running attempt got: records read, and where the current one starts."""

    attempt: int = check(Int())
    records: int = check(Int(0, 2**62), 0)
    location: str = check(Text(MAX_TEXT_LEN), "")
    position: Optional[RecordPosition] = check(Maybe(Nested(RecordPosition)), None)
    kind: str = check(Text(16), "")  # with index and job: the task, so a restarted driver can adopt the attempt
    index: int = check(Int(0, MAX_TASK_ID), 0)
    job_id: str = check(Text(64), "")


@record
class TaskStats:
    records_in: int = check(Int(0, 2**62), 0)
    bytes_in: int = check(Int(0, 2**62), 0)
    records_out: int = check(Int(0, 2**62), 0)
    seconds: float = check(Float(0, 1e9), 0.0)


# --- messages ----------------------------------------------------------------------


@record
class Message:
    TYPE: ClassVar[str] = ""


@record
class WorkerMessage(Message):
    """Every message a worker sends names the worker and the process incarnation."""

    worker: str = check(Text(MAX_NAME_LEN, 1))
    inc: str = check(Text(64, 1))


@record
class Hello(WorkerMessage):
    """First message of a worker, and again after any `reregister`."""

    TYPE: ClassVar[str] = "hello"
    host: str = check(Text(MAX_NAME_LEN), "")
    pid: int = check(Int(0, 2**32), 0)
    software: str = check(Text(64), "")
    shuffle: str = check(Text(MAX_NAME_LEN), "")  # the endpoint where it serves its map output
    shuffle_key: str = check(Text(CURVE_KEY_LEN), "")  # with CURVE: the service's public key (the worker's own)


@record
class Request(WorkerMessage):
    """Ask for up to `want` more tasks; `running` lists every attempt the worker holds, and
    `queued` those of them that wait on the worker and have not started yet. `want` 0 asks
    for nothing (a report of what is held, answered with nothing)."""

    TYPE: ClassVar[str] = "request"
    running: Tuple[int, ...] = check(ListOf(Int(), 1024), ())
    queued: Tuple[int, ...] = check(ListOf(Int(), 1024), ())
    want: int = check(Int(0, MAX_PREFETCH), 1)


@record
class Heartbeat(WorkerMessage):
    """Sent when the worker has been silent for a heartbeat interval; carries task progress."""

    TYPE: ClassVar[str] = "heartbeat"
    running: Tuple[int, ...] = check(ListOf(Int(), 1024), ())
    queued: Tuple[int, ...] = check(ListOf(Int(), 1024), ())
    progress: Tuple[Progress, ...] = check(ListOf(Nested(Progress), 1024), ())


@record
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


@record
class Failed(WorkerMessage):
    """An attempt failed; `lost` means its process died rather than raised."""

    TYPE: ClassVar[str] = "failed"
    attempt: int = check(Int())
    error: TaskError = check(Nested(TaskError))
    lost: bool = check(Flag(), False)
    fetch_failed: Tuple[int, ...] = check(ListOf(Int(0, MAX_TASK_ID)), ())  # map tasks whose output a
    # reduce attempt could not fetch, after retries: that output is lost, not the reduce's fault


@record
class StatusQuery(Message):
    """From any client: `what` is job, workers, tasks, counters or task (with kind and index)."""

    TYPE: ClassVar[str] = "status"
    what: str = check(OneOf(("job", "workers", "tasks", "task", "counters")))
    kind: str = check(Text(16), "")
    index: int = check(Int(0, MAX_TASK_ID), 0)


@record
class Welcome(Message):
    TYPE: ClassVar[str] = "welcome"
    job_id: str = check(Text(64, 1))
    job: JobSpec = check(Nested(JobSpec))
    reducers: int = check(Int(1, MAX_TASK_ID))
    heartbeat_interval: float = check(Float(0.001, 3600))
    work_dir: str = check(Text(MAX_PATH_LEN), "")
    worker_timeout: float = check(Float(0, 1e6), 0.0)  # a worker's own interval must stay well below it
    staging: str = check(OneOf(STAGING_MODES), "auto")  # input and output through the driver: auto, always, never
    probe: str = check(Text(64), "")  # the content of PROBE_FILE in the driver's work and output dirs
    peer_keys: Tuple[str, ...] = check(ListOf(Text(CURVE_KEY_LEN, CURVE_KEY_LEN), MAX_PEER_KEYS), ())  # with CURVE:
    # the public keys the driver admits, which a worker's shuffle service admits too


@record
class Task(Message):
    """One attempt of a task. A map carries its segments, a reduce its input files."""

    TYPE: ClassVar[str] = "task"
    job_id: str = check(Text(64, 1))
    kind: str = check(OneOf(("map", "reduce")))
    index: int = check(Int(0, MAX_TASK_ID))
    attempt: int = check(Int())
    segments: Tuple[Segment, ...] = check(ListOf(Nested(Segment)), ())
    sources: Tuple[MapOutput, ...] = check(ListOf(Nested(MapOutput)), ())
    output_dir: str = check(Text(MAX_PATH_LEN), "")
    skip: Tuple[RecordPosition, ...] = check(ListOf(Nested(RecordPosition)), ())  # records an attempt hung on


@record
class Wait(Message):
    """Nothing is READY: ask again after `retry_after` seconds, or on a `wake`."""

    TYPE: ClassVar[str] = "wait"
    retry_after: float = check(Float(0, 3600))


@record
class Wake(Message):
    """Work became READY: a waiting worker should ask now."""

    TYPE: ClassVar[str] = "wake"


@record
class Cancel(Message):
    """Stop this attempt and remove its files: it timed out (and was counted as failed), or
    another attempt of the task finished first."""

    TYPE: ClassVar[str] = "cancel"
    attempt: int = check(Int())
    reason: str = check(Text(MAX_TEXT_LEN), "")
    kind: str = check(Text(16), "")  # with index: whose attempt files the worker removes
    index: int = check(Int(0, MAX_TASK_ID), 0)


@record
class Ack(Message):
    """The driver's answer to a heartbeat: proof to the worker that the driver lives."""

    TYPE: ClassVar[str] = "ack"


@record
class Reregister(Message):
    """The driver does not know this worker (any more): send `hello` again."""

    TYPE: ClassVar[str] = "reregister"
    reason: str = check(Text(MAX_TEXT_LEN), "")


@record
class Exit(Message):
    """The job is over (or this worker cannot take part): leave."""

    TYPE: ClassVar[str] = "exit"
    reason: str = check(Text(MAX_TEXT_LEN), "")
    ok: bool = check(Flag(), True)


@record
class StatusReply(Message):
    TYPE: ClassVar[str] = "status_reply"
    ok: bool = check(Flag())
    data: Any = check(Plain(), None)
    error: str = check(Text(MAX_TEXT_LEN), "")


# --- moving file bytes: staging through the driver, and the shuffle service -------------


@record
class ReadInput(WorkerMessage):
    """To the driver: bytes of segment `segment` of the map task that live attempt `attempt` runs,
    for a worker that cannot read the input file itself. Answered with `chunk`."""

    TYPE: ClassVar[str] = "read_input"
    attempt: int = check(Int())
    segment: int = check(Int(0, MAX_LIST_LEN))
    offset: int = check(Int(0, 2**62))
    length: int = check(Int(1, MAX_CHUNK_BYTES))
    tag: int = check(Int(0, 2**62), 0)


@record
class Upload(WorkerMessage):
    """To the driver: bytes of reduce attempt `attempt`'s output, for a worker that cannot write into
    the output directory. `last` says this chunk ends the file. Answered with `upload_ack`."""

    TYPE: ClassVar[str] = "upload"
    attempt: int = check(Int())
    offset: int = check(Int(0, 2**62))
    data: bytes = check(Bin(), b"")
    last: bool = check(Flag(), False)


@record
class UploadAck(Message):
    """The driver has `received` bytes of the attempt's output; `done` once the last chunk is on disk."""

    TYPE: ClassVar[str] = "upload_ack"
    attempt: int = check(Int())
    received: int = check(Int(0, 2**62), 0)
    done: bool = check(Flag(), False)
    error: str = check(Text(MAX_TEXT_LEN), "")


@record
class Fetch(Message):
    """To a worker's shuffle service: bytes of a map output file it wrote, named by its path under
    that worker's work dir (JOB/map-NNNNN-aN/part-NNNNN). Answered with `chunk`."""

    TYPE: ClassVar[str] = "fetch"
    path: str = check(Text(MAX_PATH_LEN, 1))
    offset: int = check(Int(0, 2**62))
    length: int = check(Int(1, MAX_CHUNK_BYTES))
    tag: int = check(Int(0, 2**62), 0)


@record
class Chunk(Message):
    """The answer to `fetch` or `read_input`: the bytes at `offset` (fewer than asked only at the end
    of the file, then `eof`), or a non-empty `error` saying why the request was refused."""

    TYPE: ClassVar[str] = "chunk"
    tag: int = check(Int(0, 2**62), 0)
    offset: int = check(Int(0, 2**62), 0)
    data: bytes = check(Bin(), b"")
    eof: bool = check(Flag(), False)
    error: str = check(Text(MAX_TEXT_LEN), "")


@record
class Rejected(WorkerMessage):
    """Not a wire type: stands in for an item of a batch or bundle that failed validation, so the
    rest of the frame still counts. `attempt` is the item's attempt id where it had a valid one."""

    TYPE: ClassVar[str] = "rejected"
    reason: str = "schema"
    detail: str = ""
    attempt: Optional[int] = None


@record
class Items(Check):
    """The messages of a batch or bundle: each a map with its type under "t" and its fields.

    An item that fails becomes a `Rejected` instead of failing the whole frame."""

    allowed: Tuple[str, ...]

    def __call__(self, value):
        if type(value) is not list or len(value) > MAX_BATCH_ITEMS:
            raise Bad(f"a list of at most {MAX_BATCH_ITEMS} messages", value)
        registry = _ITEM_TYPES
        out = []
        for item in value:
            mtype = item.get("t") if type(item) is dict else None
            if type(mtype) is not str or mtype not in self.allowed:
                out.append(Rejected(worker=_identity(item, "worker"), inc=_identity(item, "inc"),
                                    reason="unknown_type", detail=f"batch item of type {shown(mtype)}"))
                continue
            try:
                out.append(_build(registry[mtype], item))
            except Bad as exc:
                attempt = item.get("attempt")
                out.append(Rejected(worker=_identity(item, "worker"), inc=_identity(item, "inc"),
                                    detail=str(exc.error(f"{mtype}")),
                                    attempt=attempt if type(attempt) is int and 0 <= attempt <= MAX_ATTEMPT_ID
                                    else None))
        return tuple(out)


def _identity(item: Any, name: str) -> str:
    value = item.get(name) if type(item) is dict else None
    return value if type(value) is str else ""


@record
class Batch(WorkerMessage):
    """Several messages of one worker in one frame: reports of finished attempts, then (usually)
    the next request. Items carry no `worker` or `inc`; they take the batch's."""

    TYPE: ClassVar[str] = "batch"
    items: Tuple[Message, ...] = check(Items(("done", "failed", "request")), ())


@record
class Bundle(Message):
    """Several driver messages for one worker in one frame, such as the tasks a request asked for."""

    TYPE: ClassVar[str] = "bundle"
    items: Tuple[Message, ...] = check(Items(("task", "wait", "wake", "cancel", "ack", "reregister", "exit")), ())


TO_DRIVER: Dict[str, Type[Message]] = {
    m.TYPE: m for m in (Hello, Request, Heartbeat, Done, Failed, Batch, StatusQuery, ReadInput, Upload)
}
TO_WORKER: Dict[str, Type[Message]] = {
    m.TYPE: m for m in (Welcome, Task, Wait, Wake, Cancel, Ack, Reregister, Exit, Bundle, StatusReply)
}
TO_SHUFFLE: Dict[str, Type[Message]] = {Fetch.TYPE: Fetch}  # what a worker's shuffle service takes
TO_FETCHER: Dict[str, Type[Message]] = {m.TYPE: m for m in (Chunk, UploadAck)}  # what a task process gets back
_ITEM_TYPES: Dict[str, Type[Message]] = {**TO_DRIVER, **TO_WORKER}


# --- codec -------------------------------------------------------------------------


_pack = msgpack.Packer(use_bin_type=True).pack


def encode(message: Message) -> bytes:
    """One frame; ProtocolError("too_large") rather than a frame the peer would drop."""
    body = {"v": PROTOCOL_VERSION, "t": message.TYPE}
    body.update(to_fields(message))
    return _checked_size(msgpack.packb(body, use_bin_type=True), message.TYPE)


def _checked_size(frame: bytes, mtype: str) -> bytes:
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"a {mtype} message of {len(frame)} bytes, more than {MAX_MESSAGE_BYTES}")
    return frame


_IDENTITY = ("worker", "inc")


def encode_item(message: Message) -> bytes:
    """A message as an item of a batch or bundle: its type and the fields that differ from their
    defaults, without the sender's identity (the batch carries it)."""
    compact = _fast_items.get(type(message))
    if compact is None:
        compact = _fast_items[type(message)] = _compile_item(type(message))
    return _pack(compact(message))


def batch_frame(worker: str, inc: str, items: Sequence[bytes]) -> bytes:
    """A worker's batch from items made by `encode_item`, spliced in without decoding them."""
    return _checked_size(_frame_head({"v": PROTOCOL_VERSION, "t": Batch.TYPE, "worker": worker, "inc": inc},
                                     len(items)) + b"".join(items), Batch.TYPE)


def bundle_frame(items: Sequence[bytes]) -> bytes:
    """The driver's bundle for one worker from items made by `encode_item`."""
    return _checked_size(_frame_head({"v": PROTOCOL_VERSION, "t": Bundle.TYPE}, len(items)) + b"".join(items),
                         Bundle.TYPE)


def _frame_head(fields: Dict[str, Any], count: int) -> bytes:
    """msgpack of `fields` plus an "items" array of `count` elements, whose bytes follow."""
    packer = msgpack.Packer(use_bin_type=True)
    head = packer.pack_map_header(len(fields) + 1)
    for key, value in fields.items():
        head += _pack(key) + _pack(value)
    return head + _pack("items") + packer.pack_array_header(count)


def _plain_item(message: Message) -> Dict[str, Any]:
    body = {"t": message.TYPE}
    body.update((k, v) for k, v in to_fields(message).items() if k not in _IDENTITY)
    return body


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("malformed", f"msgpack extension type {code} is not allowed")


def _container_budget():
    """A hook for msgpack that counts the maps and arrays decoded, and stops past MAX_CONTAINERS.
    An empty array is one byte but a Python object of 56: without a count, one frame within every
    size limit could decode to hundreds of MB."""
    left = MAX_CONTAINERS

    def budget(obj):
        nonlocal left
        left -= 1
        if left < 0:
            raise ProtocolError("malformed", f"more than {MAX_CONTAINERS} maps and arrays in one message")
        return obj
    return budget


def peek_envelope(frame: bytes) -> Tuple[Any, Any, Any]:
    """Decode a frame into (version, type, map) without checking the schema."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"{len(frame)} bytes")
    budget = _container_budget()
    try:
        body = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
            ext_hook=_no_ext,
            timestamp=0,
            max_ext_len=0,
            list_hook=budget,
            object_hook=budget,
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
    known = mtype if type(mtype) is str else ""
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError("version", f"protocol version {shown(version)}, expected {PROTOCOL_VERSION}", known)
    cls = allowed.get(mtype) if isinstance(mtype, str) else None
    if cls is None:
        raise ProtocolError("unknown_type", shown(mtype), known)
    if cls is Batch:
        _inherit_identity(body)
    try:
        return from_fields(cls, body, mtype)
    except RecursionError:
        raise ProtocolError("malformed", "nested too deeply", known) from None
    except ProtocolError as exc:
        exc.message_type = known
        raise


def _inherit_identity(body: Dict[str, Any]) -> None:
    """Batch items are the batch's worker's: they take its name and incarnation."""
    items = body.get("items")
    if type(items) is list:
        worker, inc = body.get("worker"), body.get("inc")
        for item in items:
            if type(item) is dict:
                item["worker"], item["inc"] = worker, inc
