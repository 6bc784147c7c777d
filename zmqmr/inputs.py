"""Input files: finding them, cutting them into line-aligned splits, and reading a split.

A split is a list of byte-range segments. A line belongs to the segment that holds its
first byte, so every line is read by exactly one map task whatever the cut points.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

from .errors import InputError
from .protocol import MAX_TASK_ID, Segment

DEFAULT_SPLIT_BYTES = 64 * 1024 * 1024  # a few seconds of a Python mapper's work per task
MIN_SPLIT_BYTES = 1024 * 1024
TASKS_PER_WORKER = 2  # at least, when the input is big enough: no worker idles while one map runs
DRIVER_PARALLELISM = 4  # workers a zmqmr-driver plans for, not knowing how many will come
MAX_SEGMENTS_PER_SPLIT = 4096  # keeps a task's message small when many tiny files share it
READ_BLOCK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class InputFile:
    key: str  # the path as the user wrote it (joined under a directory argument)
    path: str  # absolute, for workers whose working directory differs
    size: int
    gzip: bool
    mtime_ns: int = -1  # with size, how a worker on another host tells that its copy is this file


def _is_hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _input_file(key: str) -> InputFile:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"input file name {key!r} is not valid UTF-8; rename the file") from None
    path = os.path.abspath(key)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"cannot read input {key}: {exc.strerror}") from None
    if not os.path.isfile(path):
        raise InputError(f"input {key} is not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read input {key}: permission denied")
    return InputFile(key, path, st.st_size, key.endswith(".gz"), st.st_mtime_ns)


def expand_inputs(paths: Sequence[str]) -> List[InputFile]:
    """Files as given, and the files under each directory, recursively, in sorted order.

    Inside directories, names starting with '.' or '_' are skipped, as Hadoop does, so a
    previous job's output directory (with _SUCCESS) can be an input.
    """
    if not paths:
        raise InputError("no input given (use --input PATH ...)")
    files: List[InputFile] = []
    for given in paths:
        if not os.path.exists(given):
            raise InputError(f"input not found: {given}")
        if not os.path.isdir(given):
            files.append(_input_file(given))
            continue
        found = []
        for root, dirs, names in os.walk(given):
            dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
            found += [os.path.join(root, n) for n in names if not _is_hidden(n)]
        if not found:
            raise InputError(f"input directory {given} holds no files")
        files += [_input_file(key) for key in sorted(found)]
    return files


def plan_splits(files: Sequence[InputFile], mappers: Optional[int] = None,
                split_bytes: int = DEFAULT_SPLIT_BYTES) -> List[Tuple[Segment, ...]]:
    """Cut the input into map splits.

    With `mappers`, exactly that many splits, cut evenly over all bytes (a split may
    span files). Without it, splits of `split_bytes` filled greedily in input order:
    small files share a split (so a thousand small files are not a thousand tasks, each
    with its own start-up and its own sorted run for every reducer), and big files are
    cut. Gzip files cannot be cut and always form one segment. Empty files are left out;
    a job always has at least one (possibly empty) split.
    """
    if mappers is not None:
        if not 1 <= mappers <= MAX_TASK_ID:
            raise InputError(f"--mappers must be between 1 and {MAX_TASK_ID}")
        return _even_splits(files, mappers)
    splits: List[Tuple[Segment, ...]] = []
    current: List[Segment] = []
    room = split_bytes

    def close_split() -> None:
        nonlocal current, room
        if current:
            splits.append(tuple(current))
            if len(splits) > MAX_TASK_ID:
                raise InputError(f"the input makes more than {MAX_TASK_ID} map tasks; use a larger --split-size")
        current, room = [], split_bytes

    for f in files:
        start = 0
        while start < f.size:
            if room <= 0 or len(current) >= MAX_SEGMENTS_PER_SPLIT or (f.gzip and f.size > room):
                close_split()
            end = f.size if f.gzip else min(f.size, start + room)
            current.append(_segment(f, start, end))
            room -= end - start
            start = end
    close_split()
    return splits or [()]


def default_split_bytes(files: Sequence[InputFile], parallelism: int) -> int:
    """DEFAULT_SPLIT_BYTES, or less, so that `parallelism` workers each get TASKS_PER_WORKER maps."""
    total = sum(f.size for f in files)
    even = math.ceil(total / (TASKS_PER_WORKER * max(1, parallelism)))
    return max(MIN_SPLIT_BYTES, min(DEFAULT_SPLIT_BYTES, even))


def _segment(f: InputFile, start: int, end: int) -> Segment:
    return Segment(key=f.key, path=f.path, start=start, end=end, gzip=f.gzip, size=f.size, mtime_ns=f.mtime_ns)


def _even_splits(files: Sequence[InputFile], mappers: int) -> List[Tuple[Segment, ...]]:
    total = sum(f.size for f in files)
    cuts = [total * k // mappers for k in range(mappers + 1)]
    splits: List[List[Segment]] = [[] for _ in range(mappers)]
    offset = 0  # where the current file starts in the concatenation of all files
    for f in files:
        if f.size == 0:
            continue
        if f.gzip:
            splits[_split_holding(cuts, offset)].append(_segment(f, 0, f.size))
        else:
            for k in range(mappers):
                start = max(cuts[k], offset) - offset
                end = min(cuts[k + 1], offset + f.size) - offset
                if start < end:
                    splits[k].append(_segment(f, start, end))
        offset += f.size
    return [tuple(s) for s in splits]


def _split_holding(cuts: List[int], offset: int) -> int:
    for k in range(len(cuts) - 1):
        if cuts[k] <= offset < cuts[k + 1]:
            return k
    return len(cuts) - 2


def read_segment(segment: Segment) -> Iterator[Tuple[int, bytes]]:
    """Yield (byte offset, raw line) for every line that starts inside the segment.

    For gzip files the offset is into the uncompressed stream. The raw line keeps its
    line ending; `strip_line_ending` removes it.
    """
    if segment.gzip:
        with gzip.open(segment.path, "rb") as stream:
            offset = 0
            for raw in stream:
                yield offset, raw
                offset += len(raw)
        return
    with open(segment.path, "rb", buffering=1024 * 1024) as stream:
        offset = segment.start
        if offset > 0:
            stream.seek(offset - 1)
            offset += len(stream.readline()) - 1  # skip the tail of a line begun earlier
        end = segment.end
        for raw in stream:
            if offset >= end:
                break
            yield offset, raw
            offset += len(raw)


def strip_line_ending(raw: bytes) -> bytes:
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    return raw


class Block(NamedTuple):
    """Whole lines of a segment, read and decoded at once: the fast way through a split."""

    offset: int  # byte offset of the first line (into the uncompressed stream for gzip)
    lines_before: int  # lines of the segment before this block
    raw: bytes  # the lines as read, line endings included
    lines: List[str]  # the same lines decoded, without line endings


class UndecodableInput(Exception):
    """Bytes the job's encoding cannot decode, with where they are."""

    def __init__(self, reason: str, offset: int, line_number: int):
        super().__init__(reason)
        self.reason, self.offset, self.line_number = reason, offset, line_number


def read_blocks(segment: Segment, encoding: str = "utf-8", errors: str = "strict",
                block_bytes: int = READ_BLOCK_BYTES) -> Iterator[Block]:
    """The segment's lines in blocks of about block_bytes, exactly the lines read_segment yields.

    One read, one decode and one split per block instead of per line; a line longer
    than a block is read whole.
    """
    lines_before = 0
    for offset, raw in _raw_blocks(segment, block_bytes):
        try:
            text = raw.decode(encoding, errors)
        except UnicodeDecodeError as exc:
            line_number = lines_before + raw.count(b"\n", 0, exc.start) + 1
            raise UndecodableInput(exc.reason, offset + exc.start, line_number) from None
        lines = text.split("\n")
        whole = raw.endswith(b"\n")
        if whole:
            lines.pop()
        if "\r" in text:  # CRLF: drop the \r of every line that ended in \n
            last = len(lines) - (0 if whole else 1)
            lines = [line[:-1] if i < last and line.endswith("\r") else line for i, line in enumerate(lines)]
        yield Block(offset, lines_before, raw, lines)
        lines_before += len(lines)


def _raw_blocks(segment: Segment, block_bytes: int) -> Iterator[Tuple[int, bytes]]:
    if segment.gzip:
        with gzip.open(segment.path, "rb") as stream:
            offset = 0
            while True:
                raw = stream.read(block_bytes)
                if not raw:
                    return
                if not raw.endswith(b"\n"):
                    raw += stream.readline()
                yield offset, raw
                offset += len(raw)
    with open(segment.path, "rb", buffering=max(block_bytes, 65536)) as stream:
        offset = segment.start
        if offset > 0:
            stream.seek(offset - 1)
            offset += len(stream.readline()) - 1  # skip the tail of a line begun earlier
        end = segment.end
        while offset < end:
            raw = stream.read(block_bytes)
            if not raw:
                return
            if not raw.endswith(b"\n"):
                raw += stream.readline()
            if offset + len(raw) > end:  # keep the lines that start before the segment's end
                cut = raw.find(b"\n", end - 1 - offset)
                yield offset, raw if cut == -1 else raw[:cut + 1]
                return
            yield offset, raw
            offset += len(raw)


def line_offset(segment: Segment, block_offset: int, index: int) -> int:
    """Byte offset of line `index` of the block at block_offset (plain files; reads at most the block)."""
    if index == 0:
        return block_offset
    with open(segment.path, "rb") as stream:
        stream.seek(block_offset)
        offset = block_offset
        for _ in range(index):
            line = stream.readline()
            if not line:
                break
            offset += len(line)
    return offset
