"""Tests of zmqmr.inputs: finding input files, cutting them into splits, reading splits."""

from __future__ import annotations

import gzip
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqmr import inputs
from zmqmr.errors import InputError
from zmqmr.inputs import (
    DEFAULT_SPLIT_BYTES,
    Block,
    InputFile,
    UndecodableInput,
    expand_inputs,
    line_offset,
    plan_splits,
    read_blocks,
    read_segment,
    strip_line_ending,
)
from zmqmr.protocol import MAX_TASK_ID, Segment


def write(path, data: bytes):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as out:
        out.write(data)
    return path


def expected_lines(data: bytes):
    """Lines of `data` the way a line reader should see them, endings stripped.

    Split on b"\\n"; the empty piece after a final newline (or of an empty file) is not a
    line; a b"\\r" is stripped only where it is part of a CRLF ending. (A lone b"\\r" at
    the very end of a file with no final newline is kept, as a b"\\r" inside a line is.)
    """
    pieces = data.split(b"\n")
    tail = pieces.pop()
    lines = [x[:-1] if x.endswith(b"\r") else x for x in pieces]
    if tail:
        lines.append(tail)
    return lines


def read_all(splits):
    """Every (key, offset, stripped line) read from the splits, in split order."""
    out = []
    for split in splits:
        for seg in split:
            for offset, raw in read_segment(seg):
                out.append((seg.key, offset, raw, strip_line_ending(raw)))
    return out


def lines_by_key(records):
    by_key = {}
    for key, _offset, _raw, line in records:
        by_key.setdefault(key, []).append(line)
    return by_key


# --- strip_line_ending -------------------------------------------------------------


@pytest.mark.parametrize("raw,line", [
    (b"abc\n", b"abc"),
    (b"abc\r\n", b"abc"),
    (b"\n", b""),
    (b"\r\n", b""),
    (b"abc", b"abc"),
    (b"", b""),
    (b"abc\r\r\n", b"abc\r"),
    (b"a\rb\n", b"a\rb"),
    (b"abc\n\n", b"abc\n"),  # only one ending goes
    ("é☃\r\n".encode(), "é☃".encode()),
    (b"abc\r", b"abc\r"),  # a lone CR is not a line ending (lines end at LF only)
])
def test_strip_line_ending(raw, line):
    assert strip_line_ending(raw) == line


# --- expand_inputs -----------------------------------------------------------------


def test_a_file_keeps_the_exact_string_as_key(tmp_path, monkeypatch):
    write(tmp_path / "data" / "a.txt", b"hello\n")
    monkeypatch.chdir(tmp_path)
    for spelling in ["data/a.txt", "./data/a.txt", "data//a.txt", "data/../data/a.txt",
                     str(tmp_path / "data" / "a.txt")]:
        [f] = expand_inputs([spelling])
        assert f.key == spelling
        assert f.path == str(tmp_path / "data" / "a.txt")
        assert os.path.isabs(f.path)
        assert f.size == 6
        assert f.gzip is False


def test_file_given_directly_is_kept_even_if_hidden(tmp_path, monkeypatch):
    write(tmp_path / "_part", b"x\n")
    write(tmp_path / ".dot", b"y\n")
    monkeypatch.chdir(tmp_path)
    assert [f.key for f in expand_inputs(["_part", ".dot"])] == ["_part", ".dot"]


def test_directory_is_read_recursively_in_sorted_order(tmp_path, monkeypatch):
    d = tmp_path / "in"
    for name in ["b.txt", "a.txt", "c/z.txt", "c/a.txt", "c/d/e.txt", "A.txt", "ba/x.txt"]:
        write(d / name, name.encode() + b"\n")
    monkeypatch.chdir(tmp_path)
    keys = [f.key for f in expand_inputs(["in"])]
    assert keys == sorted(keys)
    assert set(keys) == {"in/A.txt", "in/a.txt", "in/b.txt", "in/ba/x.txt", "in/c/a.txt",
                         "in/c/d/e.txt", "in/c/z.txt"}
    # the key is joined onto the directory exactly as given
    assert [f.key for f in expand_inputs(["in/"])] == keys  # os.path.join("in/", "a.txt")
    assert [f.key for f in expand_inputs(["./in"])] == ["./" + k for k in keys]
    absolute = str(d)
    files = expand_inputs([absolute])
    assert [f.key for f in files] == [os.path.join(absolute, k[len("in/"):]) for k in keys]
    for f in files:
        assert f.path == f.key
        with open(f.path, "rb") as stream:
            assert f.size == len(stream.read())


def test_hidden_names_inside_directories_are_skipped(tmp_path, monkeypatch):
    d = tmp_path / "out"
    write(d / "part-00000", b"a\n")
    write(d / "part-00001", b"b\n")
    write(d / "_SUCCESS", b"")
    write(d / ".part-00000.crc", b"crc")
    write(d / "_logs" / "history", b"log\n")
    write(d / ".git" / "config", b"git\n")
    write(d / "sub" / "_tmp", b"tmp\n")
    write(d / "sub" / ".swp", b"swp\n")
    write(d / "sub" / "keep_me", b"keep\n")
    write(d / "sub" / "x.y_z", b"keep too\n")
    monkeypatch.chdir(tmp_path)
    keys = [f.key for f in expand_inputs(["out"])]
    assert keys == ["out/part-00000", "out/part-00001", "out/sub/keep_me", "out/sub/x.y_z"]


def test_directory_given_with_a_hidden_name_is_read(tmp_path, monkeypatch):
    write(tmp_path / "_data" / "a", b"a\n")
    monkeypatch.chdir(tmp_path)
    assert [f.key for f in expand_inputs(["_data"])] == ["_data/a"]


def test_paths_are_taken_in_the_order_given(tmp_path, monkeypatch):
    write(tmp_path / "z.txt", b"z\n")
    write(tmp_path / "d" / "b", b"b\n")
    write(tmp_path / "d" / "a", b"a\n")
    write(tmp_path / "a.txt.gz", gzip.compress(b"g\n"))
    monkeypatch.chdir(tmp_path)
    files = expand_inputs(["z.txt", "d", "a.txt.gz"])
    assert [f.key for f in files] == ["z.txt", "d/a", "d/b", "a.txt.gz"]
    assert [f.gzip for f in files] == [False, False, False, True]


def test_no_input_at_all(tmp_path):
    with pytest.raises(InputError, match="no input"):
        expand_inputs([])


def test_missing_path(tmp_path, monkeypatch):
    write(tmp_path / "here.txt", b"x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        expand_inputs(["here.txt", "not/there.txt"])
    assert "not found" in str(info.value) and "not/there.txt" in str(info.value)


def test_empty_directory(tmp_path, monkeypatch):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        expand_inputs(["empty"])
    assert "empty" in str(info.value) and "no files" in str(info.value)


def test_directory_with_only_hidden_files_is_empty(tmp_path, monkeypatch):
    write(tmp_path / "d" / "_SUCCESS", b"")
    write(tmp_path / "d" / ".hidden", b"x\n")
    write(tmp_path / "d" / "_logs" / "x", b"x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="no files"):
        expand_inputs(["d"])


def test_non_regular_file_given(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "fifo")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        expand_inputs(["fifo"])
    assert "fifo" in str(info.value) and "not a regular file" in str(info.value)
    with pytest.raises(InputError, match="not a regular file"):
        expand_inputs(["/dev/null"])


def test_non_regular_file_inside_directory(tmp_path, monkeypatch):
    write(tmp_path / "d" / "a.txt", b"a\n")
    os.mkfifo(tmp_path / "d" / "pipe")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        expand_inputs(["d"])
    assert "d/pipe" in str(info.value) and "not a regular file" in str(info.value)


def test_broken_symlink_inside_directory(tmp_path, monkeypatch):
    write(tmp_path / "d" / "a.txt", b"a\n")
    os.symlink(tmp_path / "nowhere", tmp_path / "d" / "link")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as info:
        expand_inputs(["d"])
    assert "d/link" in str(info.value)


def test_symlinked_file_is_read(tmp_path, monkeypatch):
    write(tmp_path / "real.txt", b"abc\n")
    os.symlink(tmp_path / "real.txt", tmp_path / "link.txt")
    monkeypatch.chdir(tmp_path)
    [f] = expand_inputs(["link.txt"])
    assert f.key == "link.txt" and f.size == 4


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path, monkeypatch):
    write(tmp_path / "secret", b"x\n")
    os.chmod(tmp_path / "secret", 0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="secret"):
        expand_inputs(["secret"])


# --- plan_splits --------------------------------------------------------------------


def fake(key, size, gz=False):
    return InputFile(key=key, path="/abs/" + key, size=size, gzip=gz)


@pytest.mark.parametrize("mappers", [1, 2, 3, 7, 10, 100])
def test_mappers_gives_exactly_that_many_splits(mappers):
    files = [fake("a", 1000), fake("b", 0), fake("c", 17), fake("d.gz", 500, True), fake("e", 3)]
    splits = plan_splits(files, mappers=mappers)
    assert len(splits) == mappers
    assert all(isinstance(s, tuple) for s in splits)
    # the plain files are covered exactly, in order; the gzip file whole, once
    for f in files:
        segs = [seg for split in splits for seg in split if seg.key == f.key]
        if f.gzip:
            assert segs == [Segment(key=f.key, path=f.path, start=0, end=f.size, gzip=True, size=f.size)]
            continue
        pos = 0
        for seg in segs:
            assert seg.path == f.path and seg.gzip is False
            assert seg.start == pos < seg.end
            pos = seg.end
        assert pos == f.size


def test_mappers_cut_evenly_across_files():
    files = [fake("a", 50), fake("b", 30), fake("c", 20)]
    splits = plan_splits(files, mappers=4)
    sizes = [sum(seg.end - seg.start for seg in split) for split in splits]
    assert sizes == [25, 25, 25, 25]
    assert [(s.key, s.start, s.end) for s in splits[1]] == [("a", 25, 50)]
    assert [(s.key, s.start, s.end) for s in splits[2]] == [("b", 0, 25)]
    assert [(s.key, s.start, s.end) for s in splits[3]] == [("b", 25, 30), ("c", 0, 20)]


def test_more_mappers_than_bytes_still_gives_that_many_splits():
    splits = plan_splits([fake("a", 3)], mappers=10)
    assert len(splits) == 10
    assert sum(len(s) for s in splits) == 3


@pytest.mark.parametrize("mappers", [0, -1, MAX_TASK_ID + 1])
def test_mappers_out_of_range(mappers):
    with pytest.raises(InputError, match="mappers"):
        plan_splits([fake("a", 10)], mappers=mappers)


@pytest.mark.parametrize("mappers", [1, 2, 5, 20])
def test_gzip_files_are_never_cut_with_mappers(mappers):
    files = [fake("a.gz", 1000, True), fake("b", 10), fake("c.gz", 5, True), fake("d.gz", 999, True)]
    splits = plan_splits(files, mappers=mappers)
    for f in files:
        if f.gzip:
            segs = [seg for split in splits for seg in split if seg.key == f.key]
            assert segs == [Segment(key=f.key, path=f.path, start=0, end=f.size, gzip=True, size=f.size)]


def sizes_of(splits):
    return [sum(seg.end - seg.start for seg in split) for split in splits]


def layout(splits):
    """Splits as lists of (key, start, end), for exact comparisons."""
    return [[(seg.key, seg.start, seg.end) for seg in split] for split in splits]


def check_packing(files, splits, split_bytes, cap=None):
    """The policy without --mappers, as invariants: greedy packing in input order.

    Every non-empty file is covered once, in order (plain files by contiguous pieces,
    gzip files whole); empty files are left out; no split is empty (unless the input
    is, then there is exactly one empty split); no split holds more than `cap` segments
    or more than split_bytes bytes, except a gzip file alone; a file is cut only at the
    end of a full split; and a split is closed only when it had to be (full, at the
    cap, or the next file is a gzip file that does not fit).
    """
    cap = inputs.MAX_SEGMENTS_PER_SPLIT if cap is None else cap
    wanted = [f for f in files if f.size > 0]
    if not wanted:
        assert splits == [()]
        return
    assert all(isinstance(split, tuple) and split for split in splits)
    segs = [seg for split in splits for seg in split]
    i = 0
    for f in wanted:
        pos = 0
        while pos < f.size:
            seg = segs[i]
            assert (seg.key, seg.path, seg.gzip, seg.start) == (f.key, f.path, f.gzip, pos)
            assert pos < seg.end <= f.size
            assert not f.gzip or seg.end == f.size
            pos = seg.end
            i += 1
    assert i == len(segs), "segments beyond the input, or of empty files"
    size_of = {f.key: f.size for f in files}
    sizes = sizes_of(splits)
    for split, size in zip(splits, sizes):
        assert len(split) <= cap
        if size > split_bytes:
            assert len(split) == 1 and split[0].gzip
        for j, seg in enumerate(split):
            if seg.end < size_of[seg.key]:  # cut: the piece ends its split, which is full
                assert j == len(split) - 1 and size == split_bytes
            if seg.start > 0:  # the rest of a cut file starts a split
                assert j == 0
    for k in range(len(splits) - 1):
        after = splits[k + 1][0]
        full = sizes[k] >= split_bytes
        at_cap = len(splits[k]) == cap
        gzip_does_not_fit = after.gzip and sizes[k] + after.end > split_bytes
        assert full or at_cap or gzip_does_not_fit, (k, layout(splits))


def test_small_files_share_a_split():
    files = [fake("a", 10), fake("b", 20), fake("c", 30)]
    assert layout(plan_splits(files, split_bytes=100)) == [[("a", 0, 10), ("b", 0, 20), ("c", 0, 30)]]
    assert layout(plan_splits(files, split_bytes=60)) == [[("a", 0, 10), ("b", 0, 20), ("c", 0, 30)]]
    # a file that does not fit is cut: the split is filled to split_bytes exactly
    assert layout(plan_splits(files, split_bytes=25)) == [
        [("a", 0, 10), ("b", 0, 15)], [("b", 15, 20), ("c", 0, 20)], [("c", 20, 30)]]


def test_big_files_are_cut_and_the_next_file_fills_the_rest():
    files = [fake("a", 250), fake("b", 30), fake("c", 40), fake("d", 100)]
    assert layout(plan_splits(files, split_bytes=100)) == [
        [("a", 0, 100)],
        [("a", 100, 200)],
        [("a", 200, 250), ("b", 0, 30), ("c", 0, 20)],
        [("c", 20, 40), ("d", 0, 80)],
        [("d", 80, 100)],
    ]
    splits = plan_splits(files, split_bytes=100)
    assert [seg.path for split in splits for seg in split][:2] == ["/abs/a", "/abs/a"]
    check_packing(files, splits, 100)


def test_gzip_is_never_cut_and_starts_its_own_split_when_it_does_not_fit():
    files = [fake("a", 60), fake("g.gz", 50, True), fake("b", 30), fake("h.gz", 20, True),
             fake("big.gz", 500, True), fake("c", 10), fake("i.gz", 100, True), fake("d", 5)]
    splits = plan_splits(files, split_bytes=100)
    assert layout(splits) == [
        [("a", 0, 60)],                                   # g.gz (50) does not fit in the 40 left
        [("g.gz", 0, 50), ("b", 0, 30), ("h.gz", 0, 20)],  # h.gz fits exactly
        [("big.gz", 0, 500)],                             # bigger than a split: alone
        [("c", 0, 10)],                                   # nothing joins a split past its size
        [("i.gz", 0, 100)],                               # 100 does not fit in the 90 left
        [("d", 0, 5)],
    ]
    assert [seg.gzip for split in splits for seg in split] == [False, True, False, True, True, False, True, False]
    check_packing(files, splits, 100)


def test_a_gzip_file_first_in_a_split_is_taken_whatever_its_size():
    splits = plan_splits([fake("a.gz", 1000, True), fake("b.gz", 1000, True)], split_bytes=1)
    assert layout(splits) == [[("a.gz", 0, 1000)], [("b.gz", 0, 1000)]]


def test_empty_files_are_left_out():
    files = [fake("e1", 0), fake("a", 5), fake("e2", 0), fake("e3.gz", 0, True), fake("b", 5), fake("e4", 0)]
    assert layout(plan_splits(files, split_bytes=100)) == [[("a", 0, 5), ("b", 0, 5)]]
    assert layout(plan_splits(files, split_bytes=5)) == [[("a", 0, 5)], [("b", 0, 5)]]


@pytest.mark.parametrize("files", [[], [fake("empty", 0)], [fake("e1", 0), fake("e2.gz", 0, True)]])
def test_no_bytes_at_all_make_one_empty_split(files):
    assert plan_splits(files) == [()]
    assert plan_splits(files, split_bytes=1) == [()]


def test_segments_per_split_are_capped(monkeypatch):
    files = [fake(f"f{i:02d}", 1) for i in range(10)]
    monkeypatch.setattr(inputs, "MAX_SEGMENTS_PER_SPLIT", 3)
    splits = plan_splits(files, split_bytes=1000)
    assert [len(split) for split in splits] == [3, 3, 3, 1]
    assert [seg.key for split in splits for seg in split] == [f.key for f in files]
    check_packing(files, splits, 1000, cap=3)


def test_real_segment_cap_keeps_thousands_of_tiny_files_in_few_splits():
    cap = inputs.MAX_SEGMENTS_PER_SPLIT
    files = [fake(f"f{i:05d}", 10) for i in range(cap + 100)]
    splits = plan_splits(files)
    assert [len(split) for split in splits] == [cap, 100]
    check_packing(files, splits, DEFAULT_SPLIT_BYTES)


def test_default_split_bytes():
    big = fake("big", 3 * DEFAULT_SPLIT_BYTES + 1)
    assert sizes_of(plan_splits([big])) == [DEFAULT_SPLIT_BYTES] * 3 + [1]
    assert len(plan_splits([fake("small", 10)])) == 1
    many = [fake(f"s{i}", DEFAULT_SPLIT_BYTES // 1000) for i in range(999)]
    assert len(plan_splits(many)) == 1  # a thousand small files are one task, not a thousand


FAKE_FILE = st.tuples(st.integers(0, 300), st.integers(0, 4)).map(lambda t: (t[0], t[1] == 0))


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(FAKE_FILE, max_size=12), split_bytes=st.integers(1, 400), cap=st.integers(1, 5),
       patch_cap=st.booleans())
def test_packing_policy_holds_for_any_input(sizes, split_bytes, cap, patch_cap):
    files = [fake(f"f{i:02d}" + (".gz" if gz else ""), size, gz) for i, (size, gz) in enumerate(sizes)]
    with pytest.MonkeyPatch.context() as mp:
        if patch_cap:
            mp.setattr(inputs, "MAX_SEGMENTS_PER_SPLIT", cap)
        splits = plan_splits(files, split_bytes=split_bytes)
        check_packing(files, splits, split_bytes, cap if patch_cap else None)


def test_too_many_map_tasks(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_TASK_ID", 10)  # a real 10M-task plan is slow to build
    assert len(plan_splits([fake("a", 10)], split_bytes=1)) == 10
    with pytest.raises(InputError, match="map tasks") as info:
        plan_splits([fake("a", 11)], split_bytes=1)
    assert "--split-size" in str(info.value)
    # empty files make no task; the gzip file makes one, however big
    mixed = [fake("a", 5), fake("b", 0), fake("c.gz", 100, True), fake("d", 4)]
    assert len(plan_splits(mixed, split_bytes=1)) == 10
    with pytest.raises(InputError, match="map tasks"):
        plan_splits(mixed + [fake("e", 1)], split_bytes=1)
    # small files packed together stay well under the limit
    assert len(plan_splits([fake(f"f{i}", 1) for i in range(1000)], split_bytes=100)) == 10
    with pytest.raises(InputError, match="map tasks"):
        plan_splits([fake(f"f{i}", 1) for i in range(1001)], split_bytes=100)


# --- read_segment ---------------------------------------------------------------------


def test_read_segment_yields_offsets_and_raw_lines(tmp_path):
    data = b"one\r\ntwo\n\nthree"
    path = write(tmp_path / "f", data)
    got = list(read_segment(Segment(key="f", path=path, start=0, end=len(data))))
    assert got == [(0, b"one\r\n"), (5, b"two\n"), (9, b"\n"), (10, b"three")]


def test_line_belongs_to_the_segment_holding_its_first_byte(tmp_path):
    data = b"aaaa\nbbbb\ncccc\n"
    path = write(tmp_path / "f", data)

    def read(start, end):
        return [raw for _, raw in read_segment(Segment(key="f", path=path, start=start, end=end))]

    assert read(0, 1) == [b"aaaa\n"]
    assert read(1, 5) == []
    assert read(1, 6) == [b"bbbb\n"]
    assert read(5, 6) == [b"bbbb\n"]
    assert read(4, 5) == []            # starts on the "\n" of line one
    assert read(5, 5) == []
    assert read(6, len(data)) == [b"cccc\n"]
    assert read(len(data), len(data)) == []


def test_every_pair_of_cut_points(tmp_path):
    data = "a\r\n\n\nbé\r\n\r\r\nxyz\n𝄞\n\nlast\r".encode()
    path = write(tmp_path / "f", data)
    want = expected_lines(data)
    n = len(data)
    for c1 in range(n + 1):
        for c2 in range(c1, n + 1):
            segs = [Segment(key="f", path=path, start=a, end=b)
                    for a, b in [(0, c1), (c1, c2), (c2, n)]]
            got = read_all([segs])
            assert [line for *_, line in got] == want, (c1, c2)
            for _key, offset, raw, _line in got:
                assert data[offset:offset + len(raw)] == raw


def test_gzip_input_is_read_whole(tmp_path, monkeypatch):
    text = "".join(f"line {i} é☃\r\n" if i % 3 else f"{'x' * (i * 3)}\n" for i in range(2000))
    data = text.encode() + b"no newline at the end"
    write(tmp_path / "in.txt.gz", gzip.compress(data))
    monkeypatch.chdir(tmp_path)
    files = expand_inputs(["in.txt.gz"])
    assert files[0].gzip and files[0].size == os.path.getsize(tmp_path / "in.txt.gz")
    for splits in (plan_splits(files, mappers=5), plan_splits(files, split_bytes=100)):
        segs = [seg for split in splits for seg in split]
        assert len(segs) == 1 and segs[0].gzip
        got = read_all(splits)
        assert [line for *_, line in got] == expected_lines(data)
        # offsets are into the uncompressed stream
        for _key, offset, raw, _line in got:
            assert data[offset:offset + len(raw)] == raw


def test_gzip_segment_ignores_its_byte_range(tmp_path):
    data = b"a\nb\nc\n"
    path = write(tmp_path / "x.gz", gzip.compress(data))
    got = list(read_segment(Segment(key="x.gz", path=path, start=5, end=6, gzip=True)))
    assert got == [(0, b"a\n"), (2, b"b\n"), (4, b"c\n")]


def test_large_file_across_many_buffers(tmp_path, monkeypatch):
    lines = [(b"%d " % i) * (i % 30) + ("é" * (i % 7)).encode() for i in range(30_000)]
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 2 * 1024 * 1024
    write(tmp_path / "big.txt", data)
    monkeypatch.chdir(tmp_path)
    files = expand_inputs(["big.txt"])
    for splits in (plan_splits(files, mappers=7), plan_splits(files, split_bytes=300_001)):
        assert [line for *_, line in read_all(splits)] == lines


# --- read_blocks ----------------------------------------------------------------------


def test_read_blocks_gives_whole_lines_a_block_at_a_time(tmp_path):
    data = b"one\r\ntwo\n\nthree"
    path = write(tmp_path / "f", data)
    seg = Segment(key="f", path=path, start=0, end=len(data))
    assert list(read_blocks(seg, block_bytes=4)) == [
        Block(offset=0, lines_before=0, raw=b"one\r\n", lines=["one"]),  # a line is never cut
        Block(offset=5, lines_before=1, raw=b"two\n", lines=["two"]),
        Block(offset=9, lines_before=2, raw=b"\nthree", lines=["", "three"]),
    ]
    assert list(read_blocks(seg)) == [Block(0, 0, data, ["one", "two", "", "three"])]
    assert list(read_blocks(Segment(key="f", path=path, start=1, end=9), block_bytes=1)) == [
        Block(offset=5, lines_before=0, raw=b"two\n", lines=["two"])]
    assert list(read_blocks(Segment(key="f", path=path, start=6, end=7))) == []


@pytest.mark.parametrize("data", [
    b"",
    b"\n",
    b"no newline",
    b"lone cr at the end\r",
    b"cr\rinside\r\r\nand crlf\r\n\r\n\n",
    "é\r\n☃\n𝄞\r\n\u2028 line separator is not a line end\n\x0b\x0c\x1c\x85\n".encode(),
    b"x" * 5000 + b"\n" + b"y" * 3 + b"\n" + b"z" * 7000,
])
@pytest.mark.parametrize("block_bytes", [1, 2, 3, 7, 64, 4096, 1 << 20])
def test_read_blocks_equals_read_segment(tmp_path, data, block_bytes):
    path = write(tmp_path / "f", data)
    check_blocks(Segment(key="f", path=path, start=0, end=len(data)), block_bytes)
    gz = write(tmp_path / "f.gz", gzip.compress(data))
    check_blocks(Segment(key="f.gz", path=gz, start=0, end=os.path.getsize(gz), gzip=True), block_bytes)


def test_read_blocks_at_every_pair_of_cut_points(tmp_path):
    data = "a\r\n\n\nbé\r\n\r\r\nxyz\n𝄞\n\nlast\r".encode()
    path = write(tmp_path / "f", data)
    n = len(data)
    for block_bytes in (1, 3, 100):
        lines = []
        for c1 in range(n + 1):
            for c2 in range(c1, n + 1):
                lines = []
                for a, b in [(0, c1), (c1, c2), (c2, n)]:
                    blocks = check_blocks(Segment(key="f", path=path, start=a, end=b), block_bytes)
                    lines += [line.encode() for block in blocks for line in block.lines]
                assert lines == expected_lines(data), (c1, c2, block_bytes)


def test_line_offset_finds_a_line_of_a_block(tmp_path):
    data = b"a\r\nbb\n\nccc\nlast"
    path = write(tmp_path / "f", data)
    seg = Segment(key="f", path=path, start=0, end=len(data))
    assert [line_offset(seg, 0, i) for i in range(5)] == [0, 3, 6, 7, 11]
    assert [line_offset(seg, 6, i) for i in range(3)] == [6, 7, 11]


def test_undecodable_input_names_the_byte_and_its_line(tmp_path):
    lines = [f"line {i} é".encode() for i in range(200)]
    lines[137] = b"bad \xff here"
    data = b"\r\n".join(lines) + b"\r\n"
    path = write(tmp_path / "f", data)
    bad_byte = data.index(b"\xff")
    for block_bytes in (1, 50, 1 << 20):
        seg = Segment(key="f", path=path, start=0, end=len(data))
        read = []
        with pytest.raises(UndecodableInput) as info:
            for block in read_blocks(seg, block_bytes=block_bytes):
                read += block.lines
        assert (info.value.offset, info.value.line_number) == (bad_byte, 138)
        assert "invalid start byte" in info.value.reason
        assert read == [line.decode() for line in lines[:len(read)]] and len(read) <= 137
        # a segment that starts later counts lines from its own start
        later = data.index(b"line 100 ")
        with pytest.raises(UndecodableInput) as info:
            list(read_blocks(Segment(key="f", path=path, start=later, end=len(data)), block_bytes=block_bytes))
        assert (info.value.offset, info.value.line_number) == (bad_byte, 38)
        gz = write(tmp_path / "f.gz", gzip.compress(data))
        with pytest.raises(UndecodableInput) as info:
            list(read_blocks(Segment(key="f.gz", path=gz, start=0, end=1, gzip=True), block_bytes=block_bytes))
        assert (info.value.offset, info.value.line_number) == (bad_byte, 138)
    # told to replace, it reads on
    lines_read = [line for block in read_blocks(seg, errors="replace") for line in block.lines]
    assert lines_read[137] == "bad \ufffd here" and len(lines_read) == 200


BYTE_PIECES = st.sampled_from([b"a", b"Z ", b"\n", b"\r", b"\r\n", b"\xff", b"\x81", b"\xc3", b"\xe2\x82",
                               "é".encode(), "€".encode(), "𝄞".encode(), b"\xf0\x9d", b"\xed\xa0\x80"])


@settings(deadline=None, max_examples=200)
@given(pieces=st.lists(BYTE_PIECES, max_size=40), cuts=st.tuples(st.integers(0, 200), st.integers(0, 200)),
       encoding=st.sampled_from(["utf-8", "latin-1", "cp1252"]),
       errors=st.sampled_from(["strict", "replace", "surrogateescape", "ignore", "backslashreplace"]),
       block_bytes=st.integers(1, 24))
def test_read_blocks_decodes_any_bytes_as_line_by_line_decoding_would(pieces, cuts, encoding, errors,
                                                                       block_bytes):
    data = b"".join(pieces)
    start, end = sorted(min(c, len(data)) for c in cuts)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(os.path.join(tmp, "f"), data)
        seg = Segment(key="f", path=path, start=start, end=end)
        want, failure = [], None
        for number, (offset, raw) in enumerate(read_segment(seg), 1):
            try:
                want.append(strip_line_ending(raw).decode(encoding, errors))
            except UnicodeDecodeError as exc:
                failure = (offset + exc.start, number)
                break
        got = []
        if failure is None:
            got = [line for block in read_blocks(seg, encoding, errors, block_bytes) for line in block.lines]
            assert got == want
            check_blocks(seg, block_bytes, encoding, errors)
        else:
            with pytest.raises(UndecodableInput) as info:
                for block in read_blocks(seg, encoding, errors, block_bytes):
                    got += block.lines
            assert (info.value.offset, info.value.line_number) == failure
            assert got == want[:len(got)]


# --- the key property -----------------------------------------------------------------

LINE_CHARS = st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))
LINE = st.one_of(
    st.text(LINE_CHARS, max_size=20),                      # short, any text (may hold \r)
    st.just(""),                                            # empty line
    st.sampled_from(["é", "☃", "𝄞", "日本", "\u00a0"]).flatmap(  # multi-byte UTF-8
        lambda c: st.integers(1, 40).map(lambda n: c * n)),
    st.tuples(st.sampled_from("ab☃"), st.integers(200, 3000)).map(lambda t: t[0] * t[1]),  # long
)
FILE = st.fixed_dictionaries({
    "lines": st.lists(st.tuples(LINE, st.sampled_from(["\n", "\r\n"])), max_size=30),
    "final_newline": st.booleans(),
    "gzip": st.integers(0, 5).map(lambda n: n == 0),
})


def file_bytes(spec):
    parts = [text + ending for text, ending in spec["lines"]]
    if parts and not spec["final_newline"]:
        parts[-1] = spec["lines"][-1][0]
    return "".join(parts).encode("utf-8")


def check_blocks(seg, block_bytes, encoding="utf-8", errors="strict"):
    """read_blocks yields exactly read_segment's lines, decoded, in blocks; line_offset finds each line."""
    want = list(read_segment(seg))
    blocks = list(read_blocks(seg, encoding, errors, block_bytes))
    assert [line for block in blocks for line in block.lines] == \
        [strip_line_ending(raw).decode(encoding, errors) for _, raw in want]
    assert b"".join(block.raw for block in blocks) == b"".join(raw for _, raw in want)
    before = 0
    for block in blocks:
        assert block.lines, "no empty blocks"
        assert block.lines_before == before
        raws = [raw for _, raw in want[before:before + len(block.lines)]]
        assert block.raw == b"".join(raws)
        assert block.offset == want[before][0]
        # bounded: every line of a block starts within its first block_bytes bytes
        assert len(block.raw) - len(raws[-1]) < block_bytes
        if not seg.gzip:
            for index in range(len(block.lines)):
                assert line_offset(seg, block.offset, index) == want[before + index][0]
        before += len(block.lines)
    assert before == len(want)
    return blocks


@settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(FILE, min_size=1, max_size=4), mode=st.sampled_from(["mappers", "split_bytes"]),
       data=st.data())
def test_every_line_read_exactly_once_in_order(files, mode, data):
    with tempfile.TemporaryDirectory() as tmp:
        contents = {}
        paths = []
        for i, spec in enumerate(files):
            raw = file_bytes(spec)
            name = os.path.join(tmp, f"f{i:02d}.txt" + (".gz" if spec["gzip"] else ""))
            write(name, gzip.compress(raw, mtime=0) if spec["gzip"] else raw)
            contents[name] = raw
            paths.append(name)
        use_dir = data.draw(st.booleans(), label="as directory")
        inputs = expand_inputs([tmp] if use_dir else paths)
        assert [f.key for f in inputs] == paths

        if mode == "mappers":
            mappers = data.draw(st.integers(1, 20), label="mappers")
            splits = plan_splits(inputs, mappers=mappers)
            assert len(splits) == mappers
        else:
            # small, but not so small that a file makes thousands of splits
            largest = max(f.size for f in inputs)
            low = max(1, largest // 300)
            split_bytes = data.draw(st.integers(low, low + 64), label="split_bytes")
            splits = plan_splits(inputs, split_bytes=split_bytes)
            check_packing(inputs, splits, split_bytes)

        for f in inputs:
            segs = [seg for split in splits for seg in split if seg.key == f.key]
            if f.gzip:
                assert len(segs) == 1 and segs[0].start == 0 and segs[0].end == f.size
            elif segs:
                assert segs[0].start == 0 and segs[-1].end == f.size
                assert all(a.end == b.start for a, b in zip(segs, segs[1:]))

        records = read_all(splits)
        got = lines_by_key(records)
        for name, raw in contents.items():
            assert got.get(name, []) == expected_lines(raw), name
        assert set(got) <= set(contents)
        # each raw line really is at its offset, and (uncut files) starts inside its segment
        for key, offset, line_raw, _ in records:
            assert contents[key][offset:offset + len(line_raw)] == line_raw
        for split in splits:
            for seg in split:
                if not seg.gzip:
                    for offset, _ in read_segment(seg):
                        assert seg.start <= offset < seg.end
                block_bytes = data.draw(st.integers(1, 64), label="block_bytes")
                check_blocks(seg, block_bytes)
