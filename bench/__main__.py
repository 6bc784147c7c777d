"""python -m bench wordcount | memory | straggler | chaos: benchmarks, each against a baseline run in the same call.

- wordcount: zmqmr's word count beside Pool, sort | uniq -c, Dask bag and mrjob (see bench/wordcount.py).
- memory: a reduce partition 4x the memory budget; the peak RSS of every process (see bench/memory.py).
- dispatch, tiny: no-op tasks per second beside raw pyzmq; a tiny job's wall time (see bench/dispatch.py).
- mapside: the obvious job's map side in one process, beside Pool's work and the mapper alone (bench/mapside.py).

- straggler: one worker maps 20x slower; the job's wall time with and without speculation.
- chaos: a word count over --corpus undisturbed, then while a worker is SIGKILLed and
  restarted every --every seconds; wall times, workers killed, and whether the answers match.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*args) -> list:
    return [sys.executable, "-m", "zmqmr", *map(str, args)]


def start(args, env=None) -> subprocess.Popen:
    return subprocess.Popen(args, env={**ENV, **(env or {})}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_job(inputs, out, driver_args=(), worker_env=(), on_tick=None) -> float:
    """Run driver and workers (one per worker_env entry); return the driver's wall time."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    workers = [start(command("worker", "--driver", endpoint, "--name", f"bench-{i}", "-q"), env)
               for i, env in enumerate(worker_env)]
    started = time.monotonic()
    driver = start(command("driver", "--input", *inputs, "--output", out, "--port", port, "-q", *driver_args))
    try:
        while driver.poll() is None:
            time.sleep(0.05)
            if on_tick:
                on_tick(workers, endpoint, time.monotonic() - started)
        if driver.returncode != 0:
            raise SystemExit(f"the job failed (exit {driver.returncode})")
        return time.monotonic() - started
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
            w.wait()


def outputs_equal(a: str, b: str) -> bool:
    def read(d):
        return sorted(line for n in os.listdir(d) if n.startswith("part-") for line in open(os.path.join(d, n)))
    return read(a) == read(b)


def straggler(args) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-straggler-")
    try:
        inputs = []
        for i in range(args.files):
            path = os.path.join(tmp, f"in-{i:02d}.txt")
            with open(path, "w") as f:
                f.write("".join(f"line {n} of file {i}\n" for n in range(args.lines)))
            inputs.append(path)
        job = os.path.join(tmp, "job.py")
        with open(job, "w") as f:
            f.write(textwrap.dedent("""
                import os, time
                DELAY = 0.001 * (20 if os.environ.get("BENCH_SLOW") else 1)
                def mapper(path, line):
                    time.sleep(DELAY)
                    yield len(line), 1
                def reducer(key, values):
                    yield key, sum(values)
                """))
        envs = [{"BENCH_SLOW": "1"}, {}]
        rows = []
        for trial in range(args.repeat):
            for label, extra in (("speculation", ["--speculation-min-seconds", args.min_seconds]),
                                 ("no speculation", ["--no-speculation"])):
                out = os.path.join(tmp, f"out-{label}-{trial}".replace(" ", "-"))
                rows.append((label, run_job(inputs, out, ["--job", job, "--mappers", args.files, *extra], envs)))
        medians = {label: statistics.median(t for lbl, t in rows if lbl == label) for label, _ in rows}
        print(f"straggler: {args.files} files x {args.lines} lines, one of 2 workers 20x slower, "
              f"{args.repeat} runs each (median wall s)")
        for label, seconds in medians.items():
            print(f"  {label:15} {seconds:7.2f} s")
        print(f"  ratio speculation / none: {medians['speculation'] / medians['no speculation']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def chaos(args) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-chaos-")
    rng = random.Random(1)
    kills = []
    last = [0.0]

    def killer(workers, endpoint, elapsed):
        if elapsed - last[0] >= args.every:
            last[0] = elapsed
            i = rng.randrange(len(workers))
            workers[i].kill()
            workers[i].wait()
            kills.append(elapsed)
            workers[i] = start(command("worker", "--driver", endpoint, "--name", f"bench-{i}", "-q"))

    try:
        common = ["--heartbeat-interval", "0.2", "--worker-timeout", "2", "--max-worker-losses", "100"]
        calm = run_job([args.corpus], os.path.join(tmp, "calm"), common, [{}] * args.workers)
        stormy = run_job([args.corpus], os.path.join(tmp, "chaos"), common, [{}] * args.workers, killer)
        same = outputs_equal(os.path.join(tmp, "calm"), os.path.join(tmp, "chaos"))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.corpus) for f in fs)
        print(f"chaos: {size / 2**20:.0f} MiB with {args.workers} workers")
        print(f"  undisturbed          {calm:7.1f} s")
        print(f"  a kill every {args.every:g} s   {stormy:7.1f} s  ({len(kills)} workers killed)")
        print(f"  slowdown             {stormy / calm:7.2f}x")
        print(f"  outputs identical:   {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", required=True)
    s = sub.add_parser("straggler")
    s.add_argument("--files", type=int, default=6)
    s.add_argument("--lines", type=int, default=400)
    s.add_argument("--min-seconds", type=float, default=1.0, help="--speculation-min-seconds for the run")
    s.add_argument("--repeat", type=int, default=3)
    c = sub.add_parser("chaos")
    c.add_argument("--corpus", required=True, help="a directory of text")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--every", type=float, default=2.0, help="seconds between kills")
    from bench import cluster, dispatch, fuzz, mapside, memory, profile, shuffle, wordcount

    wordcount.add_parser(sub)
    memory.add_parser(sub)
    mapside.add_parser(sub)
    profile.add_parser(sub)
    dispatch.add_parser(sub)
    shuffle.add_parser(sub)
    cluster.add_parser(sub)
    fuzz.add_parser(sub)
    args = parser.parse_args()
    if hasattr(args, "func"):
        args.func(args)
    else:
        {"straggler": straggler, "chaos": chaos}[args.name](args)


if __name__ == "__main__":
    main()
