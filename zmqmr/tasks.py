"""Running one map or reduce attempt: the user's functions between input and files.

These functions do file I/O but no networking; the executor process calls them and a
test can too. Every failure becomes a UserCodeError that says where in the input it
happened.
"""

from __future__ import annotations

import os
import time
from itertools import groupby
from typing import Any, Callable, Iterable, List, Optional, Tuple

from . import counters, storage
from .errors import UserCodeError
from .inputs import read_segment, strip_line_ending
from .job import Job
from .output import format_record, part_name
from .protocol import DEFAULT_MEMORY_LIMIT, BadRecord, PartFile, RecordPosition, Segment, TaskStats
from .usercode import user_traceback

_THIS_FILE = os.path.abspath(__file__).rstrip("c")
_SHOWN_RECORD_CHARS = 200


def _raised_here(exc: BaseException) -> bool:
    """True when the innermost frame is in this file: the user broke a contract, not raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == _THIS_FILE


def _user_error(function: str, exc: BaseException, location: str, contract: str) -> UserCodeError:
    if _raised_here(exc):
        if isinstance(exc, TypeError) and "NoneType" in str(exc):
            message = f"{function} returned None; {contract}"
        else:
            message = f"{function} broke its contract ({exc}); {contract}"
        return UserCodeError(message, location)
    return UserCodeError(f"{function} raised {type(exc).__name__}: {exc}", location, user_traceback(exc))


def _shown(record: Any) -> str:
    text = repr(record)
    return text if len(text) <= _SHOWN_RECORD_CHARS else text[:_SHOWN_RECORD_CHARS] + "..."


def describe_location(segment: Segment, offset: int, line_number: int) -> str:
    """Where a record starts: file as given, byte offset, and the line number where it is known."""
    where = f"{segment.key} at byte {offset}"
    if segment.start == 0 or segment.gzip:
        where += f" (line {line_number})"
    return where


PAIRS = "it must return an iterable of (key, value) pairs"


class BadRecords:
    """Under --skip-bad-records: records the user's code failed on, kept up to limit + 1."""

    def __init__(self, limit: int, skip: Iterable[RecordPosition] = ()):
        self.limit = limit
        self.known = {(p.segment, p.offset) for p in skip}  # records an earlier attempt hung on
        self.found: List[BadRecord] = []
        self.count = 0

    def add(self, error: UserCodeError) -> None:
        self.count += 1
        counters.add_framework("bad records skipped", 1)
        if len(self.found) <= self.limit:
            self.found.append(BadRecord(location=error.location, kind="UserCodeError", message=error.message,
                                        traceback=error.traceback_text))


class NoProgress:
    """Stands in for the executor's shared progress array where nobody watches."""

    def __setitem__(self, index: int, value: int) -> None:
        pass


# Slots of the progress array that a worker reads while the attempt runs.
ATTEMPT, RECORDS, SEGMENT, OFFSET, LINE = range(5)
PROGRESS_SLOTS = 5


def run_map(job: Job, segments: Iterable[Segment], reducers: int, out_dir: str,
            encoding: str = "utf-8", errors: str = "strict", progress=NoProgress(),
            bad: Optional[BadRecords] = None, memory_limit: int = DEFAULT_MEMORY_LIMIT
            ) -> Tuple[List[PartFile], TaskStats]:
    """Map every line of the split, then write one sorted (and combined) file per partition.

    `progress` gets the records read and where the current record starts, before the
    mapper sees it, so a worker can say which record a hung attempt was on. With `bad`,
    a record the mapper fails on is skipped whole and noted there instead of failing.
    """
    started = time.monotonic()
    buckets: List[list] = [[] for _ in range(reducers)]
    mapper, partitioner = job.mapper, job.partitioner
    records = bytes_in = 0
    for segment_index, segment in enumerate(segments):
        progress[SEGMENT] = segment_index
        line_number = 0
        for offset, raw in read_segment(segment):
            line_number += 1
            records += 1
            bytes_in += len(raw)
            progress[RECORDS] = records
            progress[OFFSET] = offset
            progress[LINE] = line_number
            try:
                line = strip_line_ending(raw).decode(encoding, errors)
            except UnicodeDecodeError as exc:
                error = UserCodeError(
                    f"input is not valid {encoding} ({exc.reason}); try --encoding latin-1 "
                    "or --encoding-errors replace",
                    describe_location(segment, offset + exc.start, line_number),
                )
                if bad is None:
                    raise error from None
                bad.add(error)
                continue
            if bad is not None:
                _map_or_skip(mapper, partitioner, buckets, segment, segment_index, offset, line_number, line, bad)
                continue
            try:
                if reducers == 1:
                    bucket = buckets[0]
                    for key, value in mapper(segment.key, line):
                        bucket.append((key, value))
                else:
                    for key, value in mapper(segment.key, line):
                        buckets[_partition(partitioner, key, reducers)].append((key, value))
            except UserCodeError:
                raise
            except Exception as exc:
                location = f"{describe_location(segment, offset, line_number)}, record {_shown(line)}"
                raise _user_error("mapper", exc, location, PAIRS) from None
    os.makedirs(out_dir, exist_ok=True)
    parts = []
    records_out = 0
    mapped = sum(len(pairs) for pairs in buckets)
    for index, pairs in enumerate(buckets):
        if not pairs:
            continue
        pairs = _sorted(pairs, f"map output for partition {index}")
        if job.combiner is not None:
            counters.add_framework("combine input records", len(pairs))
            pairs = _combine(job.combiner, pairs)
            counters.add_framework("combine output records", len(pairs))
        records_out += len(pairs)
        path = os.path.join(out_dir, part_name(index) + ".mpk")
        try:
            size = storage.write_pairs(path, pairs)
        except (TypeError, OverflowError, ValueError) as exc:
            raise UserCodeError(f"the map output holds a key or value that msgpack cannot carry ({exc}); keys "
                                "and values must be str, bytes, int (64-bit), float, bool, None, or lists, "
                                "tuples and dicts of those") from None
        parts.append(PartFile(partition=index, path=path, size=size))
    stats = TaskStats(records_in=records, bytes_in=bytes_in, records_out=records_out,
                      seconds=time.monotonic() - started)
    counters.add_framework("input records", records)
    counters.add_framework("input bytes", bytes_in)
    counters.add_framework("map output records", mapped)
    counters.add_framework("spilled records", records_out)
    return parts, stats


def _map_or_skip(mapper, partitioner, buckets, segment: Segment, segment_index: int, offset: int,
                 line_number: int, line: str, bad: BadRecords) -> None:
    """Map one record all or nothing: a record that fails adds none of its pairs."""
    location = f"{describe_location(segment, offset, line_number)}, record {_shown(line)}"
    if (segment_index, offset) in bad.known:
        bad.add(UserCodeError("an earlier attempt hung on this record (--task-timeout)", location))
        return
    try:
        pairs = [(key, value) for key, value in mapper(segment.key, line)]
        targets = [0 if len(buckets) == 1 else _partition(partitioner, key, len(buckets)) for key, _ in pairs]
    except UserCodeError as exc:
        bad.add(UserCodeError(exc.message, exc.location or location, exc.traceback_text))
        return
    except Exception as exc:
        bad.add(_user_error("mapper", exc, location, PAIRS))
        return
    for target, pair in zip(targets, pairs):
        buckets[target].append(pair)


def _partition(partitioner: Callable, key: Any, reducers: int) -> int:
    try:
        index = partitioner(key, reducers)
    except Exception as exc:
        raise UserCodeError(f"partitioner raised {type(exc).__name__}: {exc}", f"key {_shown(key)}",
                            user_traceback(exc)) from None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < reducers:
        raise UserCodeError(f"partitioner returned {index!r} for key {_shown(key)}; "
                            f"it must return an int in 0..{reducers - 1}")
    return index


def _sorted(pairs: list, what: str) -> list:
    try:
        pairs.sort(key=storage.first)
    except TypeError as exc:
        raise UserCodeError(f"keys in the {what} are not mutually sortable ({exc}); "
                            "keys of one job must be comparable with each other") from None
    return pairs


def _combine(combiner: Callable, pairs: list) -> list:
    combined = []
    for key, group in groupby(pairs, key=storage.first):
        try:
            for out_key, value in combiner(key, (v for _, v in group)):
                if out_key != key:
                    raise UserCodeError(f"combiner emitted key {_shown(out_key)} for input key {_shown(key)}; "
                                        "a combiner must keep the key it is given", f"key {_shown(key)}")
                combined.append((out_key, value))
        except UserCodeError:
            raise
        except Exception as exc:
            raise _user_error("combiner", exc, f"key {_shown(key)}", PAIRS) from None
    return combined


def run_reduce(job: Job, inputs: Iterable[str], out_path: str, progress=NoProgress(),
               bad: Optional[BadRecords] = None, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> TaskStats:
    """Merge the sorted map outputs, call the reducer once per key, write key<TAB>value lines.

    With `bad`, a key whose reducer fails is left out of the output whole and noted there.
    """
    started = time.monotonic()
    inputs = list(inputs)
    bytes_in = sum(os.path.getsize(p) for p in inputs)
    reducer = job.reducer
    groups = records_out = 0
    values_read = [0]

    def counted(values):
        for value in values:
            values_read[0] += 1
            yield value

    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w", encoding="utf-8", newline="\n", buffering=storage.BLOCK_BYTES) as out:
        write = out.write
        merged = storage.merge_groups(inputs)
        while True:
            try:
                key, values = next(merged)
            except StopIteration:
                break
            except TypeError as exc:
                raise UserCodeError(f"keys are not mutually sortable ({exc}); "
                                    "keys of one job must be comparable with each other") from None
            groups += 1
            progress[RECORDS] = groups
            if bad is not None:
                try:
                    lines = [format_record(out_key, value) for out_key, value in reducer(key, counted(values))]
                except Exception as exc:
                    bad.add(_user_error("reducer", exc, f"key {_shown(key)}", PAIRS))
                    continue
                write("".join(lines))
                records_out += len(lines)
                continue
            try:
                for out_key, value in reducer(key, counted(values)):
                    write(format_record(out_key, value))
                    records_out += 1
            except Exception as exc:
                raise _user_error("reducer", exc, f"key {_shown(key)}", PAIRS) from None
        out.flush()
        os.fsync(out.fileno())
    counters.add_framework("reduce input groups", groups)
    counters.add_framework("reduce input records", values_read[0])
    counters.add_framework("output records", records_out)
    return TaskStats(records_in=groups, bytes_in=bytes_in, records_out=records_out,
                     seconds=time.monotonic() - started)
