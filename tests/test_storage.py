"""Intermediate data: runs, merges in bounded memory, and the map buffer's spills end to end.

A tiny budget is forced by patching MapOutput's budget and how often the hot loops look
at it, and a tiny fan-in by patching storage.max_fan_in; every result is compared with a
plain in-memory computation.
"""

from __future__ import annotations

import collections
import os
import random
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zmqmr import counters, mapbuffer, storage, tasks
from zmqmr.errors import UserCodeError
from zmqmr.inputs import Segment
from zmqmr.job import Job, default_partitioner
from zmqmr.output import format_record
from zmqmr.protocol import MIN_MEMORY_LIMIT
from zmqmr.tasks import BadRecords, run_map, run_reduce

MiB = 1024 * 1024


# --- runs -----------------------------------------------------------------------------


def test_write_run_then_read_run_round_trips(tmp_path):
    records = [
        (-3, [1, 2]),
        (0.5, ["x"]),
        ("k", [b"\x00\xff", None, 1.5, True, [1, [2, 3]], {"a": [1]}, "é☃", 2**63 - 1, -(2**63)]),
        (("t", 1), [()]),
    ]
    path = str(tmp_path / "run")
    size, values = storage.write_run(path, records)
    assert size == os.path.getsize(path) and values == 2 + 1 + 9 + 1
    assert os.listdir(tmp_path) == ["run"]  # no temporary file left
    got = list(storage.read_run(path))
    # arrays come back as tuples, everything else as it went in
    assert got == [(-3, (1, 2)), (0.5, ("x",)),
                   ("k", (b"\x00\xff", None, 1.5, True, (1, (2, 3)), {"a": (1,)}, "é☃", 2**63 - 1, -(2**63))),
                   (("t", 1), ((),))]
    assert all(type(key) is type(want) for (key, _), (want, _) in zip(got, records[:3]))
    assert isinstance(got[3][0], tuple)


def test_write_run_replaces_a_file_whole(tmp_path):
    path = str(tmp_path / "run")
    storage.write_run(path, [("a", list(range(1000)))])
    storage.write_run(path, [("b", [1])])
    assert list(storage.read_run(path)) == [("b", (1,))]
    assert storage.write_run(str(tmp_path / "empty"), []) == (0, 0)
    assert list(storage.read_run(str(tmp_path / "empty"))) == []


def test_long_value_lists_are_cut_into_records_of_one_key(tmp_path):
    n = 3 * storage.VALUES_PER_RECORD + 5
    path = str(tmp_path / "run")
    assert storage.write_run(path, [("a", [0]), ("b", list(range(n))), ("c", [1, 2])])[1] == n + 3
    records = list(storage.read_run(path, storage.MIN_READ_BYTES))
    assert [key for key, _ in records] == ["a"] + ["b"] * 4 + ["c"]
    assert all(len(values) <= storage.VALUES_PER_RECORD for _, values in records)
    assert [(key, list(values)) for key, values in storage.group_records(records)] == \
        [("a", [0]), ("b", list(range(n))), ("c", [1, 2])]


def test_runs_bigger_than_a_block_read_back_whole(tmp_path):
    records = [(f"key{i:07d}", [i, "v" * (i % 50)]) for i in range(60_000)]
    path = str(tmp_path / "run")
    size, _ = storage.write_run(path, records)
    assert size > 2 * storage.BLOCK_BYTES
    assert list(storage.read_run(path, storage.MIN_READ_BYTES)) == [(k, tuple(v)) for k, v in records]


def test_fan_in_and_read_buffers_stay_within_memory():
    assert storage.max_fan_in(0) == 2
    assert storage.max_fan_in(MIN_MEMORY_LIMIT) == MIN_MEMORY_LIMIT // (4 * storage.MIN_READ_BYTES)
    for memory in (0, MIN_MEMORY_LIMIT, 256 * MiB, 64 * 1024 * MiB):
        fan_in = storage.max_fan_in(memory)
        assert fan_in >= 2
        read = storage.read_bytes_for(fan_in, memory)
        assert storage.MIN_READ_BYTES <= read <= storage.BLOCK_BYTES
        if memory >= MIN_MEMORY_LIMIT:
            assert fan_in * read <= memory // 2  # readers of one merge use a fraction of the memory


def write_runs(directory, runs):
    paths = []
    for i, records in enumerate(runs):
        path = os.path.join(str(directory), f"in-{i}.run")
        storage.write_run(path, records)
        paths.append(path)
    return paths


def test_merged_records_are_in_key_order_and_equal_keys_keep_run_order(tmp_path):
    paths = write_runs(tmp_path, [[("a", [1]), ("c", [1])], [("a", [2]), ("b", [2]), ("c", [2])], [("c", [3])]])
    merged = list(storage.merged_records(paths, MIN_MEMORY_LIMIT))
    assert merged == [("a", (1,)), ("a", (2,)), ("b", (2,)), ("c", (1,)), ("c", (2,)), ("c", (3,))]
    assert [(k, list(v)) for k, v in storage.group_records(merged)] == [("a", [1, 2]), ("b", [2]), ("c", [1, 2, 3])]
    assert list(storage.merged_records(paths[:1], MIN_MEMORY_LIMIT)) == [("a", (1,)), ("c", (1,))]


def test_combine_records_joins_equal_keys_and_leaves_single_values_alone():
    calls = []

    def combine(key, values):
        calls.append((key, list(values)))
        return [sum(values)]

    records = [("a", (1,)), ("a", (2, 3)), ("b", (4,)), ("c", (5,)), ("c", (6,))]
    assert [(k, list(v)) for k, v in storage.combine_records(iter(records), combine)] == \
        [("a", [6]), ("b", [4]), ("c", [11])]
    assert calls == [("a", [1, 2, 3]), ("c", [5, 6])]  # never for a key holding one value
    assert list(storage.combine_records(iter(records), None)) == records


@pytest.mark.parametrize("combine", [False, True])
def test_merge_to_fan_in_merges_in_passes(tmp_path, combine):
    rng = random.Random(5)
    runs = [sorted(((rng.randrange(40), [rng.randrange(100)]) for _ in range(30)), key=storage.first)
            for _ in range(9)]
    paths = write_runs(tmp_path, runs)
    before = {p: open(p, "rb").read() for p in paths}
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    combiner = (lambda key, values: [sum(values)]) if combine else None
    left = storage.merge_to_fan_in(list(paths), 0, str(scratch), combiner)  # memory 0: fan-in 2
    assert len(left) <= storage.max_fan_in(0) == 2
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths) + ["scratch"]
    assert {os.path.basename(p).split("-")[1] for p in os.listdir(scratch)} >= {"1", "2", "3"}  # 9 > 5 > 3 > 2
    assert {p: open(p, "rb").read() for p in paths} == before  # inputs are only read
    got = {key: list(values) for key, values in storage.group_records(storage.merged_records(left, 0))}
    want = collections.defaultdict(list)
    for run in runs:
        for key, values in run:
            want[key] += values
    if combine:
        assert {k: sum(v) for k, v in got.items()} == {k: sum(v) for k, v in want.items()}
    else:
        assert got == want  # every value, and in run order
    assert storage.merge_to_fan_in(paths[:2], 0, str(scratch)) == paths[:2]  # nothing to do


RUNS = st.lists(st.lists(st.tuples(st.integers(-20, 20), st.integers(0, 9)), max_size=25), min_size=1, max_size=9)


@settings(max_examples=60, deadline=None)
@given(runs=RUNS, memory_units=st.integers(0, 3), combine=st.booleans())
def test_any_runs_merge_to_every_value_of_every_key(runs, memory_units, combine):
    memory = memory_units * 4 * storage.MIN_READ_BYTES  # fan-in 2 or 3
    runs = [[(key, [value]) for key, value in sorted(run, key=storage.first)] for run in runs]
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_runs(tmp, runs)
        scratch = os.path.join(tmp, "scratch")
        os.mkdir(scratch)
        combiner = (lambda key, values: [sum(values)]) if combine else None
        left = storage.merge_to_fan_in(paths, memory, scratch, combiner)
        assert len(left) <= storage.max_fan_in(memory)
        got = [(key, list(values)) for key, values in
               storage.group_records(storage.combine_records(storage.merged_records(left, memory), combiner))]
    want = collections.defaultdict(list)
    for run in runs:
        for key, values in run:
            want[key] += values
    assert [key for key, _ in got] == sorted(want)
    if combine:
        assert [(key, sum(values)) for key, values in got] == [(key, sum(want[key])) for key in sorted(want)]
        assert all(len(values) == 1 for _, values in got)
    else:
        assert got == [(key, want[key]) for key in sorted(want)]


# --- the map buffer: spills and merges end to end ---------------------------------------


class Spy:
    """Which runs were written, by file name."""

    def __init__(self):
        self.written = []
        self.merged = 0

    def names(self, part):
        return [p for p in self.written if part in os.path.basename(p)]


@pytest.fixture
def tiny_memory(monkeypatch):
    """The minimum --memory-limit with a buffer budget of a few pairs, checked every few lines."""
    spy = Spy()
    init = mapbuffer.MapOutput.__init__

    def small_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.budget = 200  # bytes: a spill about every CHECK_EVERY pairs

    write_run, merged_records = storage.write_run, storage.merged_records

    def spy_write(path, records):
        spy.written.append(path)
        return write_run(path, records)

    def spy_merged(paths, memory):
        spy.merged += 1
        return merged_records(paths, memory)

    monkeypatch.setattr(mapbuffer.MapOutput, "__init__", small_init)
    monkeypatch.setattr(mapbuffer, "CHECK_EVERY", 16)
    monkeypatch.setattr(mapbuffer, "MIN_CHECK_EVERY", 16)
    monkeypatch.setattr(tasks, "LINES_PER_SLICE", 4)
    monkeypatch.setattr(storage, "write_run", spy_write)
    monkeypatch.setattr(storage, "merged_records", spy_merged)
    return spy


def small_fan_in(monkeypatch, fan_in=2):
    monkeypatch.setattr(storage, "max_fan_in", lambda memory: fan_in)


def words(path, line):
    for word in line.split():
        yield word, 1


def words_at(path, line):
    """Every word with its line, so each value is distinct and none may be lost or doubled."""
    number, _, text = line.partition(":")
    for word in text.split():
        yield word, int(number)


def summed(key, values):
    yield key, sum(values)


def all_values(key, values):
    yield key, sorted(values)


def corpus(tmp_path, lines=600, vocabulary=60, seed=3, name="in.txt"):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(vocabulary)] + ["é", "日本", "x" * 40]
    text = "".join(f"{n}: " + " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 6))) + "\n"
                   for n in range(lines))
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path), text


def segment(path):
    return Segment(key=os.path.basename(path), path=path, start=0, end=os.path.getsize(path))


def expected(mapper, reducer, texts):
    """The plain in-memory computation: every pair grouped by key, keys sorted, reducer per key."""
    groups = collections.defaultdict(list)
    for name, text in texts:
        for line in text.splitlines():
            for key, value in mapper(name, line):
                groups[key].append(value)
    return "".join(format_record(k, v) for key in sorted(groups) for k, v in reducer(key, iter(groups[key])))


def map_outputs(parts):
    """{partition: [(key, values)]} of the map files, keys checked unique and sorted per partition."""
    out = {}
    for part in parts:
        grouped = [(key, list(values)) for key, values in storage.group_records(storage.read_run(part.path))]
        keys = [key for key, _ in grouped]
        assert keys == sorted(set(keys)), f"partition {part.partition} is not sorted or repeats a key"
        out[part.partition] = grouped
    return out


def reduce_all(job, parts, reducers, tmp_path, name="out", memory=MIN_MEMORY_LIMIT):
    text = ""
    for r in range(reducers):
        out = tmp_path / f"{name}-{r}" / "part"
        run_reduce(job, [p.path for p in parts if p.partition == r], str(out), memory_limit=memory)
        text += out.read_text(encoding="utf-8")
        assert os.listdir(out.parent) == ["part"]  # no merge scratch left behind
    return text


def sorted_lines(text):
    return sorted(text.splitlines())


@pytest.mark.parametrize("reducers", [1, 3])
@pytest.mark.parametrize("combine", [False, True])
@pytest.mark.parametrize("path", ["mapper", "map_split", "skip_bad_records"])
def test_spilled_map_output_is_exactly_the_in_memory_result(tmp_path, tiny_memory, monkeypatch, reducers, combine,
                                                             path):
    small_fan_in(monkeypatch, 10_000)  # one merge pass here; several: the next test
    source, text = corpus(tmp_path)
    mapper, reducer = (words, summed) if combine else (words_at, all_values)

    def map_split(key, lines):
        for line in lines:
            yield from mapper(key, line)

    job = Job("spill", None if path == "map_split" else mapper, reducer, summed if combine else None,
              default_partitioner, map_split if path == "map_split" else None)
    counters.start_attempt()
    parts, stats = run_map(job, [segment(source)], reducers, str(tmp_path / "m"), memory_limit=MIN_MEMORY_LIMIT,
                           bad=BadRecords(0) if path == "skip_bad_records" else None)
    totals = counters.total(counters.attempt_counters())["zmqmr"]
    assert len(tiny_memory.names("spill-")) > 20, "the budget did not force spills"
    assert sorted(os.listdir(tmp_path / "m")) == sorted(f"part-{p.partition:05d}.mpk" for p in parts)
    for part in parts:
        assert all(default_partitioner(key, reducers) == part.partition for key, _ in storage.read_run(part.path))
    pairs = sum(len(list(mapper("in.txt", line))) for line in text.splitlines())
    assert totals["map output records"] == pairs
    assert totals["input records"] == len(text.splitlines()) == stats.records_in
    assert totals["spilled records"] > stats.records_out
    outputs = map_outputs(parts)
    assert stats.records_out == sum(len(values) for records in outputs.values() for _, values in records)
    if combine:
        assert totals["combine input records"] > totals["combine output records"] > 0
        assert all(len(values) == 1 for records in outputs.values() for _, values in records)
    want = expected(mapper, reducer, [("in.txt", text)])
    assert sorted_lines(reduce_all(job, parts, reducers, tmp_path)) == sorted_lines(want)
    if reducers == 1:
        assert reduce_all(job, parts, reducers, tmp_path, "again") == want


@pytest.mark.parametrize("reducers", [1, 3])
@pytest.mark.parametrize("combine", [False, True])
def test_multi_pass_merge_on_the_map_side(tmp_path, tiny_memory, monkeypatch, reducers, combine):
    small_fan_in(monkeypatch, 2)
    source, text = corpus(tmp_path, lines=300)
    mapper, reducer = (words, summed) if combine else (words_at, all_values)
    job = Job("merge", mapper, reducer, summed if combine else None, default_partitioner)
    parts, stats = run_map(job, [segment(source)], reducers, str(tmp_path / "m"), memory_limit=MIN_MEMORY_LIMIT)
    assert tiny_memory.names("merge-2-"), "no second merge pass"
    assert sorted(os.listdir(tmp_path / "m")) == sorted(f"part-{p.partition:05d}.mpk" for p in parts)
    outputs = map_outputs(parts)
    for partition, records in outputs.items():
        wrong = [key for key, _ in records if default_partitioner(key, reducers) != partition]
        assert not wrong, f"partition {partition} holds keys of other partitions: {wrong[:5]}"
    pairs = sum(len(list(mapper("in.txt", line))) for line in text.splitlines())
    if not combine:
        assert stats.records_out == pairs
    want = expected(mapper, reducer, [("in.txt", text)])
    assert sorted_lines(reduce_all(job, parts, reducers, tmp_path)) == sorted_lines(want)


def map_tasks(tmp_path, job, reducers, tasks_count=7, lines=120):
    """Several map tasks' outputs, as a reduce task gets them; and the texts they read."""
    parts, texts = [], []
    for t in range(tasks_count):
        source, text = corpus(tmp_path, lines=lines, seed=t, name=f"in-{t}.txt")
        task_parts, _ = run_map(job, [segment(source)], reducers, str(tmp_path / f"m{t}"))
        parts += task_parts
        texts.append((f"in-{t}.txt", text))
    return parts, texts


@pytest.mark.parametrize("fan_in", [2, 3, 64])
def test_streaming_and_in_memory_reduce_give_the_same_output(tmp_path, monkeypatch, fan_in):
    def first_values(key, values):  # sensitive to the order values arrive in, too
        yield key, list(values)

    job = Job("reduce", words_at, first_values, None, default_partitioner)
    parts, texts = map_tasks(tmp_path, job, 2)
    assert len(parts) == 14
    write_run, merged_records = storage.write_run, storage.merged_records
    written, merges = [], []
    monkeypatch.setattr(storage, "write_run", lambda p, r: written.append(p) or write_run(p, r))
    monkeypatch.setattr(storage, "merged_records", lambda p, m: merges.append(len(p)) or merged_records(p, m))
    small_fan_in(monkeypatch, fan_in)

    monkeypatch.setattr(tasks, "IN_MEMORY_EXPANSION", 0)  # every partition fits: sorted in memory
    in_memory = reduce_all(job, parts, 2, tmp_path, "memory")
    assert merges == [] and written == []
    counters.start_attempt()
    monkeypatch.setattr(tasks, "IN_MEMORY_EXPANSION", 10**12)  # none fits: merged as a stream
    streamed = reduce_all(job, parts, 2, tmp_path, "stream")
    assert merges and max(merges) <= fan_in
    if fan_in < 7:
        assert any(".merge" in p for p in written), "no merge pass on the reduce side"
    assert streamed == in_memory
    totals = counters.total(counters.attempt_counters())["zmqmr"]
    pairs = sum(len(list(words_at(n, line))) for n, text in texts for line in text.splitlines())
    assert totals["reduce input records"] == pairs
    # values arrive in map task order, and in line order within a task
    assert sorted_lines(in_memory) == sorted_lines(expected(words_at, first_values, texts))


def test_the_real_minimum_memory_limit_spills_and_streams(tmp_path):
    """No patching: enough distinct keys overflow a 16 MiB task, and the reduce merges as a stream."""
    n = 60_000
    path = tmp_path / "in.txt"
    path.write_text("".join(f"key{(i * 7919) % n:06d}\n" for i in range(n)))
    job = Job("big", lambda p, line: [(line, 1)], summed, summed, default_partitioner)
    counters.start_attempt()
    parts, stats = run_map(job, [segment(str(path))], 1, str(tmp_path / "m"), memory_limit=MIN_MEMORY_LIMIT)
    totals = counters.total(counters.attempt_counters())["zmqmr"]
    assert totals["spilled records"] > stats.records_out == n  # spilled, then merged
    assert os.path.getsize(parts[0].path) * tasks.IN_MEMORY_EXPANSION > MIN_MEMORY_LIMIT  # reduce streams
    out = tmp_path / "r" / "part"
    run_reduce(job, [parts[0].path], str(out), memory_limit=MIN_MEMORY_LIMIT)
    assert out.read_text() == "".join(f"key{i:06d}\t1\n" for i in range(n))
    assert os.listdir(out.parent) == ["part"]


def test_empty_partitions_with_spills(tmp_path, tiny_memory):
    source, text = corpus(tmp_path)
    job = Job("one", words, summed, None, lambda key, n: 1)
    parts, _ = run_map(job, [segment(source)], 4, str(tmp_path / "m"), memory_limit=MIN_MEMORY_LIMIT)
    assert tiny_memory.names("spill-")
    assert [p.partition for p in parts] == [1]
    assert os.listdir(tmp_path / "m") == ["part-00001.mpk"]
    assert reduce_all(job, parts, 4, tmp_path) == expected(words, summed, [("in.txt", text)])


@pytest.mark.parametrize("fan_in", [2, 64])
def test_unsortable_keys_in_different_spills_are_reported_as_unsortable(tmp_path, tiny_memory, monkeypatch, fan_in):
    small_fan_in(monkeypatch, fan_in)
    path = tmp_path / "in.txt"
    path.write_text("x\n")

    def map_split(key, lines):  # a spill every 16 pairs: each spill holds keys of one type only
        yield from ((f"s{i:02d}", 1) for i in range(32))
        yield from ((i, 1) for i in range(32))

    with pytest.raises(UserCodeError, match="not mutually sortable"):
        run_map(Job("mixed", None, summed, None, default_partitioner, map_split), [segment(str(path))], 1,
                str(tmp_path / "m"), memory_limit=MIN_MEMORY_LIMIT)
    assert len(tiny_memory.names("spill-")) >= 2


UNSORTABLE_RUNS = {
    "at the start": [[("a", [1]), ("b", [1])], [(1, [1]), (2, [1])]],
    # each run sorts, but (1, "x") and (1, 5) only meet in the middle of the merge
    "in the middle": [[((0, 0), [1]), ((1, "x"), [1]), ((2, 0), [1])], [((0, 1), [1]), ((1, 5), [1]), ((3, 0), [1])]],
}


@pytest.mark.parametrize("where", sorted(UNSORTABLE_RUNS))
@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("skipping", [False, True])
def test_unsortable_keys_across_map_outputs_are_reported_at_reduce(tmp_path, monkeypatch, streaming, where,
                                                                   skipping):
    monkeypatch.setattr(tasks, "IN_MEMORY_EXPANSION", 10**12 if streaming else 0)
    runs = write_runs(tmp_path, UNSORTABLE_RUNS[where])
    job = Job("mixed", words, summed, None, default_partitioner)
    bad = BadRecords(10) if skipping else None
    with pytest.raises(UserCodeError, match="not mutually sortable"):
        run_reduce(job, runs, str(tmp_path / "r" / "part"), bad=bad)


# --- the memory budget holds against awkward jobs --------------------------------------------


def many_pairs_per_line(key, line):
    """A document per line: thousands of distinct keys from each."""
    for i in range(2000):
        yield f"{line}-{i:05d}-{'x' * 40}", i


@pytest.mark.parametrize("path", ["mapper", "map_split"])
def test_the_buffer_is_spilled_before_it_outgrows_its_budget(tmp_path, monkeypatch, path):
    """However many pairs a line makes, the buffer is measured in time: never far past the budget."""
    seen = []
    spill = mapbuffer.MapOutput.spill

    def watched_spill(self):
        seen.append((self._estimate(), self.budget))
        spill(self)

    monkeypatch.setattr(mapbuffer.MapOutput, "spill", watched_spill)
    source = tmp_path / "docs.txt"
    source.write_text("".join(f"doc{n}\n" for n in range(300)))

    def map_split(key, lines):
        for line in lines:
            yield from many_pairs_per_line(key, line)

    job = Job("docs", many_pairs_per_line if path == "mapper" else None, lambda k, vs: [(k, sum(vs))], None,
              default_partitioner, map_split if path == "map_split" else None)
    parts, _ = run_map(job, [segment(str(source))], 1, str(tmp_path / "m"), memory_limit=MIN_MEMORY_LIMIT)
    assert len(seen) >= 2, "600,000 pairs of about 150 bytes each must spill within 16 MiB"
    assert max(estimate / budget for estimate, budget in seen) < 1.5, seen
    assert sum(len(values) for _, values in storage.read_run(parts[0].path)) == 300 * 2000


def test_a_partition_of_small_containers_is_merged_as_a_stream(tmp_path, monkeypatch):
    """{"n": 1} is 4 bytes in msgpack and about 190 as a Python dict: measured, not assumed."""
    run = tmp_path / "run.mpk"
    storage.write_run(str(run), [(f"k{i:06d}", [{"n": 1}] * 4) for i in range(60_000)])
    assert tasks._expansion([str(run)]) > 2 * tasks.IN_MEMORY_EXPANSION
    streamed = []
    merge = storage.merge_to_fan_in
    monkeypatch.setattr(storage, "merge_to_fan_in", lambda *args, **kw: streamed.append(1) or merge(*args, **kw))
    job = Job("dicts", None, lambda k, vs: [(k, sum(v["n"] for v in vs))], None, default_partitioner)
    limit = 64 * 2**20
    monkeypatch.setattr(tasks, "rss_bytes", lambda: 0)  # the whole limit is the budget
    assert os.path.getsize(run) * tasks.IN_MEMORY_EXPANSION <= limit  # a fixed factor would load it
    run_reduce(job, [str(run)], str(tmp_path / "out" / "part-00000"), memory_limit=limit)
    assert streamed, "the partition would have taken more than the budget in memory"
    assert open(tmp_path / "out" / "part-00000").read().count("\t4\n") == 60_000
