"""What a user sees: counters, failure reports while the job runs, progress lines and logs."""

from __future__ import annotations

import json
import os
import re
import textwrap

import pytest
from conftest import counts_of, free_port, make_corpus, sequential_wordcount, wait_for, zmqmr_command

from zmqmr import counters
from zmqmr.errors import UserCodeError
from zmqmr.protocol import CounterValue


def write_job(tmp_path, source: str, name: str = "job.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


def test_counters_count_only_the_winning_attempt(procs, tmp_path):
    """Map task 0 counts 100 lines, then fails once; its retry counts them again. The total is exact."""
    corpus = make_corpus(tmp_path / "input", files=3, lines=400)
    flag = tmp_path / "failed-once"
    job = write_job(tmp_path, f"""
        import os
        import zmqmr
        seen = 0
        def mapper(path, line):
            global seen
            zmqmr.counters.increment("demo", "lines")
            zmqmr.counters.increment("demo", "characters", len(line))
            if path.endswith("text-00.txt") and not os.path.exists({str(flag)!r}):
                zmqmr.counters.increment("demo", "lines before the failure")
                seen += 1
                if seen == 100:
                    open({str(flag)!r}, "w").close()
                    raise RuntimeError("the first attempt gives up")
            yield len(line), 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    out = tmp_path / "out"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus, "--output", out))
    assert result.returncode == 0, result.stderr
    totals = json.loads((out / "_counters.json").read_text())
    lines = sum(1 for path in corpus for _ in open(path, "rb"))
    characters = sum(len(raw.rstrip(b"\r\n").decode()) for path in corpus for raw in open(path, "rb"))
    assert totals["demo"]["lines"] == lines
    assert totals["demo"]["characters"] == characters
    assert "lines before the failure" not in totals["demo"]  # only the failed attempt counted those
    assert totals["zmqmr"]["failed attempts"] == 1
    assert totals["zmqmr"]["retried attempts"] == 1
    assert totals["zmqmr"]["input records"] == lines
    assert totals["zmqmr"]["input bytes"] == sum(os.path.getsize(p) for p in corpus)


def test_counters_table_and_counters_json_elsewhere(procs, corpus, tmp_path):
    """A word count job with a mapper per line: every word is a map output record."""
    out, elsewhere = tmp_path / "out", tmp_path / "counters.json"
    job = write_job(tmp_path, """
        import re
        def mapper(path, line):
            for word in re.findall(r"[^\\W\\d_]+", line):
                yield word, 1
        def combiner(word, counts):
            yield word, sum(counts)
        reducer = combiner
        """)
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus, "--output", out,
                                     "--counters-json", elsewhere))
    assert result.returncode == 0, result.stderr
    assert not (out / "_counters.json").exists()
    totals = json.loads(elsewhere.read_text())["zmqmr"]
    words = sum(sequential_wordcount(corpus).values())
    assert counts_of(out) == sequential_wordcount(corpus)
    assert totals["map output records"] == words
    assert totals["output records"] == len(counts_of(out))
    assert totals["combine input records"] > totals["combine output records"]
    assert totals["spilled records"] == totals["reduce input records"] < words
    table = result.stderr[result.stderr.index("group  counter"):]
    assert "map output records" in table and f"{words:,}" in table
    assert "input bytes" in table and "lost workers" in table


def test_quiet_prints_no_progress_and_no_table(procs, corpus, tmp_path):
    result = procs.run(zmqmr_command("local", "--workers", 2, "-q", "--input", *corpus, "--output", tmp_path / "o"))
    assert result.returncode == 0
    assert result.stderr == ""


def test_progress_lines_when_not_on_a_terminal(procs, corpus, tmp_path):
    result = procs.run(zmqmr_command("local", "--workers", 2, "--input", *corpus, "--output", tmp_path / "o",
                                     "--mappers", 4))
    assert result.returncode == 0
    assert re.search(r"succeeded: maps 4/4, reduces 1/1, \d workers, [\d.]+ MB/s, elapsed 0:\d\d, ETA 0:00",
                     result.stderr)
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log


def test_failure_is_reported_with_traceback_while_the_job_still_runs(procs, corpus, tmp_path):
    job = write_job(tmp_path, """
        def mapper(path, line):
            if "fox" in line.split() and path.endswith("text-01.txt"):
                raise ValueError("cannot parse " + line[:10])
            yield line, 1
        def reducer(key, values):
            yield key, sum(values)
        """, name="fragile.py")
    result = procs.run(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus,
                                     "--output", tmp_path / "o", "--max-attempts", 3, "--mappers", 4))
    assert result.returncode == 1
    err = result.stderr
    first = err.index("map task 1 attempt")
    final = err.index("zmqmr: job")
    assert first < final  # shown at the first failure, not only when the job gives up
    report = err[first:final]
    assert "failed on worker local-" in report
    assert "ValueError: cannot parse" in report
    assert 'fragile.py", line 4, in mapper' in report
    assert f"{corpus[1]} at byte" in report and "(line " in report
    assert report.count("Traceback") == 1  # later attempts with the same error get one line each
    assert err.count("failed again") == 2


def test_job_that_fails_to_import_on_workers_stops_after_the_retries(procs, corpus, tmp_path):
    job = write_job(tmp_path, """
        import os
        if os.environ.get("ZMQMR_TEST_BREAK_IMPORT"):
            import zmqmr_no_such_module
        def mapper(path, line):
            yield line, 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    port = free_port()
    driver = procs.start(zmqmr_command("driver", "--job", job, "--input", corpus[0], "--output", tmp_path / "o",
                                       "--port", port, "--max-attempts", 2))
    worker = procs.start(zmqmr_command("worker", "--driver", f"tcp://127.0.0.1:{port}"),
                         env_extra={"ZMQMR_TEST_BREAK_IMPORT": "1"})
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 1
    assert "No module named 'zmqmr_no_such_module'" in err
    assert "JobLoadError" in err and "failed 2 times" in err
    worker.communicate(timeout=30)


def test_log_file_with_json_lines(procs, corpus, tmp_path):
    log_file = tmp_path / "job.log"
    result = procs.run(zmqmr_command("local", "--workers", 2, "--input", *corpus, "--output", tmp_path / "o",
                                     "--log-file", log_file, "--log-json", "--mappers", 4))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    events = {(line["process"], line.get("event")) for line in lines}
    assert ("driver", "registered") in events
    assert ("driver", "assigned") in events and ("driver", "finished") in events
    finished = [line for line in lines if line.get("event") == "finished"]
    assert len(finished) == 5 and all(line["seconds"] >= 0 and line["worker"] for line in finished)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


def test_a_bad_log_file_is_a_usage_error(procs, corpus, tmp_path):
    result = procs.run(zmqmr_command("driver", "--input", corpus[0], "--output", tmp_path / "o",
                                     "--log-file", tmp_path / "no" / "such" / "dir.log"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot write the log file" in result.stderr


def test_status_page_serves_the_legacy_task_path(procs, tmp_path):
    import urllib.request

    corpus = make_corpus(tmp_path / "input", files=2, lines=300)
    job = write_job(tmp_path, """
        import time
        def mapper(path, line):
            time.sleep(0.01)
            yield 1, 1
        def reducer(key, values):
            yield key, sum(values)
        """)
    http_port = free_port()
    driver = procs.start(zmqmr_command("local", "--workers", 1, "--job", job, "--input", *corpus,
                                       "--output", tmp_path / "o", "--http-port", http_port))

    def task_zero():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/task/map/0", timeout=2) as reply:
                return json.loads(reply.read())
        except OSError:
            return None

    status = wait_for(task_zero, 30, "the status page")
    assert status["kind"] == "map" and status["index"] == 0
    assert status["state"] in ("READY", "RUNNING", "FINISHED")
    assert driver.wait(timeout=60) == 0


def test_counter_limits_in_user_code():
    counters.start_attempt()
    with pytest.raises(TypeError):
        counters.increment("g", "n", 1.5)
    with pytest.raises(ValueError):
        counters.increment("", "n")
    for i in range(counters.MAX_COUNTERS):
        counters.increment("g", f"n{i}")
    with pytest.raises(UserCodeError, match="distinct counters"):
        counters.increment("g", "one too many")
    counters.start_attempt()
    counters.increment("g", "n", 2)
    assert counters.attempt_counters() == (CounterValue("g", "n", 2),)


def test_counter_totals_put_zmqmrs_group_first():
    values = [CounterValue("app", "b", 1), CounterValue("zmqmr", "z", 2), CounterValue("app", "b", 3),
              CounterValue("aaa", "x", 1)]
    always = {name: 0 for name in counters.ALWAYS_SHOWN}
    assert list(counters.total(values).items()) == [("zmqmr", dict(sorted({**always, "z": 2}.items()))),
                                                    ("aaa", {"x": 1}), ("app", {"b": 4})]


def test_a_task_reports_only_the_counters_it_changed_and_totals_show_the_built_ins_at_zero():
    counters.start_attempt()
    counters.add_framework("input records", 0)
    counters.add_framework("output records", 3)
    assert counters.attempt_counters() == (CounterValue("zmqmr", "output records", 3),)
    totals = counters.total(counters.attempt_counters())["zmqmr"]
    assert totals["output records"] == 3 and totals["input records"] == 0 and totals["input bytes"] == 0


def test_counters_stay_within_what_the_wire_carries():
    counters.start_attempt()
    counters.increment("g", "n", 2**62)
    with pytest.raises(UserCodeError, match="beyond"):
        counters.increment("g", "n", 1)
