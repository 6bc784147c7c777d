"""python -m bench cluster: a word count across three hosts (network namespaces, no shared disk), with
one host cut off halfway, checked against the single-process count.

The hosts come from the cluster tests' harness (tests/netns.py): a driver host and worker hosts
w1..w3, each on its own address, each worker with a private tmpfs over the driver's directories
and its own work dir. Maps run first; when the reduce phase has started and each host holds a
reducer (the job's reducers wait at a gate), w3's link goes down. The driver declares it lost
and re-runs the map tasks whose output only w3 had; then the gate opens. Needs root.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORD = re.compile(r"[^\W\d_]+")


def single_process_count(paths):
    counts = collections.Counter()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                counts.update(WORD.findall(line))
    return counts


def run(args) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from netns import ZmqmrCluster, skip_reason  # the tests' harness

    reason = skip_reason()
    if reason:
        raise SystemExit(f"cannot build the hosts: {reason}")
    base = tempfile.mkdtemp(prefix="bench-cluster-")
    mr = None
    try:
        mr = ZmqmrCluster(__import__("pathlib").Path(base), workers=3)
        inputs = sorted(os.path.join(args.corpus, n) for n in os.listdir(args.corpus))
        for path in inputs:
            shutil.copy(path, mr.input)
        job = mr.write_job(map_seconds=args.map_seconds)
        mr.open_gate("maps")
        started = time.monotonic()
        mr.start_all(job=job, reducers=args.reducers, mappers=args.mappers)
        mr.wait_for_log(f"starting {args.reducers} reduce tasks", timeout=120)
        mr.wait_for_markers("reduce-arrived", mr.worker_names, timeout=60)
        print(f"reduce phase after {time.monotonic() - started:.1f} s; cutting w3 ({mr.host('w3').address}) off")
        mr.host("w3").cut()
        mr.wait_for_log("worker w3 lost", timeout=30)
        mr.open_gate("reduce")
        code = mr.finish_driver(timeout=180)
        wall = time.monotonic() - started
        print(f"driver exit status {code} after {wall:.1f} s")
        command = " ".join(map(str, mr.driver.popen.args)) if hasattr(mr.driver, "popen") else "(see tests/netns.py)"
        print(f"driver command: {command}")
        print("driver log, lost worker and re-made output:")
        with open(mr.driver_log, encoding="utf-8") as f:
            for line in f:
                if any(k in line for k in ("lost", "re-running map task", "starting", "could not fetch", "succeeded")):
                    print("  " + line.rstrip())
        expected = single_process_count(inputs)
        got = {}
        for name in sorted(os.listdir(mr.output)):
            if name.startswith("part-"):
                with open(os.path.join(mr.output, name), encoding="utf-8") as f:
                    for line in f:
                        key, value = line.rstrip("\n").split("\t")
                        got[key] = int(value)
        print(f"words: {len(got):,} distinct, {sum(got.values()):,} in all; "
              f"output identical to the single-process count: {got == dict(expected)}")
    finally:
        if mr is not None:
            mr.close()
        shutil.rmtree(base, ignore_errors=True)


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="word count across three namespace hosts, one cut off halfway (root)")
    p.add_argument("--corpus", required=True, help="a directory of text files, such as ../shared/data/gutenberg")
    p.add_argument("--mappers", type=int, default=12)
    p.add_argument("--reducers", type=int, default=6)
    p.add_argument("--map-seconds", type=float, default=0.3, help="extra time each map task takes")
    p.set_defaults(func=run)
