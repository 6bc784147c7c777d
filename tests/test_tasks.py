"""Map and reduce attempts run in-process: sorting, combining, partitioning, output format, errors."""

from __future__ import annotations

import collections
import gzip
import multiprocessing
import os
import pathlib
import string
import subprocess
import sys
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqmr import counters, mapbuffer, protocol, storage, tasks
from zmqmr.errors import JobLoadError, OutputError, UsageError, UserCodeError
from zmqmr.examples import wordcount
from zmqmr.inputs import expand_inputs, plan_splits
from zmqmr.job import Job, default_partitioner, load_job, spec_for, stable_hash
from zmqmr.output import OutputDir, format_record
from zmqmr.plan import new_plan
from zmqmr.protocol import RecordPosition
from zmqmr.tasks import (ATTEMPT, PROGRESS_SLOTS, BadRecords, NoProgress, progress_of, run_map,
                         run_reduce)


def read_pairs(path):
    """A map output file as (key, value) pairs, one per value."""
    return [(key, value) for key, values in storage.read_run(path) for value in values]


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
        pairs = list(read_pairs(part.path))
        assert pairs == sorted(pairs)
        for key, value in pairs:
            assert default_partitioner(key, 2) == part.partition
    merged = dict(p for part in parts for p in read_pairs(part.path))
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
        run_map(make_job(words, combiner=lambda k, vs: [(k + "!", 1)]), segments_of(tmp_path, "a a\n"), 1,
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
    assert dict(read_pairs(parts[0].path)) == {"good": 1, "bad": 1, "\ufffd": 1, "byte": 1}


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
    assert dict(read_pairs(parts[0].path)) == {"ok": 1, "fine": 1}
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


# --- helpers for the data path tests -----------------------------------------------------


def split_job(map_split, reducer=summed, combiner=None, mapper=None, partitioner=default_partitioner) -> Job:
    return Job("test", mapper, reducer, combiner, partitioner, map_split)


def small_blocks(monkeypatch, block_bytes):
    """Make run_map read its input in blocks of block_bytes."""
    read_blocks = tasks.read_blocks

    def small(segment, encoding="utf-8", errors="strict", _=None):
        return read_blocks(segment, encoding, errors, block_bytes)

    monkeypatch.setattr(tasks, "read_blocks", small)


def force_spills(monkeypatch):
    """The map buffer spills every few pairs (its budget: a few hundred bytes)."""
    init = mapbuffer.MapOutput.__init__

    def small_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.budget = 200

    monkeypatch.setattr(mapbuffer.MapOutput, "__init__", small_init)
    monkeypatch.setattr(mapbuffer, "CHECK_EVERY", 4)
    monkeypatch.setattr(tasks, "LINES_PER_SLICE", 2)


def reduce_partitions(job, parts, reducers, directory):
    texts = []
    for r in range(reducers):
        out = os.path.join(str(directory), f"part-{r}")
        run_reduce(job, [p.path for p in parts if p.partition == r], out)
        with open(out, encoding="utf-8") as f:
            texts.append(f.read())
    return texts


def counts_in(texts):
    counts = {}
    for text in texts:
        for line in text.splitlines():
            word, count = line.split("\t")
            assert word not in counts
            counts[word] = int(count)
    return counts


def split_of(tmp_path, files):
    """One split holding every file, in order (as small files are packed)."""
    paths = []
    for name, data in files:
        path = tmp_path / name
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        paths.append(str(path))
    [split] = plan_splits(expand_inputs(paths))
    return split


# --- empty splits and empty partitions ---------------------------------------------------


@pytest.mark.parametrize("text", [None, "", "inside one line", "only\nwhite space\n"])
def test_an_empty_split_writes_no_files_and_no_directory(tmp_path, text):
    segments = () if text is None else segments_of(tmp_path, text)
    if text == "inside one line":  # a segment that holds no line's first byte
        segments = (protocol.Segment(key="in.txt", path=segments[0].path, start=3, end=9),)

    def mapper(path, line):
        return [(word, 1) for word in line.split() if word not in ("only", "white", "space")]

    counters.start_attempt()
    parts, stats = run_map(make_job(mapper), segments, 3, str(tmp_path / "m"))
    assert parts == [] and stats.records_out == 0
    assert not os.path.exists(tmp_path / "m")
    totals = counters.total(counters.attempt_counters())["zmqmr"]
    assert totals["map output records"] == totals["spilled records"] == 0


def test_an_empty_split_of_a_map_split_job_writes_nothing(tmp_path):
    parts, _ = run_map(split_job(lambda key, lines: [(line, 1) for line in lines]), (), 2, str(tmp_path / "m"))
    assert parts == [] and not os.path.exists(tmp_path / "m")


@pytest.mark.parametrize("spill", [False, True])
def test_a_partition_no_key_falls_in_has_no_file_and_reduces_to_an_empty_part(tmp_path, monkeypatch, spill):
    if spill:
        force_spills(monkeypatch)
    job = make_job(words, partitioner=lambda key, n: 2 if key.startswith("w") else 0)
    text = "".join(f"w{i} z{i}\n" for i in range(50))
    parts, _ = run_map(job, segments_of(tmp_path, text), 4, str(tmp_path / "m"))
    assert sorted(p.partition for p in parts) == [0, 2]
    assert sorted(os.listdir(tmp_path / "m")) == ["part-00000.mpk", "part-00002.mpk"]
    texts = reduce_partitions(job, parts, 4, tmp_path)
    assert texts[1] == texts[3] == ""
    assert counts_in(texts) == {f"{c}{i}": 1 for c in "wz" for i in range(50)}


# --- the combiner ------------------------------------------------------------------------


@pytest.mark.parametrize("spill", [False, True])
def test_the_combiner_only_ever_sees_keys_holding_several_values(tmp_path, monkeypatch, spill):
    if spill:
        force_spills(monkeypatch)
    calls = []

    def combiner(key, values):
        values = list(values)
        calls.append((key, len(values)))
        yield key, sum(values)

    text = "".join(f"common once{i} w{i % 7}\n" for i in range(200))
    parts, _ = run_map(make_job(words, combiner=combiner), segments_of(tmp_path, text), 2, str(tmp_path / "m"))
    assert calls and all(n >= 2 for _, n in calls)
    assert not any(key.startswith("once") for key, _ in calls)
    got = {k: v for part in parts for k, v in read_pairs(part.path)}
    assert got == {"common": 200, **{f"once{i}": 1 for i in range(200)}, **{f"w{i}": len(range(i, 200, 7))
                                                                              for i in range(7)}}


@pytest.mark.parametrize("spill", [False, True])
def test_a_key_its_combiner_dropped_does_not_reach_the_reducer(tmp_path, monkeypatch, spill):
    """A combiner may leave nothing of a key (here: counts that cancel out); the reducer then never sees it."""
    if spill:
        force_spills(monkeypatch)

    def mapper(path, line):
        word, sign = line.split()
        yield word, int(sign)

    def nonzero(key, values):
        total = sum(values)
        if total:
            yield key, total

    def reducer(key, values):  # the same as the combiner, written as many reducers are: a key has values
        first = next(values)
        total = first + sum(values)
        if total:
            yield key, total

    text = "".join(f"gone +1\ngone -1\nstays +1\nw{i} +1\n" for i in range(50))
    want = {"stays": 50, **{f"w{i}": 1 for i in range(50)}}
    without = make_job(mapper, reducer)
    parts, _ = run_map(without, segments_of(tmp_path, text), 1, str(tmp_path / "m0"))
    assert counts_in(reduce_partitions(without, parts, 1, tmp_path / "r0")) == want  # the combiner is a valid one
    job = make_job(mapper, reducer, combiner=nonzero)
    parts, _ = run_map(job, segments_of(tmp_path, text), 1, str(tmp_path / "m"))
    counters.start_attempt()
    assert counts_in(reduce_partitions(job, parts, 1, tmp_path)) == want
    assert counters.total(counters.attempt_counters())["zmqmr"]["reduce input groups"] == 51


# --- keys: mixed types, tuples, dicts -----------------------------------------------------

NUMERIC_KEYS = [3, 1.5, True, 2, 2.0, False, 0, -1, 0.0, 1, 1.0, -0.5, 10**12, 1e12, -7, 2.5, 0.25]
TUPLE_KEYS = [(1, "a"), [1, "a"], (1.0, "a"), [True, "a"], (0, "b"), [0.0, "b"], (False,), (5, (1, 2)),
              [5, [1.0, 2]], (5, (0, 9)), (5, [1, 2, 3]), (), [], (-1, "z", 0.5), [-1, "z", 0.5], (2,), [2.0],
              (1, "a", 3), [1.0, "a", 3.0], (2.5, "c")]


def grouped_like_python(pairs):
    """{key: values} as a dict groups them (1 == 1.0 == True), lists made tuples, keys sorted."""
    def hashable(key):
        return tuple(hashable(k) for k in key) if isinstance(key, (list, tuple)) else key

    groups = {}
    for key, value in pairs:
        groups.setdefault(hashable(key), []).append(value)
    return sorted((key, sorted(values)) for key, values in groups.items())


@pytest.mark.parametrize("keys", [NUMERIC_KEYS, TUPLE_KEYS], ids=["numbers", "tuples"])
@pytest.mark.parametrize("reducers", [1, 3])
@pytest.mark.parametrize("spill", [False, True])
def test_keys_of_mixed_types_group_and_sort_like_python(tmp_path, monkeypatch, keys, reducers, spill):
    if spill:
        force_spills(monkeypatch)

    def mapper(path, line):
        i = int(line)
        yield keys[i % len(keys)], i

    seen = []

    def reducer(key, values):
        seen.append((key, sorted(values)))
        yield key, len(seen)

    job = make_job(mapper, reducer)
    parts = []
    for task, numbers in enumerate([range(0, 100), range(100, 170)]):  # two map tasks
        task_parts, _ = run_map(job, segments_of(tmp_path, "".join(f"{i}\n" for i in numbers), f"in{task}.txt"),
                                reducers, str(tmp_path / f"m{task}"))
        parts += task_parts
    reduce_partitions(job, parts, reducers, tmp_path)
    want = grouped_like_python(pair for i in range(170) for pair in mapper("", str(i)))
    assert sorted(seen) == want  # each key once, with every one of its values
    if reducers == 1:
        assert seen == want  # and in Python's order
    assert all(not isinstance(key, list) for key, _ in seen)


@pytest.mark.parametrize("key", [{"a": 1}, ("x", {"a": 1}), [1, [2, {"b": 2}]]])
@pytest.mark.parametrize("path", ["mapper", "map_split", "skip_bad_records"])
def test_dict_keys_are_refused_with_a_clear_error(tmp_path, key, path):
    def mapper(path_, line):
        yield (key if line == "bad" else line), 1

    text = "a\nb\nbad\nc\n"
    if path == "map_split":
        job = split_job(lambda name, lines: (pair for line in lines for pair in mapper(name, line)))
    else:
        job = make_job(mapper)
    bad = BadRecords(5) if path == "skip_bad_records" else None
    if bad is None:
        with pytest.raises(UserCodeError) as info:
            run_map(job, segments_of(tmp_path, text), 2, str(tmp_path / "m"))
        error = info.value
    else:
        parts, _ = run_map(job, segments_of(tmp_path, text), 1, str(tmp_path / "m"), bad=bad)
        assert bad.count == 1 and sorted(read_pairs(parts[0].path)) == [("a", 1), ("b", 1), ("c", 1)]
        error = bad.found[0]
    assert "is a dict" in error.message and "tuple of its items" in error.message
    assert "in.txt" in error.location
    if path != "map_split":
        assert "in.txt at byte 4 (line 3), record 'bad'" in error.location


# --- map_split -----------------------------------------------------------------------------

MAP_SPLIT_ONLY = '''
import zmqmr

def map_split(path, lines):
    n = 0
    for line in lines:
        n += 1
        for word in line.split():
            yield word, 1
    zmqmr.counters.increment("job", "lines seen", n)

def reducer(key, values):
    yield key, sum(values)
'''


def test_a_job_with_only_map_split_loads_and_runs(tmp_path):
    job_file = tmp_path / "job.py"
    job_file.write_text(MAP_SPLIT_ONLY)
    job = load_job(spec_for(str(job_file)))
    assert job.mapper is None and job.map_split is not None
    split = split_of(tmp_path, [("a.txt", "x y\r\nx\n"), ("b.txt", "y z x"), ("c.txt", "\n\n")])
    parts, stats = run_map(job, split, 2, str(tmp_path / "m"))
    assert stats.records_in == 5
    assert counts_in(reduce_partitions(job, parts, 2, tmp_path)) == {"x": 3, "y": 2, "z": 1}


def test_a_job_without_mapper_or_map_split_is_refused(tmp_path):
    job_file = tmp_path / "job.py"
    job_file.write_text("def reducer(k, vs):\n    yield k, 1\n")
    with pytest.raises(JobLoadError, match="no mapper.*map_split"):
        load_job(spec_for(str(job_file)))


def test_map_split_sees_each_segment_of_its_split_once_with_its_key(tmp_path):
    calls = []

    def map_split(key, lines):
        lines = list(lines)
        calls.append((key, lines))
        return [(key, len(lines))]

    split = split_of(tmp_path, [("a.txt", "one\r\ntwo\n"), ("b.txt", "three\rstill three\n\nfive"),
                                ("empty.txt", ""), ("c.txt.gz", gzip.compress(b"six\nseven\n"))])
    parts, _ = run_map(split_job(map_split), split, 1, str(tmp_path / "m"))
    assert [(os.path.basename(key), lines) for key, lines in calls] == [
        ("a.txt", ["one", "two"]), ("b.txt", ["three\rstill three", "", "five"]), ("c.txt.gz", ["six", "seven"])]
    assert sorted((os.path.basename(k), v) for k, v in read_pairs(parts[0].path)) == \
        [("a.txt", 2), ("b.txt", 3), ("c.txt.gz", 2)]


def test_map_split_is_used_when_a_job_has_both(tmp_path):
    job = split_job(lambda key, lines: [("from map_split", 1) for _ in lines], mapper=lambda p, line: [("mapper", 1)])
    parts, _ = run_map(job, segments_of(tmp_path, "a\nb\n"), 1, str(tmp_path / "m"))
    assert read_pairs(parts[0].path) == [("from map_split", 1), ("from map_split", 1)]


@pytest.mark.parametrize("combine", [False, True])
@pytest.mark.parametrize("spill", [False, True])
def test_map_split_counters(tmp_path, monkeypatch, combine, spill):
    if spill:
        force_spills(monkeypatch)
    job_file = tmp_path / "job.py"
    job_file.write_text(MAP_SPLIT_ONLY + ("combiner = reducer\n" if combine else ""))
    job = load_job(spec_for(str(job_file)))
    lines = [" ".join(f"w{(i * j) % 13}" for j in range(i % 5)) for i in range(300)]
    data = "\n".join(lines[:150]) + "\n"
    split = split_of(tmp_path, [("a.txt", data), ("b.txt", "\r\n".join(lines[150:]))])
    counters.start_attempt()
    parts, stats = run_map(job, split, 2, str(tmp_path / "m"))
    totals = counters.total(counters.attempt_counters())
    pairs = sum(len(line.split()) for line in lines)
    written = sum(len(values) for part in parts for _, values in storage.read_run(part.path))
    zmqmr_counts = totals["zmqmr"]
    assert zmqmr_counts["input records"] == stats.records_in == 300
    assert zmqmr_counts["input bytes"] == stats.bytes_in == sum(os.path.getsize(seg.path) for seg in split)
    assert zmqmr_counts["map output records"] == pairs
    assert stats.records_out == written
    assert totals["job"] == {"lines seen": 300}
    if combine:
        assert zmqmr_counts["combine input records"] >= zmqmr_counts["combine output records"] > 0
        if not spill:
            assert zmqmr_counts["combine input records"] - zmqmr_counts["combine output records"] == pairs - written
    else:
        assert "combine input records" not in zmqmr_counts and written == pairs
    if spill:
        assert zmqmr_counts["spilled records"] > written
    else:
        assert zmqmr_counts["spilled records"] == written
    assert counts_in(reduce_partitions(job, parts, 2, tmp_path)) == \
        dict(collections.Counter(word for line in lines for word in line.split()))


def test_an_exception_in_map_split_names_map_split_and_the_file(tmp_path):
    def map_split(key, lines):
        for line in lines:
            if line == "poison":
                raise ValueError("cannot digest")
            yield line, 1

    split = split_of(tmp_path, [("a.txt", "fine\n"), ("b.txt", "ok\npoison\n")])
    with pytest.raises(UserCodeError) as info:
        run_map(split_job(map_split), split, 1, str(tmp_path / "m"))
    error = info.value
    assert error.message == "map_split raised ValueError: cannot digest"
    assert "b.txt" in error.location and "a.txt" not in error.location
    assert 'raise ValueError("cannot digest")' in error.traceback_text
    assert "zmqmr/tasks.py" not in error.traceback_text


@pytest.mark.parametrize("map_split, expected", [
    (lambda key, lines: None, "map_split returned None"),
    (lambda key, lines: [key], "map_split broke its contract"),
    (lambda key, lines: [(1, 2, 3)], "map_split broke its contract"),
])
def test_map_split_contract_violations(tmp_path, map_split, expected):
    with pytest.raises(UserCodeError, match=expected):
        run_map(split_job(map_split), segments_of(tmp_path, "a\n"), 1, str(tmp_path / "m"))


def test_undecodable_input_under_map_split_names_the_byte_and_line(tmp_path):
    def map_split(key, lines):
        return [(line, 1) for line in lines]

    data = b"".join(b"line %d\n" % i for i in range(500)) + b"bad \xff\n"
    segments = segments_of(tmp_path, data)
    with pytest.raises(UserCodeError) as info:
        run_map(split_job(map_split), segments, 1, str(tmp_path / "m"))
    assert "not valid utf-8" in info.value.message
    assert info.value.location == f"{segments[0].key} at byte {data.index(bytes([0xff]))} (line 501)"


def test_skip_bad_records_with_a_map_split_only_job_is_a_clear_error(tmp_path):
    job = split_job(lambda key, lines: [(line, 1) for line in lines])
    with pytest.raises(UserCodeError, match="--skip-bad-records needs a mapper"):
        run_map(job, segments_of(tmp_path, "a\n"), 1, str(tmp_path / "m"), bad=BadRecords(3))


def test_skip_bad_records_uses_the_mapper_of_a_job_that_has_both(tmp_path):
    def mapper(path, line):
        if line == "bad":
            raise ValueError("bad")
        yield line, 1

    job = split_job(lambda key, lines: [("map_split", 1)], mapper=mapper)
    bad = BadRecords(3)
    parts, _ = run_map(job, segments_of(tmp_path, "a\nbad\nb\n"), 1, str(tmp_path / "m"), bad=bad)
    assert sorted(read_pairs(parts[0].path)) == [("a", 1), ("b", 1)] and bad.count == 1


def test_the_driver_refuses_skip_bad_records_for_a_map_split_only_job(tmp_path):
    """A command-line mistake: one line and exit 2 at once, not every map task failing its attempts."""
    job_file = tmp_path / "job.py"
    job_file.write_text(MAP_SPLIT_ONLY)
    source = tmp_path / "in.txt"
    source.write_text("a\n")
    new_plan(str(job_file), [str(source)], str(tmp_path / "out"))  # fine without it
    with pytest.raises(UsageError, match="map_split"):
        new_plan(str(job_file), [str(source)], str(tmp_path / "out"), skip_bad_records=2)


# --- error locations and progress deep inside a block ---------------------------------------


def numbered_lines(count, crlf_from=None, name="record"):
    lines = [f"{name} {i} é" for i in range(1, count + 1)]
    endings = ["\r\n" if crlf_from is not None and i >= crlf_from else "\n" for i in range(1, count + 1)]
    return lines, "".join(line + ending for line, ending in zip(lines, endings)).encode("utf-8")


def offset_of(data, line):
    """Where `line` (one of numbered_lines) starts in data."""
    return 0 if data.startswith(line.encode() + b"\r\n") or data.startswith(line.encode() + b"\n") \
        else data.index(b"\n" + line.encode() + b"\n") + 1 if b"\n" + line.encode() + b"\n" in data \
        else data.index(b"\n" + line.encode() + b"\r\n") + 1


@pytest.mark.parametrize("block_bytes", [None, 100, 5000])
@pytest.mark.parametrize("failing", [1, 2, 777, 2345, 3000])
def test_mapper_error_deep_inside_a_block_names_file_offset_and_line(tmp_path, monkeypatch, block_bytes, failing):
    if block_bytes:
        small_blocks(monkeypatch, block_bytes)
    lines, data = numbered_lines(3000, crlf_from=1500)
    target = lines[failing - 1]

    def mapper(path, line):
        yield line, 1  # a pair first: the error comes mid-record
        if line == target:
            raise RuntimeError("deep")

    segments = segments_of(tmp_path, data)
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(mapper), segments, 1, str(tmp_path / "m"))
    offset = offset_of(data, target)
    assert data[offset:].startswith(target.encode())
    assert info.value.location == f"{segments[0].key} at byte {offset} (line {failing}), record {target!r}"
    assert info.value.message == "mapper raised RuntimeError: deep"


def test_mapper_error_in_a_later_file_or_segment_of_the_split(tmp_path, monkeypatch):
    small_blocks(monkeypatch, 64)
    _, first = numbered_lines(100, name="first")
    lines, data = numbered_lines(400, crlf_from=1)

    def mapper(path, line):
        if path.endswith("b.txt") and line == "record 321 é":
            raise KeyError(line)
        return [(line, 1)]

    split = split_of(tmp_path, [("a.txt", first), ("b.txt", data)])
    offset = data.index(b"\nrecord 321 ") + 1
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(mapper), split, 1, str(tmp_path / "m"))
    assert info.value.location == f"{split[1].key} at byte {offset} (line 321), record 'record 321 é'"
    # a segment that starts inside a file: the offset, but no line number (it is not known there)
    cut = plan_splits(expand_inputs([str(tmp_path / "b.txt")]), split_bytes=len(data) // 3)
    assert len(cut) == 3 and cut[2][0].start > 0
    assert cut[2][0].start <= offset < cut[2][0].end
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(mapper), cut[2], 1, str(tmp_path / "m2"))
    assert info.value.location == f"{cut[2][0].key} at byte {offset}, record 'record 321 é'"


def test_mapper_error_deep_inside_a_gzip_file(tmp_path, monkeypatch):
    small_blocks(monkeypatch, 300)
    lines, data = numbered_lines(2000, crlf_from=1000)

    def mapper(path, line):
        if line == "record 1234 é":
            raise ValueError("gz")
        return ()

    path = tmp_path / "in.txt.gz"
    path.write_bytes(gzip.compress(data))
    [split] = plan_splits(expand_inputs([str(path)]))
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(mapper), split, 1, str(tmp_path / "m"))
    offset = data.index(b"\nrecord 1234 ") + 1
    assert info.value.location == f"{split[0].key} at byte {offset} (line 1234), record 'record 1234 é'"


def test_undecodable_byte_deep_inside_a_block(tmp_path, monkeypatch):
    small_blocks(monkeypatch, 256)
    _, data = numbered_lines(900)
    data = data.replace(b"record 678 ", b"record \xc3( ")
    segments = segments_of(tmp_path, data)
    with pytest.raises(UserCodeError) as info:
        run_map(make_job(words), segments, 1, str(tmp_path / "m"))
    bad_byte = data.index(b"\xc3(")
    assert info.value.location == f"{segments[0].key} at byte {bad_byte} (line 678)"


class Watch:
    """Calls progress_of from inside the mapper, as a worker's heartbeat would, on chosen lines."""

    def __init__(self, progress, task, lines):
        self.progress, self.task, self.lines, self.seen = progress, task, set(lines), {}

    def values(self):
        return list(self.progress[:PROGRESS_SLOTS]) if not isinstance(self.progress, NoProgress) \
            else list(self.progress.values)

    def mapper(self, path, line):
        if line in self.lines:
            self.seen[line] = progress_of(self.values(), self.task)
        return [(line[:8], 1)]


def map_task(segments, attempt=7):
    return protocol.Task(job_id="job", kind="map", index=3, attempt=attempt, segments=tuple(segments))


@pytest.mark.parametrize("shared_array", [False, True])
@pytest.mark.parametrize("block_bytes", [None, 200])
def test_progress_of_a_line_in_the_middle_of_a_block(tmp_path, monkeypatch, shared_array, block_bytes):
    if block_bytes:
        small_blocks(monkeypatch, block_bytes)
    _, first = numbered_lines(40, name="first")
    lines, data = numbered_lines(1000, crlf_from=300)
    split = split_of(tmp_path, [("a.txt", first), ("b.txt", data)])
    progress = multiprocessing.RawArray("q", PROGRESS_SLOTS) if shared_array else NoProgress()
    progress[ATTEMPT] = 7
    watch = Watch(progress, map_task(split), [lines[0], lines[499], lines[998]])
    run_map(make_job(watch.mapper), split, 1, str(tmp_path / "m"), progress=progress)
    for number in (1, 500, 999):
        line = lines[number - 1]
        got = watch.seen[line]
        offset = offset_of(data, line)
        assert got.position == RecordPosition(segment=1, offset=offset)
        assert got.location == f"{split[1].key} at byte {offset} (line {number})"
        assert (got.attempt, got.kind, got.index, got.job_id) == (7, "map", 3, "job")
        # records read so far, this one included (40 from a.txt), as the reduce side counts keys
        assert got.records == 40 + number


def test_progress_in_a_gzip_file_and_of_another_attempt(tmp_path):
    lines, data = numbered_lines(300)
    path = tmp_path / "in.txt.gz"
    path.write_bytes(gzip.compress(data))
    [split] = plan_splits(expand_inputs([str(path)]))
    progress = NoProgress()
    progress[ATTEMPT] = 7
    watch = Watch(progress, map_task(split), [lines[0], lines[199]])
    run_map(make_job(watch.mapper), split, 1, str(tmp_path / "m"), progress=progress)
    assert watch.seen[lines[0]].location == f"{split[0].key} at byte 0 (line 1)"
    assert watch.seen[lines[199]].location.startswith(f"{split[0].key}")
    assert "(line 200)" in watch.seen[lines[199]].location
    assert watch.seen[lines[199]].records == 200
    assert progress_of(progress.values, map_task(split, attempt=8)) is None  # not this attempt's slots


def test_progress_of_a_reduce_names_the_key_number(tmp_path):
    parts, _ = run_map(make_job(words), segments_of(tmp_path, "a b c d\n"), 1, str(tmp_path / "m"))
    progress = NoProgress()
    progress[ATTEMPT] = 4
    task = protocol.Task(job_id="job", kind="reduce", index=0, attempt=4,
                         sources=(protocol.MapOutput(map=0, path=parts[0].path, size=parts[0].size),))
    seen = {}

    def reducer(key, values):
        seen[key] = progress_of(progress.values, task)
        yield key, sum(values)

    run_reduce(make_job(words, reducer), [parts[0].path], str(tmp_path / "part"), progress=progress)
    assert seen["c"].records == 3 and seen["c"].location == "the reducer's key number 3 of its partition"


# --- the built-in word count's fast path ---------------------------------------------------------


def wordcount_reference(lines):
    return dict(collections.Counter(word for line in lines for word in wordcount.WORD.findall(line)))


def lines_read_from(data: bytes):
    """The lines a map task reads from a file holding `data` (line endings: LF, CRLF)."""
    pieces = data.split(b"\n")
    tail = pieces.pop()
    lines = [p[:-1] if p.endswith(b"\r") else p for p in pieces] + ([tail] if tail else [])
    return [line.decode("utf-8") for line in lines]


def wordcount_job():
    job = load_job(spec_for(None))
    assert job.map_split is wordcount.map_split and job.mapper is wordcount.mapper
    return job


def word_count_end_to_end(tmp_path, data: bytes, reducers=2):
    job = wordcount_job()
    split = split_of(tmp_path, [("in.txt", data), ("again.txt", data)])
    parts, _ = run_map(job, split, reducers, str(tmp_path / "m"))
    got = counts_in(reduce_partitions(job, parts, reducers, tmp_path))
    want = wordcount_reference(lines_read_from(data) * 2)
    return got, want


TRICKY = [
    "", "\n", "\r\n", "\r", "a", "abc def", "don't co-op e-mail", "a_b __init__ _x_", "42abc abc42 A1B2C3",
    "x² y²z", "½half ¾", "٣abc٣ ١٢", "ǅemal ǈ", "Straße STRASSE", "ÉCOLE école", "e\u0301te\u0301",
    "naïve café", "日本語テキスト 日本", "Жжж ЖЖ", "line1\r\nline2\rline3\n", "tab\tsep\x0bvt\x0cff\x1cfs\x85nel",
    "nbsp\u00a0here", "\ufb01ne", "Ⅻ roman ⅻ", "İstanbul ı", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚",
    "ascii line\nnon ascii é line\nascii again\n",
    "a" * 10000, "\u2028sep\u2029", "über_alles", "ſ ꭰ ᏸ", "\u0300\u0301", "Ǆ ǅ ǆ", "ᾼ ᾳ", "\u200bzero\u200dwidth",
    "ÀB ÀB àb AB ab", "word\rword\r\nword", "'quoted' \"double\" «guillemets»", "١٢٣ ۴۵۶ ߁߂",
]


@pytest.mark.parametrize("text", TRICKY, ids=range(len(TRICKY)))
def test_fast_word_count_equals_the_regex_on_tricky_text(tmp_path, text):
    data = text.encode("utf-8")
    assert dict(wordcount.map_split("f", lines_read_from(data))) == wordcount_reference(lines_read_from(data))
    got, want = word_count_end_to_end(tmp_path, data)
    assert got == want


WORD_PIECES = st.one_of(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation + " \t_"),
    st.sampled_from(["é", "ß", "Ж", "日本", "ǅ", "²", "٣", "½", "\u0301", "\u0308", "\r\n", "\r", "\n", "\n",
                     "\u00a0", "İ", "Ⅻ", "\ufb01", "𝔘", "\x0b", "\x85"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=3),
)
TEXT = st.lists(WORD_PIECES, max_size=80).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=TEXT, batch=st.integers(1, 5))
def test_fast_word_count_equals_the_regex_on_any_text(text, batch):
    lines = lines_read_from(text.encode("utf-8"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wordcount, "LINES_PER_BATCH", batch)
        assert dict(wordcount.map_split("f", iter(lines))) == wordcount_reference(lines)
    counts = wordcount.WordCounts()
    counts.add_text("\n".join(lines))
    assert dict(counts.items()) == wordcount_reference(lines)
    assert sorted(w for line in lines for w, _ in wordcount.mapper("f", line)) == \
        sorted(w for line in lines for w in wordcount.WORD.findall(line))


@settings(max_examples=40, deadline=None)
@given(text=TEXT)
def test_fast_word_count_end_to_end_equals_the_regex(text):
    with tempfile.TemporaryDirectory() as tmp:
        got, want = word_count_end_to_end(pathlib.Path(tmp), text.encode("utf-8"))
    assert got == want
