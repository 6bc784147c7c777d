"""CURVE: key files, failing closed, and who may take part in a job.

An authorized worker runs the job; a worker whose key the driver does not admit, a
plain-text client, or a worker given the wrong driver key gets nothing and changes nothing.
"""

from __future__ import annotations

import json
import os
import stat

import msgpack
import pytest
import zmq

from zmqmr import protocol
from zmqmr.cli import driver_main, keygen_main, status_main, worker_main
from zmqmr.errors import UsageError
from zmqmr.security import load_authorized, load_public, load_secret

from conftest import (counts_of, finish, free_port, make_corpus, sequential_wordcount, wait_for, zmqmr_command)


@pytest.fixture
def keys(tmp_path):
    """The driver's key pair, an authorized worker's, and an outsider's."""
    keydir, authorized = tmp_path / "keys", tmp_path / "authorized"
    for directory, name in ((keydir, "driver"), (keydir, "worker"), (keydir, "outsider")):
        assert keygen_main([str(directory), name]) == 0
    authorized.mkdir()
    (authorized / "worker.key").write_bytes((keydir / "worker.key").read_bytes())
    return keydir, authorized


def test_keygen_writes_a_secret_only_its_owner_reads_and_never_overwrites(keys, capsys):
    keydir, _ = keys
    assert stat.S_IMODE(os.stat(keydir / "driver.key_secret").st_mode) == 0o600
    pair = load_secret(str(keydir / "driver.key_secret"))
    assert pair.public == load_public(str(keydir / "driver.key")) and len(pair.secret) == 40
    before = (keydir / "driver.key_secret").read_bytes()
    assert keygen_main([str(keydir), "driver"]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert (keydir / "driver.key_secret").read_bytes() == before


def test_loose_key_files_are_refused_with_the_fix(keys):
    keydir, authorized = keys
    os.chmod(keydir / "driver.key_secret", 0o644)
    with pytest.raises(UsageError, match=r"readable by others \(mode 0644\); run: chmod 600"):
        load_secret(str(keydir / "driver.key_secret"))
    with pytest.raises(UsageError, match="holds no secret key"):
        load_secret(str(keydir / "driver.key"))
    os.chmod(authorized, 0o777)
    with pytest.raises(UsageError, match="writable by others"):
        load_authorized(str(authorized))
    os.chmod(authorized, 0o755)
    (authorized / "worker.key").unlink()
    with pytest.raises(UsageError, match="holds no public key"):
        load_authorized(str(authorized))


def test_a_plain_text_driver_port_off_loopback_needs_insecure(tmp_path, capsys, keys):
    corpus = make_corpus(tmp_path / "in", files=1, lines=10)
    base = ["--input", *corpus, "--output", str(tmp_path / "out"), "--port", "0"]
    assert driver_main(base + ["--bind-host", "0.0.0.0"]) == 2
    assert "without authentication" in capsys.readouterr().err
    keydir, authorized = keys
    assert driver_main(base + ["--curve-secret", str(keydir / "driver.key_secret")]) == 2
    assert "go together" in capsys.readouterr().err
    assert worker_main(["--driver", "tcp://10.255.255.1:5555", "--bind-host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def curve_driver(procs, tmp_path, keys, corpus, out, *extra, port=None):
    keydir, authorized = keys
    port = port or free_port()
    log = tmp_path / "driver.log"
    driver = procs.start(zmqmr_command("driver", "--port", port, "--input", *corpus, "--output", out, "--mappers", 4,
                                       "--curve-secret", keydir / "driver.key_secret", "--authorized-keys",
                                       authorized, "--log-file", log, "-q", "--worker-timeout", 30,
                                       "--heartbeat-interval", 0.5, *extra))
    return driver, f"tcp://127.0.0.1:{port}", log


def curve_worker(procs, keydir, endpoint, name, key, driver_key="driver", timeout=30):
    return procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", name, "--driver-timeout", timeout,
                                     "--curve-secret", keydir / f"{key}.key_secret",
                                     "--driver-key", keydir / f"{driver_key}.key"))


def test_only_authorized_workers_take_part_and_the_answer_is_exact(procs, tmp_path, keys):
    keydir, _ = keys
    corpus = make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    driver, endpoint, log = curve_driver(procs, tmp_path, keys, corpus, out)
    # The outsider and a plain-text client come first: they must get nothing and change nothing.
    outsider = curve_worker(procs, keydir, endpoint, "outsider", "outsider", timeout=3)
    plain = procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", "plain", "--driver-timeout", 3))
    impostor_fooled = curve_worker(procs, keydir, endpoint, "fooled", "worker", driver_key="outsider", timeout=3)
    results = [finish(proc, 30) for proc in (outsider, plain, impostor_fooled)]
    assert [r.returncode for r in results] == [1, 1, 1]  # none ever heard from the driver
    assert "refused this worker's key" in results[0].stderr
    good = curve_worker(procs, keydir, endpoint, "good", "worker")
    result = finish(driver, 60)
    assert result.returncode == 0, result.stderr
    assert finish(good, 30).returncode == 0
    assert counts_of(out) == sequential_wordcount(corpus)
    text = log.read_text()
    assert "worker good registered" in text
    for name in ("outsider", "plain", "fooled"):
        assert f"worker {name}" not in text


def test_a_worker_given_the_wrong_driver_key_says_why_and_runs_nothing(procs, tmp_path, keys):
    keydir, _ = keys
    corpus = make_corpus(tmp_path / "in", files=1, lines=50)
    driver, endpoint, log = curve_driver(procs, tmp_path, keys, corpus, tmp_path / "out")
    work = tmp_path / "work"
    fooled = curve_worker(procs, keydir, endpoint, "fooled", "worker", driver_key="outsider", timeout=3)
    result = finish(fooled, 30)
    assert result.returncode == 1
    assert "CURVE handshake with" in result.stderr and "--driver-key" in result.stderr
    assert not work.exists()
    outsider = curve_worker(procs, keydir, endpoint, "outsider", "outsider", timeout=3)
    result = finish(outsider, 30)
    assert "refused this worker's key" in result.stderr
    driver.kill()


def curve_dealer(keydir, key, endpoint):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    pair = load_secret(str(keydir / f"{key}.key_secret"))
    sock.curve_publickey, sock.curve_secretkey = pair.public, pair.secret
    sock.curve_serverkey = load_public(str(keydir / "driver.key"))
    sock.connect(endpoint)
    return sock


def test_status_needs_a_key_and_a_name_belongs_to_the_key_that_registered_it(procs, tmp_path, keys, capsys):
    keydir, authorized = keys
    assert keygen_main([str(keydir), "second"]) == 0
    (authorized / "second.key").write_bytes((keydir / "second.key").read_bytes())
    gate = tmp_path / "gate"
    job = tmp_path / "job.py"
    job.write_text(f"import os, time\ndef mapper(path, line):\n    while not os.path.exists({str(gate)!r}):\n"
                   "        time.sleep(0.05)\n    yield line, 1\ndef reducer(k, v):\n    yield k, sum(v)\n")
    corpus = make_corpus(tmp_path / "in", files=1, lines=20)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    driver = procs.start(zmqmr_command("driver", "--port", port, "--job", job, "--input", *corpus, "--output",
                                       tmp_path / "out", "--curve-secret", keydir / "driver.key_secret",
                                       "--authorized-keys", authorized, "-q"))
    good = curve_worker(procs, keydir, endpoint, "good", "worker")
    with_key = ["--curve-secret", str(keydir / "second.key_secret"), "--driver-key", str(keydir / "driver.key")]
    workers = [endpoint, "--workers", "--json", "--timeout", "3"]
    wait_for(lambda: status_main(workers + with_key) == 0 and '"good"' in capsys.readouterr().out, 30, "the worker")
    assert status_main(workers) == 1  # no key: no answer
    assert "no answer" in capsys.readouterr().err
    # Another authorized key speaks for "good": dropped, counted, and "good" goes on.
    other = curve_dealer(keydir, "second", endpoint)
    other.send(protocol.encode(protocol.Request(worker="good", inc="x", running=(), want=1)))
    other.send(msgpack.packb({"v": protocol.PROTOCOL_VERSION, "t": "hello", "worker": "good", "inc": "y"}))

    def counted():
        assert status_main([endpoint, "--json", "--timeout", "3"] + with_key) == 0
        job_status = json.loads(capsys.readouterr().out)["job"]
        return job_status.get("dropped_messages", {}).get("impersonation")
    wait_for(counted, 30, "the impersonation to be counted")
    other.close()
    gate.touch()
    assert finish(driver, 60).returncode == 0
    assert finish(good, 30).returncode == 0


def test_reducers_fetch_over_curve_from_each_others_shuffle_service(procs, tmp_path, keys):
    """Two workers whose work dirs are their own: each reducer fetches the other's map output
    from its shuffle service, over CURVE, and the answer is exact."""
    keydir, _ = keys
    corpus = make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    # Both workers are there before the driver, and each map task takes a while: both run maps.
    workers = [procs.start(zmqmr_command("worker", "--driver", endpoint, "--name", f"w{i}", "--work-dir",
                                         tmp_path / f"work{i}", "--curve-secret", keydir / "worker.key_secret",
                                         "--driver-key", keydir / "driver.key")) for i in (1, 2)]
    job = tmp_path / "job.py"
    job.write_text("import re, time\ndef mapper(path, line):\n    time.sleep(0.0005)\n"
                   "    for word in re.findall(r'[^\\W\\d_]+', line):\n        yield word, 1\n"
                   "def reducer(word, counts):\n    yield word, sum(counts)\n")
    driver, _, log = curve_driver(procs, tmp_path, keys, corpus, out, "--job", job, "--reducers", 2, port=port)
    assert finish(driver, 60).returncode == 0
    results = [finish(w, 30) for w in workers]
    assert [r.returncode for r in results] == [0, 0]
    assert counts_of(out) == sequential_wordcount(corpus)
    served = [r.stderr for r in results if "bytes of map output to reducers" in r.stderr]
    assert served, [r.stderr for r in results]
    assert os.listdir(tmp_path / "work1") == [] and os.listdir(tmp_path / "work2") == []


def test_staging_through_the_driver_works_over_curve(procs, tmp_path, keys):
    keydir, _ = keys
    corpus = make_corpus(tmp_path / "in", files=2, lines=500)
    out = tmp_path / "out"
    driver, endpoint, log = curve_driver(procs, tmp_path, keys, corpus, out, "--staging", "always", "--reducers", 2)
    worker = curve_worker(procs, keydir, endpoint, "good", "worker")
    assert finish(driver, 60).returncode == 0
    assert finish(worker, 30).returncode == 0
    assert counts_of(out) == sequential_wordcount(corpus)
    assert "staging: sent" in log.read_text()
