"""python -m bench wordcount: zmqmr's word count beside what users would otherwise run.

Every contestant counts the words of the same corpus, as a whole process timed from
start to exit, in turns (A B C ... A B C ...) so that a noisy machine hurts all alike.
Printed: the median wall time of each, MB/s, and the ratios the project's targets name.

Contestants (each skipped, with a note, when its tool is missing):
- zmqmr: `zmqmr-local --workers N` with the built-in word count;
- zmqmr obvious job: a job file with mapper (word, 1) per word, combiner and reducer sum;
- single process: the regex and a Counter;
- Pool(N) same tokenizer: multiprocessing with zmqmr's own exact tokenizer, a count per file, merged;
- Pool(N) regex: the regex, a Counter per file, merged;
- sort | uniq -c: LC_ALL=C tr -cs A-Za-z '\\n' | sort | uniq -c (ASCII words only, so not the same answer);
- Dask bag: a LocalCluster of N single-thread workers;
- mrjob: MRWordFreqCount with -r local, only with --with-mrjob (it takes minutes).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
DEFAULT_SOURCE = os.path.join(os.path.dirname(ROOT), "shared", "data", "gutenberg")
FILE_BYTES = 4 * 1024 * 1024

OBVIOUS_JOB = '''
import re
WORD = re.compile(r"[^\\W\\d_]+")

def mapper(path, line):
    for word in WORD.findall(line):
        yield word, 1

def combiner(word, counts):
    yield word, sum(counts)

reducer = combiner
'''

# Each baseline writes word<TAB>count lines, sorted, to argv[2], like zmqmr's output.
POOL_SAME = '''
import os, sys
from multiprocessing import Pool
from zmqmr.examples.wordcount import WordCounts

def count(path):
    counts = WordCounts()
    with open(path, encoding="utf-8") as f:
        counts.add_text(f.read())
    return dict(counts.items())

if __name__ == "__main__":
    files = [os.path.join(d, n) for d, _, ns in os.walk(sys.argv[1]) for n in sorted(ns)]
    total = {}
    with Pool(int(sys.argv[3])) as pool:
        for counts in pool.imap_unordered(count, files):
            for word, n in counts.items():
                total[word] = total.get(word, 0) + n
    with open(sys.argv[2], "w") as out:
        out.writelines(f"{w}\\t{total[w]}\\n" for w in sorted(total))
'''

POOL_REGEX = '''
import os, re, sys
from collections import Counter
from multiprocessing import Pool
WORD = re.compile(r"[^\\W\\d_]+")

def count(path):
    with open(path, encoding="utf-8") as f:
        return Counter(WORD.findall(f.read()))

if __name__ == "__main__":
    files = [os.path.join(d, n) for d, _, ns in os.walk(sys.argv[1]) for n in sorted(ns)]
    total = Counter()
    with Pool(int(sys.argv[3])) as pool:
        for counts in pool.imap_unordered(count, files):
            total.update(counts)
    with open(sys.argv[2], "w") as out:
        out.writelines(f"{w}\\t{total[w]}\\n" for w in sorted(total))
'''

SINGLE = '''
import os, re, sys
from collections import Counter
WORD = re.compile(r"[^\\W\\d_]+")
total = Counter()
for d, _, names in os.walk(sys.argv[1]):
    for n in sorted(names):
        with open(os.path.join(d, n), encoding="utf-8") as f:
            for line in f:
                total.update(WORD.findall(line))
with open(sys.argv[2], "w") as out:
    out.writelines(f"{w}\\t{total[w]}\\n" for w in sorted(total))
'''

DASK = '''
import os, re, sys
import dask.bag as db
from dask.distributed import Client, LocalCluster
WORD = re.compile(r"[^\\W\\d_]+")
if __name__ == "__main__":
    files = [os.path.join(d, n) for d, _, ns in os.walk(sys.argv[1]) for n in sorted(ns)]
    with LocalCluster(n_workers=int(sys.argv[3]), threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        counts = db.read_text(files).map(WORD.findall).flatten().frequencies().compute()
    with open(sys.argv[2], "w") as out:
        out.writelines(f"{w}\\t{n}\\n" for w, n in sorted(counts))
'''


def build_corpus(source: str, size: int, target: str) -> str:
    """Files of 4 MiB made of the text files under `source`, repeated, `size` bytes in all."""
    stamp = target.rstrip(os.sep) + ".built"  # beside the corpus, not in it
    if os.path.exists(stamp) and open(stamp).read() == f"{os.path.abspath(source)} {size}":
        return target
    texts = [open(os.path.join(d, n), "rb").read() for d, _, ns in os.walk(source) for n in sorted(ns)
             if not n.startswith((".", "_")) and not n.endswith(".md")]
    text = b"".join(t if t.endswith(b"\n") else t + b"\n" for t in texts)
    if not text:
        raise SystemExit(f"no text under {source}")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    stream = _repeat(text)
    for i in range(max(1, size // FILE_BYTES)):
        with open(os.path.join(target, f"part-{i:04d}.txt"), "wb") as f:
            f.write(_take(stream, min(FILE_BYTES, size)))
    with open(stamp, "w") as f:
        f.write(f"{os.path.abspath(source)} {size}")
    return target


def _repeat(text: bytes):
    while True:
        yield text


def _take(stream, n: int) -> bytes:
    """n bytes of the repeated text, cut after a newline so that no word is split between files."""
    out = bytearray()
    while len(out) < n:
        out += next(stream)
    cut = out.rfind(b"\n", 0, n) + 1 or n
    return bytes(out[:cut])


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def contestants(corpus: str, out: str, workers: int, scratch: str, mrjob: bool
                ) -> Dict[str, Optional[List[str]]]:
    def script(name: str, body: str) -> str:
        path = os.path.join(scratch, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(body))
        return path

    py = sys.executable
    zmqmr = [py, "-m", "zmqmr", "local", "--workers", str(workers), "-q", "--force", "--input", corpus]
    runs: Dict[str, Optional[List[str]]] = {
        "zmqmr": zmqmr + ["--output", out + "-zmqmr"],
        "Pool same tokenizer": [py, script("pool_same.py", POOL_SAME), corpus, out + "-pool-same", str(workers)],
        "zmqmr obvious job": zmqmr + ["--output", out + "-obvious", "--job", script("obvious.py", OBVIOUS_JOB)],
        "Pool regex": [py, script("pool_regex.py", POOL_REGEX), corpus, out + "-pool-regex", str(workers)],
        "single process": [py, script("single.py", SINGLE), corpus, out + "-single"],
        "sort | uniq -c": ["bash", "-c", f"cat {corpus}/*.txt | LC_ALL=C tr -cs A-Za-z '\\n' | LC_ALL=C sort "
                                         f"-S 50% | uniq -c > {out}-sort"],
        "Dask bag": None,
        "mrjob": None,
    }
    if _importable("dask.bag") and _importable("distributed"):
        runs["Dask bag"] = [py, script("dask_bag.py", DASK), corpus, out + "-dask", str(workers)]
    if not mrjob:
        del runs["mrjob"]
    elif _importable("mrjob"):
        runs["mrjob"] = [py, "-m", "mrjob.examples.mr_word_freq_count", "-r", "local", "--num-cores",
                         str(workers), "-q", "--output-dir", out + "-mrjob", corpus]
    return runs


def _importable(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def same_counts(a_dir_or_file: str, b_file: str) -> bool:
    """zmqmr's part files and a baseline's sorted file hold the same (word, count) lines."""
    def lines(path):
        if os.path.isdir(path):
            parts = [os.path.join(path, n) for n in os.listdir(path) if n.startswith("part-")]
            return sorted(line for part in parts for line in open(part))
        return sorted(open(path))
    return lines(a_dir_or_file) == lines(b_file)


def compile_package() -> None:
    """Write zmqmr's bytecode, as installing it does: a run from the source tree would otherwise
    compile every module in every process (this machine sets PYTHONDONTWRITEBYTECODE)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "zmqmr")], check=True)


def add_corpus_arguments(parser, size: str) -> None:
    """--corpus, --size and --build-dir, as every benchmark that builds a corpus takes them."""
    parser.add_argument("--corpus", help=f"a folder of text to build the corpus from (default: {DEFAULT_SOURCE})")
    parser.add_argument("--size", default=size, help="corpus size, e.g. 64M, 256M, 1G (files of 4 MiB)")
    parser.add_argument("--build-dir", help="where to build the corpus (default: a folder in the temp dir, reused)")


def corpus_of(args) -> str:
    """The corpus that `add_corpus_arguments`' options ask for, built (or reused) now."""
    return build_corpus(args.corpus or DEFAULT_SOURCE, parse_size(args.size),
                        args.build_dir or os.path.join(tempfile.gettempdir(), f"zmqmr-bench-corpus-{args.size}"))


def run(args) -> None:
    compile_package()
    corpus = corpus_of(args)
    total = sum(os.path.getsize(os.path.join(corpus, n)) for n in os.listdir(corpus) if not n.startswith("."))
    scratch = tempfile.mkdtemp(prefix="bench-wordcount-")
    out = os.path.join(scratch, "out")
    try:
        runs = contestants(corpus, out, args.workers, scratch, args.with_mrjob)
        chosen = [name for name in runs if not args.only or name in args.only]
        times: Dict[str, List[float]] = {name: [] for name in chosen}
        for round_ in range(args.runs):
            for name in chosen:
                argv = runs[name]
                if argv is None:
                    continue
                started = time.monotonic()
                done = subprocess.run(argv, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True)
                elapsed = time.monotonic() - started
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
                times[name].append(elapsed)
                print(f"  round {round_ + 1}: {name:22} {elapsed:7.2f} s", file=sys.stderr)
        medians = {name: statistics.median(t) for name, t in times.items() if t}
        print(f"wordcount: {total / 2**20:.0f} MiB in {len(os.listdir(corpus))} files, {args.workers} "
              f"workers, median of {args.runs} runs each, on {os.cpu_count()} cores, Python "
              f"{sys.version.split()[0]}")
        print(f"  {'contestant':22} {'wall s':>8} {'MB/s':>7}")
        for name in chosen:
            if name in medians:
                print(f"  {name:22} {medians[name]:8.2f} {total / 1e6 / medians[name]:7.1f}")
            else:
                print(f"  {name:22} {'skipped: not installed':>16}")
        print("  ratios (target in brackets):")
        for a, b, target in (("zmqmr", "Pool same tokenizer", "<= 1.05"), ("zmqmr", "Dask bag", "<= 0.2"),
                             ("zmqmr obvious job", "Pool regex", "<= 1.3"), ("zmqmr", "single process", ""),
                             ("zmqmr", "sort | uniq -c", ""), ("zmqmr", "mrjob", "")):
            if a in medians and b in medians:
                print(f"    {a} / {b}: {medians[a] / medians[b]:.2f}" + (f"  [{target}]" if target else ""))
        checks = [("zmqmr", out + "-zmqmr", out + "-pool-same"), ("zmqmr obvious job", out + "-obvious",
                                                                    out + "-pool-regex")]
        for name, ours, theirs in checks:
            if os.path.exists(ours) and os.path.exists(theirs):
                print(f"  {name} output equals the baseline's: {same_counts(ours, theirs)}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_parser(sub) -> None:
    p = sub.add_parser("wordcount", help="word count against Pool, sort | uniq -c, Dask bag and mrjob")
    add_corpus_arguments(p, "256M")
    p.add_argument("--runs", type=int, default=3, help="runs of each contestant (median printed)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these contestants")
    p.add_argument("--with-mrjob", action="store_true", help="also run mrjob (if installed; slow)")
    p.set_defaults(func=run)
