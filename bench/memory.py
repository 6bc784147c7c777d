"""python -m bench memory: a reduce partition 4x the memory budget, and the peak RSS of every process.

The job sends every input line to one reducer, so its one partition is the whole input
(--size, 4x --memory-limit by default). The reducer counts values without keeping them,
as the issue's rule allows. Each process of the run (the zmqmr-local driver, each
worker, each task process) is watched through /proc while it lives; its VmHWM (peak
resident set) is printed beside the limit.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Dict, Tuple

from bench.wordcount import ENV, compile_package, parse_size

JOB = '''
def mapper(path, line):
    yield line[:2], line           # 676 keys, each with thousands of whole lines as values

def reducer(key, values):
    n = size = 0
    for value in values:           # streamed: never all of a key's values at once
        n += 1
        size += len(value)
    yield key, f"{n} {size}"
'''


def make_input(directory: str, size: int) -> int:
    """Text files of random lines, `size` bytes in all; returns the number of lines."""
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    os.makedirs(directory, exist_ok=True)
    lines = written = 0
    file_index = 0
    while written < size:
        with open(os.path.join(directory, f"in-{file_index:03d}.txt"), "w") as f:
            chunk = []
            for _ in range(200_000):
                line = "".join(rng.choices(alphabet, k=rng.randint(60, 140)))
                chunk.append(line)
                written += len(line) + 1
                if written >= size:
                    break
            f.write("\n".join(chunk) + "\n")
            lines += len(chunk)
        file_index += 1
    return lines


def _descendants(root: int) -> Dict[int, int]:
    """pid -> parent pid for `root` and every process below it."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root: 0}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree[child] = pid
                frontier.append(child)
    return tree


def _peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _role(pid: int, tree: Dict[int, int], root: int) -> str:
    if pid == root:
        return "driver (zmqmr-local)"
    parent = tree.get(pid)
    if parent == root:
        return f"worker {pid}"
    return f"task process {pid} (of worker {parent})"


def watch(argv, env) -> Tuple[float, Dict[str, int], int]:
    """Run argv; return its wall time, the peak RSS (KiB) of each process it started, and its exit code."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    peaks: Dict[str, int] = {}
    while proc.poll() is None:
        tree = _descendants(proc.pid)
        for pid in tree:
            peak = _peak_kib(pid)
            if peak > 0:
                role = _role(pid, tree, proc.pid)
                peaks[role] = max(peaks.get(role, 0), peak)
        time.sleep(0.02)
    return time.monotonic() - started, peaks, proc.returncode


def run(args) -> None:
    compile_package()
    limit = parse_size(args.memory_limit)
    size = parse_size(args.size) if args.size else 4 * limit
    scratch = tempfile.mkdtemp(prefix="bench-memory-")
    try:
        lines = make_input(os.path.join(scratch, "in"), size)
        job = os.path.join(scratch, "job.py")
        with open(job, "w") as f:
            f.write(textwrap.dedent(JOB))
        argv = [sys.executable, "-m", "zmqmr", "local", "--workers", str(args.workers), "-q", "--job", job,
                "--input", os.path.join(scratch, "in"), "--output", os.path.join(scratch, "out"),
                "--memory-limit", args.memory_limit, "--reducers", "1"]
        seconds, peaks, code = watch(argv, ENV)
        if code != 0:
            raise SystemExit(f"the job failed (exit {code})")
        out_lines = sum(1 for _ in open(os.path.join(scratch, "out", "part-00000")))
        print(f"memory: one reduce partition of {size / 2**20:.0f} MiB ({lines:,} lines, {out_lines:,} keys) "
              f"with --memory-limit {limit / 2**20:.0f} MiB, {args.workers} workers: {seconds:.1f} s")
        print(f"  {'process':40} {'peak RSS MiB':>12} {'/ limit':>8}")
        for role, kib in sorted(peaks.items(), key=lambda item: -item[1]):
            print(f"  {role:40} {kib / 1024:12.1f} {kib * 1024 / limit:8.2f}")
        worst = max(peaks.values()) * 1024 / limit
        print(f"  highest peak / limit: {worst:.2f}  [target <= 1.5]")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="peak RSS of every process with a reduce partition 4x the memory budget")
    p.add_argument("--memory-limit", default="64M", help="zmqmr's --memory-limit for the run")
    p.add_argument("--size", help="input size (default: 4x the memory limit)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=run)
