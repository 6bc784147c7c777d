"""python -m bench profile: where a word count's task processes spend their time.

Runs every map task and every reduce task of a job in this process under cProfile
(the work a task process does, without the sockets) and prints the functions with the
most time of their own, each marked as zmqmr's (framework), the job's, or Python's.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import shutil
import tempfile
import time

from bench.wordcount import add_corpus_arguments, corpus_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "zmqmr") + os.sep
EXAMPLES = os.path.join(PACKAGE, "examples") + os.sep


def run_job(job_name, corpus: str, reducers: int, scratch: str) -> None:
    from zmqmr.inputs import expand_inputs, plan_splits
    from zmqmr.job import load_job, spec_for
    from zmqmr.tasks import run_map, run_reduce

    job = load_job(spec_for(job_name))
    outputs = [[] for _ in range(reducers)]
    for index, split in enumerate(plan_splits(expand_inputs([corpus]))):
        parts, _ = run_map(job, split, reducers, os.path.join(scratch, f"map-{index}"))
        for part in parts:
            outputs[part.partition].append(part.path)
    for index, paths in enumerate(outputs):
        run_reduce(job, paths, os.path.join(scratch, "out", f"part-{index:05d}"))


def owner(filename: str, job_file: str = "") -> str:
    """framework (zmqmr's own code), job (the user's code, here the examples), or python."""
    if filename.startswith(EXAMPLES) or (job_file and filename == os.path.abspath(job_file)):
        return "job"
    return "framework" if filename.startswith(PACKAGE) else "python"


def run(args) -> None:
    corpus = corpus_of(args)
    scratch = tempfile.mkdtemp(prefix="bench-profile-")
    try:
        profiler = cProfile.Profile()
        started = time.monotonic()
        profiler.runcall(run_job, args.job, corpus, args.reducers, scratch)
        wall = time.monotonic() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:args.top]
    print(f"profile: {args.job or 'built-in word count'} over {args.size} ({wall:.1f} s with cProfile), "
          f"the {args.top} functions with the most time of their own")
    print(f"  {'own %':>6} {'total %':>8}  {'whose':10} function")
    job_file = args.job or ""
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = f"{os.path.relpath(filename, ROOT)}:{line}({name})" if filename.startswith("/") else name
        print(f"  {100 * own / total:6.1f} {100 * cumulative / total:8.1f}  {owner(filename, job_file):10} {where}")
    framework = [own for (f, _, _), (_, _, own, _, _) in stats.stats.items() if owner(f, job_file) == "framework"]
    worst = max(framework, default=0.0)
    print(f"  highest framework function, own time: {100 * worst / total:.1f}%  [target <= 10%]")


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="cProfile of a job's map and reduce tasks, run in this process")
    add_corpus_arguments(p, "32M")
    p.add_argument("--job", help="a job file or module (default: the built-in word count)")
    p.add_argument("--reducers", type=int, default=2)
    p.add_argument("--top", type=int, default=15)
    p.set_defaults(func=run)
