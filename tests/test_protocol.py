"""Tests of zmqmr.protocol: the message codec and its refusal of anything off-schema."""

from __future__ import annotations

import dataclasses
import datetime
import math

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqmr import protocol as p
from zmqmr.errors import ProtocolError

# --- samples ------------------------------------------------------------------------

SEGMENT = p.Segment(key="in/ä.txt", path="/data/in/ä.txt", start=10, end=2**40, gzip=True)
JOBSPEC = p.JobSpec(name="job.py", source="def mapper(k, v):\n    yield v, 1\n",
                    sha256="ab" * 32, encoding="latin-1", encoding_errors="replace", skip_bad_records=5)
TASKERROR = p.TaskError(kind="ValueError", message="bad value ☃", traceback="Traceback...",
                        location="in/a.txt:12", host="node-1")
PARTFILE = p.PartFile(partition=3, path="/work/map-1/part-3", size=12345)
TASKSTATS = p.TaskStats(records_in=10, bytes_in=2**40, records_out=7, seconds=1.25)
COUNTER = p.CounterValue(group="quality", name="empty lines ✓", value=-3)
POSITION = p.RecordPosition(segment=1, offset=2**40)
PROGRESS = p.Progress(attempt=12, records=2**40, location="in/ä.txt at byte 7 (line 2)", position=POSITION)
BADRECORD = p.BadRecord(location="in/a.txt at byte 9, record 'x'", kind="UserCodeError", message="m",
                        traceback="Traceback...")

RECORD_SAMPLES = {
    p.Segment: SEGMENT,
    p.JobSpec: JOBSPEC,
    p.TaskError: TASKERROR,
    p.PartFile: PARTFILE,
    p.TaskStats: TASKSTATS,
    p.CounterValue: COUNTER,
    p.Progress: PROGRESS,
    p.RecordPosition: POSITION,
    p.BadRecord: BADRECORD,
    p.MapOutput: p.MapOutput(map=4, path="/work/j/map-00004-a9/part-00001.mpk", size=77, shuffle="tcp://10.0.0.2:4"),
}

# One instance of every message type, every field set to a non-default value.
MESSAGE_SAMPLES = {
    "hello": p.Hello(worker="w-1", inc="inc-9", host="node-1", pid=4242, software="zmqmr 0.1",
                     shuffle="tcp://10.0.0.7:41234"),
    "request": p.Request(worker="w-1", inc="i", running=(1, 2, 2**62), queued=(2,), want=p.MAX_PREFETCH),
    "heartbeat": p.Heartbeat(worker="w-1", inc="i", running=(0, 5), queued=(5,), progress=(PROGRESS,)),
    "done": p.Done(worker="w-1", inc="i", attempt=17,
                   parts=(PARTFILE, p.PartFile(partition=0, path="/x", size=0)),
                   output="/out/part-00000", stats=TASKSTATS,
                   counters=(COUNTER, p.CounterValue(group="zmqmr", name="input records", value=2**40)),
                   bad_records=(BADRECORD,), bad_count=7),
    "failed": p.Failed(worker="w-1", inc="i", attempt=3, error=TASKERROR, lost=True, fetch_failed=(0, 7)),
    "batch": p.Batch(worker="w-1", inc="i", items=(
        p.Done(worker="w-1", inc="i", attempt=17, kind="map", index=3, job_id="job-1", parts=(PARTFILE,),
               stats=TASKSTATS, counters=(COUNTER,)),
        p.Failed(worker="w-1", inc="i", attempt=3, error=TASKERROR, lost=True),
        p.Request(worker="w-1", inc="i", running=(4, 5), queued=(5,), want=7))),
    "status": p.StatusQuery(what="task", kind="map", index=7),
    "welcome": p.Welcome(job_id="job-1", job=JOBSPEC, reducers=4, heartbeat_interval=0.5,
                         work_dir="/tmp/work", worker_timeout=9.0, staging="always", probe="ab" * 16),
    "task": p.Task(job_id="job-1", kind="map", index=2, attempt=9,
                   segments=(SEGMENT, p.Segment(key="", path="/b", start=0, end=0)),
                   sources=(p.MapOutput(map=1, path="/w/a", size=10, shuffle="tcp://h:1"),
                            p.MapOutput(map=2, path="/w/b", size=0)), output_dir="/out", skip=(POSITION,)),
    "wait": p.Wait(retry_after=2.5),
    "wake": p.Wake(),
    "cancel": p.Cancel(attempt=5, reason="ran too long"),
    "ack": p.Ack(),
    "reregister": p.Reregister(reason="unknown worker"),
    "exit": p.Exit(reason="job over", ok=False),
    "bundle": p.Bundle(items=(p.Task(job_id="job-1", kind="map", index=2, attempt=9, segments=(SEGMENT,)),
                              p.Cancel(attempt=5, reason="ran too long"), p.Wait(retry_after=2.5))),
    "status_reply": p.StatusReply(ok=True, data={"tasks": [{"index": 1, "state": "done"}],
                                                 "n": 3, "f": 1.5, "none": None, "flag": False},
                                  error="nothing"),
    "read_input": p.ReadInput(worker="w-1", inc="i", attempt=8, segment=2, offset=2**40, length=p.MAX_CHUNK_BYTES,
                              tag=5),
    "upload": p.Upload(worker="w-1", inc="i", attempt=8, offset=10, data=b"\x00bytes\xff", last=True),
    "upload_ack": p.UploadAck(attempt=8, received=2**33, done=True, error="disk full"),
    "fetch": p.Fetch(path="0123456789ab/map-00001-a7/part-00000.mpk", offset=2**40, length=1, tag=2**40),
    "chunk": p.Chunk(tag=3, offset=4, data=b"\x00" * 100, eof=True, error="refused"),
}

# The same types with only their required fields.
MINIMAL_SAMPLES = {
    "hello": p.Hello(worker="w", inc="i"),
    "request": p.Request(worker="w", inc="i"),
    "heartbeat": p.Heartbeat(worker="w", inc="i"),
    "done": p.Done(worker="w", inc="i", attempt=0),
    "failed": p.Failed(worker="w", inc="i", attempt=0, error=p.TaskError(kind="", message="")),
    "batch": p.Batch(worker="w", inc="i"),
    "status": p.StatusQuery(what="job"),
    "welcome": p.Welcome(job_id="j", job=p.JobSpec(name="m"), reducers=1, heartbeat_interval=1.0),
    "task": p.Task(job_id="j", kind="reduce", index=0, attempt=0),
    "wait": p.Wait(retry_after=0.0),
    "wake": p.Wake(),
    "cancel": p.Cancel(attempt=0),
    "ack": p.Ack(),
    "reregister": p.Reregister(),
    "exit": p.Exit(),
    "bundle": p.Bundle(),
    "status_reply": p.StatusReply(ok=False),
    "read_input": p.ReadInput(worker="w", inc="i", attempt=0, segment=0, offset=0, length=1),
    "upload": p.Upload(worker="w", inc="i", attempt=0, offset=0),
    "upload_ack": p.UploadAck(attempt=0),
    "fetch": p.Fetch(path="x", offset=0, length=1),
    "chunk": p.Chunk(),
}

ALL_TYPES = {**p.TO_DRIVER, **p.TO_WORKER, **p.TO_SHUFFLE, **p.TO_FETCHER}


def direction(mtype):
    return next(d for d in (p.TO_DRIVER, p.TO_WORKER, p.TO_SHUFFLE, p.TO_FETCHER) if mtype in d)


def other_direction(mtype):
    return p.TO_WORKER if mtype in p.TO_DRIVER else p.TO_DRIVER  # TO_DRIVER takes no shuffle or fetcher type


def body_of(message):
    """The plain map `encode` would send, for tampering with."""
    body = {"v": p.PROTOCOL_VERSION, "t": message.TYPE}
    body.update(p.to_fields(message))
    return body


def pack(obj, **kw):
    return msgpack.packb(obj, use_bin_type=True, **kw)


def reason_of(frame, allowed=p.TO_DRIVER):
    with pytest.raises(ProtocolError) as info:
        p.decode(frame, allowed)
    return info.value.reason


# --- round trips --------------------------------------------------------------------


def test_samples_cover_every_message_type():
    assert set(MESSAGE_SAMPLES) == set(ALL_TYPES)
    assert set(MINIMAL_SAMPLES) == set(MESSAGE_SAMPLES)
    assert not set(p.TO_DRIVER) & set(p.TO_WORKER)
    assert len(ALL_TYPES) == len(p.TO_DRIVER) + len(p.TO_WORKER) + len(p.TO_SHUFFLE) + len(p.TO_FETCHER)
    for mtype, cls in ALL_TYPES.items():
        assert cls.TYPE == mtype
        assert type(MESSAGE_SAMPLES[mtype]) is cls


@pytest.mark.parametrize("samples", [MESSAGE_SAMPLES, MINIMAL_SAMPLES], ids=["full", "minimal"])
@pytest.mark.parametrize("mtype", sorted(MESSAGE_SAMPLES))
def test_round_trip(mtype, samples):
    message = samples[mtype]
    frame = p.encode(message)
    assert isinstance(frame, bytes)
    decoded = p.decode(frame, direction(mtype))
    assert type(decoded) is type(message)
    assert decoded == message
    assert p.encode(decoded) == frame


@pytest.mark.parametrize("mtype", sorted(MESSAGE_SAMPLES))
def test_envelope_holds_version_and_type(mtype):
    frame = p.encode(MESSAGE_SAMPLES[mtype])
    version, t, body = p.peek_envelope(frame)
    assert version == p.PROTOCOL_VERSION == 3
    assert t == mtype
    assert body == body_of(MESSAGE_SAMPLES[mtype])


def test_nested_records_decode_to_records():
    done = p.decode(p.encode(MESSAGE_SAMPLES["done"]), p.TO_DRIVER)
    assert isinstance(done.parts, tuple) and all(isinstance(x, p.PartFile) for x in done.parts)
    assert isinstance(done.stats, p.TaskStats) and done.stats == TASKSTATS
    failed = p.decode(p.encode(MESSAGE_SAMPLES["failed"]), p.TO_DRIVER)
    assert isinstance(failed.error, p.TaskError) and failed.error == TASKERROR
    welcome = p.decode(p.encode(MESSAGE_SAMPLES["welcome"]), p.TO_WORKER)
    assert isinstance(welcome.job, p.JobSpec) and welcome.job == JOBSPEC
    task = p.decode(p.encode(MESSAGE_SAMPLES["task"]), p.TO_WORKER)
    assert task.segments[0] == SEGMENT and isinstance(task.sources, tuple)
    assert all(isinstance(x, p.MapOutput) for x in task.sources)


def test_missing_optional_fields_take_defaults():
    frame = pack({"v": p.PROTOCOL_VERSION, "t": "done", "worker": "w", "inc": "i", "attempt": 5})
    done = p.decode(frame, p.TO_DRIVER)
    assert done == p.Done(worker="w", inc="i", attempt=5)
    assert done.parts == () and done.output == "" and done.stats == p.TaskStats()


def test_integers_are_accepted_where_floats_are_expected():
    wait = p.decode(pack({"v": p.PROTOCOL_VERSION, "t": "wait", "retry_after": 3}), p.TO_WORKER)
    assert wait.retry_after == 3.0 and isinstance(wait.retry_after, float)


def test_unknown_extra_fields_are_ignored():
    body = body_of(MESSAGE_SAMPLES["hello"])
    body["future_field"] = [1, 2, {"x": None}]
    assert p.decode(pack(body), p.TO_DRIVER) == MESSAGE_SAMPLES["hello"]


def test_limits_are_inclusive():
    name = "é" * p.MAX_NAME_LEN  # characters, not bytes
    hello = pack({"v": p.PROTOCOL_VERSION, "t": "hello", "worker": name, "inc": "i"})
    assert p.decode(hello, p.TO_DRIVER).worker == name
    assert reason_of(pack({"v": p.PROTOCOL_VERSION, "t": "hello", "worker": name + "x", "inc": "i"})) == "schema"
    top = {"v": p.PROTOCOL_VERSION, "t": "request", "worker": "w", "inc": "i", "running": [p.MAX_ATTEMPT_ID] * 1024}
    assert len(p.decode(pack(top), p.TO_DRIVER).running) == 1024


# --- rejection: envelope ------------------------------------------------------------


def test_frame_over_max_message_bytes_is_too_large():
    assert reason_of(b"\x00" * (p.MAX_MESSAGE_BYTES + 1)) == "too_large"


def test_valid_message_exactly_at_the_limit_decodes_and_one_byte_more_does_not():
    def reply(n):
        return p.encode(p.StatusReply(ok=True, data="x" * n))

    overhead = len(reply(2**20)) - 2**20  # str32 header: same for both sizes
    n = p.MAX_MESSAGE_BYTES - overhead
    frame = reply(n)
    assert len(frame) == p.MAX_MESSAGE_BYTES
    assert p.decode(frame, p.TO_WORKER).data == "x" * n
    with pytest.raises(ProtocolError) as refused:  # encode never makes a frame a peer would drop
        reply(n + 1)
    assert refused.value.reason == "too_large"
    frame = frame[:-1] + b"xx"  # a peer's oversize frame
    assert len(frame) == p.MAX_MESSAGE_BYTES + 1
    assert reason_of(frame, p.TO_WORKER) == "too_large"


@pytest.mark.parametrize("frame", [
    b"",
    b"\xc1",                      # the one byte msgpack never uses
    b"not msgpack at all \xff\xfe",
    b"\xff" * 40,
    b"\x85\xa1v",                 # a map of 5 that stops after one key
    b"\xdb\xff\xff\xff\xff",      # str32 claiming 4 GiB
    b"\xdd\x7f\xff\xff\xff",      # array32 claiming 2**31 items
], ids=["empty", "c1", "text", "ff", "short-map", "huge-str", "huge-array"])
def test_non_msgpack_is_malformed(frame):
    assert reason_of(frame) == "malformed"


@pytest.mark.parametrize("mtype", sorted(MESSAGE_SAMPLES))
def test_every_truncation_is_rejected(mtype):
    frame = p.encode(MESSAGE_SAMPLES[mtype])
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError) as info:
            p.decode(frame[:cut], direction(mtype))
        assert info.value.reason == "malformed", cut


def test_trailing_bytes_after_the_map_are_malformed():
    frame = p.encode(MESSAGE_SAMPLES["hello"])
    assert reason_of(frame + b"\x00") == "malformed"
    assert reason_of(frame + frame) == "malformed"


def invalid_utf8_frame():
    # {"v": 1, "t": <str holding invalid UTF-8>}
    return b"\x82\xa1v\x01\xa1t\xa2\xff\xfe"


def test_invalid_utf8_string_is_malformed():
    assert reason_of(invalid_utf8_frame()) == "malformed"


@pytest.mark.parametrize("value", [[1, 2], [], 1, -1, 1.5, "hello", b"hello", None, True],
                         ids=repr)
def test_msgpack_non_map_is_malformed(value):
    assert reason_of(pack(value)) == "malformed"


@pytest.mark.parametrize("version", [None, 0, 1, p.PROTOCOL_VERSION + 1, -1, 2**64 - 1, "2", b"\x02", [2], {"v": 2},
                                     1.5])
def test_wrong_version(version):
    body = body_of(MESSAGE_SAMPLES["hello"])
    body["v"] = version
    assert reason_of(pack(body)) == "version"


def test_missing_version():
    body = body_of(MESSAGE_SAMPLES["hello"])
    del body["v"]
    assert reason_of(pack(body)) == "version"


def test_version_is_checked_before_type():
    assert reason_of(pack({"v": p.PROTOCOL_VERSION + 1, "t": "no-such-type"})) == "version"


@pytest.mark.parametrize("version", [True, float(p.PROTOCOL_VERSION)], ids=repr)
def test_version_must_be_an_integer(version):
    body = body_of(MESSAGE_SAMPLES["hello"])
    body["v"] = version
    assert reason_of(pack(body)) == "version"


@pytest.mark.parametrize("mtype", ["", "bogus", "HELLO", "hello ", "status_reply2"])
def test_unknown_type(mtype):
    assert reason_of(pack({"v": p.PROTOCOL_VERSION, "t": mtype, "worker": "w", "inc": "i"})) == "unknown_type"


@pytest.mark.parametrize("mtype", [None, 1, 1.0, True, b"hello", ["hello"], {"hello": 1}],
                         ids=repr)
def test_non_string_type_is_unknown_type(mtype):
    assert reason_of(pack({"v": p.PROTOCOL_VERSION, "t": mtype, "worker": "w", "inc": "i"})) == "unknown_type"


def test_missing_type_is_unknown_type():
    assert reason_of(pack({"v": p.PROTOCOL_VERSION, "worker": "w", "inc": "i"})) == "unknown_type"


@pytest.mark.parametrize("mtype", sorted(MESSAGE_SAMPLES))
def test_type_not_allowed_in_that_direction(mtype):
    frame = p.encode(MESSAGE_SAMPLES[mtype])
    assert reason_of(frame, other_direction(mtype)) == "unknown_type"
    with pytest.raises(ProtocolError):
        p.decode(frame, {})


@pytest.mark.parametrize("mtype", sorted(MESSAGE_SAMPLES))
def test_missing_required_field(mtype):
    message = MESSAGE_SAMPLES[mtype]
    required = [f.name for f in dataclasses.fields(message) if f.default is dataclasses.MISSING]
    for name in required:
        body = body_of(message)
        del body[name]
        with pytest.raises(ProtocolError) as info:
            p.decode(pack(body), direction(mtype))
        assert info.value.reason == "schema"
        assert name in str(info.value)


@pytest.mark.parametrize("record,name", [
    (p.Segment, "path"), (p.Segment, "end"), (p.TaskError, "kind"), (p.PartFile, "partition"),
    (p.JobSpec, "name"),
])
def test_missing_required_field_of_nested_record(record, name):
    carrier = {p.Segment: ("task", "segments", True), p.TaskError: ("failed", "error", False),
               p.PartFile: ("done", "parts", True), p.JobSpec: ("welcome", "job", False)}
    mtype, fname, is_list = carrier[record]
    inner = p.to_fields(RECORD_SAMPLES[record])
    del inner[name]
    body = body_of(MESSAGE_SAMPLES[mtype])
    body[fname] = [inner] if is_list else inner
    with pytest.raises(ProtocolError) as info:
        p.decode(pack(body), direction(mtype))
    assert info.value.reason == "schema" and name in str(info.value)


# --- rejection: wrong field values --------------------------------------------------

NAN = float("nan")
INF = float("inf")

EXPLICIT_BAD = [
    # (message type, field, bad value)
    ("hello", "pid", "5"),
    ("hello", "pid", True),
    ("hello", "pid", -1),
    ("hello", "pid", 2**32 + 1),
    ("hello", "pid", 1.0),
    ("hello", "worker", ""),
    ("hello", "worker", "w" * (p.MAX_NAME_LEN + 1)),
    ("hello", "worker", b"w"),
    ("hello", "inc", "i" * 65),
    ("hello", "host", None),
    ("done", "attempt", -1),
    ("done", "attempt", True),
    ("done", "attempt", "1"),
    ("done", "attempt", p.MAX_ATTEMPT_ID + 1),
    ("done", "output", "o" * (p.MAX_PATH_LEN + 1)),
    ("done", "parts", [{"partition": "x", "path": "/p"}]),
    ("done", "parts", [{"partition": -1, "path": "/p"}]),
    ("done", "parts", [{"partition": 1, "path": ""}]),
    ("done", "parts", [1]),
    ("done", "parts", "parts"),
    ("done", "stats", {"seconds": NAN}),
    ("done", "stats", {"seconds": -0.5}),
    ("done", "stats", {"records_in": False}),
    ("done", "stats", []),
    ("failed", "attempt", -5),
    ("failed", "error", "boom"),
    ("failed", "error", {"kind": "E", "message": "m" * (p.MAX_TEXT_LEN + 1)}),
    ("failed", "error", {"kind": 1, "message": "m"}),
    ("failed", "lost", 1),
    ("failed", "lost", "true"),
    ("request", "running", [1] * 1025),
    ("request", "running", ["1"]),
    ("request", "running", [True]),
    ("request", "running", [-1]),
    ("request", "running", {"1": 1}),
    ("request", "running", 1),
    ("heartbeat", "running", [0, None]),
    ("status", "what", "everything"),
    ("status", "what", 1),
    ("status", "what", ["job"]),
    ("status", "what", None),
    ("status", "index", p.MAX_TASK_ID + 1),
    ("wait", "retry_after", NAN),
    ("wait", "retry_after", INF),
    ("wait", "retry_after", -INF),
    ("wait", "retry_after", -0.001),
    ("wait", "retry_after", 3600.5),
    ("wait", "retry_after", "1"),
    ("wait", "retry_after", True),
    ("wait", "retry_after", None),
    ("welcome", "heartbeat_interval", 0),
    ("welcome", "heartbeat_interval", NAN),
    ("welcome", "reducers", 0),
    ("welcome", "reducers", p.MAX_TASK_ID + 1),
    ("welcome", "reducers", True),
    ("welcome", "job", {"name": ""}),
    ("welcome", "job", {"name": "m", "source": 5}),
    ("welcome", "job", {"name": "m", "sha256": "a" * 65}),
    ("welcome", "job_id", ""),
    ("task", "kind", "shuffle"),
    ("task", "kind", "MAP"),
    ("task", "index", -1),
    ("task", "attempt", -1),
    ("task", "segments", [{"key": "k", "path": "/p", "start": -1, "end": 5}]),
    ("task", "segments", [{"key": "k", "path": "/p", "start": 0, "end": "5"}]),
    ("task", "segments", [{"key": "k", "path": "/p", "start": 0, "end": 5, "gzip": "no"}]),
    ("task", "segments", [{"key": 1, "path": "/p", "start": 0, "end": 5}]),
    ("task", "segments", [None]),
    ("task", "sources", [{"map": 0, "path": "", "size": 1}]),
    ("task", "sources", [{"map": 0, "path": b"/p", "size": 1}]),
    ("task", "sources", [{"map": -1, "path": "/p", "size": 1}]),
    ("task", "sources", "/p"),
    ("upload", "data", "text, not bytes"),
    ("upload", "data", b"x" * (p.MAX_CHUNK_BYTES + 1)),
    ("read_input", "length", p.MAX_CHUNK_BYTES + 1),
    ("read_input", "length", 0),
    ("fetch", "path", ""),
    ("fetch", "offset", -1),
    ("chunk", "data", b"x" * (p.MAX_CHUNK_BYTES + 1)),
    ("welcome", "staging", "sometimes"),
    ("failed", "fetch_failed", [-1]),
    ("exit", "ok", 1),
    ("exit", "ok", None),
    ("exit", "reason", "r" * (p.MAX_TEXT_LEN + 1)),
    ("status_reply", "ok", "yes"),
    ("status_reply", "error", 5),
]


@pytest.mark.parametrize("mtype,name,value", EXPLICIT_BAD,
                         ids=[f"{t}.{n}={v!r:.20}" for t, n, v in EXPLICIT_BAD])
def test_wrong_field_value_is_schema_error(mtype, name, value):
    body = body_of(MESSAGE_SAMPLES[mtype])
    body[name] = value
    with pytest.raises(ProtocolError) as info:
        p.decode(pack(body), direction(mtype))
    assert info.value.reason == "schema"
    assert name in str(info.value)


def test_over_long_job_source_is_rejected():
    source = "x" * (p.MAX_SOURCE_LEN + 1)
    body = body_of(MESSAGE_SAMPLES["welcome"])
    body["job"] = {"name": "m", "source": source}
    assert reason_of(pack(body), p.TO_WORKER) == "schema"
    body["job"]["source"] = source[:-1]
    assert p.decode(pack(body), p.TO_WORKER).job.source == source[:-1]


def test_list_over_max_list_len_is_rejected():
    # small items: the frame stays under the size limit
    body = body_of(MESSAGE_SAMPLES["failed"]) | {"fetch_failed": [0] * (p.MAX_LIST_LEN + 1)}
    assert reason_of(pack(body), p.TO_DRIVER) == "schema"


def _valid_value(chk):
    """Some value the check accepts (used to build over-long lists)."""
    if isinstance(chk, p.Text):
        return "x" * max(chk.min_len, 1) if chk.max_len >= 1 else ""
    if isinstance(chk, p.Int):
        return chk.low
    if isinstance(chk, p.Float):
        return chk.low
    if isinstance(chk, p.Flag):
        return False
    if isinstance(chk, p.Bin):
        return b""
    if isinstance(chk, p.OneOf):
        return chk.choices[0]
    if isinstance(chk, p.Nested):
        return p.to_fields(RECORD_SAMPLES[chk.record])
    if isinstance(chk, p.Maybe):
        return None
    raise AssertionError(chk)


def _bad_values(chk, depth=0):
    """Values the check must refuse, derived from the check's own limits."""
    if isinstance(chk, p.Maybe):
        return [b for b in _bad_values(chk.inner, depth) if b is not None]
    if isinstance(chk, p.Text):
        bad = [1, True, None, b"x", ["x"], {"x": "x"}, 1.5]
        if chk.max_len <= p.MAX_TEXT_LEN:
            bad.append("x" * (chk.max_len + 1))
        if chk.min_len > 0:
            bad.append("")
        return bad
    if isinstance(chk, p.Int):
        return ["1", True, False, None, 1.0, [1], chk.low - 1, chk.high + 1]
    if isinstance(chk, p.Float):
        return ["1", True, None, NAN, INF, -INF, [1.0], chk.low - 1, chk.high + 1]
    if isinstance(chk, p.Flag):
        return [1, 0, "true", None, []]
    if isinstance(chk, p.OneOf):
        return ["bogus", 1, None, [chk.choices[0]], chk.choices[0].upper()]
    if isinstance(chk, p.ListOf):
        bad = ["x", 1, {"a": 1}, None]
        if depth == 0:
            bad += [[b] for b in _bad_values(chk.item, depth + 1)[:4]]
        if chk.max_len <= 1024:
            bad.append([_valid_value(chk.item)] * (chk.max_len + 1))
        return bad
    if isinstance(chk, p.Nested):
        bad = [1, "x", [], None]
        if depth == 0:
            sample = p.to_fields(RECORD_SAMPLES[chk.record])
            for f in dataclasses.fields(chk.record):
                for b in _bad_values(f.metadata["check"], depth + 1)[:3]:
                    bad.append({**sample, f.name: b})
        return bad
    if isinstance(chk, p.Plain):
        return []
    if isinstance(chk, p.Bin):
        return ["text", 1, None, [b"x"], b"x" * (chk.max_len + 1)]
    if isinstance(chk, p.Items):  # a bad item is rejected alone (see the batch tests); a bad list is not
        return ["x", 1, {"a": 1}, None, [{"t": chk.allowed[0]}] * (p.MAX_BATCH_ITEMS + 1)]
    raise AssertionError(chk)


def _generic_bad_cases():
    cases = []
    for mtype, message in sorted(MESSAGE_SAMPLES.items()):
        for f in dataclasses.fields(message):
            for i, bad in enumerate(_bad_values(f.metadata["check"])):
                cases.append(pytest.param(mtype, f.name, bad, id=f"{mtype}.{f.name}#{i}"))
    return cases


@pytest.mark.parametrize("mtype,name,value", _generic_bad_cases())
def test_every_field_refuses_wrong_values(mtype, name, value):
    body = body_of(MESSAGE_SAMPLES[mtype])
    body[name] = value
    with pytest.raises(ProtocolError) as info:
        p.decode(pack(body), direction(mtype))
    assert info.value.reason == "schema"


# --- rejection: extension types and map keys ----------------------------------------


@pytest.mark.parametrize("value", [
    msgpack.ExtType(5, b"abc"),
    msgpack.ExtType(0, b""),
    msgpack.ExtType(127, b"x" * 300),
    msgpack.Timestamp(1, 0),
    msgpack.Timestamp(2**40, 5),
], ids=repr)
@pytest.mark.parametrize("where", ["field", "nested", "top"])
def test_extension_types_and_timestamps_are_malformed(value, where):
    if where == "top":
        obj = value
    else:
        obj = body_of(MESSAGE_SAMPLES["status_reply"])
        obj["data"] = value if where == "field" else {"deep": [1, {"x": value}]}
    assert reason_of(pack(obj), p.TO_WORKER) == "malformed"


def test_datetime_is_malformed():
    body = body_of(MESSAGE_SAMPLES["hello"])
    body["host"] = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    assert reason_of(pack(body, datetime=True)) == "malformed"


@pytest.mark.parametrize("raw", [
    b"\xc7\x00\xff",              # ext8, length 0, type -1 (timestamp code)
    b"\xc7\x00\x05",              # ext8, length 0, type 5
    b"\xd4\xfb\x00",              # fixext1, type -5
    b"\xd6\xff\x00\x00\x00\x01",  # timestamp32
    b"\xd7\xff" + b"\x00" * 8,    # timestamp64
    b"\xc7\x0c\xff" + b"\x00" * 12,  # timestamp96
], ids=["ext8-0-ts", "ext8-0", "fixext1-neg", "ts32", "ts64", "ts96"])
def test_raw_extension_bytes_are_malformed(raw):
    frame = b"\x83\xa1v\x01\xa1t\xa5hello\xa4host" + raw
    assert reason_of(frame) == "malformed"


@pytest.mark.parametrize("key", [1, -1, 1.5, None, True, (1, 2)], ids=repr)
def test_map_with_non_string_keys_is_rejected(key):
    # at the top, beside valid keys
    body = body_of(MESSAGE_SAMPLES["hello"])
    body[key] = "x"
    assert reason_of(pack(body)) == "malformed"
    # inside a field nobody looks at (Plain data)
    body = body_of(MESSAGE_SAMPLES["status_reply"])
    body["data"] = {"ok": {key: 1}}
    assert reason_of(pack(body), p.TO_WORKER) == "malformed"
    # alone
    assert reason_of(pack({key: 1})) == "malformed"


def test_map_with_bytes_keys_is_rejected():
    body = {k.encode(): v for k, v in body_of(MESSAGE_SAMPLES["hello"]).items()}
    with pytest.raises(ProtocolError):
        p.decode(pack(body), p.TO_DRIVER)
    body = body_of(MESSAGE_SAMPLES["failed"])
    body["error"] = {k.encode(): v for k, v in body["error"].items()}
    with pytest.raises(ProtocolError):
        p.decode(pack(body), p.TO_DRIVER)


# --- deep nesting ---------------------------------------------------------------------


def _nested_list(depth):
    # depth array headers around a 0, built as bytes (msgpack.packb refuses deep objects)
    return b"\x91" * depth + b"\x00"


@pytest.mark.parametrize("depth", [1500, 10_000, 1_000_000])
def test_nesting_beyond_msgpack_stack_is_malformed(depth):
    frame = b"\x82\xa1v\x01\xa1t" + _nested_list(depth)
    assert reason_of(frame) == "malformed"


@pytest.mark.parametrize("field", ["t", "v", "running", "error.kind"])
def test_deeply_nested_value_raises_protocol_error(field):
    for depth in range(900, 1100):
        deep = _nested_list(depth)
        if field == "t":
            frame = b"\x82\xa1v\x01\xa1t" + deep
        elif field == "v":
            frame = b"\x82\xa1t\xa5hello\xa1v" + deep
        elif field == "running":
            frame = b"\x85" + pack({"v": p.PROTOCOL_VERSION, "t": "request", "worker": "w", "inc": "i"})[1:]
            frame += pack("running") + deep
        else:
            frame = b"\x86" + pack({"v": p.PROTOCOL_VERSION, "t": "failed", "worker": "w", "inc": "i",
                                     "attempt": 1})[1:]
            frame += pack("error") + b"\x82" + pack("message") + pack("") + pack("kind") + deep
        with pytest.raises(ProtocolError):
            p.decode(frame, p.TO_DRIVER)


# --- hypothesis -----------------------------------------------------------------------

MSGPACK_INT = st.integers(min_value=-(2**63), max_value=2**64 - 1)
LEAVES = (st.none() | st.booleans() | MSGPACK_INT | st.floats(allow_nan=True)
          | st.text(max_size=20) | st.binary(max_size=20))
KEYS = st.text(max_size=10) | st.sampled_from(["v", "t", "worker", "inc", "attempt", "kind"])
ANY_VALUE = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
ANY_VALUE_ANY_KEYS = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(KEYS | MSGPACK_INT | st.binary(max_size=5), children, max_size=5),
    max_leaves=25,
)


def _near_values(chk):
    """Values close to what the check wants: at and around its limits."""
    if isinstance(chk, p.Maybe):
        return st.none() | _near_values(chk.inner)
    if isinstance(chk, p.Text):
        return st.text(max_size=min(chk.max_len + 2, 300)) | st.sampled_from(
            ["", "x" * chk.max_len, "x" * (chk.max_len + 1)] if chk.max_len <= 70_000 else [""])
    if isinstance(chk, (p.Int, p.Float)):
        edges = [chk.low, chk.high, chk.low - 1, chk.high + 1, 0]
        strat = st.sampled_from(edges) | st.integers(min_value=-5, max_value=2**63)
        if isinstance(chk, p.Float):
            strat = strat | st.floats(allow_nan=True)
        return strat
    if isinstance(chk, p.Flag):
        return st.booleans() | st.sampled_from([0, 1])
    if isinstance(chk, p.Bin):
        return st.binary(max_size=64) | st.sampled_from([b"x" * chk.max_len, b"x" * (chk.max_len + 1), "text"])
    if isinstance(chk, p.OneOf):
        return st.sampled_from(list(chk.choices) + ["", "bogus"])
    if isinstance(chk, p.ListOf):
        return st.lists(_near_values(chk.item), max_size=3)
    if isinstance(chk, p.Nested):
        return _record_body(chk.record)
    if isinstance(chk, p.Plain):
        return ANY_VALUE
    if isinstance(chk, p.Items):
        return st.lists(st.sampled_from(chk.allowed).flatmap(
            lambda t: _record_body(p.TO_DRIVER.get(t) or p.TO_WORKER[t]).map(lambda body: {**body, "t": t})),
            max_size=3)
    raise AssertionError(chk)


def _record_body(record):
    sample = p.to_fields(RECORD_SAMPLES[record]) if record in RECORD_SAMPLES else {}
    optional = {}
    for f in dataclasses.fields(record):
        strat = _near_values(f.metadata["check"]) | ANY_VALUE
        if f.name in sample:
            strat = st.just(sample[f.name]) | strat
        optional[f.name] = strat
    return st.fixed_dictionaries({}, optional=optional)


TYPED_BODIES = st.sampled_from(sorted(MESSAGE_SAMPLES)).flatmap(
    lambda mtype: st.tuples(st.just(mtype), _record_body(type(MESSAGE_SAMPLES[mtype])))
)


def _check_decodes_or_refuses(frame, allowed, expected_cls=None):
    try:
        message = p.decode(frame, allowed)
    except ProtocolError as exc:
        assert exc.reason in {"too_large", "malformed", "version", "unknown_type", "schema"}
        return None
    assert isinstance(message, p.Message)
    assert message.TYPE in allowed and type(message) is allowed[message.TYPE]
    if expected_cls is not None:
        assert type(message) is expected_cls
    rejected = [i for i in getattr(message, "items", ()) if isinstance(i, p.Rejected)]
    if rejected:  # a bad item of a batch is dropped alone, with a reason; it is never sent on
        assert all(r.reason in {"schema", "unknown_type"} and r.detail for r in rejected)
        return message
    # whatever decodes must encode to something that decodes to the same thing
    again = p.encode(message)
    assert p.encode(p.decode(again, allowed)) == again
    return message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(frame):
    _check_decodes_or_refuses(frame, p.TO_DRIVER)
    _check_decodes_or_refuses(frame, p.TO_WORKER)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(MESSAGE_SAMPLES)), st.data())
def test_mutated_valid_frames_raise_only_protocol_error(mtype, data):
    frame = bytearray(p.encode(MESSAGE_SAMPLES[mtype]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = data.draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[pos] = data.draw(st.integers(0, 255))
        elif op == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and frame:
            del frame[pos]
        elif op == "truncate":
            del frame[pos:]
    _check_decodes_or_refuses(bytes(frame), direction(mtype))


@settings(max_examples=120, deadline=None)
@given(ANY_VALUE_ANY_KEYS)
def test_arbitrary_msgpack_structures_raise_only_protocol_error(value):
    frame = pack(value)
    _check_decodes_or_refuses(frame, p.TO_DRIVER)
    _check_decodes_or_refuses(frame, p.TO_WORKER)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TYPED_BODIES, st.booleans())
def test_typed_bodies_with_random_fields_decode_right_or_raise_protocol_error(typed, wrong_way):
    mtype, fields = typed
    body = {**fields, "v": p.PROTOCOL_VERSION, "t": mtype}
    frame = pack(body)
    cls = type(MESSAGE_SAMPLES[mtype])
    if wrong_way:
        assert reason_of(frame, other_direction(mtype)) == "unknown_type"
        return
    message = _check_decodes_or_refuses(frame, direction(mtype), cls)
    if message is not None:
        # every field given was kept (normalized: lists to tuples, numbers to float)
        for name, value in fields.items():
            got = getattr(message, name)
            if isinstance(got, float):
                assert got == value or (math.isnan(got) and math.isnan(value))


# --- batches and bundles --------------------------------------------------------------

DONE_ITEM = p.Done(worker="w-1", inc="i", attempt=17, kind="map", index=3, job_id="job-1", parts=(PARTFILE,),
                   stats=TASKSTATS, counters=(COUNTER,))


def test_a_spliced_batch_is_the_batch_encode_makes():
    items = MESSAGE_SAMPLES["batch"].items
    frame = p.batch_frame("w-1", "i", [p.encode_item(m) for m in items])
    assert p.decode(frame, p.TO_DRIVER) == MESSAGE_SAMPLES["batch"]
    assert p.decode(p.encode(MESSAGE_SAMPLES["batch"]), p.TO_DRIVER) == MESSAGE_SAMPLES["batch"]
    bundle = p.bundle_frame([p.encode_item(m) for m in MESSAGE_SAMPLES["bundle"].items])
    assert p.decode(bundle, p.TO_WORKER) == MESSAGE_SAMPLES["bundle"]


def test_batch_items_take_the_batchs_identity_whatever_they_say():
    item = msgpack.unpackb(p.encode_item(DONE_ITEM))
    assert "worker" not in item and "inc" not in item
    body = {"v": p.PROTOCOL_VERSION, "t": "batch", "worker": "real", "inc": "r1",
            "items": [{**item, "worker": "forged", "inc": "f"}]}
    (done,) = p.decode(pack(body), p.TO_DRIVER).items
    assert (done.worker, done.inc) == ("real", "r1")


def test_a_bad_item_is_rejected_alone_keeping_its_attempt():
    good = msgpack.unpackb(p.encode_item(DONE_ITEM))
    body = {"v": p.PROTOCOL_VERSION, "t": "batch", "worker": "w", "inc": "i",
            "items": [{**good, "counters": [{"group": "g", "name": "", "value": 1}]},
                      {"t": "hello", "attempt": 4}, good, "junk", {**good, "attempt": -1},
                      {"t": "request", "want": p.MAX_PREFETCH + 1}]}
    bad_counter, wrong_type, done, junk, bad_attempt, greedy = p.decode(pack(body), p.TO_DRIVER).items
    assert isinstance(bad_counter, p.Rejected) and bad_counter.reason == "schema"
    assert bad_counter.attempt == 17 and "counters[0].name" in bad_counter.detail
    assert isinstance(wrong_type, p.Rejected) and wrong_type.reason == "unknown_type"
    assert done == p.Done(**{**dataclasses.asdict(DONE_ITEM), "worker": "w", "inc": "i", "parts": (PARTFILE,),
                             "stats": TASKSTATS, "counters": (COUNTER,)})
    assert isinstance(junk, p.Rejected) and junk.attempt is None
    assert isinstance(bad_attempt, p.Rejected) and bad_attempt.attempt is None
    assert isinstance(greedy, p.Rejected) and "want" in greedy.detail


def test_items_leave_out_fields_at_their_defaults():
    assert msgpack.unpackb(p.encode_item(p.Task(job_id="j", kind="map", index=1, attempt=2))) == \
        {"t": "task", "job_id": "j", "kind": "map", "index": 1, "attempt": 2}


def test_a_batch_or_bundle_too_large_is_refused_when_made():
    with pytest.raises(ProtocolError) as info:
        p.batch_frame("w", "i", [b"\xc0" * (p.MAX_MESSAGE_BYTES // 2)] * 3)
    assert info.value.reason == "too_large"


def test_a_compiled_check_agrees_with_the_generic_one_on_every_sample():
    for record, sample in RECORD_SAMPLES.items():
        body = p.to_fields(sample)
        assert p._build(record, body) == p._build_checked(record, body) == sample
