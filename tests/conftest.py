"""Shared test helpers: generated corpora, a sequential reference count, and process handling.

Tests that start processes start them through `procs`, which kills whatever is still
running at the end of the test, and only that.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORD = re.compile(r"[^\W\d_]+")

VOCABULARY = (
    "the quick brown fox jumps over lazy dog MapReduce Ünïcödé naïve café Straße "
    "Ελληνικά русский 日本語 mañana x y z déjà vu l'été don't co-op e-mail 42abc abc42 a_b "
    "THE The tHe"
).split()


def make_corpus(directory, files: int = 4, lines: int = 2000, seed: int = 7) -> List[str]:
    """Write `files` text files of random words, digits and punctuation; return their paths."""
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    paths = []
    for f in range(files):
        path = os.path.join(str(directory), f"text-{f:02d}.txt")
        with open(path, "w", encoding="utf-8", newline="") as out:
            for _ in range(lines):
                words = [rng.choice(VOCABULARY) for _ in range(rng.randint(0, 14))]
                ending = rng.choice(["\n", "\n", "\n", "\r\n"])
                out.write(" ".join(words) + rng.choice(["", ".", " 123", ";"]) + ending)
            out.write("no final newline")
        paths.append(path)
    return paths


def sequential_wordcount(paths) -> Dict[str, int]:
    counts: collections.Counter = collections.Counter()
    for path in paths:
        with open(path, "rb") as f:
            for raw in f:
                counts.update(WORD.findall(raw.decode("utf-8")))
    return dict(counts)


def read_output(directory) -> Dict[str, str]:
    """key -> value of every part file, checking each file is sorted and keys are unique."""
    result: Dict[str, str] = {}
    parts = sorted(n for n in os.listdir(directory) if n.startswith("part-"))
    assert parts, f"no part files in {directory}"
    for name in parts:
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            keys = []
            for line in f:
                key, value = line.rstrip("\n").split("\t")
                assert key not in result, f"key {key!r} written twice"
                result[key] = value
                keys.append(key)
            assert keys == sorted(keys), f"{name} is not sorted by key"
    return result


def counts_of(directory) -> Dict[str, int]:
    return {k: int(v) for k, v in read_output(directory).items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def zmqmr_command(command: str, *args: str) -> List[str]:
    return [sys.executable, "-m", "zmqmr", command, *map(str, args)]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Processes:
    def __init__(self):
        self.started: List[subprocess.Popen] = []

    def start(self, argv: List[str], env_extra: Optional[dict] = None, **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        proc = subprocess.Popen(argv, env={**_env(), **(env_extra or {})}, stdin=subprocess.DEVNULL, **kwargs)
        self.started.append(proc)
        return proc

    def run(self, argv: List[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        return finish(self.start(argv, **kwargs), timeout)

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            try:
                proc.communicate(timeout=10)
            except (subprocess.TimeoutExpired, ValueError):
                pass


@pytest.fixture(autouse=True)
def restore_logging():
    """Commands run in-process set up zmqmr's logging; put it back so caplog works in later tests."""
    logger = logging.getLogger("zmqmr")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture
def procs():
    processes = Processes()
    yield processes
    processes.kill_all()


def equal_sized(paths: List[str]) -> List[str]:
    """Pad files with a last line of spaces (no words) to one size, so that `--mappers len(paths)`
    makes map task k read exactly file k. Returns the paths."""
    size = max(os.path.getsize(p) for p in paths) + 2
    for path in paths:
        with open(path, "ab") as f:
            f.write(b"\n" + b" " * (size - os.path.getsize(path) - 2) + b"\n")
    return paths


@pytest.fixture
def corpus(tmp_path):
    """Four files of equal size: with --mappers 4, map task k reads file k."""
    return equal_sized(make_corpus(tmp_path / "input"))


def finish(proc: subprocess.Popen, timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args} did not finish in {timeout} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def child_pids(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False

