"""Chaos: a word count over a couple of hundred MB while workers are SIGKILLed every 2 s and
restarted. Marked slow: CI runs it; `python -m pytest -m "not slow"` leaves it out."""

from __future__ import annotations

import collections
import os
import random
import signal
import time

import pytest
from conftest import WORD, counts_of, finish, free_port, make_corpus, zmqmr_command

SIZE = int(os.environ.get("ZMQMR_CHAOS_MB", "200")) * 1024 * 1024
FILES = 50


def big_corpus(directory) -> collections.Counter:
    """FILES files of SIZE bytes in all, built from one random block with a word per copy that
    differs, and their exact word counts (computed once per block, not per copy)."""
    [block_path] = make_corpus(directory / "block", files=1, lines=8000, seed=11)
    block = open(block_path, encoding="utf-8").read()
    block_counts = collections.Counter(WORD.findall(block))
    copies_per_file = max(1, SIZE // FILES // len(block.encode()))
    expected: collections.Counter = collections.Counter()
    os.makedirs(directory / "input")
    for f in range(FILES):
        with open(directory / "input" / f"part-{f:03d}.txt", "w", encoding="utf-8") as out:
            for copy in range(copies_per_file):
                marker = f"copy{'abcdefghij'[copy % 10]}{'abcdefghij'[f % 10]}"
                out.write(f"{marker}\n{block}\n")
                expected[marker] += 1
        for word, n in block_counts.items():
            expected[word] += n * copies_per_file
    return expected


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_word_count_stays_exact_while_workers_are_killed_every_second(procs, tmp_path):
    expected = big_corpus(tmp_path)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "out"
    rng = random.Random(5)
    names = ["chaos-0", "chaos-1"]

    def worker(name):
        return procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", name, "-q"))

    workers = {name: worker(name) for name in names}
    started = time.monotonic()
    driver = procs.start(zmqmr_command("driver", "--input", tmp_path / "input", "--output", out, "--port", port,
                                       "--heartbeat-interval", 0.2, "--worker-timeout", 2,
                                       "--max-worker-losses", 50, "--split-size", "4M", "-q"))
    kills = 0
    while driver.poll() is None:
        time.sleep(1)
        if driver.poll() is not None:
            break
        name = rng.choice(names)
        workers[name].send_signal(signal.SIGKILL)
        workers[name].wait(timeout=10)
        kills += 1
        workers[name] = worker(name)  # restarted under the same name
    result = finish(driver)
    seconds = time.monotonic() - started
    print(f"\nchaos: {SIZE / 2**20:.0f} MiB, {kills} workers killed, {seconds:.1f} s wall")
    assert result.returncode == 0, result.stderr
    assert kills >= 3
    assert counts_of(out) == dict(expected)
