"""Map and reduce attempts run in-process: sorting, combining, partitioning, output format, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zmqmr import storage
from zmqmr.errors import JobLoadError, OutputError, UserCodeError
from zmqmr.inputs import expand_inputs, plan_splits
from zmqmr.job import Job, default_partitioner, load_job, spec_for, stable_hash
from zmqmr.output import OutputDir, format_record
from zmqmr.tasks import BadRecords, run_map, run_reduce


def make_job(mapper, reducer=None, combiner=None, partitioner=default_partitioner) -> Job:
    return Job("test", mapper, reducer or (lambda k, vs: [(k, sum(vs))]), combiner, partitioner)


def words(path, line):
    for word in line.split():
        yield word, 1


def summed(key, values):
    yield key, sum(values)


def segments_of(tmp_path, text: str, name: str = "in.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return plan_splits(expand_inputs([str(path)]))[0]


def map_then_reduce(tmp_path, job, text, reducers=1):
    parts, _ = run_map(job, segments_of(tmp_path, text), reducers, str(tmp_path / "map"))
    results = {}
    for r in range(reducers):
        out = tmp_path / f"red-{r}"
        run_reduce(job, [p.path for p in parts if p.partition == r], str(out))
        results[r] = out.read_text()
    return parts, results


def test_map_output_is_partitioned_sorted_and_combined(tmp_path):
    job = make_job(words, combiner=summed)
    parts, stats = run_map(job, segments_of(tmp_path, "b a c\na b\n\nb\n"), 2, str(tmp_path / "m"))
    assert stats.records_in == 4 and stats.records_out == 3
    for part in parts:
        pairs = list(storage.read_pairs(part.path))
        assert pairs == sorted(pairs)
        for key, value in pairs:
            assert default_partitioner(key, 2) == part.partition
    merged = dict(p for part in parts for p in storage.read_pairs(part.path))
    assert merged == {"a": 2, "b": 3, "c": 1}


def test_reduce_sees_every_value_of_a_key_once_across_map_outputs(tmp_path):
    job = make_job(words)
    first, _ = run_map(job, segments_of(tmp_path, "x y x\n", "1.txt"), 1, str(tmp_path / "m1"))
    second, _ = run_map(job, segments_of(tmp_path, "y z\nx\n", "2.txt"), 1, str(tmp_path / "m2"))
    seen = {}

    def reducer(key, values):
        seen[key] = list(values)
        yield key, len(seen[key])

    out = tmp_path / "part"
    stats = run_reduce(make_job(words, reducer), [p.path for p in first + second], str(out))
    assert out.read_text() == "x\t3\ny\t2\nz\t1\n"
    assert seen == {"x": [1, 1, 1], "y": [1, 1], "z": [1]}
    assert stats.records_in == 3 and stats.records_out == 3


def test_empty_input_and_empty_partitions(tmp_path):
    job = make_job(words)
    parts, stats = run_map(job, segments_of(tmp_path, ""), 4, str(tmp_path / "m"))
    assert parts == [] and stats.records_in == 0
    out = tmp_path / "part"
    run_reduce(job, [], str(out))
    assert out.read_text() == ""


def test_keys_of_mixed_order_compatible_types(tmp_path):
    def mapper(path, line):
        for token in line.split():
            yield (float(token) if "." in token else int(token)), token

    def reducer(key, values):
        yield key, sorted(values)

    _, results = map_then_reduce(tmp_path, make_job(mapper, reducer), "3 1.5 2\n1 2.0 10\n")
    assert results[0] == '1\t["1"]\n1.5\t["1.5"]\n2\t["2", "2.0"]\n3\t["3"]\n10\t["10"]\n'


def test_equal_int_and_float_keys_meet_in_one_partition():
    for key in range(50):
        assert stable_hash(key) == stable_hash(float(key))
    assert stable_hash(True) == stable_hash(1)


def test_stable_hash_is_the_same_in_every_process():
    code = "from zmqmr.job import stable_hash; print([stable_hash(k) for k in ['a', 'ü', 7, (1, 'x'), b'z']])"
    outputs = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
        outputs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                   timeout=30, check=True).stdout)
    assert len(outputs) == 1


@pytest.mark.parametrize("key, value, line", [
    ("word", 3, "word\t3\n"),
    ("pi", 3.25, "pi\t3.25\n"),
    (7, None, "7\tnull\n"),
    ("flag", True, "flag\ttrue\n"),
    (("a", 1), {"n": [1, 2]}, '["a", 1]\t{"n": [1, 2]}\n'),
    ("bytes", b"ab\xff", "bytes\tab\\xff\n"),
    ("ünï", "cödé", "ünï\tcödé\n"),
])
def test_output_format(key, value, line):
    assert format_record(key, value) == line


def test_mapper_exception_names_the_record_and_keeps_the_user_traceback(tmp_path):
    def mapper(path, line):
        if "boom" in line:
            raise KeyError("missing field")
        yield line, 1

    text = "fine\nalso fine\nthis goes boom\n"
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(mapper), segments_of(tmp_path, text), 1, str(tmp_path / "m"))
    error = info.value
    assert "mapper raised KeyError" in error.message
    assert f"in.txt at byte {text.index('this')} (line 3)" in error.location
    assert "'this goes boom'" in error.location
    assert "raise KeyError" in error.traceback_text
    assert "zmqmr/tasks.py" not in error.traceback_text


@pytest.mark.parametrize("mapper, expected", [
    (lambda path, line: None, "mapper returned None"),
    (lambda path, line: [line], "mapper broke its contract"),
    (lambda path, line: [(1, 2, 3)], "mapper broke its contract"),
])
def test_mapper_contract_violations(tmp_path, mapper, expected):
    with pytest.raises(UserCodeError, match=expected):
        run_map(make_job(mapper), segments_of(tmp_path, "a\n"), 1, str(tmp_path / "m"))


def test_unsortable_keys_are_reported(tmp_path):
    def mapper(path, line):
        yield "text", 1
        yield 5, 1

    with pytest.raises(UserCodeError, match="not mutually sortable"):
        run_map(make_job(mapper), segments_of(tmp_path, "a\n"), 1, str(tmp_path / "m"))


def test_combiner_must_keep_its_key(tmp_path):
    with pytest.raises(UserCodeError, match="a combiner must keep the key"):
        run_map(make_job(words, combiner=lambda k, vs: [(k + "!", 1)]), segments_of(tmp_path, "a\n"), 1,
                str(tmp_path / "m"))


@pytest.mark.parametrize("result", [2, -1, "0", None])
def test_partitioner_out_of_range(tmp_path, result):
    job = make_job(words, partitioner=lambda key, n: result)
    with pytest.raises(UserCodeError, match="partitioner returned"):
        run_map(job, segments_of(tmp_path, "a\n"), 2, str(tmp_path / "m"))


def test_reducer_exception_names_the_key(tmp_path):
    def reducer(key, values):
        if key == "b":
            raise ValueError("no b")
        yield key, 1

    parts, _ = run_map(make_job(words), segments_of(tmp_path, "a b c\n"), 1, str(tmp_path / "m"))
    with pytest.raises(UserCodeError) as info:
        run_reduce(make_job(words, reducer), [p.path for p in parts], str(tmp_path / "part"))
    assert info.value.location == "key 'b'"
    assert "ValueError: no b" in info.value.traceback_text


def test_undecodable_input_is_an_error_unless_told_otherwise(tmp_path):
    segments = segments_of(tmp_path, b"good\nbad \xff byte\n")
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(words), segments, 1, str(tmp_path / "m"))
    assert "not valid utf-8" in info.value.message and "--encoding" in info.value.message
    assert "at byte 9" in info.value.location
    parts, _ = run_map(make_job(words), segments, 1, str(tmp_path / "m2"), errors="replace")
    assert dict(storage.read_pairs(parts[0].path)) == {"good": 1, "bad": 1, "\ufffd": 1, "byte": 1}


def test_job_file_is_verified_against_its_hash(tmp_path):
    job = tmp_path / "job.py"
    job.write_text("def mapper(k, v):\n    yield v, 1\ndef reducer(k, vs):\n    yield k, sum(vs)\n")
    spec = spec_for(str(job))
    assert load_job(spec).mapper("f", "x").__next__() == ("x", 1)
    tampered = spec.__class__(name=spec.name, source=spec.source + "\n# changed", sha256=spec.sha256)
    with pytest.raises(JobLoadError, match="does not match its SHA-256"):
        load_job(tampered)


def test_output_commit_and_abort(tmp_path):
    out = OutputDir(str(tmp_path / "out"), "job1")
    out.prepare(force=False, input_paths=[])
    written = []
    for index in range(2):
        path = os.path.join(out.temp_dir, f"attempt-{index}", f"part-{index:05d}")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            f.write(f"k{index}\t1\n")
        written.append(path)
    with pytest.raises(OutputError):
        out.commit(written + ["/etc/passwd"])
    assert not os.path.exists(tmp_path / "out" / "_SUCCESS")
    out.commit(written)
    assert sorted(os.listdir(tmp_path / "out")) == ["_SUCCESS", "part-00000", "part-00001"]

    failed = OutputDir(str(tmp_path / "never"), "job2")
    failed.prepare(force=False, input_paths=[])
    failed.abort()
    assert not os.path.exists(tmp_path / "never")


def test_skipping_a_bad_record_drops_all_of_its_pairs(tmp_path):
    def mapper(path, line):
        yield line, 1  # emitted before the failure: must not survive it
        if line == "bad":
            raise ValueError("bad line")

    bad = BadRecords(limit=5)
    parts, stats = run_map(make_job(mapper), segments_of(tmp_path, "ok\nbad\nfine\n\xff\n".encode("latin-1")),
                           1, str(tmp_path / "m"), bad=bad)
    assert dict(storage.read_pairs(parts[0].path)) == {"ok": 1, "fine": 1}
    assert bad.count == 2 and stats.records_in == 4
    assert "mapper raised ValueError: bad line" in bad.found[0].message
    assert bad.found[0].location.endswith("in.txt at byte 3 (line 2), record 'bad'")
    assert "not valid utf-8" in bad.found[1].message


def test_skipping_a_bad_reduce_key_leaves_it_out_whole(tmp_path):
    def reducer(key, values):
        yield key, sum(values)
        if key == "b":
            raise ValueError("no b")

    parts, _ = run_map(make_job(words), segments_of(tmp_path, "a b c b\n"), 1, str(tmp_path / "m"))
    bad = BadRecords(limit=0)
    out = tmp_path / "part"
    stats = run_reduce(make_job(words, reducer), [p.path for p in parts], str(out), bad=bad)
    assert out.read_text() == "a\t1\nc\t1\n"
    assert stats.records_out == 2 and bad.count == 1 and bad.found[0].location == "key 'b'"


def test_bad_records_keep_only_the_first_limit_plus_one(tmp_path):
    def mapper(path, line):
        raise ValueError(line)

    bad = BadRecords(limit=2)
    run_map(make_job(mapper), segments_of(tmp_path, "".join(f"{i}\n" for i in range(10))), 1, str(tmp_path / "m"),
            bad=bad)
    assert bad.count == 10 and len(bad.found) == 3


def test_equal_keys_inside_tuples_meet_in_one_partition():
    assert stable_hash((1, "a")) == stable_hash((1.0, "a")) == stable_hash([True, "a"])
    assert stable_hash(((2.0, 3), "x")) == stable_hash(((2, 3.0), "x"))
    assert stable_hash((1.5, "a")) != stable_hash((1, "a"))


def test_values_msgpack_cannot_carry_are_the_users_error(tmp_path):
    import datetime

    for bad_value in (datetime.date(2026, 1, 1), 2**70, {1, 2}):
        with pytest.raises(UserCodeError, match="msgpack cannot carry"):
            run_map(make_job(lambda path, line, v=bad_value: [(line, v)]), segments_of(tmp_path, "a\n"), 1,
                    str(tmp_path / "m"))
