"""Jobs across hosts that share neither a network nor a filesystem: a driver host and three worker
hosts, each a Linux network namespace with tmpfs over the directories it must not see (see
tests/netns.py). Input reaches the workers, map output crosses between them through their shuffle
services, and reduce output reaches the driver, all over the network.

The jobs are gated word counts (netns.GATED_JOB): maps and reducers wait for files the test
creates, so each step happens when the test says, with no sleeps as synchronisation. Skipped
without root or namespaces.
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap

import pytest
from conftest import counts_of, make_corpus, sequential_wordcount
from netns import ZmqmrCluster, cluster_fixture, skip_reason, tail, wait_until

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

WORKERS = ["w1", "w2", "w3"]
JOB_ID = re.compile(r"^[0-9a-f]{12}$")


@pytest.fixture
def mr(tmp_path):
    cluster = ZmqmrCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        assert cluster.cluster.leftovers() == []


def corpus(mr: ZmqmrCluster):
    return make_corpus(mr.input, files=9, lines=4000)


def start_gated_job(mr: ZmqmrCluster, reducers: int):
    """Start three workers and the driver of a gated job; return the input files once every worker
    host holds a map task at the maps' gate, and the gate is open: every host runs a map task."""
    paths = corpus(mr)
    mr.start_all(job=mr.write_job(), reducers=reducers, mappers=9)
    # Workers hold one task at first, so with every map waiting at the gate, each host gets one.
    mr.wait_for_markers("map-arrived", WORKERS)
    mr.open_gate("maps")
    return paths


def finish_ok(mr: ZmqmrCluster, timeout: float = 60) -> None:
    code = mr.finish_driver(timeout)
    assert code == 0, f"driver exited with {code}\n{mr.describe()}"
    assert (mr.output / "_SUCCESS").exists()


def registered_again(mr: ZmqmrCluster, name: str) -> bool:
    return mr.log_count(f"worker {name} registered") >= 2 or mr.log_count(f"worker {name} reconnected") >= 1


# --- the harness itself ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_harness_hosts_have_their_own_network_and_files(tmp_path):
    """What the other tests rely on: hosts reach each other over the switch, a cut host is cut off
    until restored, masked directories are private to a host, and nothing is left behind."""
    shared = tmp_path / "shared"
    secret = tmp_path / "driver-only"
    private = tmp_path / "a-work"
    for d in (shared, secret, private):
        d.mkdir()
    (secret / "input.txt").write_text("driver data\n")
    cluster = cluster_fixture(tmp_path / "hosts", {"driver": [], "a": [secret, private], "b": [secret]})
    try:
        driver, a, b = cluster["driver"], cluster["a"], cluster["b"]
        assert cluster.leftovers(), "the namespaces should exist while the cluster is up"
        assert a.can_reach(driver) and b.can_reach(a) and driver.can_reach(b)
        # lo is up in every host, and each has its own name.
        assert "UP" in a.run(["ip", "link", "show", "lo"], check=True).stdout
        assert a.run(["hostname"], check=True).stdout.strip() == "a"
        # The driver host sees the real directory; a worker host sees an empty tmpfs there.
        assert driver.run(["cat", secret / "input.txt"], check=True).stdout == "driver data\n"
        seen = a.run(["sh", "-c", f"ls -A {secret}; grep -c tmpfs /proc/self/mounts"], check=True).stdout
        assert "input.txt" not in seen
        # What a host writes in its masked directory stays on that host; shared directories are shared.
        a.run(["sh", "-c", f"echo mine > {private}/f && echo hello > {shared}/g"], check=True)
        assert not (private / "f").exists()
        assert (shared / "g").read_text() == "hello\n"
        # A process's private view can be entered by its pid (for planting files in a worker's work dir).
        sleeper = a.start(["sleep", "60"], label="sleeper")
        a.run_in(sleeper, ["sh", "-c", f"echo planted > {private}/p"])
        assert a.run_in(sleeper, ["cat", f"{private}/p"]).stdout == "planted\n"
        assert not (private / "p").exists()
        # A cut host reaches nobody and nobody reaches it, until its cable is back.
        b.cut()
        assert not b.can_reach(driver, timeout=1) and not a.can_reach(b, timeout=1)
        b.restore()
        wait_until(lambda: a.can_reach(b, timeout=1), 20, "b to be reachable again", interval=0.2)
        cluster.close()
        assert sleeper.poll() is not None, "the cluster should have stopped what it started"
    finally:
        cluster.close()
    assert cluster.leftovers() == []


# --- jobs across hosts -----------------------------------------------------------------------


@pytest.mark.timeout(110)
def test_word_count_across_three_hosts_is_exact(mr):
    paths = start_gated_job(mr, reducers=3)
    mr.wait_for_log("map tasks finished; starting 3 reduce tasks")
    rows = mr.wait_for_status(lambda rows: all(rows.get(w, {}).get("tasks_done", 0) >= 1 for w in WORKERS), 20,
                              "every worker to have finished a map task")
    for name in WORKERS:  # each on its own host, with its shuffle service on that host's address
        assert rows[name]["host"] == name, rows[name]
        assert rows[name].get("shuffle", "").startswith(f"tcp://{mr.host(name).address}:"), rows[name]
    mr.open_gate("reduce")
    finish_ok(mr)
    assert counts_of(mr.output) == sequential_wordcount(paths)
    for name in WORKERS:
        assert mr.workers[name].wait(20) == 0, tail(mr.worker_log(name))
    # The tmpfs over each work dir held: nothing a worker wrote is in the real directory.
    assert [n for n in WORKERS if any(mr.work_dir(n).iterdir())] == []


@pytest.mark.timeout(110)
def test_built_in_word_count_across_hosts_is_exact(mr):
    """No --job: the built-in word count, a module each worker imports, with no gates."""
    paths = corpus(mr)
    mr.start_all(job=None, reducers=4, mappers=9)
    finish_ok(mr)
    assert counts_of(mr.output) == sequential_wordcount(paths)


@pytest.mark.timeout(110)
def test_host_cut_off_during_reduce_phase_job_still_exact(mr):
    """w3 holds map output and a running reducer when its cable is pulled: the maps whose output
    only w3 had run again elsewhere, and the job's answer is exact."""
    paths = start_gated_job(mr, reducers=6)
    mr.wait_for_log("map tasks finished; starting 6 reduce tasks")
    # Six reducers, and workers hold at most two tasks while tasks are long: each host runs one.
    mr.wait_for_markers("reduce-arrived", WORKERS)
    mr.host("w3").cut()
    mr.wait_for_log("worker w3 lost", timeout=20)
    mr.open_gate("reduce")
    finish_ok(mr, timeout=80)
    assert mr.log_count("re-running map task") >= 1, tail(mr.driver_log)
    assert counts_of(mr.output) == sequential_wordcount(paths)
    for name in ("w1", "w2"):
        assert mr.workers[name].wait(20) == 0, tail(mr.worker_log(name))


@pytest.mark.timeout(110)
def test_host_back_after_being_declared_lost_changes_nothing_and_works_again(mr):
    """w3 is cut off and declared lost; its reducer finishes while it is away and its cable comes
    back: its late reports are dropped, it registers again and runs new tasks, and the answer is
    exact. w1 and w2 wait at the reducers' gate all along, holding as much as they may, so the
    tasks w3 lost are still there for it when it is back."""
    paths = start_gated_job(mr, reducers=6)
    mr.wait_for_log("map tasks finished; starting 6 reduce tasks")
    mr.wait_for_markers("reduce-arrived", WORKERS)
    mr.host("w3").cut()
    mr.wait_for_log("worker w3 lost", timeout=20)
    mr.open_gate("reduce-w3")  # w3's reducer goes on, cut off: what it sends arrives late
    mr.host("w3").restore()
    wait_until(lambda: registered_again(mr, "w3"), 40, "w3 to register again", watch=[mr.driver],
               describe=mr.describe)
    rows = mr.wait_for_status(lambda rows: rows.get("w3", {}).get("tasks_done", 0) >= 1, 45,
                              "w3 to finish a task after registering again")
    assert rows["w3"]["shuffle"].startswith(f"tcp://{mr.host('w3').address}:")
    mr.open_gate("reduce")
    finish_ok(mr, timeout=60)
    assert counts_of(mr.output) == sequential_wordcount(paths)
    for name in WORKERS:
        assert mr.workers[name].wait(20) == 0, tail(mr.worker_log(name))


FETCH_CLIENT = textwrap.dedent("""
    import json, sys, time
    import msgpack, zmq

    endpoint, paths = sys.argv[1], json.loads(sys.argv[2])
    context = zmq.Context()
    results = []
    for tag, path in enumerate(paths, start=1):
        sock = context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(endpoint)
        sock.send(msgpack.packb({"v": 3, "t": "fetch", "path": path, "offset": 0, "length": 65536, "tag": tag},
                                use_bin_type=True))
        replies = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                frames = sock.recv_multipart()
                try:
                    reply = msgpack.unpackb(frames[-1], raw=False)
                except Exception as exc:
                    reply = {"undecodable": repr(exc)}
                if isinstance(reply, dict) and isinstance(reply.get("data"), bytes):
                    reply["data"] = reply["data"].decode("latin-1")
                replies.append(reply if isinstance(reply, dict) else {"not_a_map": repr(reply)})
                if isinstance(reply, dict) and reply.get("tag") == tag:
                    break
        sock.close(linger=0)
        results.append({"path": path, "replies": replies})
    print(json.dumps(results))
    context.term()
""")


def fetch(mr: ZmqmrCluster, endpoint: str, paths) -> list:
    """Send one fetch per path to a shuffle service, from the driver host; per path, every reply
    that came within 2 s (data shown as text)."""
    result = mr.driver_host.run([sys.executable, "-c", FETCH_CLIENT, endpoint, json.dumps(list(paths))],
                                timeout=60, check=True, masks=[])
    return json.loads(result.stdout)


def assert_served(answer: dict) -> None:
    [reply] = answer["replies"]
    assert reply.get("t") == "chunk" and not reply.get("error") and reply.get("data"), answer


def leaks(answers: list) -> list:
    """Answers that were not a refusal: a reply with data, or one without an error."""
    return [a for a in answers if any(r.get("data") or not r.get("error") for r in a["replies"])]


@pytest.mark.timeout(110)
def test_shuffle_service_refuses_paths_outside_the_job(mr):
    paths = start_gated_job(mr, reducers=6)
    mr.wait_for_log("map tasks finished; starting 6 reduce tasks")
    # Every host's task process waits in a reducer, past its fetches; the other reduces wait their
    # turn behind them. So nobody fetches while w1's files are tampered with below.
    mr.wait_for_markers("reduce-arrived", WORKERS)
    rows = mr.wait_for_status(lambda rows: rows.get("w1", {}).get("shuffle"), 20, "w1's shuffle endpoint")
    endpoint = rows["w1"]["shuffle"]
    job_id = mr.status("")["job"]["job_id"]  # without --workers: {"job": ..., "workers": ...}
    assert JOB_ID.match(job_id), job_id

    # A map output file w1 really serves, as the worker sees it (in its private work dir).
    worker, host = mr.workers["w1"], mr.host("w1")
    found = host.run_in(worker, ["find", mr.work_dir("w1"), "-type", "f", "-path", f"*/{job_id}/map-*/part-*"])
    files = sorted(found.stdout.split())
    assert files, f"no map output of job {job_id} in w1's work dir:\n{found.stdout}{found.stderr}"
    real = files[0]
    good = "/".join(real.split("/")[-3:])  # JOBID/map-NNNNN-aN/part-NNNNN[.suffix], as the service names it
    job_dir = real[: -len(good)] + job_id
    map_dir, part = os.path.split(real)
    map_name = os.path.basename(map_dir)
    evil_part = re.sub(r"part-\d+", "part-99999", part)  # named like a real partition file
    unknown_map = re.sub(r"map-\d+", "map-99999", map_name)
    other_job = "f" * 12 if job_id != "f" * 12 else "e" * 12
    host.run_in(worker, ["sh", "-c", " && ".join([
        f"ln -s /etc/passwd {map_dir}/{evil_part}",  # in the directory of a map attempt that finished here
        f"ln -s /etc/passwd {map_dir}/passwd",
        f"ln -s /etc {job_dir}/{unknown_map}",
        f"mkdir -p {job_dir}/../{other_job}/{map_name}",
        f"echo other job secret > {job_dir}/../{other_job}/{map_name}/{part}",
    ])])
    bad = [
        "../../etc/passwd",
        "/etc/passwd",
        f"{job_id}/../../x",
        f"{job_id}/../../../../../../../../etc/passwd",
        f"{job_id}/{map_name}/../../../../../../../../etc/passwd",
        f"{job_id}/{map_name}/{evil_part}",  # symlinks
        f"{job_id}/{map_name}/passwd",
        f"{job_id}/{unknown_map}/passwd",
        f"{other_job}/{map_name}/{part}",  # another job's file
        "",
        ".",
        job_id,
    ]
    answers = fetch(mr, endpoint, [good, *bad])
    assert_served(answers[0])  # the service answers, and serves what it should
    assert not leaks(answers[1:]), "fetches outside the job were not refused:\n" + json.dumps(leaks(answers[1:]))

    # The directory of a finished map attempt replaced by a symlink to one outside the work dir, with a
    # file of the very name asked for: the name is right, the file is not the worker's.
    outside = mr.base / "outside"
    outside.mkdir()
    (outside / part).write_text("not map output\n")
    host.run_in(worker, ["sh", "-c", f"mv {map_dir} {map_dir}.aside && ln -s {outside} {map_dir}"])
    try:
        [answer] = fetch(mr, endpoint, [good])
    finally:
        host.run_in(worker, ["sh", "-c", f"rm {map_dir} && mv {map_dir}.aside {map_dir}"])
    assert not leaks([answer]), f"a fetch through a symlinked directory was not refused: {answer}"
    assert_served(fetch(mr, endpoint, [good])[0])

    mr.open_gate("reduce")
    finish_ok(mr)
    assert counts_of(mr.output) == sequential_wordcount(paths)
