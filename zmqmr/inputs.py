"""Input files: finding them, cutting them into line-aligned splits, and reading a split.

A split is a list of byte-range segments. A line belongs to the segment that holds its
first byte, so every line is read by exactly one map task whatever the cut points.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from .errors import InputError
from .protocol import MAX_TASK_ID, Segment

DEFAULT_SPLIT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class InputFile:
    key: str  # the path as the user wrote it (joined under a directory argument)
    path: str  # absolute, for workers whose working directory differs
    size: int
    gzip: bool


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
    return InputFile(key, path, st.st_size, key.endswith(".gz"))


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
    span files). Without it, about one per `split_bytes`, and at least one per file.
    Gzip files cannot be cut and always form one segment.
    """
    if mappers is not None:
        if not 1 <= mappers <= MAX_TASK_ID:
            raise InputError(f"--mappers must be between 1 and {MAX_TASK_ID}")
        return _even_splits(files, mappers)
    splits: List[Tuple[Segment, ...]] = []
    for f in files:
        pieces = 1 if f.gzip else max(1, math.ceil(f.size / split_bytes))
        bounds = [f.size * k // pieces for k in range(pieces + 1)]
        splits += [(_segment(f, bounds[k], bounds[k + 1]),) for k in range(pieces)]
    if len(splits) > MAX_TASK_ID:
        raise InputError(f"the input makes {len(splits)} map tasks; at most {MAX_TASK_ID} are allowed")
    return splits


def _segment(f: InputFile, start: int, end: int) -> Segment:
    return Segment(key=f.key, path=f.path, start=start, end=end, gzip=f.gzip)


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
