"""Intermediate data: sorted runs of (key, [values]) records, and merging them in bounded memory.

A run is a msgpack stream of 2-element arrays, key then a list of values, sorted by
key. A key may appear in several consecutive records (long value lists are cut into
chunks), so a reader never holds more than one chunk per run. Files are written and
read in large blocks, never one record per system call.
"""

from __future__ import annotations

import heapq
import os
from itertools import chain, groupby
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import msgpack

from .errors import UserCodeError

BLOCK_BYTES = 1024 * 1024
MIN_READ_BYTES = 64 * 1024
VALUES_PER_RECORD = 256  # a reader holds at most this many values of one run at a time
first = itemgetter(0)
second = itemgetter(1)

Record = Tuple[Any, Sequence[Any]]


def write_run(path: str, records: Iterable[Record]) -> Tuple[int, int]:
    """Write records to `path` atomically (temp file, then rename); return (bytes, values) written."""
    tmp = path + ".tmp"
    pack = msgpack.Packer(use_bin_type=True).pack
    values = 0
    with open(tmp, "wb") as f:
        block = bytearray()
        for key, vals in records:
            values += len(vals)
            if len(vals) <= VALUES_PER_RECORD:
                block += pack((key, vals))
            else:
                for i in range(0, len(vals), VALUES_PER_RECORD):
                    block += pack((key, vals[i:i + VALUES_PER_RECORD]))
            if len(block) >= BLOCK_BYTES:
                f.write(block)
                block.clear()
        f.write(block)
        size = f.tell()
    os.replace(tmp, path)
    return size, values


class UnsortableKeys(UserCodeError):
    """Two runs hold keys that cannot be compared: found only when merging them."""

    def __init__(self, exc: TypeError):
        super().__init__(f"keys are not mutually sortable ({exc}); keys of one job must be comparable with "
                         "each other")


def read_run(path: str, read_bytes: int = BLOCK_BYTES) -> Iterator[Record]:
    with open(path, "rb", buffering=0) as f:
        # Arrays come back as tuples: keys stay hashable, and values look the same in every task.
        yield from msgpack.Unpacker(f, read_size=read_bytes, use_list=False, raw=False, strict_map_key=False,
                                    max_buffer_size=0)


def read_bytes_for(runs: int, memory: int) -> int:
    """Read buffer per run so that `runs` readers together use about a quarter of `memory`."""
    return max(MIN_READ_BYTES, min(BLOCK_BYTES, memory // (4 * max(1, runs))))


def max_fan_in(memory: int) -> int:
    """How many runs one merge may read at once within `memory`."""
    return max(2, memory // (4 * MIN_READ_BYTES))


def merged_records(paths: Sequence[str], memory: int) -> Iterator[Record]:
    """Every record of the sorted runs, in key order, reading all runs at once."""
    read_bytes = read_bytes_for(len(paths), memory)
    if len(paths) == 1:
        return read_run(paths[0], read_bytes)
    return _comparing(heapq.merge(*(read_run(p, read_bytes) for p in paths), key=first))


def _comparing(records: Iterator[Record]) -> Iterator[Record]:
    """The merge's records; a key that cannot be compared with another one is the user's error."""
    try:
        yield from records
    except TypeError as exc:
        raise UnsortableKeys(exc) from None


def group_records(records: Iterable[Record]) -> Iterator[Tuple[Any, Iterator[Any]]]:
    """(key, values) per key from key-ordered records; values chain the records' value lists."""
    for key, group in groupby(records, key=first):
        yield key, chain.from_iterable(map(second, group))


def merge_to_fan_in(paths: List[str], memory: int, scratch: str,
                    combine: Optional[Callable[[Any, List[Any]], List[Any]]] = None, prefix: str = "") -> List[str]:
    """Merge runs in passes until at most max_fan_in(memory) are left; return the runs to read.

    Intermediate runs go to `scratch`, named with `prefix` (one per partition sharing a
    scratch directory), and are removed by the caller.
    """
    fan_in = max_fan_in(memory)
    passes = 0
    while len(paths) > fan_in:
        passes += 1
        merged = []
        for i in range(0, len(paths), fan_in):
            group = paths[i:i + fan_in]
            if len(group) == 1:
                merged.append(group[0])
                continue
            out = os.path.join(scratch, f"{prefix}merge-{passes}-{i // fan_in}.run")
            write_run(out, combine_records(merged_records(group, memory), combine))
            merged.append(out)
        paths = merged
    return paths


def combine_records(records: Iterable[Record], combine: Optional[Callable[[Any, List[Any]], List[Any]]]
                    ) -> Iterator[Record]:
    """Key-ordered records with equal keys joined into one and combined, with a combiner.

    A key the combiner left without values is dropped: the reducer never sees an empty key.
    """
    if combine is None:
        yield from records
        return
    for key, group in groupby(records, key=first):
        values = list(chain.from_iterable(map(second, group)))
        if len(values) > 1:
            values = combine(key, values)
        if values:
            yield key, values
