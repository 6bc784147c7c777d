"""Tests of zmqmr.inputs: finding input files, cutting them into splits, reading splits."""

from __future__ import annotations

import gzip
import math
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zmqmr import inputs
from zmqmr.errors import InputError
from zmqmr.inputs import (
    DEFAULT_SPLIT_BYTES,
    InputFile,
    expand_inputs,
    plan_splits,
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
            assert segs == [Segment(key=f.key, path=f.path, start=0, end=f.size, gzip=True)]
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
            assert segs == [Segment(key=f.key, path=f.path, start=0, end=f.size, gzip=True)]


@pytest.mark.parametrize("split_bytes", [1, 7, 100, 1000, 10**9])
def test_without_mappers_one_split_per_split_bytes_and_at_least_one_per_file(split_bytes):
    files = [fake("a", 1000), fake("b", 0), fake("c", 1), fake("d.gz", 5000, True), fake("e", 999)]
    splits = plan_splits(files, split_bytes=split_bytes)
    assert all(len(split) == 1 for split in splits)
    for f in files:
        segs = [split[0] for split in splits if split[0].key == f.key]
        want = 1 if f.gzip else max(1, math.ceil(f.size / split_bytes))
        assert len(segs) == want
        assert segs[0].start == 0 and segs[-1].end == f.size
        assert all(a.end == b.start for a, b in zip(segs, segs[1:]))
        assert all(seg.gzip == f.gzip and seg.path == f.path for seg in segs)
        if len(segs) > 1:  # about split_bytes each
            assert all(split_bytes - 1 <= s.end - s.start <= split_bytes for s in segs)
    # files in order
    keys = [split[0].key for split in splits]
    assert keys == sorted(keys)


def test_default_split_bytes():
    big = fake("big", 3 * DEFAULT_SPLIT_BYTES + 1)
    assert len(plan_splits([big])) == 4
    assert len(plan_splits([fake("small", 10)])) == 1


def test_too_many_map_tasks(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_TASK_ID", 10)  # a real 10M-task plan is slow to build
    assert len(plan_splits([fake("a", 10)], split_bytes=1)) == 10
    with pytest.raises(InputError, match="map tasks"):
        plan_splits([fake("a", 11)], split_bytes=1)
    with pytest.raises(InputError, match="map tasks"):
        plan_splits([fake("a", 5), fake("b", 0), fake("c.gz", 100, True), fake("d", 4)],
                    split_bytes=1)


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
            assert len(splits) >= len(inputs)

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
