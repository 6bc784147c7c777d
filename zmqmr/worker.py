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
import time
from collections import deque
from dataclasses import dataclass
from typing import Deque, List, Optional, Set, Tuple

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import __version__, protocol
from .errors import ProtocolError, UsageError
from .executor import Executor, as_read, map_output_dir, reduce_output_path
from .procutil import raise_file_limit
from .shuffle import ShuffleService
from .security import Curve, CurveKeys, Gate, connect_as
from .workdir import JobDir, default_work_dir, private_dir, remove_stale, shares

log = logging.getLogger("zmqmr.worker")

DEFAULT_HEARTBEAT = 1.0
RECENT_REPORTS = 8  # done/failed reports sent again after registering anew (duplicates are harmless)
SHORT_TASK = 0.05  # seconds: tasks this quick are fetched PREFETCH at a time and run in batches
LONG_TASK = 1.0  # seconds: past this, a worker holds no task beyond the one it runs
PREFETCH = 128  # tasks held at most (running and queued), when tasks are short
EXECUTOR_BATCH = 64  # short tasks handed to the task process at once
FIRST_TASKS = 1  # held while nothing is known of the tasks' length
BATCH_BYTES = protocol.MAX_DRIVER_MESSAGE_BYTES - 64 * 1024
HANDSHAKE_FAILURES = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                      | zmq.EVENT_HANDSHAKE_FAILED_AUTH)


@dataclass(frozen=True)
class WorkerSettings:
    driver: str
    name: Optional[str] = None
    work_dir: Optional[str] = None
    heartbeat_interval: Optional[float] = None  # None: the driver's
    driver_timeout: float = 30.0
    bind_host: Optional[str] = None  # the shuffle service's address; None: the one that reaches the driver
    advertise_host: Optional[str] = None  # what reducers elsewhere connect to; None: the bound address
    shuffle_port: int = 0  # 0: any free port
    curve_keys: Optional[CurveKeys] = None  # this worker's key pair, with the driver's public key as `server`


def default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def address_towards(endpoint: str) -> str:
    """This host's address on the route to the driver's endpoint: where other hosts reach us too.
    (A UDP connect sends nothing; it only picks the route.) Loopback for ipc:// and local drivers."""
    if not endpoint.startswith("tcp://"):
        return "127.0.0.1"
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, 9, proto=socket.IPPROTO_UDP)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def shuffle_addresses(settings: "WorkerSettings") -> Tuple[str, str]:
    """(address to bind the shuffle service on, address to advertise to the driver)."""
    local = address_towards(settings.driver)
    bind = settings.bind_host or local
    advertise = settings.advertise_host or (local if bind in ("0.0.0.0", "::", "*") else bind)
    return bind, advertise


class Worker:
    """Holds a few tasks: `batch` in the task process (running, in order) and `queue` waiting here.

    How many it asks for adapts to how long recent tasks took: many short ones are fetched
    and run in batches, so that round trips do not bound them; long ones one at a time, so a
    slow worker never sits on tasks another could run. Reports of finished attempts travel
    with the next request in one batch frame.
    """

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.name = settings.name or default_worker_name()
        self.inc = secrets.token_hex(8)
        self.welcome: Optional[protocol.Welcome] = None
        self.welcome_frame = b""
        self.queue: Deque[protocol.Task] = deque()  # held, not yet in the task process
        self.batch: List[protocol.Task] = []  # in the task process, not yet reported, in order
        self.cancelled: Set[int] = set()  # attempts of `batch` cancelled while they wait there
        self.outbox: List[bytes] = []  # reports not yet sent
        self.task_seconds: Optional[float] = None  # recent tasks' typical run time
        self.awaiting_reply = False
        self.request_sent_at = 0.0
        self.next_request_at = 0.0
        self.last_heard = self.last_sent = time.monotonic()
        self.work_root = ""  # where this job's files go: --work-dir, the driver's shared one, or the default
        self.job_dir: Optional[JobDir] = None  # this job's directory under work_root, claimed
        self.shuffle: Optional[ShuffleService] = None
        self.handshake_logged = float("-inf")
        self.told_to_exit = False
        self.job_succeeded = False  # told to exit because the job's output is committed
        self.shares_driver_work_dir = False
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
        self.executor = Executor(self.name, self.inc, "fork", self.settings.driver, self.settings.curve_keys)
        raise_file_limit()  # the shuffle service's connections hold descriptors too
        self.context = zmq.Context()
        keys = self.settings.curve_keys
        self.gate = Gate(self.context) if keys is not None else None  # admits the driver's keys, from welcome
        bind, advertise = shuffle_addresses(self.settings)
        try:
            self.shuffle = ShuffleService(self.context, bind, self.settings.shuffle_port, advertise,
                                          Curve(keys) if keys is not None else None)
        except zmq.ZMQError as exc:
            self.executor.stop()
            if self.gate is not None:
                self.gate.stop()
            self.context.term()
            raise UsageError(f"cannot start the shuffle service on {bind}:{self.settings.shuffle_port or 'any port'}"
                             f": {exc} (see --bind-host, --shuffle-port)") from None
        self.sock = self.context.socket(zmq.DEALER)
        connect_as(self.sock, keys)
        self.handshakes = self.sock.get_monitor_socket(HANDSHAKE_FAILURES) if keys is not None else None
        self.sock.linger = 0
        self.sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self.sock.connect(self.settings.driver)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.executor.fileno(), zmq.POLLIN)
        self.poller.register(self.shuffle.sock, zmq.POLLIN)
        if self.handshakes is not None:
            self.poller.register(self.handshakes, zmq.POLLIN)
        log.info("worker %s connecting to %s; serving map output on %s", self.name, self.settings.driver,
                 self.shuffle.endpoint)
        job_over = False
        try:
            self._say_hello()
            code = self._loop()
            job_over = self.told_to_exit and self.job_succeeded
            return code
        finally:
            self.executor.stop()
            if self.shuffle.served_bytes:
                log.info("served %d bytes of map output to reducers on other hosts", self.shuffle.served_bytes)
            if self.handshakes is not None:
                self.sock.disable_monitor()
                self.handshakes.close(linger=0)
            self.sock.close(linger=0)
            self.shuffle.close()
            if self.gate is not None:
                self.gate.stop()
            self.context.term()
            self._remove_work_files(job_over)

    # --- the loop ----------------------------------------------------------------------

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            if now - self.last_heard > self.settings.driver_timeout:
                why = "the CURVE handshake failed (see above);" if self.handshake_logged > float("-inf") else \
                    "is it running?"
                log.error("no word from the driver at %s for %.0f s; %s giving up",
                          self.settings.driver, now - self.last_heard, why)
                return 1
            self._feed_executor()
            self._send_due(now)
            timeout = max(0.0, min(self._next_timer(now), 1.0))
            for item, _ in self.poller.poll(timeout * 1000):
                if item is self.sock:
                    code = self._drain_socket()
                    if code is not None:
                        return code
                elif item is self.shuffle.sock:
                    self.shuffle.handle()
                elif item is self.handshakes:
                    self._handshake_failed()
                else:
                    self._on_executor_ready()

    def _next_timer(self, now: float) -> float:
        """Seconds until the loop next has something to send."""
        if self.outbox and not self.awaiting_reply and self.welcome is not None:
            return 0.0
        timers = [self.last_sent + self.heartbeat_interval, self.last_heard + self.settings.driver_timeout]
        if self.welcome is not None and not self.awaiting_reply and self._want() > 0:
            timers.append(self.next_request_at)
        if self.awaiting_reply:
            timers.append(self.request_sent_at + self._reply_timeout)
        return min(timers) - now

    @property
    def _reply_timeout(self) -> float:
        return max(5.0, 5 * self.heartbeat_interval)

    def _capacity(self) -> int:
        """How many attempts to hold (running and queued), from how long recent ones took."""
        if self.task_seconds is None:
            return FIRST_TASKS
        if self.task_seconds < SHORT_TASK:
            return PREFETCH
        return 2 if self.task_seconds < LONG_TASK else 1

    def _want(self) -> int:
        held = len(self.batch) - len(self.cancelled) + len(self.queue)
        return max(0, min(self._capacity() - held, protocol.MAX_PREFETCH))

    def _send_due(self, now: float) -> None:
        if self.awaiting_reply and now >= self.request_sent_at + self._reply_timeout:
            log.warning("no answer to a task request for %.0f s; asking again", self._reply_timeout)
            self.awaiting_reply = False
        if self.welcome is None:
            if now >= self.last_sent + self.heartbeat_interval:
                self._say_hello()
            return
        if not self.awaiting_reply:
            want = self._want()
            ask = want > 0 and (bool(self.outbox) or now >= self.next_request_at)
            if self.outbox or ask:
                self._send_batch(want if ask else 0)
                if ask:
                    self.awaiting_reply = True
                    self.request_sent_at = now
                return
        if now >= self.last_sent + self.heartbeat_interval:
            running = self.executor.running_attempt()
            task = next((t for t in self.batch if t.attempt == running), None) if running else None
            progress = self.executor.progress_of(as_read(task, self.work_root, self.welcome.job_id)) \
                if task is not None else None
            self._send(protocol.Heartbeat(worker=self.name, inc=self.inc, running=self._held(),
                                          queued=self._queued(), progress=(progress,) if progress else ()))

    def _send_batch(self, want: int) -> None:
        """The reports in the outbox and a request for `want` more tasks (0: none), in one frame
        (or more, should the reports be large)."""
        request = protocol.encode_item(protocol.Request(worker=self.name, inc=self.inc, running=self._held(),
                                                        queued=self._queued(), want=want))
        items, size = [], len(request)
        for report in self.outbox:
            if items and size + len(report) > BATCH_BYTES:
                self._send_frame(protocol.batch_frame(self.name, self.inc, items))
                items, size = [], len(request)
            items.append(report)
            size += len(report)
        self.outbox = []
        self._send_frame(protocol.batch_frame(self.name, self.inc, items + [request]))

    def _held(self) -> Tuple[int, ...]:
        return tuple([t.attempt for t in self.batch if t.attempt not in self.cancelled] +
                     [t.attempt for t in self.queue])

    def _queued(self) -> Tuple[int, ...]:
        """Attempts held here that have not started: those the task process has not reached in
        its batch, and those still waiting in this loop. Their clocks must not run yet."""
        running = self.executor.running_attempt()
        in_batch = [t.attempt for t in self.batch if t.attempt not in self.cancelled]
        waiting = in_batch[in_batch.index(running) + 1:] if running in in_batch else in_batch
        return tuple(waiting) + tuple(t.attempt for t in self.queue)

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
                                  pid=os.getpid(), software=f"zmqmr {__version__}", shuffle=self.shuffle.endpoint,
                                  shuffle_key=self.settings.curve_keys.public.decode() if self.settings.curve_keys
                                  else ""))

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
            for item in message.items if isinstance(message, protocol.Bundle) else (message,):
                code = self._on_message(item, frames[0])
                if code is not None:
                    return code

    def _handshake_failed(self) -> None:
        """The CURVE handshake with the driver failed: say why at once (and now and then after)."""
        event = recv_monitor_message(self.handshakes)
        now = time.monotonic()
        if now - self.handshake_logged < 10.0:
            return
        self.handshake_logged = now
        code = event.get("value", 0)
        why = "the driver refused this worker's key (is it in the driver's --authorized-keys?)" \
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH else \
            "the driver's key is not the one this worker was given (--driver-key), or it does not use CURVE"
        log.error("CURVE handshake with %s failed: %s [event %d, %d]; nothing from it will be run",
                  self.settings.driver, why, event["event"], code)

    def _bad(self, reason: str, detail: str) -> None:
        self.bad_messages += 1
        if self.bad_messages <= 10:
            log.warning("dropped a bad message from the driver (%s)", detail)

    def _on_message(self, message: protocol.Message, frame: bytes) -> Optional[int]:
        if isinstance(message, protocol.Task):
            self._on_task(message)
        elif isinstance(message, protocol.Welcome):
            self._on_welcome(message, frame)
        elif isinstance(message, protocol.Wait):
            self.awaiting_reply = False
            self.next_request_at = time.monotonic() + message.retry_after
        elif isinstance(message, protocol.Wake):
            self.next_request_at = 0.0
        elif isinstance(message, protocol.Cancel):
            self._cancel(message)
        elif isinstance(message, protocol.Rejected):
            self._bad(message.reason, message.detail)
        elif isinstance(message, protocol.Reregister):
            # What runs goes on: a restarted driver adopts it (or cancels it, if it was given up).
            if self.welcome is not None:  # once per burst: replies to queued messages all say the same
                log.warning("the driver no longer knows this worker (%s); registering again", message.reason)
                self.previous_job_id = self.welcome.job_id
                self.queue.clear()
                self.welcome = None
                self.awaiting_reply = False
                self._say_hello()
        elif isinstance(message, protocol.Exit):
            self.told_to_exit = True
            self.job_succeeded = message.ok
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
            self.outbox = []
            self.welcome = None
        if self.welcome is not None:
            return  # a duplicate answer to a repeated hello
        log.info("registered with the driver for job %s (%s)", welcome.job_id, welcome.job.name)
        self.welcome, self.welcome_frame = welcome, frame
        self._claim_work_dir(welcome)
        self.awaiting_reply = False
        self.next_request_at = 0.0
        unsent = set(map(id, self.outbox))  # reports a killed driver may never have read go again
        self.outbox = [r for r in self.recent_reports if id(r) not in unsent] + self.outbox

    def _on_task(self, task: protocol.Task) -> None:
        if self.welcome is None or task.job_id != self.welcome.job_id:
            log.warning("task for an unknown job %s ignored; registering again", task.job_id)
            self.welcome = None
            self._say_hello()
            return
        self.awaiting_reply = False
        self.queue.append(task)

    # --- the task process ------------------------------------------------------------------

    def _claim_work_dir(self, welcome: protocol.Welcome) -> None:
        """Pick where this job's files go and claim its directory there: --work-dir; else the driver's
        --work-dir if this host sees it (its probe file says so); else the default local one. What
        killed jobs left in that work dir goes."""
        if self.job_dir is not None:
            if self.job_dir.job_id == welcome.job_id:
                return
            self.job_dir.release()  # the driver runs another job now: the old one's files are garbage
        shared = bool(not self.settings.work_dir and welcome.work_dir and
                      shares(os.path.join(welcome.work_dir, welcome.job_id), welcome.probe))
        self.shares_driver_work_dir = shared
        root = self.settings.work_dir or (welcome.work_dir if shared else default_work_dir())
        try:
            if not self.settings.work_dir and not shared:
                private_dir(root)  # the default, in a shared place such as /tmp: this user's alone
            self.work_root = os.path.abspath(root)
            self.job_dir = JobDir(self.work_root, welcome.job_id)
        except OSError as exc:
            raise UsageError(f"cannot use the work dir {root}: {exc.strerror or exc}") from None
        for path in remove_stale(self.work_root, keep=welcome.job_id):
            log.info("removed %s, left by a job that failed or was killed", path)
        self.shuffle.serve_job(welcome.job_id, self.work_root)
        if self.gate is not None:
            self.gate.allow(key.encode() for key in welcome.peer_keys)

    def _feed_executor(self) -> None:
        """Hand the task process its next tasks: a batch when tasks are short, else one. Never while
        it still works on a batch: its "over" would be taken for the new batch's."""
        if self.batch or self.executor.busy or not self.queue or self.welcome is None:
            return
        count = EXECUTOR_BATCH if self.task_seconds is not None and self.task_seconds < SHORT_TASK else 1
        self.batch = [self.queue.popleft() for _ in range(min(count, len(self.queue)))]
        if log.isEnabledFor(logging.DEBUG):
            for task in self.batch:
                log.debug("running %s task %d (attempt %d)", task.kind, task.index, task.attempt)
        self.executor.submit(self.welcome_frame, self.welcome.job_id, self.batch, self.work_root)

    def _on_executor_ready(self) -> None:
        reply = self.executor.receive()
        if reply is None:
            self._executor_died()
            return
        over, reports = reply
        for attempt, seconds, report in reports:
            if self.batch and self.batch[0].attempt == attempt:
                task = self.batch.pop(0)
            else:
                task = next((t for t in self.batch if t.attempt == attempt), None)
                self.batch = [t for t in self.batch if t is not task]
            self._note_seconds(seconds)
            if attempt in self.cancelled:
                self.cancelled.discard(attempt)
                if task is not None:
                    self._remove_attempt_files(task.kind, task.index, attempt, task.output_dir)
                continue
            if task is not None and task.kind == "map":
                self.shuffle.offer(task.index, attempt)
            self.recent_reports.append(report)
            self.outbox.append(report)
        if over:
            self.batch, self.cancelled = [], set()
        self._feed_executor()  # the task process goes on while the reports travel

    def _note_seconds(self, seconds: float) -> None:
        self.task_seconds = seconds if self.task_seconds is None else 0.7 * self.task_seconds + 0.3 * seconds

    def _executor_died(self) -> None:
        """The attempt it ran is lost; the batch's others (finished but unreported, or not yet
        started) run again in a new task process, at no cost to their tasks."""
        running = self.executor.running_attempt()
        reason = self.executor.death_reason()
        self._restart_executor()
        batch, self.batch = self.batch, []
        if not running and batch:
            running = batch[0].attempt  # died between attempts: blame the next, so that it cannot loop
        again = []
        for task in batch:
            if task.attempt in self.cancelled:
                self._remove_attempt_files(task.kind, task.index, task.attempt, task.output_dir)
            elif task.attempt == running:
                log.error("%s while running %s task %d", reason, task.kind, task.index)
                error = protocol.TaskError(kind="TaskProcessDied", message=reason, host=socket.gethostname())
                report = protocol.encode_item(protocol.Failed(worker=self.name, inc=self.inc, attempt=task.attempt,
                                                              error=error, lost=True))
                self.recent_reports.append(report)
                self.outbox.append(report)
            else:
                again.append(task)
        self.cancelled = set()
        self.queue.extendleft(reversed(again))

    def _restart_executor(self) -> None:
        self.poller.unregister(self.executor.fileno())
        self.executor.stop()
        # A ZeroMQ context exists now, so the new process must not be a fork of this one.
        self.executor = Executor(self.name, self.inc, "spawn", self.settings.driver, self.settings.curve_keys)
        self.poller.register(self.executor.fileno(), zmq.POLLIN)

    def _cancel(self, message: protocol.Cancel) -> None:
        """Stop the attempt if it runs or waits here, then remove whatever files it wrote."""
        log.info("cancelling attempt %d: %s", message.attempt, message.reason)
        output_dirs = [t.output_dir for t in list(self.queue) + self.batch if t.attempt == message.attempt]
        self.queue = deque(t for t in self.queue if t.attempt != message.attempt)
        if any(t.attempt == message.attempt for t in self.batch):
            if self.executor.running_attempt() == message.attempt or len(self.batch) == 1:
                # Stop the task process; the batch's other attempts run again in the new one.
                again = [t for t in self.batch if t.attempt != message.attempt and t.attempt not in self.cancelled]
                self.batch, self.cancelled = [], set()
                self._restart_executor()
                self.queue.extendleft(reversed(again))
            else:
                self.cancelled.add(message.attempt)  # its report is dropped when it comes
        self._remove_attempt_files(message.kind, message.index, message.attempt,
                                   output_dirs[0] if output_dirs else "")

    def _remove_attempt_files(self, kind: str, index: int, attempt: int, output_dir: str) -> None:
        if kind == "map" and self.welcome is not None:
            self.shuffle.withdraw(index, attempt)
            shutil.rmtree(map_output_dir(self.work_root, self.welcome.job_id, index, attempt), ignore_errors=True)
        if output_dir:
            shutil.rmtree(os.path.dirname(reduce_output_path(output_dir, index, attempt)), ignore_errors=True)

    def _abandon_tasks(self) -> None:
        """The driver gave up on this worker's attempts: stop computing them."""
        self.queue.clear()
        if self.batch:
            self.batch, self.cancelled = [], set()
            self._restart_executor()

    def _remove_work_files(self, job_over: bool) -> None:
        """Once the job is over, its files here are garbage. Before that, reducers (or a restarted
        driver) may still need them: a worker that stops early leaves them, unclaimed, for the next
        job in this work dir or `zmqmr-worker --clean` to remove."""
        if self.job_dir is None:
            return
        if job_over and not self.shares_driver_work_dir:  # the driver's own is the driver's to remove
            if not self.job_dir.remove_if_last():
                log.debug("other processes still use %s; the last one removes it", self.job_dir.path)
        elif job_over:
            self.job_dir.release()
        else:
            log.warning("left this worker's files for job %s in %s", self.job_dir.job_id, self.job_dir.path)
            self.job_dir.release()
