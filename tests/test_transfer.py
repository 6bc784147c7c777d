"""The shuffle service and the task process's transfers, over real sockets on this host.

A reducer fetches a map output file it cannot read where its map worker wrote it; the
service serves only finished map output of its current job, never anything else; a peer
that never answers fails the transfer, naming the map tasks whose output is missing.
"""

from __future__ import annotations

import os
import threading

import msgpack
import pytest
import zmq

from zmqmr import protocol, transfer
from zmqmr.shuffle import ShuffleService
from zmqmr.staging import Staging
from zmqmr.transfer import Peers, TransferFailed, fetch_map_outputs, stage_segment, upload
from zmqmr.inputs import read_segment

JOB = "0123456789ab"


@pytest.fixture
def service(tmp_path):
    context = zmq.Context()
    svc = ShuffleService(context, "127.0.0.1", 0, "127.0.0.1")
    work = tmp_path / "work"
    svc.serve_job(JOB, str(work))
    stop = threading.Event()

    def serve():
        poller = zmq.Poller()
        poller.register(svc.sock, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(50):
                svc.handle()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield svc, work
    stop.set()
    thread.join(5)
    svc.close()
    context.term()


def map_file(work, index, attempt, partition, data: bytes) -> str:
    directory = work / JOB / f"map-{index:05d}-a{attempt}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{partition:05d}.mpk"
    path.write_bytes(data)
    return str(path)


def elsewhere(path: str) -> str:
    """The same file as a map worker on another host names it: not readable here."""
    return "/nonexistent-host-root/" + transfer.fetch_path(path)


def test_a_reducer_fetches_what_it_cannot_read_and_reads_what_it_can(service, tmp_path):
    svc, work = service
    big = os.urandom(3 * protocol.MAX_CHUNK_BYTES + 12345)  # several chunks, the last one short
    remote = map_file(work, 3, 17, 1, big)
    local = map_file(work, 4, 18, 1, b"local bytes")
    empty = map_file(work, 5, 19, 1, b"")
    svc.offer(3, 17)
    svc.offer(5, 19)
    sources = [protocol.MapOutput(map=3, path=elsewhere(remote), size=len(big), shuffle=svc.endpoint),
               protocol.MapOutput(map=4, path=local, size=11, shuffle=svc.endpoint),
               protocol.MapOutput(map=5, path=elsewhere(empty), size=0, shuffle=svc.endpoint)]
    peers = Peers()
    try:
        paths = fetch_map_outputs(sources, str(tmp_path / "fetched"), peers, roots=[str(work / JOB)])
    finally:
        peers.close()
    assert paths[1] == local  # read in place: no copy
    assert open(paths[0], "rb").read() == big
    assert open(paths[2], "rb").read() == b""
    assert svc.served_bytes == len(big)


def fetch_raw(endpoint: str, path, timeout_ms: int = 2000):
    """One fetch as any client could send it; the decoded answer, or None if none came."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(endpoint)
    try:
        sock.send(msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "fetch", "path": path, "offset": 0,
                                 "length": 65536, "tag": 1}, use_bin_type=True))
        if not sock.poll(timeout_ms):
            return None
        return msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close()


def test_the_service_refuses_everything_but_finished_map_output_of_its_job(service, tmp_path):
    svc, work = service
    good = map_file(work, 1, 7, 0, b"secret-free map output")
    unfinished = map_file(work, 2, 8, 0, b"an attempt still running")
    other_job = work / "ba9876543210" / "map-00001-a7"
    other_job.mkdir(parents=True)
    (other_job / "part-00000.mpk").write_bytes(b"another job's")
    svc.offer(1, 7)
    svc.offer(9, 9)
    linked = work / JOB / "map-00009-a9"
    linked.mkdir()
    os.symlink("/etc/passwd", linked / "part-00000.mpk")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "part-00000.mpk").write_bytes(b"outside")
    svc.offer(10, 10)
    os.symlink(outside, work / JOB / "map-00010-a10")

    answer = fetch_raw(svc.endpoint, transfer.fetch_path(good))
    assert answer["data"] == b"secret-free map output" and answer["eof"] and not answer["error"]
    refused = {
        "../../etc/passwd": "not the name of a map output file",
        "/etc/passwd": "not the name of a map output file",
        f"{JOB}/../../../etc/passwd": "not the name of a map output file",
        f"{JOB}/map-00001-a7/../../x/part-00000.mpk": "not the name of a map output file",
        "ba9876543210/map-00001-a7/part-00000.mpk": "not a file of this worker's current job",
        transfer.fetch_path(unfinished): "no map attempt 8 of map task 2 finished",
        f"{JOB}/map-00009-a9/part-00000.mpk": "leads outside",
        f"{JOB}/map-00010-a10/part-00000.mpk": "leads outside",
    }
    for path, why in refused.items():
        answer = fetch_raw(svc.endpoint, path)
        assert answer is not None and why in answer["error"], (path, answer)
        assert not answer.get("data")
    assert fetch_raw(svc.endpoint, 12) is None  # not even a string: dropped
    # Still serving after all that.
    assert fetch_raw(svc.endpoint, transfer.fetch_path(good))["data"] == b"secret-free map output"


def test_an_unreachable_shuffle_service_fails_the_fetch_naming_its_map_tasks(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "REPLY_TIMEOUT", 0.3)
    monkeypatch.setattr(transfer, "RETRIES", 1)
    with zmq.Context() as context:  # a ROUTER that never answers
        silent = context.socket(zmq.ROUTER)
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        sources = [protocol.MapOutput(map=m, path=f"/nowhere/{JOB}/map-0000{m}-a{m}/part-00000.mpk", size=10,
                                      shuffle=f"tcp://127.0.0.1:{port}") for m in (2, 6)]
        peers = Peers()
        with pytest.raises(TransferFailed) as failure:
            fetch_map_outputs(sources, str(tmp_path / "f"), peers)
        peers.close()
        silent.close(linger=0)
    assert failure.value.maps == (2, 6)
    assert "no answer from" in str(failure.value)


def test_output_whose_worker_serves_nothing_is_reported_missing(tmp_path):
    sources = [protocol.MapOutput(map=4, path="/nowhere/x", size=3, shuffle="")]
    with pytest.raises(TransferFailed) as failure:
        fetch_map_outputs(sources, str(tmp_path / "f"), Peers())
    assert failure.value.maps == (4,)


def test_a_file_outside_the_jobs_directories_is_never_read_in_place(tmp_path):
    """Whatever a driver names, a reducer reads in place only files under its job directories."""
    secret = tmp_path / "elsewhere" / "secret"
    secret.parent.mkdir()
    secret.write_bytes(b"not map output")
    (tmp_path / "work" / JOB).mkdir(parents=True)
    os.symlink(secret, tmp_path / "work" / JOB / "link")
    for path in (str(secret), str(tmp_path / "work" / JOB / "link"), str(tmp_path / "work" / JOB / ".." / "x")):
        sources = [protocol.MapOutput(map=1, path=path, size=secret.stat().st_size, shuffle="")]
        with pytest.raises(TransferFailed):
            fetch_map_outputs(sources, str(tmp_path / "f"), Peers(), roots=[str(tmp_path / "work" / JOB)])


class FakeDriver:
    """The driver's staging over a real ROUTER: what `zmqmr.driver` does for a live attempt."""

    def __init__(self, splits, out_path):
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.ROUTER)
        self.endpoint = f"tcp://127.0.0.1:{self.sock.bind_to_random_port('tcp://127.0.0.1')}"
        self.staging = Staging(splits)
        self.out_path = out_path
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            if self.sock.poll(50):
                route, body = self.sock.recv_multipart()
                message = protocol.decode(body, protocol.TO_DRIVER)
                if isinstance(message, protocol.ReadInput):
                    reply = self.staging.read_input(message, 0)
                else:
                    reply = self.staging.receive(message, self.out_path)
                self.sock.send_multipart([route, protocol.encode(reply)])

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.staging.close()
        self.sock.close(linger=0)
        self.context.term()


@pytest.mark.parametrize("start,end", [(0, 10**9), (1, 5000), (4999, 5001), (123456, 654321), (700000, 10**9)])
def test_a_staged_segment_yields_the_lines_of_the_input(tmp_path, start, end):
    lines = [(b"x" * (i % 97)) + ("é%d" % i).encode() + (b"\r\n" if i % 5 == 0 else b"\n") for i in range(40000)]
    lines[777] = b"y" * (3 * protocol.MAX_CHUNK_BYTES) + b"\n"  # a line longer than a chunk
    data = b"".join(lines) + b"no final newline"
    source = tmp_path / "input.txt"
    source.write_bytes(data)
    st = os.stat(source)
    segment = protocol.Segment(key="input.txt", path=str(source), start=start, end=min(end, len(data)),
                               size=st.st_size, mtime_ns=st.st_mtime_ns)
    driver = FakeDriver([(segment,)], str(tmp_path / "unused"))
    peers = Peers()
    try:
        staged = stage_segment(segment, 0, 1, str(tmp_path / "stage" / "seg"), driver.endpoint, "w", "i", peers)
    finally:
        peers.close()
        driver.close()
    assert staged.path != segment.path and staged.start == segment.start and staged.key == segment.key
    assert list(read_segment(staged)) == list(read_segment(segment))
    assert os.stat(staged.path).st_blocks * 512 < len(data) or segment.start < 2 * protocol.MAX_CHUNK_BYTES


@pytest.mark.parametrize("size", [0, 10, 2 * protocol.MAX_CHUNK_BYTES + 7])
def test_reduce_output_reaches_the_driver_whole(tmp_path, size):
    data = os.urandom(size)
    local = tmp_path / "part-00000"
    local.write_bytes(data)
    target = tmp_path / "driver" / "attempt-5" / "part-00000"
    driver = FakeDriver([()], str(target))
    peers = Peers()
    try:
        upload(str(local), 5, driver.endpoint, "w", "i", peers)
    finally:
        peers.close()
        driver.close()
    assert target.read_bytes() == data


def test_a_late_chunk_after_an_upload_finished_changes_nothing(tmp_path):
    """A retried upload finished first; chunks of the first try, still on their way, come after."""
    staging = Staging([()])
    target = str(tmp_path / "attempt-3" / "part-00000")
    first = protocol.Upload(worker="w", inc="i", attempt=3, offset=0, data=b"a" * 10)
    last = protocol.Upload(worker="w", inc="i", attempt=3, offset=10, data=b"b" * 5, last=True)
    assert staging.receive(first, target).received == 10
    assert staging.receive(last, target).done
    late = staging.receive(first, target)
    assert late.done and late.received == 15 and not late.error
    assert open(target, "rb").read() == b"a" * 10 + b"b" * 5
    staging.close()


def test_progress_is_read_in_the_staged_copy_of_a_segment(tmp_path):
    """A worker that staged a segment works out where a record starts in its copy, not in a file at the
    driver's path that this host does not have (or has another of)."""
    from zmqmr.executor import as_read, attempt_scratch, staged_input_path

    segment = protocol.Segment(key="in.txt", path="/only/on/the/driver/in.txt", start=0, end=10)
    task = protocol.Task(job_id=JOB, kind="map", index=1, attempt=7, segments=(segment, segment))
    assert as_read(task, str(tmp_path), JOB) == task
    scratch = attempt_scratch(str(tmp_path), JOB, "map", 7)
    os.makedirs(scratch)
    open(staged_input_path(scratch, 1), "wb").close()
    read = as_read(task, str(tmp_path), JOB)
    assert [s.path for s in read.segments] == [segment.path, staged_input_path(scratch, 1)]
    assert [s.key for s in read.segments] == ["in.txt", "in.txt"]


def test_peers_waiting_for_credit_are_not_taken_for_silent_ones(tmp_path, monkeypatch):
    """Six slow but steady services, more than the in-flight limit serves at once: none is asked again on
    a fresh socket (that would spend its retries, and a real hiccup later would lose its output)."""
    monkeypatch.setattr(transfer, "MAX_CHUNK_BYTES", 1000)
    monkeypatch.setattr(transfer, "REPLY_TIMEOUT", 0.5)
    fresh = []
    real_socket = Peers.socket

    def counting(self, endpoint, fresh_socket=False, server_key=b""):
        if fresh_socket:
            fresh.append(endpoint)
        return real_socket(self, endpoint, fresh_socket, server_key)
    monkeypatch.setattr(Peers, "socket", counting)
    context, stop = zmq.Context(), threading.Event()

    def serve(sock):
        while not stop.is_set():
            if sock.poll(20):
                route, body = sock.recv_multipart()
                fetch = protocol.decode(body, protocol.TO_SHUFFLE)
                threading.Event().wait(0.15)  # a busy disk: slow, never silent
                sock.send_multipart([route, protocol.encode(protocol.Chunk(
                    tag=fetch.tag, offset=fetch.offset, data=b"x" * fetch.length,
                    eof=fetch.offset + fetch.length >= 12000))])
    endpoints, threads, socks = [], [], []
    for _ in range(6):
        sock = context.socket(zmq.ROUTER)
        socks.append(sock)
        endpoints.append(f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}")
        threads.append(threading.Thread(target=serve, args=(sock,), daemon=True))
        threads[-1].start()
    sources = [protocol.MapOutput(map=i, path=f"/elsewhere/{JOB}/map-{i:05d}-a{i}/part-00000.mpk", size=12000,
                                  shuffle=endpoint) for i, endpoint in enumerate(endpoints)]
    peers = Peers()
    try:
        paths = fetch_map_outputs(sources, str(tmp_path / "f"), peers)
    finally:
        peers.close()
        stop.set()
        for thread in threads:
            thread.join(5)
        for sock in socks:
            sock.close(linger=0)
        context.term()
    assert [os.path.getsize(p) for p in paths] == [12000] * 6
    assert fresh == []
