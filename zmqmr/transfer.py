"""Moving file bytes over ZeroMQ from a task process: map output from other workers' shuffle
services, input from the driver, reduce output to the driver.

Files move in chunks of at most MAX_CHUNK_BYTES with a few requests in flight per peer
(credit-based flow control, as in the zguide's file transfer chapter), and every chunk goes
straight to disk: memory stays at a few MiB whatever the size of the file. A peer that does
not answer is asked again on a new socket, RETRIES times, before the transfer fails.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Sequence, Tuple

import zmq

from . import protocol
from .errors import ProtocolError
from .protocol import MAX_CHUNK_BYTES, MapOutput, Segment
from .security import CurveKeys, connect_as

CREDIT = 4  # requests in flight to one peer
MAX_IN_FLIGHT = 16  # requests in flight over all peers: at most this many chunks on their way here
TAIL_BYTES = 64 * 1024  # read past a segment's end in pieces this big, to the end of its last line
REPLY_TIMEOUT = 5.0  # seconds without any answer from a peer that owes one
RETRIES = 3  # new sockets tried after a timeout before the peer counts as unreachable


class TransferFailed(Exception):
    """Bytes could not be moved. `maps`: map tasks whose output could not be fetched."""

    def __init__(self, message: str, maps: Sequence[int] = ()):
        super().__init__(message)
        self.maps = tuple(sorted(set(maps)))


def readable_here(path: str, size: int) -> bool:
    """This host sees the file a map attempt wrote: same path (unique per job and attempt), same size."""
    try:
        return os.stat(path).st_size == size
    except OSError:
        return False


def fetch_path(path: str) -> str:
    """The name a shuffle service knows a map output file by: JOB/map-NNNNN-aN/part-NNNNN."""
    return "/".join(path.replace(os.sep, "/").split("/")[-3:])


class Peers:
    """DEALER sockets of one task process, one per endpoint, made on first use and kept open.
    With CURVE `keys`, each is a CURVE client of its peer's public key (the driver's by default)."""

    def __init__(self, keys: Optional[CurveKeys] = None):
        self.keys = keys
        self.context: Optional[zmq.Context] = None
        self.sockets: Dict[str, zmq.Socket] = {}
        self.server_keys: Dict[str, bytes] = {}

    def socket(self, endpoint: str, fresh: bool = False, server_key: bytes = b"") -> zmq.Socket:
        sock = self.sockets.get(endpoint)
        if sock is not None and not fresh:
            return sock
        if sock is not None:
            sock.close(linger=0)
        if self.context is None:
            self.context = zmq.Context()
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.ipv6 = True  # a shuffle endpoint may be an IPv6 address; IPv4 ones work as before
        if server_key:
            self.server_keys[endpoint] = server_key
        connect_as(sock, self.keys, self.server_keys.get(endpoint, b""))
        sock.connect(endpoint)
        self.sockets[endpoint] = sock
        return sock

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.sockets = {}
        if self.context is not None:
            self.context.term()
            self.context = None


# --- requests for chunks, many peers at once ----------------------------------------------


@dataclass
class _Want:
    """A chunk to ask for: `message(offset, length, tag)` makes the request; it lands in `fd`."""

    fd: int
    offset: int
    length: int
    message: Callable[[int, int, int], protocol.Message]
    then: Optional[Callable[["_Want", protocol.Chunk], Optional["_Want"]]] = None  # a follow-up request
    tag: int = 0


@dataclass
class _Peer:
    endpoint: str
    todo: Deque[_Want] = field(default_factory=deque)
    flying: Dict[int, _Want] = field(default_factory=dict)
    maps: Tuple[int, ...] = ()  # whose output this peer holds, for the failure report
    retries: int = 0
    last_heard: float = 0.0
    error: str = ""


def _exchange(peers: Sequence[_Peer], sockets: Peers) -> None:
    """Ask every peer for its chunks, CREDIT at a time, writing each where it belongs.
    Peers that fail keep their `error`; the others finish."""
    tags = iter(range(1, 2**62))
    live = [p for p in peers if p.todo]
    by_socket: Dict[zmq.Socket, _Peer] = {}
    poller = zmq.Poller()
    for peer in live:
        sock = sockets.socket(peer.endpoint)
        by_socket[sock] = peer
        poller.register(sock, zmq.POLLIN)
        peer.last_heard = time.monotonic()
    while live:
        in_flight = sum(len(p.flying) for p in live)
        for peer in live:
            while peer.todo and len(peer.flying) < CREDIT and in_flight < MAX_IN_FLIGHT:
                if not peer.flying:  # silence counts from the oldest unanswered request, not from the start
                    peer.last_heard = time.monotonic()
                want = peer.todo.popleft()
                want.tag = next(tags)
                peer.flying[want.tag] = want
                in_flight += 1
                sockets.socket(peer.endpoint).send(protocol.encode(want.message(want.offset, want.length, want.tag)))
        for sock, _ in poller.poll(250):
            peer = by_socket[sock]
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                peer.last_heard = time.monotonic()
                _on_chunk(peer, frame)
        now = time.monotonic()
        for peer in list(live):
            if peer.flying and now - peer.last_heard > REPLY_TIMEOUT and not peer.error:
                peer.retries += 1
                if peer.retries > RETRIES:
                    peer.error = f"no answer from {peer.endpoint} for {REPLY_TIMEOUT:g} s, {RETRIES + 1} times"
                else:  # a new socket; everything unanswered is asked for again
                    old = sockets.sockets.get(peer.endpoint)
                    poller.unregister(old)
                    del by_socket[old]
                    sock = sockets.socket(peer.endpoint, fresh=True)
                    by_socket[sock] = peer
                    poller.register(sock, zmq.POLLIN)
                    peer.todo.extendleft(sorted(peer.flying.values(), key=lambda w: -w.offset))
                    peer.flying = {}
                    peer.last_heard = now
            if peer.error or (not peer.todo and not peer.flying):
                live.remove(peer)
                if peer.error:  # its socket may hold late answers: start afresh next time
                    old = sockets.sockets.pop(peer.endpoint)
                    poller.unregister(old)
                    old.close(linger=0)


def _on_chunk(peer: _Peer, frame: bytes) -> None:
    try:
        chunk = protocol.decode(frame, protocol.TO_FETCHER)
    except ProtocolError:
        return  # junk is no answer: the request times out and is asked again
    want = peer.flying.pop(getattr(chunk, "tag", -1), None)
    if want is None or not isinstance(chunk, protocol.Chunk):
        return  # late, after a retry
    if chunk.error:
        peer.error = f"{peer.endpoint} refused: {chunk.error}"
        return
    if chunk.offset != want.offset or len(chunk.data) > want.length:
        peer.error = (f"{peer.endpoint} sent {len(chunk.data)} bytes at {chunk.offset} for {want.length} "
                      f"at {want.offset}")
        return
    if want.then is None and len(chunk.data) < want.length:  # a chunk inside the file's known size
        peer.error = f"{peer.endpoint}: the file ends at {want.offset + len(chunk.data)}, before the bytes asked for"
        return
    if want.then is not None and not chunk.data and not chunk.eof:
        peer.error = f"{peer.endpoint} sent no bytes at {want.offset} and no end of file"
        return
    os.pwrite(want.fd, chunk.data, want.offset)
    follow = want.then(want, chunk) if want.then is not None else None
    if follow is not None:
        peer.todo.append(follow)


def _chunks(fd: int, start: int, end: int, message) -> List[_Want]:
    return [_Want(fd, offset, min(MAX_CHUNK_BYTES, end - offset), message)
            for offset in range(start, end, MAX_CHUNK_BYTES)]


# --- what the task process uses -------------------------------------------------------


def fetch_map_outputs(sources: Sequence[MapOutput], scratch: str, sockets: Peers,
                      roots: Sequence[str] = ()) -> List[str]:
    """A path on this host for every source: the file itself where this host can read it (only under
    one of the job directories `roots`), else a copy fetched from its worker's shuffle service into
    `scratch`. TransferFailed names the map tasks whose output could not be had, from every peer
    that failed."""
    real_roots = [os.path.realpath(r) + os.sep for r in roots]
    paths: List[str] = []
    peers: Dict[str, _Peer] = {}
    fds: List[int] = []
    missing: List[int] = []
    try:
        for i, source in enumerate(sources):
            if any(os.path.realpath(source.path).startswith(r) for r in real_roots) and \
                    readable_here(source.path, source.size):
                paths.append(source.path)
                continue
            if not source.shuffle:
                missing.append(source.map)
                continue
            os.makedirs(scratch, exist_ok=True)
            dest = os.path.join(scratch, f"fetched-{i:06d}-map-{source.map:05d}")
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            fds.append(fd)
            paths.append(dest)
            peer = peers.setdefault(source.shuffle, _Peer(source.shuffle))
            peer.maps += (source.map,)
            if source.shuffle_key:
                sockets.socket(source.shuffle, server_key=source.shuffle_key.encode())
            name = fetch_path(source.path)

            def message(offset: int, length: int, tag: int, name=name) -> protocol.Message:
                return protocol.Fetch(path=name, offset=offset, length=length, tag=tag)
            peer.todo.extend(_chunks(fd, 0, source.size, message))
        if missing:
            raise TransferFailed(f"the output of map task(s) {', '.join(map(str, sorted(missing)))} is not on "
                                 "this host and no shuffle service holds it", missing)
        _exchange(list(peers.values()), sockets)
    finally:
        for fd in fds:
            os.close(fd)
    failed = [p for p in peers.values() if p.error]
    if failed:
        raise TransferFailed("could not fetch map output: " + "; ".join(p.error for p in failed),
                             [m for p in failed for m in p.maps])
    return paths


def readable_input(segment: Segment) -> bool:
    """This host's file at the segment's path is the input file: same size and modification time."""
    try:
        st = os.stat(segment.path)
    except OSError:
        return False
    return (segment.size < 0 or st.st_size == segment.size) and \
        (segment.mtime_ns < 0 or st.st_mtime_ns == segment.mtime_ns)


def stage_segment(segment: Segment, index: int, attempt: int, dest: str, driver: str, worker: str, inc: str,
                  sockets: Peers) -> Segment:
    """Copy the bytes a map attempt reads of `segment` from the driver into `dest`, at the same offsets
    (the file is sparse), and return the segment pointing there: line positions stay those of the input.

    That is the byte before the start (which tells whether a line starts there), up to the end,
    then on to the end of the last line. A gzip file is read whole.
    """
    def message(offset: int, length: int, tag: int) -> protocol.Message:
        return protocol.ReadInput(worker=worker, inc=inc, attempt=attempt, segment=index, offset=offset,
                                  length=length, tag=tag)

    def to_line_end(want: _Want, chunk: protocol.Chunk) -> Optional[_Want]:
        if chunk.eof or b"\n" in chunk.data:
            return None
        return _Want(want.fd, want.offset + len(chunk.data), TAIL_BYTES, message, to_line_end)

    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        peer = _Peer(driver)
        if segment.gzip or segment.size < 0:
            peer.todo.append(_Want(fd, 0, MAX_CHUNK_BYTES, message, _to_eof(message)))
        else:
            start = max(0, segment.start - 1)
            end = min(segment.end, segment.size)
            peer.todo.extend(_chunks(fd, start, end, message))
            if end < segment.size:  # does the byte before the end close a line? else read on to the line's end
                peer.todo.append(_Want(fd, end - 1 if end > 0 else 0, 1, message,
                                       lambda want, chunk: None if chunk.data == b"\n" or chunk.eof else
                                       _Want(want.fd, want.offset + 1, TAIL_BYTES, message, to_line_end)))
        _exchange([peer], sockets)
    finally:
        os.close(fd)
    if peer.error:
        raise TransferFailed(f"could not read input {segment.key} from the driver: {peer.error}")
    return dataclasses.replace(segment, path=dest)


def _to_eof(message):
    def then(want: _Want, chunk: protocol.Chunk) -> Optional[_Want]:
        return None if chunk.eof else _Want(want.fd, want.offset + len(chunk.data), MAX_CHUNK_BYTES, message, then)
    return then


def upload(path: str, attempt: int, driver: str, worker: str, inc: str, sockets: Peers) -> None:
    """Send a reduce attempt's output file to the driver, which writes it into the output directory.
    Returns once the driver has it on disk; TransferFailed if it refuses or stays silent."""
    size = os.path.getsize(path)
    acked = sent = 0  # bytes the driver confirmed; bytes sent since the last (re)start
    starting = True  # a file of 0 bytes still sends one (last) chunk
    retries = 0
    sock = sockets.socket(driver)
    last_heard = time.monotonic()
    with open(path, "rb", buffering=0) as f:
        while True:
            while (sent < size or starting) and sent - acked < CREDIT * MAX_CHUNK_BYTES:
                starting = False
                data = os.pread(f.fileno(), min(MAX_CHUNK_BYTES, size - sent), sent)
                sock.send(protocol.encode(protocol.Upload(worker=worker, inc=inc, attempt=attempt, offset=sent,
                                                          data=data, last=sent + len(data) == size)))
                sent += len(data)
            if sock.poll(250):
                try:
                    ack = protocol.decode(sock.recv(), protocol.TO_FETCHER)
                except ProtocolError:
                    continue
                if not isinstance(ack, protocol.UploadAck) or ack.attempt != attempt:
                    continue
                last_heard = time.monotonic()
                if ack.error:
                    raise TransferFailed(f"the driver refused the output of attempt {attempt}: {ack.error}")
                acked = max(acked, ack.received)
                if ack.done:
                    return
                continue
            if time.monotonic() - last_heard > REPLY_TIMEOUT:
                retries += 1
                if retries > RETRIES:
                    raise TransferFailed(f"no answer from the driver at {driver} while sending the output of "
                                         f"attempt {attempt}")
                sock = sockets.socket(driver, fresh=True)
                sent, starting = acked, True
                last_heard = time.monotonic()
