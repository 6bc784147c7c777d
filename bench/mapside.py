"""python -m bench mapside: what the obvious job's map side costs, against its floor, in one process.

The word count target for a job written the obvious way (a mapper yielding (word, 1)
per word) compares zmqmr with a Pool script that runs `Counter(WORD.findall(text))` on
whole files. This measures, in CPU seconds of this one process, on the same files:
- the Pool script's work per file (the baseline);
- the job's mapper alone, called per line as the mapper contract says, its pairs
  consumed in C and dropped: the floor for any framework that calls a mapper per line;
- zmqmr's map task (`tasks.run_map`): reading, mapping, grouping by key, combining, writing.
Runs alternate; the minimum of each is printed with its ratio to the baseline.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from itertools import chain, repeat

from bench.wordcount import OBVIOUS_JOB, add_corpus_arguments, compile_package, corpus_of

WORD = re.compile(r"[^\W\d_]+")


def run(args) -> None:
    compile_package()
    from zmqmr.inputs import expand_inputs, plan_splits
    from zmqmr.job import load_job, spec_for
    from zmqmr.tasks import run_map

    corpus = corpus_of(args)
    scratch = tempfile.mkdtemp(prefix="bench-mapside-")
    try:
        job_file = os.path.join(scratch, "obvious.py")
        with open(job_file, "w") as f:
            f.write(OBVIOUS_JOB)
        job = load_job(spec_for(job_file))
        files = sorted(os.path.join(corpus, n) for n in os.listdir(corpus) if not n.startswith("."))
        texts = [open(path, encoding="utf-8").read() for path in files]
        lines = [text.splitlines() for text in texts]
        splits = plan_splits(expand_inputs(files))

        def baseline():
            for text in texts:
                Counter(WORD.findall(text))

        def mapper_alone():
            for path, file_lines in zip(files, lines):
                deque(chain.from_iterable(map(job.mapper, repeat(path), file_lines)), 0)

        def zmqmr_map_tasks():
            for index, split in enumerate(splits):
                out = os.path.join(scratch, f"map-{index}")
                run_map(job, split, 1, out)
                shutil.rmtree(out, ignore_errors=True)

        contestants = {"Pool regex's work (Counter(findall(file)))": baseline,
                       "the mapper alone, per line, pairs dropped": mapper_alone,
                       "zmqmr map tasks (tasks.run_map)": zmqmr_map_tasks}
        seconds = {name: [] for name in contestants}
        for _ in range(args.runs):
            for name, work in contestants.items():
                started = time.process_time()
                work()
                seconds[name].append(time.process_time() - started)
                print(f"  {name:44} {seconds[name][-1]:6.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    size = sum(map(len, texts))
    print(f"mapside: the obvious job over {size / 2**20:.0f} MiB of text in one process, CPU seconds, "
          f"minimum of {args.runs} runs each")
    base = min(seconds["Pool regex's work (Counter(findall(file)))"])
    for name, values in seconds.items():
        print(f"  {name:44} {min(values):6.2f} s  ratio {min(values) / base:.2f}")


def add_parser(sub) -> None:
    p = sub.add_parser("mapside", help="the obvious job's map side beside its floor, in one process")
    add_corpus_arguments(p, "16M")
    p.add_argument("--runs", type=int, default=5)
    p.set_defaults(func=run)
