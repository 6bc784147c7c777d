"""Work directories: a job's directory is claimed while in use; what failed or killed jobs left is
removed by the next job or `zmqmr-worker --clean`, and nothing else ever is."""

from __future__ import annotations

import os
import stat

import pytest

from zmqmr.cli import worker_main
from zmqmr.workdir import PROBE_NAME, JobDir, remove_stale, shares, write_probe


def leftovers(work):
    """A killed job's directory, a running job's, and things that are no job's."""
    killed = work / "0123456789ab" / "map-00001-a1"
    killed.mkdir(parents=True)
    (killed / "part-00000.mpk").write_bytes(b"garbage")
    running = JobDir(str(work), "aaaaaaaaaaaa")
    (work / "journal").write_text("a driver's journal")
    (work / "not-a-job").mkdir()
    (work / "bbbbbbbbbbbb").write_text("a file named like a job")
    os.symlink("/", work / "cccccccccccc")
    return running


def test_the_next_job_removes_only_what_nobody_holds(tmp_path):
    running = leftovers(tmp_path)
    assert remove_stale(str(tmp_path), keep="dddddddddddd") == [str(tmp_path / "0123456789ab")]
    assert sorted(os.listdir(tmp_path)) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "journal", "not-a-job"]
    running.release()  # its process ended without being told the job was over: garbage now
    assert remove_stale(str(tmp_path), keep="dddddddddddd") == [str(tmp_path / "aaaaaaaaaaaa")]


def test_a_job_never_removes_its_own_directory(tmp_path):
    mine = JobDir(str(tmp_path), "0123456789ab")
    mine.release()
    assert remove_stale(str(tmp_path), keep="0123456789ab") == []
    assert os.path.isdir(mine.path)


def test_worker_clean_removes_leftovers_and_says_so(tmp_path, capsys):
    running = leftovers(tmp_path)
    assert worker_main(["--clean", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"removed {tmp_path / '0123456789ab'}" in out and "1 job directory removed" in out
    assert os.path.isdir(running.path)
    assert worker_main(["--clean", "--work-dir", str(tmp_path / "nothing-here")]) == 0
    assert "nothing to clean" in capsys.readouterr().out


def test_a_worker_shares_a_directory_only_if_it_reads_the_drivers_token(tmp_path):
    write_probe(str(tmp_path), "f00d" * 8)
    assert shares(str(tmp_path), "f00d" * 8)
    assert not shares(str(tmp_path), "beef" * 8)  # another driver's
    assert not shares(str(tmp_path / "elsewhere"), "f00d" * 8)
    assert not shares(str(tmp_path), "")
    (tmp_path / PROBE_NAME).write_bytes(b"\xff\xfe")
    assert not shares(str(tmp_path), "f00d" * 8)


def test_a_job_dir_is_removed_only_by_the_last_process_holding_it(tmp_path):
    first, second = JobDir(str(tmp_path), "0123456789ab"), JobDir(str(tmp_path), "0123456789ab")
    (tmp_path / "0123456789ab" / "map-00001-a1").mkdir()
    assert not first.remove_if_last()  # the other one still needs its files
    assert os.path.isdir(second.path)
    assert second.remove_if_last()
    assert not os.path.exists(second.path)


def test_the_default_work_dir_is_private_and_never_one_someone_else_made(tmp_path):
    from zmqmr.workdir import private_dir

    made = private_dir(str(tmp_path / "mine"))
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o777)
    os.chmod(loose, 0o777)
    private_dir(str(loose))
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700  # ours: tightened
    os.symlink(loose, tmp_path / "link")
    with pytest.raises(OSError, match="not a directory of this user's"):
        private_dir(str(tmp_path / "link"))
    os.chown(loose, 12345, 12345)
    with pytest.raises(OSError, match="not a directory of this user's"):
        private_dir(str(loose))
