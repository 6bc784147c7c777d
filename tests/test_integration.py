"""End-to-end runs with real driver and worker processes on random free ports."""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import textwrap

import msgpack
import pytest
import zmq

from zmqmr import protocol, status

from conftest import (alive, child_pids, counts_of, equal_sized, finish, free_port, make_corpus, read_output,
                      sequential_wordcount, wait_for, zmqmr_command)

FAST = ["--heartbeat-interval", "0.2", "--worker-timeout", "2"]


def write_job(tmp_path, source: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def sleepy_job(tmp_path, seconds: float) -> str:
    """A job whose mapper sleeps on every line: time to act while it runs."""
    return write_job(tmp_path, f"""
        import time
        def mapper(path, line):
            time.sleep({seconds})
            yield line, 1
        def reducer(key, values):
            yield key, sum(values)
        """)


def test_local_word_count_equals_sequential_count(procs, corpus, tmp_path):
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--reducers", 3, "--input", *corpus,
                                     "--output", out))
    assert result.returncode == 0, result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    assert sorted(os.listdir(out)) == ["_SUCCESS", "_counters.json", "part-00000", "part-00001", "part-00002"]


def test_seed_command_line_with_separate_driver_and_workers(procs, corpus, tmp_path):
    port = free_port()
    out, work = tmp_path / "out", tmp_path / "work"
    # Workers may start before their driver; they wait for it. Starting them first also makes
    # sure both take part, so both must be told to exit. The job's maps take a second or so
    # (2 ms a line), longer than a worker takes to reconnect once the driver listens.
    workers = [procs.start(zmqmr_command("worker", "--driver", f"tcp://localhost:{port}")) for _ in range(2)]
    wait_for(lambda: all(child_pids(w.pid) for w in workers), 30, "workers to start")
    job = write_job(tmp_path, SLOW_WORDS)
    driver = procs.start(zmqmr_command("driver", "--mappers", 4, "--reducers", 2, "--port", port, "--job", job,
                                       "--i_path", corpus[0], corpus[1], "--m_path", work, "--o_path", out))
    result = finish(driver)
    assert result.returncode == 0, result.stderr
    assert counts_of(out) == sequential_wordcount(corpus[:2])
    for worker in workers:
        assert finish(worker, timeout=15).returncode == 0
    assert os.listdir(work) == []  # intermediate files are gone


def test_worker_killed_mid_task_and_the_answer_is_still_exact(procs, corpus, tmp_path):
    """The first attempt of map task 0 stalls; we SIGKILL its worker; another worker redoes it."""
    flag = tmp_path / "stalled-once"
    job = write_job(tmp_path, f"""
        import os, re, time
        WORD = re.compile(r"[^\\W\\d_]+")
        def mapper(path, line):
            if not os.path.exists({str(flag)!r}):
                with open({str(flag)!r}, "w") as f:
                    f.write(str(os.getppid()))   # the worker process that runs this task
                time.sleep(60)
            for word in WORD.findall(line):
                yield word, 1
        def reducer(word, counts):
            yield word, sum(counts)
        """)
    out = tmp_path / "out"
    port = free_port()
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--port", port, *FAST))
    endpoint = f"tcp://127.0.0.1:{port}"
    workers = [procs.start(zmqmr_command("worker", "--driver", endpoint)) for _ in range(2)]
    victim = int(wait_for(lambda: flag.exists() and flag.read_text(), 30, "the stalled attempt"))
    assert victim in [w.pid for w in workers]
    task_process = child_pids(victim)
    os.kill(victim, signal.SIGKILL)
    result = finish(driver)
    assert result.returncode == 0, result.stderr
    assert "lost" in result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    for pid in task_process:  # the killed worker's task process did not outlive it
        wait_for(lambda: not alive(pid), 10, f"task process {pid} to die")


def test_mapper_that_raises_fails_the_job_with_traceback_and_location(procs, corpus, tmp_path):
    job = write_job(tmp_path, """
        def mapper(path, line):
            for word in line.split():
                if word == "fox":
                    ratio = 1 / 0
                yield word, 1

        def reducer(word, counts):
            yield word, sum(counts)
        """, name="badjob.py")
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", corpus[0],
                                     "--output", out, "--max-attempts", 2))
    assert result.returncode == 1
    err = result.stderr
    assert "map task 0 failed 2 times" in err
    assert "ZeroDivisionError: division by zero" in err
    assert 'badjob.py", line 5, in mapper' in err
    assert "ratio = 1 / 0" in err
    assert f"{corpus[0]} at byte" in err and "(line " in err
    assert "zmqmr/" not in err.split("Traceback")[1]  # zmqmr's own frames are trimmed
    assert not out.exists() or os.listdir(out) == []


def test_task_that_kills_its_process_fails_after_max_worker_losses(procs, corpus, tmp_path):
    job = write_job(tmp_path, """
        import os
        def mapper(path, line):
            os._exit(3)
        def reducer(key, values):
            return []
        """)
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", corpus[0],
                                     "--output", out, "--max-worker-losses", 3))
    assert result.returncode == 1
    assert "lost its worker 3 times (--max-worker-losses 3)" in result.stderr
    assert "exited with status 3" in result.stderr


def test_worker_without_a_driver_exits_by_itself(procs):
    port = free_port()  # nothing listens here: the job is over and its driver gone
    result = procs.run(zmqmr_command("worker", "--driver", f"tcp://127.0.0.1:{port}", "--driver-timeout", 1.5),
                       timeout=20)
    assert result.returncode == 1
    assert "no word from the driver" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_started_after_the_job_ended_exits(procs, corpus, tmp_path):
    port = free_port()
    out = tmp_path / "out"
    driver = procs.start(zmqmr_command("driver", "--input", corpus[0], "--output", out, "--port", port))
    procs.start(zmqmr_command("worker", "--driver", f"tcp://127.0.0.1:{port}"))
    assert finish(driver).returncode == 0
    late = procs.run(zmqmr_command("worker", "--driver", f"tcp://127.0.0.1:{port}", "--driver-timeout", 1),
                     timeout=20)
    assert late.returncode == 1


def test_garbage_on_the_driver_port_changes_nothing(procs, corpus, tmp_path):
    port = free_port()
    out = tmp_path / "out"
    gate = tmp_path / "both-workers-registered"
    # The maps wait until both workers are registered: a job this small could otherwise end before
    # the second worker's hello arrives, and a worker the driver never knew is never told to exit.
    job = write_job(tmp_path, f"""
        import os, re, time
        def mapper(path, line):
            deadline = time.monotonic() + 60
            while not os.path.exists({str(gate)!r}) and time.monotonic() < deadline:
                time.sleep(0.02)
            for word in re.findall(r"[^\\W\\d_]+", line):
                yield word, 1
        def reducer(word, counts):
            yield word, sum(counts)
        """)
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--port", port, "--mappers", 8))
    endpoint = f"tcp://127.0.0.1:{port}"
    context = zmq.Context()
    junk = context.socket(zmq.DEALER)
    junk.linger = 0
    junk.connect(endpoint)
    bad_messages = [
        [b"\xc1\xff\x00 not msgpack"],
        [b"two", b"frames"],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"v": 99, "t": "hello", "worker": "x", "inc": "y"})],
        [msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "done", "worker": "ghost", "inc": "1", "attempt": 1})],
        [msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "request", "worker": 5, "inc": None})],
        [msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "failed", "worker": "w", "inc": "i", "attempt": -1,
                        "error": {}})],
        [msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "batch", "worker": "ghost", "inc": "1",
                        "items": [{"t": "done", "attempt": "x"}, {"t": "hello"}, 7]})],
        [os.urandom(3000)],
    ]
    for message in bad_messages:
        junk.send_multipart(message)
    with wait_for(lambda: connect(port), 30, "the driver to listen") as raw:  # not even ZMTP
        raw.sendall(os.urandom(4096))
    workers = [procs.start(zmqmr_command("worker", "--driver", endpoint)) for _ in range(2)]
    for _ in range(50):
        for message in bad_messages:
            junk.send_multipart(message)
    wait_for(lambda: len(status.query(endpoint, "workers", timeout=1)) == 2, 30,
             "both workers to register")
    gate.touch()
    result = finish(driver)
    junk.close()
    context.term()
    assert result.returncode == 0, result.stderr
    assert "dropped" in result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    for worker in workers:
        assert finish(worker, timeout=15).returncode == 0


def connect(port: int):
    try:
        return socket.create_connection(("127.0.0.1", port))
    except ConnectionRefusedError:
        return None


def test_status_queries_while_the_job_runs(procs, tmp_path):
    corpus = make_corpus(tmp_path / "input", files=2, lines=1000)
    job = write_job(tmp_path, """
        import time
        def mapper(path, line):
            time.sleep(0.002)
            yield "lines", 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    port = free_port()
    out = tmp_path / "out"
    endpoint = f"tcp://127.0.0.1:{port}"
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--port", port))
    worker = procs.start(zmqmr_command("worker", "--driver", endpoint))

    def running_task():
        status = procs.run(zmqmr_command("status", endpoint, "--task", "map", 0))
        return "RUNNING" in status.stdout and status

    status = wait_for(running_task, 30, "map task 0 to be RUNNING", interval=0.2)
    assert status.returncode == 0
    job_status = procs.run(zmqmr_command("status", endpoint))
    assert job_status.returncode == 0
    assert "maps" in job_status.stdout and "local" not in job_status.stdout
    assert "BLOCKED 1" in job_status.stdout  # the reduce task waits for the maps
    assert finish(driver).returncode == 0
    assert finish(worker).returncode == 0
    assert read_output(out) == {"lines": str(2 * 1001)}
    gone = procs.run(zmqmr_command("status", endpoint, "--timeout", 0.5))
    assert gone.returncode == 1 and "no answer" in gone.stderr


def test_local_cleans_up_every_process_on_ctrl_c(procs, corpus, tmp_path):
    job = sleepy_job(tmp_path, 1)
    out = tmp_path / "out"
    local = procs.start(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus,
                                      "--output", out))
    workers = wait_for(lambda: len(child_pids(local.pid)) == 2 and child_pids(local.pid), 30, "two workers")
    task_processes = wait_for(lambda: sum((child_pids(w) for w in workers), []), 30, "task processes")
    local.send_signal(signal.SIGINT)
    result = finish(local, timeout=30)
    assert result.returncode == 130
    for pid in workers + task_processes:
        wait_for(lambda: not alive(pid), 10, f"process {pid} to exit")
    assert not out.exists() or os.listdir(out) == []


def test_gzip_and_directory_input(procs, tmp_path):
    import gzip
    import shutil

    paths = make_corpus(tmp_path / "books" / "nested", files=2, lines=300)
    with open(paths[0], "rb") as src, gzip.open(paths[0] + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(paths[0])
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--input", tmp_path / "books", "--output", out))
    assert result.returncode == 0, result.stderr
    expected = sequential_wordcount(paths[1:])
    with gzip.open(paths[0] + ".gz", "rb") as f:
        for word, n in sequential_wordcount_lines(f).items():
            expected[word] = expected.get(word, 0) + n
    assert counts_of(out) == expected


def sequential_wordcount_lines(stream):
    from collections import Counter

    from conftest import WORD
    counts = Counter()
    for raw in stream:
        counts.update(WORD.findall(raw.decode("utf-8")))
    return counts


def test_cpu_bound_mapper_does_not_starve_heartbeats(procs, tmp_path):
    """A mapper that spins for 4 s, with a 1.5 s worker timeout: the worker is never lost."""
    job = write_job(tmp_path, """
        import time
        def mapper(path, line):
            end = time.time() + 4
            while time.time() < end:
                pass
            yield "spun", 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    source = tmp_path / "one-line.txt"
    source.write_text("x\n")
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 1, "--job", job, "--input", source, "--output", out,
                                     "--heartbeat-interval", 0.2, "--worker-timeout", 1.5))
    assert result.returncode == 0, result.stderr
    assert " lost: " not in result.stderr
    assert json.loads((out / "_counters.json").read_text())["zmqmr"]["lost workers"] == 0
    assert read_output(out) == {"spun": "1"}


def test_worker_restarted_under_the_same_name_takes_over_at_once(procs, corpus, tmp_path):
    """A restarted worker says hello with a new incarnation: its old tasks are re-queued without
    waiting for the worker timeout (set to a minute here)."""
    flag = tmp_path / "stalled-once"
    job = write_job(tmp_path, f"""
        import os, re, time
        def mapper(path, line):
            if not os.path.exists({str(flag)!r}):
                open({str(flag)!r}, "w").close()
                time.sleep(60)
            yield from ((w, 1) for w in re.findall(r"[^\\W\\d_]+", line))
        def reducer(word, counts):
            yield word, sum(counts)
        """)
    port = free_port()
    out = tmp_path / "out"
    endpoint = f"tcp://127.0.0.1:{port}"
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--port", port, "--worker-timeout", 60))
    first = procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "alpha"))
    wait_for(flag.exists, 30, "the stalled attempt")
    first.kill()
    second = procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "alpha"))
    result = finish(driver, timeout=40)
    assert result.returncode == 0, result.stderr
    assert "worker alpha lost: it restarted as a new process" in result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    assert finish(second).returncode == 0


def test_interrupted_driver_tells_its_workers_to_leave(procs, corpus, tmp_path):
    job = sleepy_job(tmp_path, 0.5)
    port = free_port()
    out = tmp_path / "out"
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--port", port))
    worker = procs.start(zmqmr_command("worker", "--driver", f"tcp://127.0.0.1:{port}"))
    wait_for(lambda: status.query(f"tcp://127.0.0.1:{port}", "workers", timeout=1), 30, "the worker to register")
    driver.send_signal(signal.SIGINT)
    assert finish(driver, timeout=20).returncode == 130
    result = finish(worker, timeout=10)  # told to leave: no waiting for --driver-timeout
    assert result.returncode == 1, result.stderr  # the job did not succeed
    assert "the driver was interrupted" in result.stderr
    assert not out.exists()


def needle_in_haystack(tmp_path):
    """A job that hangs on line 50 of its input ("the needle"); returns the job, the input and the line's offset."""
    job = write_job(tmp_path, """
        def mapper(path, line):
            if "needle" in line:
                while True:
                    pass
            yield "lines", 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    source = tmp_path / "hay.txt"
    lines = [f"hay {i}\n" for i in range(100)]
    lines[49] = "the needle\n"
    source.write_text("".join(lines))
    return job, source, len("".join(lines[:49]).encode())


def test_hung_mapper_is_cancelled_and_the_error_names_its_record(procs, tmp_path):
    job, source, offset = needle_in_haystack(tmp_path)
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", source, "--output",
                                     tmp_path / "out", "--task-timeout", 1.5, "--max-attempts", 2,
                                     "--heartbeat-interval", 0.2), timeout=60)
    assert result.returncode == 1
    assert "map task 0 failed 2 times" in result.stderr
    assert "TaskTimeout" in result.stderr
    assert f"{source} at byte {offset} (line 50)" in result.stderr


def test_hung_record_is_skipped_and_listed_with_skip_bad_records(procs, tmp_path):
    job, source, offset = needle_in_haystack(tmp_path)
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", source, "--output", out,
                                     "--task-timeout", 1.5, "--skip-bad-records", 1, "--heartbeat-interval", 0.2),
                       timeout=60)
    assert result.returncode == 0, result.stderr
    assert read_output(out) == {"lines": "99"}
    [bad] = [json.loads(line) for line in (out / "_bad_records" / "bad-records.jsonl").read_text().splitlines()]
    assert bad["task"] == "map 0"
    assert bad["location"].startswith(f"{source} at byte {offset} (line 50)")
    assert "hung" in bad["message"]
    assert json.loads((out / "_counters.json").read_text())["zmqmr"]["bad records skipped"] == 1


def test_poison_records_are_skipped_up_to_the_limit(procs, tmp_path):
    job = write_job(tmp_path, """
        def mapper(path, line):
            if line.startswith("POISON"):
                raise ValueError("cannot parse " + line)
            yield "good", 1
        def reducer(key, values):
            yield key, sum(values)
        """, name="parse.py")
    source = tmp_path / "records.txt"
    poison = (123456, 500000, 999999)  # 3 records in a million
    lines = [f"record {i}\n" for i in range(1_000_000)]
    for i in poison:
        lines[i] = f"POISON {i}\n"
    source.write_text("".join(lines))
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", source, "--output", out,
                                     "--mappers", 3, "--skip-bad-records", 5), timeout=120)
    assert result.returncode == 0, result.stderr
    assert read_output(out) == {"good": str(1_000_000 - 3)}
    listed = [json.loads(line) for line in (out / "_bad_records" / "bad-records.jsonl").read_text().splitlines()]
    assert sorted(b["message"] for b in listed) == sorted(
        f"mapper raised ValueError: cannot parse POISON {i}" for i in poison)
    offsets = {i: len("".join(lines[:i]).encode()) for i in poison}
    for record in listed:
        i = int(record["message"].rsplit(" ", 1)[1])
        assert record["location"].startswith(f"{source} at byte {offsets[i]}"), record["location"]
        assert 'parse.py", line 4, in mapper' in record["traceback"]

    too_many = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", source,
                                       "--output", tmp_path / "out2", "--mappers", 3, "--skip-bad-records", 2))
    assert too_many.returncode == 1
    assert "3 bad records, more than --skip-bad-records 2; the first: " in too_many.stderr
    assert "POISON" in too_many.stderr
    assert not (tmp_path / "out2").exists()


def test_speculation_backs_up_a_straggling_worker(procs, tmp_path):
    """Worker "slow" maps 20x slower. Idle "fast" gets backups of its tasks, which win."""
    corpus = make_corpus(tmp_path / "input", files=6, lines=100)
    job = write_job(tmp_path, """
        import os, re, time
        DELAY = 0.02 if os.environ.get("ZMQMR_TEST_SLOW") else 0.001
        def mapper(path, line):
            time.sleep(DELAY)
            for word in re.findall(r"[^\\W\\d_]+", line):
                yield word, 1
        def reducer(word, counts):
            yield word, sum(counts)
        """)

    def run(*extra):
        port = free_port()
        out = tmp_path / f"out{port}"
        endpoint = f"tcp://127.0.0.1:{port}"
        workers = [procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "slow"),
                               env_extra={"ZMQMR_TEST_SLOW": "1"}),
                   procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "fast"))]
        wait_for(lambda: all(child_pids(w.pid) for w in workers), 30, "workers to start")
        driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                           "--port", port, "--mappers", 6, "--speculation-min-seconds", 0.5, *extra))
        result = finish(driver)
        assert result.returncode == 0, result.stderr
        assert counts_of(out) == sequential_wordcount(corpus)
        return result, json.loads((out / "_counters.json").read_text())["zmqmr"]

    with_backups, counted = run()
    assert counted["speculative attempts"] >= 1
    assert "finished first; cancelling attempt" in with_backups.stderr and " on slow" in with_backups.stderr
    assert "starting backup attempt" in with_backups.stderr
    without, counted = run("--no-speculation")
    assert counted["speculative attempts"] == 0 and "backup" not in without.stderr


SLOW_WORDS = """
    import re, time
    def mapper(path, line):
        time.sleep(0.002)
        for word in re.findall(r"[^\\W\\d_]+", line):
            yield word, 1
    def reducer(word, counts):
        yield word, sum(counts)
    """


def test_a_worker_stopped_early_leaves_the_shared_map_output_alone(procs, tmp_path):
    corpus = make_corpus(tmp_path / "input", files=6, lines=300)
    job = write_job(tmp_path, SLOW_WORDS)
    port, out, work = free_port(), tmp_path / "out", tmp_path / "work"
    endpoint = f"tcp://127.0.0.1:{port}"
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--work-dir", work, "--port", port, "--mappers", 6, *FAST))
    quitter = procs.start(zmqmr_command("worker", "--driver", endpoint))
    stayer = procs.start(zmqmr_command("worker", "--driver", endpoint))
    wait_for(lambda: sum(1 for _ in work.glob("*/map-*/part-*.mpk")) >= 2, 60, "some finished maps")
    quitter.send_signal(signal.SIGTERM)
    assert finish(quitter).returncode == 130
    result = finish(driver)
    assert result.returncode == 0, result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    assert finish(stayer).returncode == 0


def test_local_gives_up_when_every_worker_is_gone(procs, tmp_path):
    corpus = make_corpus(tmp_path / "input", files=4, lines=2000)
    job = write_job(tmp_path, SLOW_WORDS)
    local = procs.start(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus,
                                      "--output", tmp_path / "out"))
    workers = wait_for(lambda: len(child_pids(local.pid)) == 2 and child_pids(local.pid), 30, "two workers")
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    result = finish(local, timeout=30)
    assert result.returncode == 1
    assert "every local worker has exited (local-0 was killed by SIGKILL" in result.stderr


def test_two_live_workers_with_one_name_do_not_break_the_job(procs, tmp_path):
    corpus = make_corpus(tmp_path / "input", files=6, lines=300)
    job = write_job(tmp_path, SLOW_WORDS)
    port, out = free_port(), tmp_path / "out"
    endpoint = f"tcp://127.0.0.1:{port}"
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", *corpus, "--output", out,
                                       "--port", port))
    first = procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "twin"))
    wait_for(lambda: status.query(endpoint, "workers", timeout=1), 30, "the first twin to register")
    second = procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "twin"))
    result = finish(driver)
    assert result.returncode == 0, result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    ends = [finish(first), finish(second)]
    refused = [e for e in ends if e.returncode == 1]
    assert len(refused) == 1 and "give each worker its own --name" in refused[0].stderr


@pytest.mark.parametrize("stop", ["kill", "ctrl-c"])
def test_a_driver_killed_halfway_resumes_without_redoing_finished_maps(procs, tmp_path, stop):
    """SIGKILL the driver after half the maps finished (or Ctrl-C it: it tells its workers to leave, and
    they must leave the finished maps' output behind); start it again with the same command.
    Each map attempt leaves a marker file, as a user would count them."""
    inputs = tmp_path / "input"
    corpus = make_corpus(inputs, files=8, lines=150)
    for path in corpus:  # a first line that tells the mapper a new attempt of this file began
        text = open(path).read()
        open(path, "w").write(f"FIRST {os.path.basename(path)}\n" + text)
    equal_sized(corpus)  # with --mappers 8, map task k reads exactly file k
    markers = tmp_path / "markers"
    markers.mkdir()
    job = write_job(tmp_path, f"""
        import os, re, time, uuid
        def mapper(path, line):
            if line.startswith("FIRST "):
                open(os.path.join({str(markers)!r}, line.split()[1] + "." + uuid.uuid4().hex), "w").close()
            time.sleep(0.004)
            for word in re.findall(r"[^\\W\\d_]+", line):
                yield word, 1
        def reducer(word, counts):
            yield word, sum(counts)
        """)
    port, out, work = free_port(), tmp_path / "out", tmp_path / "work"
    endpoint = f"tcp://127.0.0.1:{port}"
    command = zmqmr_command("driver", "--job", job, "--input", inputs, "--output", out, "--work-dir", work,
                            "--port", port, "--reducers", 2, "--mappers", 8)
    driver = procs.start(command)
    workers = [procs.start(zmqmr_command("worker", "--driver", endpoint, "--driver-timeout", 60)) for _ in range(2)]
    journal = work / "journal.zmqmr"

    def finished_maps():
        if not journal.exists():
            return []
        return [json.loads(line) for line in journal.read_text().splitlines()
                if '"finished"' in line and '"map"' in line]

    wait_for(lambda: len(finished_maps()) >= 4, 60, "half the maps to finish")
    if stop == "kill":
        driver.kill()
        driver.wait(timeout=10)
    else:
        driver.send_signal(signal.SIGINT)
        assert finish(driver).returncode == 130
        for worker in workers:
            assert finish(worker).returncode == 1  # told to leave: the job did not end
        workers = [procs.start(zmqmr_command("worker", "--driver", endpoint, "--driver-timeout", 60))
                   for _ in range(2)]
    finished_files = {corpus[m["index"]] for m in finished_maps()}
    restarted = procs.start(command)
    result = finish(restarted)
    assert result.returncode == 0, result.stderr
    assert "resumed job" in result.stderr and "kept" in result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    attempts = {}
    for name in os.listdir(markers):
        base = name.rsplit(".", 1)[0]
        attempts[base] = attempts.get(base, 0) + 1
    for path in finished_files:
        assert attempts[os.path.basename(path)] == 1, f"{path} was mapped again after the restart"
    assert sum(attempts.values()) < 2 * len(corpus)
    assert not journal.exists()  # the job is over: nothing to resume
    for worker in workers:
        assert finish(worker).returncode == 0


def test_a_restarted_driver_adopts_the_map_a_worker_was_running(procs, tmp_path):
    inputs = tmp_path / "input"
    corpus = make_corpus(inputs, files=3, lines=100)
    markers = tmp_path / "markers"
    markers.mkdir()
    job = write_job(tmp_path, f"""
        import os, re, time, uuid
        def mapper(path, line):
            if line == "SLOW":
                open(os.path.join({str(markers)!r}, uuid.uuid4().hex), "w").close()
                time.sleep(6)
            for word in re.findall(r"[^\\W\\d_]+", line):
                yield word, 1
        def reducer(word, counts):
            yield word, sum(counts)
        """)
    with open(corpus[0], "a") as f:
        f.write("\nSLOW\n")
    port, out, work = free_port(), tmp_path / "out", tmp_path / "work"
    command = zmqmr_command("driver", "--job", job, "--input", inputs, "--output", out, "--work-dir", work,
                            "--port", port, "--heartbeat-interval", 0.2)
    driver = procs.start(command)
    worker = procs.start(zmqmr_command("worker", "--driver", f"tcp://127.0.0.1:{port}", "--driver-timeout", 60))
    wait_for(lambda: os.listdir(markers), 30, "the slow map to start")
    driver.kill()
    driver.wait(timeout=10)
    result = finish(procs.start(command))
    assert result.returncode == 0, result.stderr
    assert "adopted attempt" in result.stderr
    assert len(os.listdir(markers)) == 1  # the slow map ran once, across both drivers
    assert counts_of(out) == sequential_wordcount(corpus)
    assert finish(worker).returncode == 0


def test_attempts_waiting_in_a_batch_do_not_run_out_their_timeout(procs, tmp_path):
    """Short tasks go to the task process in batches; one that waits behind a slow one has not
    started, so --task-timeout must not count that wait (every attempt here runs in 1.5 s < 2 s)."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    for i in range(40):
        (inputs / f"f{i:02d}.txt").write_text(f"line {i}\n")
    job = write_job(tmp_path, """
        import time
        def mapper(key, value):
            if key.endswith(("f20.txt", "f21.txt", "f22.txt")):
                time.sleep(1.5)
            yield value, 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    result = procs.run(zmqmr_command("local", "--workers", 1, "--job", job, "--input", inputs,
                                     "--output", tmp_path / "out", "--mappers", 40, "--task-timeout", 2,
                                     "--max-attempts", 1, "-q"))
    assert result.returncode == 0, result.stderr
    assert counts_of(tmp_path / "out") == {f"line {i}": 1 for i in range(40)}


def test_staging_moves_input_and_output_through_the_driver_and_the_answer_is_exact(procs, corpus, tmp_path):
    """--staging always: every split is read from the driver over the socket (cut mid-line), every
    reduce output is sent back to it; the answer is the same."""
    out, log = tmp_path / "out", tmp_path / "driver.log"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--reducers", 3, "--mappers", 7, "--staging", "always",
                                     "--input", *corpus, "--output", out, "--log-file", log, "-q"))
    assert result.returncode == 0, result.stderr
    assert counts_of(out) == sequential_wordcount(corpus)
    staged = [line for line in log.read_text().splitlines() if "staging: sent" in line]
    assert staged, log.read_text()
    sent, received = [int(w) for w in staged[0].split() if w.isdigit()][:2]
    assert sent >= sum(os.path.getsize(p) for p in corpus)
    assert received == sum(os.path.getsize(out / n) for n in os.listdir(out) if n.startswith("part-"))


def test_tasks_of_a_few_tens_of_milliseconds_never_lose_their_batch(procs, corpus, tmp_path):
    """Tasks short enough to be batched but long enough that the task process sends each report
    early: the end of one batch must not be taken for the end of the next (it once was, and the
    driver re-queued the same attempts forever as "never received")."""
    job = write_job(tmp_path, """
        import time
        from collections import Counter
        def map_split(path, lines):
            time.sleep(0.03)
            return Counter(w for line in lines for w in line.split()).items()
        def reducer(key, values):
            yield key, sum(values)
        """)
    out, log = tmp_path / "out", tmp_path / "driver.log"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus, "--output", out,
                                     "--mappers", 40, "-q", "--log-file", log), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "never received" not in log.read_text()
    expected = collections.Counter(w for p in corpus for w in open(p, encoding="utf-8").read().split())
    assert counts_of(out) == dict(expected)
