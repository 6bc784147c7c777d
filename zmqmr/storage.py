"""Intermediate data: sorted msgpack streams of (key, value) pairs, and merging them.

Files are written and read in large blocks, never one pair per system call.
"""

from __future__ import annotations

import heapq
import os
from itertools import groupby
from operator import itemgetter
from typing import Any, Iterable, Iterator, Sequence, Tuple

import msgpack

BLOCK_BYTES = 1024 * 1024
first = itemgetter(0)


def write_pairs(path: str, pairs: Iterable[Tuple[Any, Any]]) -> int:
    """Write pairs to `path` atomically (temp file, then rename); return the file's size."""
    tmp = path + ".tmp"
    pack = msgpack.Packer(use_bin_type=True).pack
    with open(tmp, "wb") as f:
        block = bytearray()
        for pair in pairs:
            block += pack(pair)
            if len(block) >= BLOCK_BYTES:
                f.write(block)
                block.clear()
        f.write(block)
        size = f.tell()
    os.replace(tmp, path)
    return size


def read_pairs(path: str) -> Iterator[Tuple[Any, Any]]:
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(
            f, read_size=BLOCK_BYTES, use_list=False, raw=False, strict_map_key=False, max_buffer_size=0
        )
        yield from unpacker


def merge_groups(paths: Sequence[str]) -> Iterator[Tuple[Any, Iterator[Any]]]:
    """Stream (key, values) groups from sorted files, in key order, in bounded memory."""
    merged = heapq.merge(*(read_pairs(p) for p in paths), key=first)
    for key, group in groupby(merged, key=first):
        yield key, (value for _, value in group)
