"""The driver's side of staging (--staging): input bytes for workers that cannot read the input
files, and reduce output from workers that cannot write into the output directory.

The driver's loop calls it for each `read_input` or `upload` of a live attempt; a request names
a segment of the attempt's own split, or the attempt's own output file, never a path.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Dict, Sequence, Tuple

from . import protocol
from .protocol import Segment

OPEN_INPUTS = 16  # input files kept open between chunks


class Staging:
    def __init__(self, splits: Sequence[Tuple[Segment, ...]]):
        self.splits = splits
        self.inputs: "OrderedDict[str, int]" = OrderedDict()  # path -> fd, least recently used first
        self.uploads: Dict[int, Tuple[int, int]] = {}  # attempt -> (fd, bytes received)
        self.uploaded: Dict[int, int] = {}  # attempt -> size, once its last chunk is on disk
        self.bytes_sent = self.bytes_received = 0

    def read_input(self, request: protocol.ReadInput, index: int) -> protocol.Chunk:
        """Bytes of segment `request.segment` of map task `index`'s split (its whole file: a reader
        needs the byte before the segment and the rest of its last line)."""
        split = self.splits[index]
        if request.segment >= len(split):
            return protocol.Chunk(tag=request.tag, offset=request.offset,
                                  error=f"map task {index} has no segment {request.segment}")
        path = split[request.segment].path
        try:
            fd = self._open_input(path)
            data = os.pread(fd, request.length, request.offset)
            size = os.fstat(fd).st_size
        except OSError as exc:
            return protocol.Chunk(tag=request.tag, offset=request.offset,
                                  error=f"the driver cannot read {split[request.segment].key}: {exc.strerror}")
        self.bytes_sent += len(data)
        return protocol.Chunk(tag=request.tag, offset=request.offset, data=data,
                              eof=request.offset + len(data) >= size)

    def _open_input(self, path: str) -> int:
        fd = self.inputs.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(self.inputs) >= OPEN_INPUTS:
                os.close(self.inputs.popitem(last=False)[1])
        self.inputs[path] = fd
        return fd

    def receive(self, chunk: protocol.Upload, path: str) -> protocol.UploadAck:
        """Write a chunk of a reduce attempt's output at `path` (the driver's choice); fsync at the last.
        A chunk may come again after the worker's retry: bytes are written where they belong."""
        if chunk.attempt in self.uploaded:  # a chunk again, late, after a retry finished: change nothing
            return protocol.UploadAck(attempt=chunk.attempt, received=self.uploaded[chunk.attempt], done=True)
        fd, received = self.uploads.get(chunk.attempt, (-1, 0))
        if chunk.offset > received:
            return protocol.UploadAck(attempt=chunk.attempt, received=received,
                                      error=f"a chunk at {chunk.offset}, past the {received} bytes received")
        try:
            if fd < 0:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)  # cut to size at the last chunk
            os.pwrite(fd, chunk.data, chunk.offset)
            received = max(received, chunk.offset + len(chunk.data))
            self.bytes_received += len(chunk.data)
            if chunk.last and chunk.offset + len(chunk.data) == received:
                os.ftruncate(fd, received)
                os.fsync(fd)
                os.close(fd)
                self.uploads.pop(chunk.attempt, None)
                self.uploaded[chunk.attempt] = received
                return protocol.UploadAck(attempt=chunk.attempt, received=received, done=True)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            self.uploads.pop(chunk.attempt, None)
            return protocol.UploadAck(attempt=chunk.attempt, received=0,
                                      error=f"the driver cannot write {path}: {exc.strerror}")
        self.uploads[chunk.attempt] = (fd, received)
        return protocol.UploadAck(attempt=chunk.attempt, received=received)

    def keep_only(self, live) -> None:
        """Close the uploads of attempts that ended without finishing them (lost, cancelled, failed)."""
        for attempt in [a for a in self.uploads if a not in live]:
            fd, _ = self.uploads.pop(attempt)
            os.close(fd)

    def close(self) -> None:
        for fd in self.inputs.values():
            os.close(fd)
        for fd, _ in self.uploads.values():
            os.close(fd)
        self.inputs.clear()
        self.uploads.clear()
