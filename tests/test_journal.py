"""The driver's journal: written as tasks finish, read back by a restarted driver, refused when foreign."""

from __future__ import annotations

import json
import os

import pytest
from conftest import make_corpus, zmqmr_command

from zmqmr import journal
from zmqmr.cli import driver_main
from zmqmr.journal import FinishedTask, Journal, JournalError
from zmqmr.plan import new_plan, resumed_plan
from zmqmr.protocol import BadRecord, CounterValue, PartFile, TaskStats


def finished(kind="map", index=0, attempt=3) -> FinishedTask:
    return FinishedTask(kind=kind, index=index, attempt=attempt,
                        parts=(PartFile(partition=0, path="/w/m0/part-00000.mpk", size=12),) if kind == "map" else (),
                        output="" if kind == "map" else "/o/_temporary/j/attempt-9/part-00000",
                        stats=TaskStats(records_in=5, bytes_in=50, records_out=4, seconds=0.5),
                        counters=(CounterValue("zmqmr", "input records", 5),),
                        bad_records=(BadRecord(location="a.txt at byte 3", kind="UserCodeError", message="m"),),
                        bad_count=1)


@pytest.fixture
def planned(tmp_path):
    corpus = make_corpus(tmp_path / "input", files=2, lines=20)
    return new_plan(None, corpus, str(tmp_path / "out"), reducers=2, mappers=2, work_dir=str(tmp_path / "work"))


def test_round_trip_of_plan_and_finished_tasks(planned, tmp_path):
    log = Journal(planned.work_dir)
    log.start(planned.journal_plan(), 1)
    log.finished(finished("map", 0, 3))
    log.reserve(2500)
    log.finished(finished("reduce", 1, 7))
    log.close()
    replay = journal.read(planned.work_dir)
    assert replay.plan == planned.journal_plan()
    assert replay.finished == [finished("map", 0, 3), finished("reduce", 1, 7)]
    assert replay.attempts_below >= 2501  # a restarted driver never reuses an attempt id


def test_a_torn_last_line_is_ignored_but_damage_elsewhere_is_not(planned):
    log = Journal(planned.work_dir)
    log.start(planned.journal_plan(), 1)
    log.finished(finished())
    log.close()
    with open(log.path, "a") as f:
        f.write('{"t": "finished", "kind": "ma')  # the driver died mid-write
    assert journal.read(planned.work_dir).finished == [finished()]
    lines = open(log.path).read().splitlines()
    lines.insert(1, "garbage")
    open(log.path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(JournalError, match="damaged at line 2"):
        journal.read(planned.work_dir)


def test_another_format_is_refused(planned):
    log = Journal(planned.work_dir)
    log.start(planned.journal_plan(), 1)
    log.close()
    header, *rest = open(log.path).read().splitlines()
    record = json.loads(header)
    record["format"] = 99
    open(log.path, "w").write("\n".join([json.dumps(record)] + rest) + "\n")
    with pytest.raises(JournalError, match="has format 99"):
        journal.read(planned.work_dir)


def test_the_same_command_resumes_and_a_different_job_is_refused(planned, tmp_path):
    Journal(planned.work_dir).start(planned.journal_plan(), 1)
    inputs = [f.key for f in planned.inputs]
    again = new_plan(None, inputs, planned.output, reducers=2, mappers=2, work_dir=planned.work_dir)
    assert again.resume is not None and again.job_id == planned.job_id
    with pytest.raises(JournalError, match="holds the journal of another job"):
        new_plan(None, inputs, planned.output, reducers=3, mappers=2, work_dir=planned.work_dir)


def test_resume_refuses_changed_input(planned):
    Journal(planned.work_dir).start(planned.journal_plan(), 1)
    assert resumed_plan(planned.work_dir).job_id == planned.job_id
    with open(planned.inputs[0].path, "a") as f:
        f.write("one more line\n")
    with pytest.raises(JournalError, match="changed since the job started"):
        resumed_plan(planned.work_dir)


def test_resume_without_a_journal_is_a_usage_error(capsys, tmp_path):
    assert driver_main(["--resume", str(tmp_path)]) == 2
    assert "no journal to resume" in capsys.readouterr().err


def test_driver_resume_takes_everything_from_the_journal(procs, planned, tmp_path):
    """A journal whose every map and reduce finished before the kill: --resume only commits."""
    log = Journal(planned.work_dir)
    log.start(planned.journal_plan(), 1)
    os.makedirs(planned.output)
    temp = os.path.join(planned.output, "_temporary", planned.job_id)
    for index in range(planned.reducers):
        os.makedirs(os.path.join(temp, f"attempt-{10 + index}"))
    for index in range(len(planned.splits)):
        part = os.path.join(planned.work_dir, planned.job_id, f"map-{index:05d}-a{index + 1}", "part-00000.mpk")
        os.makedirs(os.path.dirname(part))
        open(part, "wb").close()
        log.finished(FinishedTask("map", index, index + 1, (PartFile(0, part, 0),), "", TaskStats(), (), (), 0))
    for index in range(planned.reducers):
        path = os.path.join(temp, f"attempt-{10 + index}", f"part-{index:05d}")
        open(path, "w").write(f"word{index}\t{index}\n")
        log.finished(FinishedTask("reduce", index, 10 + index, (), path, TaskStats(), (), (), 0))
    log.close()
    result = procs.run(zmqmr_command("driver", "--resume", planned.work_dir, "--port", 0))
    assert result.returncode == 0, result.stderr
    assert "kept 2 of 2 map and 2 of 2 reduce tasks" in result.stderr
    assert sorted(os.listdir(planned.output)) == ["_SUCCESS", "_counters.json", "part-00000", "part-00001"]
    assert open(os.path.join(planned.output, "part-00001")).read() == "word1\t1\n"
    assert not os.path.exists(journal.journal_path(planned.work_dir))


def test_one_driver_per_work_dir(planned):
    first = Journal(planned.work_dir)
    first.lock()
    with pytest.raises(JournalError, match="another driver is running a job from"):
        Journal(planned.work_dir).lock()
    first.unlock()
    Journal(planned.work_dir).lock()


def test_resuming_cuts_a_torn_line_before_appending(planned):
    log = Journal(planned.work_dir)
    log.start(planned.journal_plan(), 1)
    log.close()
    with open(log.path, "a") as f:
        f.write('{"t": "finished", "kind": "ma')
    again = Journal(planned.work_dir)
    again.resume(journal.read(planned.work_dir).attempts_below)
    again.finished(finished("map", 1, 5))
    again.close()
    replay = journal.read(planned.work_dir)
    assert replay.finished == [finished("map", 1, 5)]
    assert replay.attempts_below > 1000  # the reservation written after the cut survived
