"""The command lines: user mistakes give one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import ROOT, counts_of, sequential_wordcount, zmqmr_command

from zmqmr import __version__
from zmqmr.cli import driver_main, local_main, status_main, worker_main


def one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def run_main(main, argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse exits by itself for its own errors
        return exc.code


@pytest.mark.parametrize("main", [driver_main, local_main])
def test_missing_input_is_a_usage_error(main, capsys, tmp_path):
    code = run_main(main, ["--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "out")])
    assert "input not found" in one_line_error(capsys, code)


def test_missing_required_option(capsys, tmp_path):
    code = run_main(driver_main, ["--output", str(tmp_path / "out")])
    assert "--input" in one_line_error(capsys, code)


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_numbers_are_refused(capsys, tmp_path, value):
    code = run_main(driver_main, ["--input", "x", "--output", "y", "--reducers", value])
    assert "--reducers" in one_line_error(capsys, code)


def test_existing_output_is_refused_unless_forced(capsys, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000").write_text("old\t1\n")
    (out / "_SUCCESS").write_text("")
    code = run_main(local_main, ["--workers", "1", "--input", corpus[0], "--output", str(out)])
    message = one_line_error(capsys, code)
    assert "exists and is not empty" in message and "--force" in message
    assert (out / "part-00000").read_text() == "old\t1\n"  # untouched

    (out / "notes.txt").write_text("mine")
    code = run_main(local_main, ["--workers", "1", "-q", "--force", "--input", corpus[0], "--output", str(out)])
    assert code == 0
    assert counts_of(out) == sequential_wordcount(corpus[:1])
    assert (out / "notes.txt").read_text() == "mine"  # --force only replaces zmqmr's own files


def test_output_inside_the_input_directory_is_refused(capsys, corpus, tmp_path):
    input_dir = os.path.dirname(corpus[0])
    code = run_main(driver_main, ["--input", corpus[0], "--output", input_dir, "--force"])
    assert "contains the input file" in one_line_error(capsys, code)


@pytest.mark.parametrize("source, expected", [
    ("def mapper(k, v):\n    yield k,\n  bad indent\n", "syntax error"),
    ("def mapper(k, v):\n    yield k, v\n", "defines no reducer"),
    ("import no_such_module_zmqmr\n", "No module named 'no_such_module_zmqmr'"),
    ("mapper = 3\ndef reducer(k, v):\n    return []\n", "mapper is not a function"),
])
def test_bad_job_file(capsys, corpus, tmp_path, source, expected):
    job = tmp_path / "job.py"
    job.write_text(source)
    code = run_main(driver_main, ["--job", str(job), "--input", corpus[0], "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    assert expected in captured.err
    assert "zmqmr/" not in captured.err  # the user's traceback, not ours
    assert not (tmp_path / "out").exists()


def test_unknown_job_module(capsys, corpus, tmp_path):
    code = run_main(driver_main, ["--job", "no.such.job", "--input", corpus[0], "--output", str(tmp_path / "o")])
    assert "job module no.such.job not found" in one_line_error(capsys, code)


def test_bad_encoding_name(capsys, corpus, tmp_path):
    code = run_main(driver_main, ["--encoding", "klingon", "--input", corpus[0], "--output", str(tmp_path / "o")])
    assert "klingon" in one_line_error(capsys, code)


def test_worker_needs_an_endpoint(capsys):
    code = run_main(worker_main, ["--driver", "localhost:5555"])
    assert "not a ZeroMQ endpoint" in one_line_error(capsys, code)


def test_status_task_arguments(capsys):
    code = run_main(status_main, ["tcp://127.0.0.1:1", "--task", "shuffle", "x"])
    assert "--task" in one_line_error(capsys, code)


@pytest.mark.parametrize("command", ["driver", "worker", "local", "status"])
def test_help_and_version_of_every_installed_command(command):
    script = os.path.join(ROOT, "bin", f"zmqmr-{command}")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.strip() == f"zmqmr-{command} {__version__}"
    usage = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0 and "example:" in usage.stdout


def test_python_dash_m_without_a_command():
    result = subprocess.run(zmqmr_command("bogus"), capture_output=True, text=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 2 and "usage: python -m zmqmr" in result.stderr


def test_encodings_that_cannot_be_cut_at_newline_bytes_are_refused(capsys, corpus, tmp_path):
    code = run_main(driver_main, ["--encoding", "utf-16", "--input", corpus[0], "--output", str(tmp_path / "o")])
    assert "convert the input to UTF-8" in one_line_error(capsys, code)


def test_file_names_that_are_not_utf8_are_refused(capsys, tmp_path):
    directory = tmp_path / "in"
    directory.mkdir()
    with open(os.path.join(os.fsencode(directory), b"caf\xe9.txt"), "w") as f:
        f.write("x\n")
    code = run_main(driver_main, ["--input", str(directory), "--output", str(tmp_path / "o")])
    assert "is not valid UTF-8; rename the file" in one_line_error(capsys, code)


def test_heartbeat_must_be_well_below_the_worker_timeout(capsys, corpus, tmp_path):
    code = run_main(local_main, ["--heartbeat-interval", "3", "--worker-timeout", "5", "--input", corpus[0],
                                 "--output", str(tmp_path / "o")])
    assert "at most half of --worker-timeout" in one_line_error(capsys, code)


def test_worker_name_length_is_checked(capsys):
    code = run_main(worker_main, ["--driver", "tcp://127.0.0.1:1", "--name", "w" * 300])
    assert "--name must be 1 to 256 characters" in one_line_error(capsys, code)


def test_force_keeps_the_old_output_when_the_new_job_fails(capsys, corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000").write_text("old\t1\n")
    (out / "_SUCCESS").write_text("")
    job = tmp_path / "fails.py"
    job.write_text("def mapper(k, v):\n    raise ValueError(v)\ndef reducer(k, vs):\n    return []\n")
    code = run_main(local_main, ["--workers", "1", "-q", "--force", "--max-attempts", "1", "--job", str(job),
                                 "--input", corpus[0], "--output", str(out)])
    assert code == 1
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000"]
    assert (out / "part-00000").read_text() == "old\t1\n"
