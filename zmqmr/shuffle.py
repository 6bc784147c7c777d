"""A worker's shuffle service: a ROUTER socket serving the map output in its work dir to reducers
on hosts that cannot read it, chunk by chunk (see zmqmr.transfer for the other end).

It is stateless per request and answers from the worker's own loop, so serving costs the
task process nothing. It serves only files of map attempts this worker finished for its
current job, under its work dir, never through a symlink: a name is checked, not trusted.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from typing import Optional, Set, Tuple

import zmq

from . import protocol
from .errors import ProtocolError
from .security import Curve, serve

log = logging.getLogger("zmqmr.shuffle")

FETCH_NAME = re.compile(r"([0-9a-f]{12})/map-([0-9]{5,8})-a([0-9]{1,19})/part-([0-9]{5,8})\.mpk")
REFUSAL_LOG_LIMIT = 20  # refusals logged one by one; then only counted


class ShuffleService:
    def __init__(self, context: zmq.Context, bind_host: str, port: int, advertise_host: str,
                 curve: Optional[Curve] = None):
        self.sock = context.socket(zmq.ROUTER)
        serve(self.sock, curve)  # with CURVE, only clients the context's ZAP handler admits get through
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)  # a fetch is small
        self.sock.ipv6 = ":" in bind_host
        address = f"[{bind_host}]" if ":" in bind_host else bind_host
        self.sock.bind(f"tcp://{address}:{port}" if port else f"tcp://{address}:*")
        bound_port = self.sock.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
        advertised = f"[{advertise_host}]" if ":" in advertise_host else advertise_host
        self.endpoint = f"tcp://{advertised}:{bound_port}"
        self.job_id = ""
        self.work_dir = ""
        self.finished: Set[Tuple[int, int]] = set()  # (map index, attempt) finished here for the current job
        self.refusals = 0
        self.served_bytes = 0

    def serve_job(self, job_id: str, work_dir: str) -> None:
        """From now on serve this job's map output from work_dir; earlier jobs' files are not served."""
        if job_id != self.job_id:
            self.finished = set()
        self.job_id, self.work_dir = job_id, work_dir

    def offer(self, index: int, attempt: int) -> None:
        """A map attempt finished here: its files may be fetched."""
        self.finished.add((index, attempt))

    def withdraw(self, index: int, attempt: int) -> None:
        self.finished.discard((index, attempt))

    def handle(self, max_messages: int = 64) -> None:
        """Answer the fetches waiting on the socket (a bounded number, so the worker's loop goes on)."""
        for _ in range(max_messages):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._log_refusal(f"a message of {len(frames)} frames")
                continue
            route, body = frames
            try:
                fetch = protocol.decode(body, protocol.TO_SHUFFLE)
            except ProtocolError as exc:
                self._log_refusal(f"{exc.reason}: {exc}")
                continue
            reply = self.read(fetch)
            try:
                self.sock.send_multipart([route, protocol.encode(reply)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the fetcher is gone or not reading; it asks again

    def read(self, fetch: protocol.Fetch) -> protocol.Chunk:
        """The chunk a fetch asks for, or a refusal saying why."""
        problem, path = self._resolve(fetch.path)
        if problem:
            self._log_refusal(problem)
            return protocol.Chunk(tag=fetch.tag, offset=fetch.offset, error=problem)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            self._log_refusal(f"{fetch.path}: {exc.strerror}")
            return protocol.Chunk(tag=fetch.tag, offset=fetch.offset, error=f"{fetch.path}: {exc.strerror}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return protocol.Chunk(tag=fetch.tag, offset=fetch.offset, error=f"{fetch.path} is not a regular file")
            data = os.pread(fd, fetch.length, fetch.offset)
        finally:
            os.close(fd)
        self.served_bytes += len(data)
        return protocol.Chunk(tag=fetch.tag, offset=fetch.offset, data=data,
                              eof=fetch.offset + len(data) >= st.st_size)

    def _resolve(self, name: str) -> Tuple[str, Optional[str]]:
        match = FETCH_NAME.fullmatch(name)
        if match is None:
            return f"{protocol.shown(name)} is not the name of a map output file (JOB/map-N-aN/part-N)", None
        job_id, index, attempt = match.group(1), int(match.group(2)), int(match.group(3))
        if not self.job_id or job_id != self.job_id:
            return f"{name} is not a file of this worker's current job", None
        if (index, attempt) not in self.finished:
            return f"{name}: no map attempt {attempt} of map task {index} finished on this worker", None
        root = os.path.realpath(self.work_dir)
        path = os.path.join(root, *name.split("/"))
        if os.path.realpath(path) != path:  # a symlink anywhere on the way
            return f"{name} leads outside this worker's work dir", None
        return "", path

    def _log_refusal(self, why: str) -> None:
        self.refusals += 1
        if self.refusals <= REFUSAL_LOG_LIMIT:
            log.warning("shuffle service refused a request: %s", why)

    def close(self) -> None:
        self.sock.close(linger=0)
