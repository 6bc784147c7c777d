"""python -m bench fuzz [--soak]: a job's wall time and its driver's peak memory, alone and under a flood
of malformed messages at the driver's port.

The job is a word count whose mapper sleeps 1 ms a line (so it needs little CPU: what slows it
down under the flood is the driver, not this benchmark's own sender competing for cores), run
with `zmqmr local --workers 2`. The flood: messages the driver must drop (every one fails its
validation: fields of the wrong type or out of range, missing fields, another version, unknown
types, truncated or altered frames, random bytes, several frames), sent at --rate a second from
4 DEALER sockets, plus now and then a raw TCP connection writing junk at the port.

- default: the job alone and under the flood, alternating, --repeat times; medians.
- --soak: 10,000 malformed messages a second for 30 s against a job of about 30 s; the slowdown.

Figures, never pass/fail; the test suite's tests/test_fuzz.py checks the answers.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import List, Optional, Tuple

from bench.wordcount import ENV, compile_package

JOB = '''
import re, time

WORD = re.compile(r"[^\\W\\d_]+")


def mapper(key, value):
    time.sleep(0.001)
    for word in WORD.findall(value):
        yield word, 1


def combiner(key, values):
    yield key, sum(values)


def reducer(key, values):
    yield key, sum(values)
'''

WORDS = ("the quick brown fox jumps over lazy dog MapReduce naïve café Straße Ελληνικά русский "
         "日本語 mañana x y z déjà vu l'été don't co-op e-mail 42abc abc42 a_b THE The").split()


def make_corpus(directory: str, files: int, lines: int) -> List[str]:
    rng = random.Random(7)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for f in range(files):
        path = os.path.join(directory, f"text-{f:03d}.txt")
        with open(path, "w", encoding="utf-8") as out:
            for _ in range(lines):
                out.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14))) + "\n")
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- malformed messages ---------------------------------------------------------------------


def _valid(chk, name: str, rng: random.Random, depth: int):
    """A value that passes `chk` (names and attempts no real worker has)."""
    from zmqmr import protocol

    if name == "worker":
        return f"bench-fuzz-{rng.randrange(10**6)}"
    if name == "attempt":
        return rng.randrange(2**40, protocol.MAX_ATTEMPT_ID)
    if isinstance(chk, protocol.Text):
        return "".join(rng.choice("abcé日/") for _ in range(rng.randint(chk.min_len, min(chk.max_len, 12))))
    if isinstance(chk, protocol.Int):
        return rng.choice([chk.low, chk.high, rng.randint(chk.low, min(chk.high, chk.low + 1000))])
    if isinstance(chk, protocol.Float):
        return rng.uniform(chk.low, min(chk.high, chk.low + 100.0))
    if isinstance(chk, protocol.Flag):
        return rng.random() < 0.5
    if isinstance(chk, protocol.OneOf):
        return rng.choice(chk.choices)
    if isinstance(chk, protocol.Bin):
        return rng.randbytes(rng.randint(0, 16))
    if isinstance(chk, protocol.Maybe):
        return None if rng.random() < 0.3 else _valid(chk.inner, name, rng, depth)
    if isinstance(chk, protocol.ListOf):
        count = 0 if depth > 1 else rng.randint(0, 2)
        if name in ("running", "queued"):  # attempt ids
            return [rng.randrange(2**40, 2**50) for _ in range(count)]
        return [_valid(chk.item, "", rng, depth + 1) for _ in range(count)]
    if isinstance(chk, protocol.Nested):
        return _body(chk.record, rng, depth + 1)
    if isinstance(chk, protocol.Items):
        return [] if depth > 1 else [{"t": t, **_body(protocol._ITEM_TYPES[t], rng, depth + 1)}
                                     for t in rng.sample(chk.allowed, rng.randint(0, 2))]
    return None


def _body(record, rng: random.Random, depth: int = 0) -> dict:
    return {f.name: _valid(f.metadata["check"], f.name, rng, depth) for f in dataclasses.fields(record)}


def _junk(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False, -1, 2**64 - 1, -(2**63), 0.5, float("nan"), float("inf")])
    if kind == 2:
        return "x" * rng.choice([0, 3, 257, 4097])
    if kind == 3:
        return rng.randbytes(rng.randint(0, 40))
    if kind == 4:
        import msgpack

        return msgpack.ExtType(rng.randrange(128), rng.randbytes(4))
    if kind == 5:
        return rng.randrange(-1000, 10**12)
    if kind == 6:
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == 7:
        return {f"k{i}": _junk(rng, depth + 1) for i in range(rng.randint(0, 3))}
    return {rng.randrange(5): _junk(rng, depth + 1)}  # a key that is no string


def malformed_frames(count: int, seed: int = 1) -> List[List[bytes]]:
    """`count` distinct messages (lists of frames) that the driver must drop."""
    import msgpack

    from zmqmr import protocol

    rng = random.Random(seed)
    types = list(protocol.TO_DRIVER)
    pack = msgpack.Packer(use_bin_type=True).pack
    out: List[List[bytes]] = []
    while len(out) < count:
        mtype = rng.choice(types)
        record = protocol.TO_DRIVER[mtype]
        body = {"v": protocol.PROTOCOL_VERSION, "t": mtype, **_body(record, rng)}
        valid = pack(body)
        how = rng.randrange(10)
        if how <= 2:  # a field of the wrong type, out of range or too long
            body[rng.choice([f.name for f in dataclasses.fields(record)])] = _junk(rng)
            frames = [pack(body)]
        elif how == 3:  # a field missing
            del body[rng.choice([f.name for f in dataclasses.fields(record)])]
            frames = [pack(body)]
        elif how == 4:  # another version, or a type the driver does not take
            body[rng.choice(["v", "t"])] = rng.choice([2, 4, "3", None, "welcome", "chunk", "nope", [1]])
            frames = [pack(body)]
        elif how == 5:  # cut short
            frames = [valid[:rng.randrange(len(valid))]]
        elif how == 6:  # a byte changed
            changed = bytearray(valid)
            changed[rng.randrange(len(changed))] ^= rng.randrange(1, 256)
            frames = [bytes(changed)]
        elif how == 7:  # random bytes
            frames = [rng.randbytes(rng.randint(0, 200))]
        elif how == 8:  # no map at all
            frames = [pack(_junk(rng))]
        else:  # several frames
            frames = [valid] + [rng.randbytes(rng.randint(0, 20)) for _ in range(rng.randint(1, 3))]
        if len(frames) > 1 or not _decodes(frames[0]):
            out.append(frames)
    return out


def _decodes(frame: bytes) -> bool:
    from zmqmr import protocol

    try:
        protocol.decode(frame, protocol.TO_DRIVER)
        return True
    except protocol.ProtocolError:
        return False


def raw_junk(rng: random.Random) -> bytes:
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" * 32
    return rng.choice([rng.randbytes(rng.choice([1, 64, 4096])), greeting[:rng.randrange(1, 64)],
                       greeting + rng.randbytes(100), b"GET / HTTP/1.1\r\n\r\n"])


# --- a run -------------------------------------------------------------------------------------


class PeakMemory(threading.Thread):
    """VmHWM (KiB) of a process, read every 20 ms while it lives."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.kib = pid, 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.kib = max(self.kib, int(line.split()[1]))
            except (OSError, ValueError):  # reaped
                return
            time.sleep(0.02)


@dataclasses.dataclass
class Run:
    wall: float
    peak_mib: float
    sent: int = 0
    flood_seconds: float = 0.0
    raw_connections: int = 0
    counted: Optional[Tuple[int, int]] = None  # (messages the driver counted as dropped, messages sent by then)
    sender_cpu: float = 0.0  # CPU seconds this process spent sending


class Flood:
    """Malformed messages at `rate` a second from 4 DEALERs, and a raw TCP junk connection every 0.5 s."""

    def __init__(self, endpoint: str, port: int, frames: List[List[bytes]], rate: float):
        import zmq

        self.context = zmq.Context()
        self.dealers = []
        for _ in range(4):
            sock = self.context.socket(zmq.DEALER)
            sock.linger = 0
            sock.sndhwm = 100_000
            sock.connect(endpoint)
            self.dealers.append(sock)
        self.endpoint, self.port, self.frames, self.rate = endpoint, port, frames, rate
        self.sent = self.raw = 0
        self.counted: Optional[Tuple[int, int]] = None  # (dropped messages the driver counted, messages sent)
        self.rng = random.Random(5)

    def run(self, seconds: float, stop) -> float:
        import zmq

        started = time.monotonic()
        next_raw = next_count = 0.0
        while True:
            elapsed = time.monotonic() - started
            if elapsed >= seconds or stop():
                return elapsed
            if elapsed >= next_count:  # what the driver has counted so far, and what we had sent by then
                next_count = elapsed + 1.0
                sent = self.sent
                counted = dropped_count(self.endpoint, timeout=1.0)
                if counted is not None:
                    self.counted = (counted, sent)
            due = int(self.rate * min(elapsed, seconds)) + 1
            while self.sent < due:
                self.dealers[self.sent % 4].send_multipart(self.frames[self.sent % len(self.frames)])
                self.sent += 1
            for sock in self.dealers:  # the driver answers a bad hello with exit: read and forget
                while True:
                    try:
                        sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            if elapsed >= next_raw:
                next_raw = elapsed + 0.5
                self._raw()
            time.sleep(0.002)

    def _raw(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(raw_junk(self.rng))
            self.raw += 1
        except OSError:
            pass

    def close(self) -> None:
        for sock in self.dealers:
            sock.close(linger=0)
        self.context.term()


def dropped_count(endpoint: str, timeout: float = 10.0) -> Optional[int]:
    """Messages the driver dropped for failing validation, or None if it does not answer."""
    from zmqmr import status

    try:
        data = status.query(endpoint, "job", timeout=timeout)
    except status.StatusUnavailable:
        return None
    counts = data.get("dropped_messages") or {}
    return sum(counts.get(r, 0) for r in ("frames", "too_large", "malformed", "version", "unknown_type", "schema"))


def run_job(scratch: str, inputs: List[str], out: str, frames: Optional[List[List[bytes]]] = None,
            rate: float = 0.0, flood_seconds: float = float("inf")) -> Run:
    """The job, alone (no frames) or under the flood; raises SystemExit if it fails."""
    job = os.path.join(scratch, "job.py")
    if not os.path.exists(job):
        with open(job, "w") as f:
            f.write(textwrap.dedent(JOB))
    shutil.rmtree(out, ignore_errors=True)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "zmqmr", "local", "--workers", "2", "--port", str(port), "--job", job,
            "--input", *inputs, "--output", out, "--mappers", str(len(inputs)), "-q"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(proc.pid)
    result = Run(0.0, 0.0)
    if frames:
        flood = Flood(endpoint, port, frames, rate)
        cpu = time.process_time()
        try:
            while proc.poll() is None and dropped_count(endpoint) is None:  # the driver is up
                time.sleep(0.01)
            result.flood_seconds = flood.run(flood_seconds, lambda: proc.poll() is not None)
            result.sent, result.raw_connections = flood.sent, flood.raw
            result.sender_cpu = time.process_time() - cpu
            counted = dropped_count(endpoint) if proc.poll() is None else None
            result.counted = (counted, flood.sent) if counted is not None else flood.counted
        finally:
            flood.close()
    _, err = proc.communicate()
    result.wall = time.monotonic() - started
    memory.join(5)
    result.peak_mib = memory.kib / 1024
    if proc.returncode != 0:
        raise SystemExit(f"the job failed (exit {proc.returncode}):\n{err}")
    return result


def read_output(directory: str) -> List[str]:
    return sorted(line for name in os.listdir(directory) if name.startswith("part-")
                  for line in open(os.path.join(directory, name), encoding="utf-8"))


# --- the two modes --------------------------------------------------------------------------------


def compare(args) -> None:
    scratch = tempfile.mkdtemp(prefix="bench-fuzz-")
    try:
        inputs = make_corpus(os.path.join(scratch, "in"), args.files, args.lines)
        frames = malformed_frames(args.distinct)
        alone: List[Run] = []
        fuzzed: List[Run] = []
        for trial in range(args.repeat):
            alone.append(run_job(scratch, inputs, os.path.join(scratch, "out-alone")))
            fuzzed.append(run_job(scratch, inputs, os.path.join(scratch, "out-fuzzed"), frames, args.rate))
        same = read_output(os.path.join(scratch, "out-alone")) == read_output(os.path.join(scratch, "out-fuzzed"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    a_wall = statistics.median(r.wall for r in alone)
    f_wall = statistics.median(r.wall for r in fuzzed)
    sent = statistics.median(r.sent for r in fuzzed)
    rate = statistics.median(r.sent / r.flood_seconds for r in fuzzed)
    print(f"fuzz: a word count of {args.files} files x {args.lines:,} lines (mapper sleeps 1 ms a line), "
          f"zmqmr local --workers 2, {os.cpu_count()} cores; {args.repeat} runs each, alternating (medians)")
    a_peak = statistics.median(r.peak_mib for r in alone)
    f_peak = statistics.median(r.peak_mib for r in fuzzed)
    raw = statistics.median(r.raw_connections for r in fuzzed)
    print(f"  alone                wall {a_wall:7.2f} s   driver peak RSS {a_peak:6.1f} MiB")
    print(f"  under the fuzz flood wall {f_wall:7.2f} s   driver peak RSS {f_peak:6.1f} MiB")
    print(f"  messages sent: {sent:,.0f} ({rate:,.0f}/s achieved, {args.rate:,.0f}/s asked; {len(frames):,} distinct "
          f"malformed messages, each dropped by the driver), {raw:.0f} raw TCP junk connections; "
          f"sender CPU {statistics.median(r.sender_cpu for r in fuzzed):.1f} s")
    counted = [f"{r.counted[0]:,} when {r.counted[1]:,} were sent" for r in fuzzed if r.counted is not None]
    if counted:  # a few more than sent: libzmq reads raw junk not starting with 0xff as ZMTP 1.0 frames
        print(f"  dropped messages the driver had counted at its last status answer during the flood: "
              f"{'; '.join(counted)} (raw TCP junk adds a few)")
    print(f"  ratio fuzzed / alone: {f_wall / a_wall:.2f}")
    print(f"  outputs identical: {same}")


def soak(args) -> None:
    scratch = tempfile.mkdtemp(prefix="bench-fuzz-soak-")
    try:
        inputs = make_corpus(os.path.join(scratch, "in"), args.soak_files, args.lines)
        frames = malformed_frames(args.distinct)
        alone = run_job(scratch, inputs, os.path.join(scratch, "out-alone"))
        flooded = run_job(scratch, inputs, os.path.join(scratch, "out-soak"), frames, args.soak_rate, args.seconds)
        same = read_output(os.path.join(scratch, "out-alone")) == read_output(os.path.join(scratch, "out-soak"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"fuzz --soak: {args.soak_rate:,.0f} malformed messages/s for up to {args.seconds:g} s at the driver of "
          f"a word count of {args.soak_files} files x {args.lines:,} lines (mapper sleeps 1 ms a line), "
          f"zmqmr local --workers 2, {os.cpu_count()} cores")
    print(f"  alone                wall {alone.wall:7.2f} s   driver peak RSS {alone.peak_mib:6.1f} MiB")
    print(f"  under the flood      wall {flooded.wall:7.2f} s   driver peak RSS {flooded.peak_mib:6.1f} MiB")
    print(f"  flood: {flooded.sent:,} messages in {flooded.flood_seconds:.1f} s = "
          f"{flooded.sent / flooded.flood_seconds:,.0f}/s achieved ({len(frames):,} distinct), "
          f"{flooded.raw_connections} raw TCP junk connections; sender CPU {flooded.sender_cpu:.1f} s")
    if flooded.counted is not None:  # a few more than sent: libzmq reads raw junk not starting with 0xff as
        # ZMTP 1.0 frames, which reach the driver as (malformed) messages
        print(f"  the driver had counted {flooded.counted[0]:,} dropped messages when {flooded.counted[1]:,} were "
              f"sent (its last status answer; raw TCP junk adds a few)")
    print(f"  slowdown flooded / alone: {flooded.wall / alone.wall:.2f}  [target <= 2.0]")
    print(f"  outputs identical: {same}")


def run(args) -> None:
    compile_package()
    (soak if args.soak else compare)(args)


def add_parser(sub) -> None:
    p = sub.add_parser("fuzz", help="a job alone and under a flood of malformed messages: wall time, driver memory")
    p.add_argument("--files", type=int, default=16, help="input files (a map task each), default mode")
    p.add_argument("--lines", type=int, default=1000, help="lines per input file")
    p.add_argument("--rate", type=float, default=10_000, help="malformed messages a second, default mode")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--distinct", type=int, default=2000, help="distinct malformed messages, sent in turn")
    p.add_argument("--soak", action="store_true", help="10,000 malformed messages a second for 30 s")
    p.add_argument("--soak-files", type=int, default=56, help="input files with --soak (about 30 s of job)")
    p.add_argument("--soak-rate", type=float, default=10_000)
    p.add_argument("--seconds", type=float, default=30.0, help="how long the --soak flood lasts at most")
    p.set_defaults(func=run)
