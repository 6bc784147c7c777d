"""Running one map or reduce attempt: the user's functions between input and files.

These functions do file I/O but no networking; the executor process calls them and a
test can too. Every failure becomes a UserCodeError that says where in the input it
happened.
"""

from __future__ import annotations

import os
import shutil
import time
from itertools import chain, islice
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple

import msgpack

from . import counters, storage
from .errors import UserCodeError
from .inputs import Block, UndecodableInput, line_offset, read_blocks, read_segment, strip_line_ending
from .job import Job
from .mapbuffer import MapOutput, approx_size, hashable_key, rss_bytes
from .output import format_record
from .protocol import DEFAULT_MEMORY_LIMIT, BadRecord, PartFile, Progress, RecordPosition, Segment, TaskStats
from .usercode import shown, user_error

LINES_PER_SLICE = 256  # lines mapped between two looks at the buffer's size
IN_MEMORY_EXPANSION = 24  # Python objects take up to this many times their msgpack size


def describe_location(segment: Segment, offset: int, line_number: int) -> str:
    """Where a record starts: file as given, byte offset, and the line number where it is known."""
    where = f"{segment.key} at byte {offset}"
    if segment.start == 0 or segment.gzip:
        where += f" (line {line_number})"
    return where


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


# --- progress ------------------------------------------------------------------------

# Slots of the progress array that a worker reads while the attempt runs. Lines are read
# in blocks, and per line only its index in the block is stored, so watching costs one
# store per record; where the line starts is worked out when someone asks.
ATTEMPT, RECORDS, SEGMENT, OFFSET, LINE, IN_BLOCK = range(6)
PROGRESS_SLOTS = 6


class NoProgress:
    """Stands in for the executor's shared progress array where nobody watches."""

    def __init__(self):
        self.values = [0] * PROGRESS_SLOTS

    def __setitem__(self, index: int, value: int) -> None:
        self.values[index] = value

    def __getitem__(self, index):
        return self.values[index]


def _slots(progress) -> Any:
    """The progress array in the form that is cheapest to store into once per record."""
    if progress is None:
        return [0] * PROGRESS_SLOTS
    if isinstance(progress, NoProgress):
        return progress.values
    try:
        return memoryview(progress).cast("B").cast("q")
    except TypeError:
        return progress


def progress_of(values: Sequence[int], task) -> Optional[Progress]:
    """The attempt's records read and where its current record starts, from its progress slots.

    None if the task process has not started this attempt yet.
    """
    attempt, records, segment, offset, line, in_block = values[:PROGRESS_SLOTS]
    if attempt != task.attempt:
        return None
    location, position = "", None
    if task.kind == "map" and 0 <= segment < len(task.segments) and offset >= 0:
        seg = task.segments[segment]
        if seg.gzip and in_block:
            location = f"{seg.key} (line {line + in_block + 1})"
        else:
            try:
                start = offset if seg.gzip else line_offset(seg, offset, in_block)
            except OSError:
                start = offset
            location = describe_location(seg, start, line + in_block + 1)
            position = RecordPosition(segment=segment, offset=start)
        records += in_block + 1  # the current record counts as read
    elif task.kind == "reduce" and records:
        location = f"the reducer's key number {records} of its partition"
    return Progress(attempt=task.attempt, records=records, location=location, position=position,
                    kind=task.kind, index=task.index, job_id=task.job_id)


# --- map -----------------------------------------------------------------------------


def run_map(job: Job, segments: Iterable[Segment], reducers: int, out_dir: str,
            encoding: str = "utf-8", errors: str = "strict", progress=None,
            bad: Optional[BadRecords] = None, memory_limit: int = DEFAULT_MEMORY_LIMIT
            ) -> Tuple[List[PartFile], TaskStats]:
    """Map every record of the split into the buffer, then write one sorted file per partition.

    The progress slots say which record the mapper is on before it sees it, so a worker
    can say which record a hung attempt was on. With `bad`, a record the mapper fails on
    is skipped whole and noted there instead of failing. A job with `map_split` gets
    each segment's lines at once instead of one call per line.
    """
    started = time.monotonic()
    segments = tuple(segments)
    if not segments:  # nothing to read: no buffer, no files, no counters
        return [], TaskStats(records_in=0, bytes_in=0, records_out=0, seconds=time.monotonic() - started)
    slots = _slots(progress)
    slots[IN_BLOCK] = 0
    output = MapOutput(job, reducers, out_dir, memory_limit)
    records = bytes_in = 0
    for segment_index, segment in enumerate(segments):
        slots[SEGMENT] = segment_index
        if bad is not None:
            read, size = _map_skipping(job, segment, segment_index, output, encoding, errors, slots, bad, records)
        elif job.map_split is not None:
            read, size = _map_split(job, segment, output, encoding, errors, slots, records)
        else:
            read, size = _map_lines(job, segment, output, encoding, errors, slots, records)
        records += read
        bytes_in += size
    parts = output.finish()
    stats = TaskStats(records_in=records, bytes_in=bytes_in, records_out=output.written,
                      seconds=time.monotonic() - started)
    counters.add_framework("input records", records)
    counters.add_framework("input bytes", bytes_in)
    counters.add_framework("map output records", output.mapped)
    if job.combiner is not None:
        counters.add_framework("combine input records", output.combine_in)
        counters.add_framework("combine output records", output.combine_out)
    counters.add_framework("spilled records", output.spilled)
    return parts, stats


def _blocks(segment: Segment, encoding: str, errors: str) -> Iterator[Block]:
    try:
        yield from read_blocks(segment, encoding, errors)
    except UndecodableInput as exc:
        raise _undecodable(exc.reason, segment, exc.offset, exc.line_number, encoding) from None


def _undecodable(reason: str, segment: Segment, offset: int, line_number: int, encoding: str) -> UserCodeError:
    return UserCodeError(f"input is not valid {encoding} ({reason}); try --encoding latin-1 "
                         "or --encoding-errors replace", describe_location(segment, offset, line_number))


def _block_line_location(segment: Segment, block: Block, index: int) -> str:
    offset = block.offset
    for _ in range(index):
        offset = block.raw.index(b"\n", offset - block.offset) + 1 + block.offset
    where = describe_location(segment, offset, block.lines_before + index + 1)
    return f"{where}, record {shown(block.lines[index])}"


def _map_lines(job: Job, segment: Segment, output: MapOutput, encoding: str, errors: str, slots,
               records_before: int) -> Tuple[int, int]:
    """The fast path: lines in blocks, one progress store per line, pairs straight into the buffer."""
    mapper, input_key = job.mapper, segment.key
    groups = output.groups
    get = groups.get
    records = size = lines_since_check = 0
    lines_per_check = 1  # the first line tells how many pairs a line makes
    key = value = None
    for block in _blocks(segment, encoding, errors):
        slots[IN_BLOCK] = 0  # first: a reader must never pair this block with the last one's index
        slots[RECORDS] = records_before + records
        slots[OFFSET] = block.offset
        slots[LINE] = block.lines_before
        size += len(block.raw)
        lines = block.lines
        first = 0
        while first < len(lines):
            # A slice is never longer than the lines until the next look at the buffer, so
            # a mapper that emits thousands of pairs per line is measured often enough.
            step = max(1, min(LINES_PER_SLICE, lines_per_check - lines_since_check))
            index = first
            try:
                for line in islice(lines, first, first + step):
                    slots[IN_BLOCK] = index
                    for key, value in mapper(input_key, line):
                        try:
                            held = get(key)
                        except TypeError:
                            key = hashable_key(key)
                            held = get(key)
                        if held is None:
                            groups[key] = [value]
                        else:
                            held.append(value)
                    index += 1
            except UserCodeError as exc:
                if not exc.location:
                    exc.location = _block_line_location(segment, block, index)
                raise
            except Exception as exc:
                raise user_error("mapper", exc, _block_line_location(segment, block, index)) from None
            lines_since_check += index - first
            first = index
            if lines_since_check >= lines_per_check:
                mapped = output.mapped
                pairs_until_check = output.account((key, value))
                pairs_per_line = max(output.mapped - mapped, 1) / lines_since_check
                lines_per_check = max(1, int(pairs_until_check / pairs_per_line))
                lines_since_check = 0
                groups = output.groups
                get = groups.get
        records += len(lines)
    slots[IN_BLOCK] = 0
    output.account((key, value) if key is not None else None)
    return records, size


def _map_split(job: Job, segment: Segment, output: MapOutput, encoding: str, errors: str, slots,
               records_before: int) -> Tuple[int, int]:
    """map_split(key, lines) over the segment: lines come a block at a time, progress per block."""
    counts = [0, 0]  # records, bytes

    def lines() -> Iterator[str]:
        for block in _blocks(segment, encoding, errors):
            slots[RECORDS] = records_before + counts[0]
            slots[OFFSET] = block.offset
            slots[LINE] = block.lines_before
            counts[0] += len(block.lines)
            counts[1] += len(block.raw)
            yield block.lines

    try:
        output.add_pairs(job.map_split(segment.key, chain.from_iterable(lines())))
    except UserCodeError as exc:
        if not exc.location:
            exc.location = f"{segment.key}, the lines from byte {slots[OFFSET]}"
        raise
    except Exception as exc:
        raise user_error("map_split", exc, f"{segment.key}, the lines from byte {slots[OFFSET]}") from None
    output.account()
    return counts[0], counts[1]


def _map_skipping(job: Job, segment: Segment, segment_index: int, output: MapOutput, encoding: str,
                  errors: str, slots, bad: BadRecords, records_before: int) -> Tuple[int, int]:
    """Under --skip-bad-records: line by line, each record mapped all or nothing."""
    records = size = 0
    line_number = 0
    mapper, input_key = job.mapper, segment.key
    if mapper is None:
        raise UserCodeError("--skip-bad-records needs a mapper: a map_split function sees a whole split, "
                            "so no single record of it can be skipped")
    for offset, raw in read_segment(segment):
        line_number += 1
        slots[RECORDS] = records_before + records
        slots[OFFSET] = offset
        slots[LINE] = line_number - 1
        records += 1
        size += len(raw)
        try:
            line = strip_line_ending(raw).decode(encoding, errors)
        except UnicodeDecodeError as exc:
            bad.add(_undecodable(exc.reason, segment, offset + exc.start, line_number, encoding))
            continue
        location = f"{describe_location(segment, offset, line_number)}, record {shown(line)}"
        if (segment_index, offset) in bad.known:
            bad.add(UserCodeError("an earlier attempt hung on this record (--task-timeout)", location))
            continue
        try:
            pairs = [(hashable_key(key), value) for key, value in mapper(input_key, line)]
        except UserCodeError as exc:
            bad.add(UserCodeError(exc.message, exc.location or location, exc.traceback_text))
            continue
        except Exception as exc:
            bad.add(user_error("mapper", exc, location))
            continue
        output.add_pairs(pairs)
    output.account()
    return records, size


# --- reduce ----------------------------------------------------------------------------


def run_reduce(job: Job, inputs: Iterable[str], out_path: str, progress=None,
               bad: Optional[BadRecords] = None, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> TaskStats:
    """Merge the sorted map outputs, call the reducer once per key, write key<TAB>value lines.

    A partition whose records fit the memory budget is read whole and sorted at once
    (sorting sorted runs is a merge in C); a bigger one is merged as a stream, in passes
    if it has more runs than can be read at once. Either way memory stays within the
    budget, except what a reducer itself keeps of one key's values. With `bad`, a key
    whose reducer fails is left out of the output whole and noted there.
    """
    started = time.monotonic()
    slots = _slots(progress)
    inputs = list(inputs)
    bytes_in = sum(os.path.getsize(p) for p in inputs)
    reducer = job.reducer
    groups = records_out = 0
    values_in = [0]

    def counted(records):
        for record in records:
            values_in[0] += len(record[1])
            yield record

    out_dir = os.path.dirname(out_path)
    os.makedirs(out_dir, exist_ok=True)
    scratch = None
    try:
        budget = max(memory_limit - rss_bytes(), memory_limit // 4)  # what the process may still add
        if bytes_in * IN_MEMORY_EXPANSION <= budget and bytes_in * _expansion(inputs) <= budget:
            records = list(counted(chain.from_iterable(storage.read_run(p) for p in inputs)))
            try:
                records.sort(key=storage.first)
            except TypeError as exc:
                raise storage.UnsortableKeys(exc) from None
        else:
            scratch = out_path + ".merge"
            os.makedirs(scratch, exist_ok=True)
            runs = storage.merge_to_fan_in(inputs, memory_limit, scratch)
            records = counted(storage.merged_records(runs, memory_limit))
        with open(out_path, "w", encoding="utf-8", newline="\n", buffering=storage.BLOCK_BYTES) as out:
            write = out.write
            for key, values in storage.group_records(records):
                groups += 1
                slots[RECORDS] = groups
                if bad is not None:
                    try:
                        lines = [format_record(out_key, value) for out_key, value in reducer(key, values)]
                    except storage.UnsortableKeys:
                        raise  # not this key's fault: skipping it would lose the rest of the merge
                    except Exception as exc:
                        bad.add(user_error("reducer", exc, f"key {shown(key)}"))
                        continue
                    write("".join(lines))
                    records_out += len(lines)
                    continue
                try:
                    for out_key, value in reducer(key, values):
                        write(format_record(out_key, value))
                        records_out += 1
                except storage.UnsortableKeys:
                    raise
                except Exception as exc:
                    raise user_error("reducer", exc, f"key {shown(key)}") from None
            out.flush()
            os.fsync(out.fileno())
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    counters.add_framework("reduce input groups", groups)
    counters.add_framework("reduce input records", values_in[0])
    counters.add_framework("output records", records_out)
    return TaskStats(records_in=groups, bytes_in=bytes_in, records_out=records_out,
                     seconds=time.monotonic() - started)


def _expansion(paths: List[str], sample_bytes: int = 64 * 1024) -> float:
    """How many times its msgpack size the partition takes as Python objects, from its first records.

    Small containers grow far more than strings (a 4-byte {"n": 1} takes about 190), so
    a fixed factor would let some partitions past the memory limit.
    """
    for path in paths:
        with open(path, "rb") as f:
            head = f.read(sample_bytes)
        if not head:
            continue
        unpacker = msgpack.Unpacker(use_list=False, raw=False, strict_map_key=False)
        unpacker.feed(head)
        size = used = 0
        for record in unpacker:  # stops at a record the sample's end cuts
            size += approx_size(record) + 8  # and its slot in the list
            used = unpacker.tell()
        return 1.25 * size / used if used else float(IN_MEMORY_EXPANSION)
    return 1.0
