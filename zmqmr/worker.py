"""The worker: a DEALER loop that asks the driver for tasks and runs them in its task process.

The loop only moves messages and keeps time; user code runs in the Executor, so the
loop keeps heartbeating however long a task computes.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from typing import Deque, Optional, Tuple

import zmq

from . import __version__, protocol
from .errors import ProtocolError
from .executor import Executor, map_output_dir, reduce_output_path

log = logging.getLogger("zmqmr.worker")

DEFAULT_HEARTBEAT = 1.0
RECENT_REPORTS = 8  # done/failed reports sent again after registering anew (duplicates are harmless)


@dataclass(frozen=True)
class WorkerSettings:
    driver: str
    name: Optional[str] = None
    work_dir: Optional[str] = None
    heartbeat_interval: Optional[float] = None  # None: the driver's
    driver_timeout: float = 30.0


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.name = settings.name or default_worker_name()
        self.inc = secrets.token_hex(8)
        self.welcome: Optional[protocol.Welcome] = None
        self.welcome_frame = b""
        self.current: Optional[protocol.Task] = None
        self.queued: Deque[Tuple[protocol.Task, bytes]] = deque()
        self.awaiting_reply = False
        self.request_sent_at = 0.0
        self.next_request_at = 0.0
        self.last_heard = self.last_sent = time.monotonic()
        self.own_temp_dir: Optional[str] = None
        self.job_dirs = set()  # job directories under this worker's own --work-dir
        self.told_to_exit = False
        self.previous_job_id = ""  # the job of the driver that stopped knowing us
        self.recent_reports: Deque[bytes] = deque(maxlen=RECENT_REPORTS)
        self.bad_messages = 0

    @property
    def heartbeat_interval(self) -> float:
        """Ours if set, else the driver's; never so long that the driver would think us lost."""
        if self.welcome is None:
            return self.settings.heartbeat_interval or DEFAULT_HEARTBEAT
        interval = self.settings.heartbeat_interval or self.welcome.heartbeat_interval
        if self.welcome.worker_timeout:
            interval = min(interval, self.welcome.worker_timeout / 3)
        return interval

    def run(self) -> int:
        """Work until the driver says the job is over (0) or falls silent (1)."""
        # The task process is forked before any ZeroMQ context exists in this process.
        self.executor = Executor(self.name, self.inc, "fork")
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.sock.connect(self.settings.driver)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.executor.fileno(), zmq.POLLIN)
        log.info("worker %s connecting to %s", self.name, self.settings.driver)
        job_over = False
        try:
            self._say_hello()
            code = self._loop()
            job_over = self.told_to_exit
            return code
        finally:
            self.executor.stop()
            self.sock.close(linger=0)
            self.context.term()
            self._remove_work_files(job_over)

    # --- the loop ----------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            if now - self.last_heard > self.settings.driver_timeout:
                log.error("no word from the driver at %s for %.0f s; is it running? giving up",
                          self.settings.driver, now - self.last_heard)
                return 1
            self._send_due(now)
            timeout = max(0.0, min(self._next_timer(now), 1.0))
            for item, _ in self.poller.poll(timeout * 1000):
                if item is self.sock:
                    code = self._drain_socket()
                    if code is not None:
                        return code
                else:
                    self._on_executor_ready()

    def _next_timer(self, now: float) -> float:
        """Seconds until the loop next has something to send."""
        timers = [self.last_sent + self.heartbeat_interval, self.last_heard + self.settings.driver_timeout]
        if self._wants_request():
            timers.append(self.next_request_at)
        if self.awaiting_reply:
            timers.append(self.request_sent_at + self._reply_timeout)
        return min(timers) - now

    @property
    def _reply_timeout(self) -> float:
        return max(5.0, 5 * self.heartbeat_interval)

    def _wants_request(self) -> bool:
        return self.welcome is not None and self.current is None and not self.queued and not self.awaiting_reply

    def _send_due(self, now: float) -> None:
        if self.awaiting_reply and now >= self.request_sent_at + self._reply_timeout:
            log.warning("no answer to a task request for %.0f s; asking again", self._reply_timeout)
            self.awaiting_reply = False
        if self.welcome is None:
            if now >= self.last_sent + self.heartbeat_interval:
                self._say_hello()
            return
        if self._wants_request() and now >= self.next_request_at:
            self._send(protocol.Request(worker=self.name, inc=self.inc, running=self._held()))
            self.awaiting_reply = True
            self.request_sent_at = now
        elif now >= self.last_sent + self.heartbeat_interval:
            progress = self.executor.progress_of(self.current) if self.current is not None else None
            self._send(protocol.Heartbeat(worker=self.name, inc=self.inc, running=self._held(),
                                          progress=(progress,) if progress else ()))

    def _held(self) -> Tuple[int, ...]:
        held = [t.attempt for t, _ in self.queued]
        if self.current is not None:
            held.insert(0, self.current.attempt)
        return tuple(held)

    def _send(self, message: protocol.Message) -> None:
        self._send_frame(protocol.encode(message))

    def _send_frame(self, frame: bytes) -> None:
        try:
            self.sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("driver not reachable yet; message dropped")
        self.last_sent = time.monotonic()

    def _say_hello(self) -> None:
        self._send(protocol.Hello(worker=self.name, inc=self.inc, host=socket.gethostname(),
                                  pid=os.getpid(), software=f"zmqmr {__version__}"))

    # --- messages from the driver ----------------------------------------------------------

    def _drain_socket(self) -> Optional[int]:
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return None
            self.last_heard = time.monotonic()
            if len(frames) != 1:
                self._bad("frames", f"{len(frames)} frames")
                continue
            try:
                message = protocol.decode(frames[0], protocol.TO_WORKER)
            except ProtocolError as exc:
                self._bad(exc.reason, str(exc))
                continue
            code = self._on_message(message, frames[0])
            if code is not None:
                return code

    def _bad(self, reason: str, detail: str) -> None:
        self.bad_messages += 1
        if self.bad_messages <= 10:
            log.warning("dropped a bad message from the driver (%s)", detail)

    def _on_message(self, message: protocol.Message, frame: bytes) -> Optional[int]:
        if isinstance(message, protocol.Welcome):
            self._on_welcome(message, frame)
        elif isinstance(message, protocol.Task):
            self._on_task(message, frame)
        elif isinstance(message, protocol.Wait):
            self.awaiting_reply = False
            self.next_request_at = time.monotonic() + message.retry_after
        elif isinstance(message, protocol.Wake):
            self.next_request_at = 0.0
        elif isinstance(message, protocol.Cancel):
            self._cancel(message)
        elif isinstance(message, protocol.Reregister):
            # The running attempt goes on: a restarted driver adopts it (or cancels it, if it was given up).
            if self.welcome is not None:  # once per burst: replies to queued messages all say the same
                log.warning("the driver no longer knows this worker (%s); registering again", message.reason)
                self.previous_job_id = self.welcome.job_id
                self.queued.clear()
                self.welcome = None
                self.awaiting_reply = False
                self._say_hello()
        elif isinstance(message, protocol.Exit):
            self.told_to_exit = True
            level = logging.INFO if message.ok else logging.ERROR
            log.log(level, "the driver says: %s; exiting", message.reason)
            return 0 if message.ok else 1
        return None

    def _on_welcome(self, welcome: protocol.Welcome, frame: bytes) -> None:
        known_job = self.welcome.job_id if self.welcome is not None else self.previous_job_id
        if known_job and known_job != welcome.job_id:
            log.info("the driver runs a new job %s", welcome.job_id)
            self._abandon_tasks()
            self.recent_reports.clear()
            self.welcome = None
        if self.welcome is not None:
            return  # a duplicate answer to a repeated hello
        log.info("registered with the driver for job %s (%s)", welcome.job_id, welcome.job.name)
        self.welcome, self.welcome_frame = welcome, frame
        self.awaiting_reply = False
        self.next_request_at = 0.0
        for report in self.recent_reports:  # reports a killed driver may never have read
            self._send_frame(report)

    def _on_task(self, task: protocol.Task, frame: bytes) -> None:
        if self.welcome is None or task.job_id != self.welcome.job_id:
            log.warning("task for an unknown job %s ignored; registering again", task.job_id)
            self.welcome = None
            self._say_hello()
            return
        self.awaiting_reply = False
        if self.current is None:
            self._start(task, frame)
        else:
            self.queued.append((task, frame))

    # --- the task process ------------------------------------------------------------------

    def _work_dir(self) -> str:
        """Where map output goes: this worker's --work-dir, else the driver's shared one, else a temp dir."""
        if self.settings.work_dir:
            self.job_dirs.add(os.path.join(self.settings.work_dir, self.welcome.job_id))
            return self.settings.work_dir
        if self.welcome.work_dir:
            return self.welcome.work_dir  # the driver's to clean up
        if self.own_temp_dir is None:
            self.own_temp_dir = tempfile.mkdtemp(prefix="zmqmr-worker-")
        return self.own_temp_dir

    def _start(self, task: protocol.Task, frame: bytes) -> None:
        log.debug("running %s task %d (attempt %d)", task.kind, task.index, task.attempt)
        self.current = task
        self.executor.submit(self.welcome_frame, frame, self._work_dir())

    def _on_executor_ready(self) -> None:
        frame = self.executor.receive()
        task, self.current = self.current, None
        if frame is None:
            reason = self.executor.death_reason()
            self._restart_executor()
            if task is not None:
                log.error("%s while running %s task %d", reason, task.kind, task.index)
                error = protocol.TaskError(kind="TaskProcessDied", message=reason, host=socket.gethostname())
                self._send(protocol.Failed(worker=self.name, inc=self.inc, attempt=task.attempt, error=error,
                                           lost=True))
        else:
            report = self._checked_reply(frame, task)
            self.recent_reports.append(report)
            self._send_frame(report)
        if self.queued:
            self._start(*self.queued.popleft())

    def _checked_reply(self, frame: bytes, task: Optional[protocol.Task]) -> bytes:
        """The task process's report, or a Failed saying why the driver would not accept it.

        A report the driver drops would leave the task to be re-run again and again.
        """
        try:
            protocol.decode(frame, protocol.TO_DRIVER)
            return frame
        except ProtocolError as exc:
            message = f"the attempt's report cannot be sent to the driver: {exc}"
        attempt = task.attempt if task is not None else 0
        log.error("%s", message)
        error = protocol.TaskError(kind="ProtocolError", message=message[:2000], host=socket.gethostname())
        return protocol.encode(protocol.Failed(worker=self.name, inc=self.inc, attempt=attempt, error=error))

    def _restart_executor(self) -> None:
        self.poller.unregister(self.executor.fileno())
        self.executor.stop()
        # A ZeroMQ context exists now, so the new process must not be a fork of this one.
        self.executor = Executor(self.name, self.inc, "spawn")
        self.poller.register(self.executor.fileno(), zmq.POLLIN)

    def _cancel(self, message: protocol.Cancel) -> None:
        """Stop the attempt if it runs or waits here, then remove whatever files it wrote."""
        log.info("cancelling attempt %d: %s", message.attempt, message.reason)
        tasks = [t for t, _ in self.queued] + ([self.current] if self.current is not None else [])
        output_dirs = [t.output_dir for t in tasks if t.attempt == message.attempt and t.output_dir]
        self.queued = deque((t, f) for t, f in self.queued if t.attempt != message.attempt)
        if self.current is not None and self.current.attempt == message.attempt:
            self.current = None
            self._restart_executor()
            if self.queued:
                self._start(*self.queued.popleft())
        if message.kind == "map" and self.welcome is not None:
            shutil.rmtree(map_output_dir(self._work_dir(), self.welcome.job_id, message.index, message.attempt),
                          ignore_errors=True)
        for output_dir in output_dirs:
            shutil.rmtree(os.path.dirname(reduce_output_path(output_dir, message.index, message.attempt)),
                          ignore_errors=True)

    def _abandon_tasks(self) -> None:
        """The driver gave up on this worker's attempts: stop computing them."""
        self.queued.clear()
        if self.current is not None:
            self.current = None
            self._restart_executor()

    def _remove_work_files(self, job_over: bool) -> None:
        """Once the job is over, map output is garbage. Before that, reducers (or a restarted
        driver) may still need it, so a worker that stops early leaves it in place."""
        mine = sorted(self.job_dirs) + ([self.own_temp_dir] if self.own_temp_dir else [])
        if not job_over:
            if mine:
                log.warning("left this worker's map output in %s for the job to use", ", ".join(mine))
            return
        for path in mine:
            shutil.rmtree(path, ignore_errors=True)
