"""Hosts without a shared network or filesystem, on one Linux machine, for cluster tests.

`Cluster` builds a private switch (a bridge in its own network namespace) and one network
namespace per host, each joined to the bridge by a veth pair and given its own address in
10.77.X.0/24 (X random per run). Nothing is added to the root namespace, and everything is
removed again at the end, even when the test fails.

A command on a host runs as

    ip netns exec NS unshare --mount --uts --propagation private \
        sh -c 'hostname HOST && mount -t tmpfs tmpfs DIR1 && mount -t tmpfs tmpfs DIR2 && exec CMD'

in its own process group: the host's network and name, and a private empty tmpfs over each of the host's
`masks` (for a worker: the driver's directories and the worker's own work directory), so files
written there exist only on that host and the driver's files are not there at all. Directories
that are not masked (logs, gate files) are seen by every host alike.

`ZmqmrCluster` adds zmqmr on top: a driver host and worker hosts with the command lines, status
queries, logs and a gated job file for tests that must control timing.

Needs root, `ip` (iproute2), `unshare`, `nsenter`, `mount` and `hostname`; `skip_reason()` says what is
missing, and `cluster_fixture` (hence `ZmqmrCluster`) skips the test then, or when `ip netns add`
fails. Namespace names carry the test process's pid: a run killed before its teardown leaves
namespaces that the next run removes (`remove_stale`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ("ip", "unshare", "nsenter", "mount", "hostname")
PREFIX = "zq"  # every namespace and interface this harness makes starts with it


def skip_reason() -> Optional[str]:
    """Why these tests cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"needs {tool!r} on PATH"
    return None


def sh(argv: Sequence[str], timeout: float = 15, check: bool = True) -> subprocess.CompletedProcess:
    """Run a short command and return its result; raise with its output if it fails (`check`)."""
    argv = [str(a) for a in argv]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{shlex.join(argv)} did not finish in {timeout} s") from exc
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def env(extra: Optional[dict] = None) -> dict:
    """This process's environment, with the checkout on PYTHONPATH (as tests/conftest.py does)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, out.get("PYTHONPATH")) if p)
    out["PYTHONUNBUFFERED"] = "1"
    out.update(extra or {})
    return out


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
               watch: Iterable["Proc"] = (), describe: Optional[Callable[[], str]] = None):
    """Poll `predicate` until it returns something true, and return that. Fail after `timeout`
    seconds, or as soon as a process in `watch` has exited (it will not make the condition
    come true), with `describe()` (say, the driver's log) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        ended = [p for p in watch if p.poll() is not None]
        if ended or time.monotonic() >= deadline:
            why = (f"{ended[0].label} exited with {ended[0].returncode}" if ended
                   else f"timed out after {timeout:g} s")
            details = describe() if describe is not None else ""
            raise AssertionError(f"{why} while waiting for {what}\n{details}")
        time.sleep(interval)


def read_text(path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def count_lines(path, text: str) -> int:
    """How many lines of the file at `path` contain `text`."""
    return sum(1 for line in read_text(path).splitlines() if text in line)


def tail(path, lines: int = 60) -> str:
    return f"--- {path} (last {lines} lines) ---\n" + "\n".join(read_text(path).splitlines()[-lines:])


class Proc:
    """A process started on a host, in a process group of its own; its output goes to a file."""

    def __init__(self, popen: subprocess.Popen, label: str, output: Path, argv0: str):
        self.popen, self.label, self.output, self.argv0 = popen, label, output, argv0

    def wait_exec(self, timeout: float = 15) -> None:
        """Until the wrapper (ip netns exec, unshare, sh: all exec, so one pid) has become the command
        itself: only then are its masks mounted, and its pid's namespaces the host's for good."""
        def argv0() -> str:
            return read_text(f"/proc/{self.pid}/cmdline").split("\0")[0]
        wait_until(lambda: argv0() == self.argv0, timeout, f"{self.label} to start", watch=[self],
                   describe=lambda: tail(self.output))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.returncode

    def poll(self) -> Optional[int]:
        return self.popen.poll()

    def wait(self, timeout: float) -> int:
        """Its exit status; fail (leaving it running, for the cleanup) if it takes longer than `timeout`."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.label} did not exit within {timeout:g} s\n{tail(self.output)}") from None

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM to its process group, then SIGKILL; waits at most `grace` + 5 s."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # children of an exited leader too (same group)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class Host:
    """One network namespace on the cluster's switch, with its address and its masked directories."""

    def __init__(self, cluster: "Cluster", name: str, index: int, masks: Sequence[Path]):
        self.cluster = cluster
        self.name = name
        self.netns = f"{cluster.netns_prefix}-{name}"
        self.address = f"{cluster.subnet}.{index}"
        self.dev = f"{cluster.prefix}h{index}"  # in the host's namespace
        self.port = f"{cluster.prefix}s{index}"  # its peer, on the bridge in the switch namespace
        self.masks = [Path(m) for m in masks]

    def wrap(self, argv: Sequence[str], masks: Optional[Sequence[Path]] = None) -> List[str]:
        """The command line that runs `argv` on this host, with tmpfs over its masked directories."""
        masks = self.masks if masks is None else [Path(m) for m in masks]
        steps = [f"hostname {shlex.quote(self.name)}"]  # its own host name too (a UTS namespace)
        steps += [f"mount -t tmpfs -o size=512m,mode=0755 tmpfs {shlex.quote(str(m))}" for m in masks]
        steps.append("exec " + shlex.join(str(a) for a in argv))
        return ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--propagation", "private",
                "sh", "-c", " && ".join(steps)]

    def start(self, argv: Sequence[str], label: Optional[str] = None, env_extra: Optional[dict] = None,
              masks: Optional[Sequence[Path]] = None) -> Proc:
        """Start `argv` on this host in a new process group (session), its output in a file."""
        for m in (self.masks if masks is None else masks):
            os.makedirs(m, exist_ok=True)  # a mount point must exist
        label = label or f"{self.name}: {os.path.basename(str(argv[0]))}"
        self.cluster.started += 1
        output = self.cluster.base / f"{self.name}-{self.cluster.started}.out"
        with open(output, "wb") as out:
            popen = subprocess.Popen(self.wrap(argv, masks), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env(env_extra), start_new_session=True)
        proc = Proc(popen, label, output, str(argv[0]))
        self.cluster.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 30, check: bool = False,
            masks: Optional[Sequence[Path]] = None, env_extra: Optional[dict] = None) -> subprocess.CompletedProcess:
        """Run `argv` on this host to its end (killing its process group after `timeout`)."""
        for m in (self.masks if masks is None else masks):
            os.makedirs(m, exist_ok=True)
        popen = subprocess.Popen(self.wrap(argv, masks), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env(env_extra), start_new_session=True)
        try:
            out, err = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = popen.communicate(timeout=5)
            raise AssertionError(f"on {self.name}: {shlex.join(map(str, argv))} did not finish in {timeout:g} s\n"
                                 f"{out}{err}") from None
        result = subprocess.CompletedProcess(argv, popen.returncode, out, err)
        if check and result.returncode != 0:
            raise AssertionError(f"on {self.name}: {shlex.join(map(str, argv))} exited with {result.returncode}:\n"
                                 f"{out}{err}")
        return result

    def run_in(self, proc: Proc, argv: Sequence[str], timeout: float = 15) -> subprocess.CompletedProcess:
        """Run `argv` in the mount and network namespaces of `proc` (started on this host), to see and
        change what that process sees: its private tmpfs directories."""
        proc.wait_exec()
        return sh(["nsenter", "-t", proc.pid, "-m", "-n", "--", *argv], timeout=timeout)

    def cut(self) -> None:
        """Unplug the host's cable: its port on the switch goes down. Its processes run on and see no
        error; nothing they send arrives, and nothing reaches them, until `restore`."""
        sh(["ip", "-n", self.cluster.switch, "link", "set", self.port, "down"])

    def restore(self) -> None:
        sh(["ip", "-n", self.cluster.switch, "link", "set", self.port, "up"])

    def can_reach(self, other: "Host", timeout: float = 3.0) -> bool:
        """Whether a TCP connection from this host to a listener on `other` gets through."""
        script = textwrap.dedent("""
            import socket, sys
            try:
                socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
            except OSError as exc:
                print(exc)
                sys.exit(1)
        """)
        listener = other.start([sys.executable, "-c", textwrap.dedent("""
            import socket, sys, time
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((sys.argv[1], 7))
            s.listen(8)
            print("listening", flush=True)
            time.sleep(60)
        """), other.address], label=f"{other.name}: listener", masks=[])
        try:
            wait_until(lambda: "listening" in read_text(listener.output), 15, f"a listener on {other.name}",
                       watch=[listener], describe=lambda: tail(listener.output))
            result = self.run([sys.executable, "-c", script, other.address, "7", str(timeout)],
                              timeout=timeout + 15, masks=[])
            return result.returncode == 0
        finally:
            listener.stop(grace=0)


class NamespacesUnavailable(Exception):
    """`ip netns add` failed: this machine (or container) does not let us make namespaces."""


class Cluster:
    """A switch and hosts (see the module's docstring). Use as a context manager."""

    def __init__(self, base: Path, hosts: Dict[str, Sequence[Path]]):
        """`hosts`: name -> directories to mask on it, in order of addresses .1, .2, ..."""
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        rng = random.SystemRandom()
        self.prefix = f"{PREFIX}{rng.randrange(16**5):05x}"  # 7 chars: interface names stay <= 10
        self.subnet = f"10.77.{rng.randrange(1, 255)}"
        self.netns_prefix = f"{self.prefix}-{os.getpid()}"  # the owner's pid: see remove_stale
        self.switch = f"{self.netns_prefix}-sw"
        self.bridge = f"{self.prefix}br"
        self.hosts: Dict[str, Host] = {
            name: Host(self, name, i, masks) for i, (name, masks) in enumerate(hosts.items(), start=1)
        }
        self.procs: List[Proc] = []
        self.started = 0
        self.made: List[str] = []  # namespaces made, for the teardown

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __enter__(self) -> "Cluster":
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        result = sh(["ip", "netns", "add", name], check=False)
        if result.returncode != 0:
            raise NamespacesUnavailable(f"ip netns add {name}: {result.stderr.strip() or result.returncode}")
        self.made.append(name)
        sh(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        self._add_netns(self.switch)
        sh(["ip", "-n", self.switch, "link", "add", self.bridge, "type", "bridge", "stp_state", "0",
            "forward_delay", "0"])
        sh(["ip", "-n", self.switch, "link", "set", self.bridge, "up"])
        for host in self.hosts.values():
            self._add_netns(host.netns)
            # Both ends are made in their namespaces at once: no interface ever shows in the root namespace.
            sh(["ip", "link", "add", host.dev, "netns", host.netns, "type", "veth",
                "peer", "name", host.port, "netns", self.switch])
            sh(["ip", "-n", self.switch, "link", "set", host.port, "master", self.bridge])
            sh(["ip", "-n", self.switch, "link", "set", host.port, "up"])
            sh(["ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.dev])
            sh(["ip", "-n", host.netns, "link", "set", host.dev, "up"])

    def close(self) -> None:
        """Stop every process started here, then delete the namespaces (and with them the veths
        and the bridge). Never raises: a teardown error must not hide the test's own."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 3
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs:
            proc.stop(grace=0)
        for name in reversed(self.made):
            # Whatever still runs in our own namespaces was started by this cluster (a process that
            # left its group): without this, a namespace would outlive its name.
            pids = sh(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", name], check=False)
        self.made = []

    def leftovers(self) -> List[str]:
        """Namespaces and interfaces of this cluster that still exist (empty after `close`)."""
        found = [n for n in sh(["ip", "netns", "list"]).stdout.split() if n.startswith(self.prefix)]
        found += [line for line in sh(["ip", "-o", "link"]).stdout.splitlines() if self.prefix in line]
        return found


STALE = re.compile(rf"^{PREFIX}[0-9a-f]{{5}}-(\d+)-[a-z0-9]+$")


def remove_stale() -> List[str]:
    """Delete the namespaces of clusters whose test process is gone (killed before its teardown),
    with whatever still runs in them; return their names. Another live run's are left alone."""
    removed = []
    listing = sh(["ip", "netns", "list"], check=False).stdout.split("\n")
    for name in (line.split()[0] for line in listing if line.strip()):
        match = STALE.match(name)
        if match is None or os.path.exists(f"/proc/{match.group(1)}"):
            continue
        for pid in sh(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


def cluster_fixture(base: Path, hosts: Dict[str, Sequence[Path]]):
    """A Cluster for a pytest fixture: skips the test (with the reason) when namespaces cannot be made."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = Cluster(base, hosts)
    try:
        cluster.__enter__()
    except NamespacesUnavailable as exc:
        pytest.skip(f"cannot make network namespaces here: {exc}")
    return cluster


# --- zmqmr on a cluster ------------------------------------------------------------------

DRIVER_PORT = 5555  # the driver host's network is its own: this port is always free there

GATED_JOB = '''
"""Word count whose maps and reducers wait at gates (files) that the test opens.

Maps wait for GATES/maps, and reducers for GATES/reduce or GATES/reduce-HOST; each leaves a
marker (map-arrived-HOST-PID, reduce-arrived-HOST-PID) when it starts to wait, so the test knows
which hosts hold a task. HOST is $ZMQMR_TEST_HOST, set for each worker by the harness."""
import os, re, time

WORD = re.compile(r"[^\\W\\d_]+")
GATES = {gates!r}
HOST = os.environ.get("ZMQMR_TEST_HOST", "unknown")
MAP_SECONDS = {map_seconds!r}
GATE_TIMEOUT = 60.0
_open = set()


def _wait(gates, marker):
    if _open.intersection(gates):
        return
    paths = [os.path.join(GATES, g) for g in gates]
    if not any(os.path.exists(p) for p in paths):
        with open(os.path.join(GATES, "%s-%s-%d" % (marker, HOST, os.getpid())), "w"):
            pass
        deadline = time.monotonic() + GATE_TIMEOUT
        while not any(os.path.exists(p) for p in paths):
            if time.monotonic() > deadline:
                raise RuntimeError("gate %s not opened within %g s" % (" or ".join(gates), GATE_TIMEOUT))
            time.sleep(0.05)
    _open.update(g for g, p in zip(gates, paths) if os.path.exists(p))


def map_split(path, lines):
    _wait(["maps"], "map-arrived")
    time.sleep(MAP_SECONDS)  # maps are not short: workers hold at most one task beyond the one they run
    counts = {{}}
    for line in lines:
        for word in WORD.findall(line):
            counts[word] = counts.get(word, 0) + 1
    return counts.items()


def combiner(word, counts):
    yield word, sum(counts)


def reducer(word, counts):
    _wait(["reduce", "reduce-" + HOST], "reduce-arrived")
    yield word, sum(counts)
'''


class ZmqmrCluster:
    """A driver host and worker hosts w1..wN, with zmqmr's command lines.

    Layout under `base`: driver/ holds the input, the output, the driver's work dir and the job
    file, and is masked (an empty tmpfs) on every worker host; wN/work is worker wN's work dir,
    masked on its own host (so only wN sees what it writes there); logs/ and gates/ are seen by all.
    """

    def __init__(self, base: Path, workers: int = 3):
        self.base = Path(base)
        self.driver_dir = self.base / "driver"
        self.input = self.driver_dir / "input"
        self.output = self.driver_dir / "out"
        self.driver_work = self.driver_dir / "work"
        self.logs = self.base / "logs"
        self.gates = self.base / "gates"
        for d in (self.input, self.driver_work, self.logs, self.gates):
            d.mkdir(parents=True, exist_ok=True)
        self.worker_names = [f"w{i}" for i in range(1, workers + 1)]
        hosts: Dict[str, Sequence[Path]] = {"driver": []}
        for name in self.worker_names:
            hosts[name] = [self.driver_dir, self.work_dir(name)]
        self.cluster = cluster_fixture(self.base / "hosts", hosts)
        self.driver_host = self.cluster["driver"]
        self.endpoint = f"tcp://{self.driver_host.address}:{DRIVER_PORT}"
        self.driver_log = self.logs / "driver.log"
        self.driver: Optional[Proc] = None
        self.workers: Dict[str, Proc] = {}

    def close(self) -> None:
        self.cluster.close()

    def work_dir(self, name: str) -> Path:
        return self.base / name / "work"

    def worker_log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def host(self, name: str) -> Host:
        return self.cluster[name]

    # --- starting things

    def write_job(self, map_seconds: float = 0.3) -> Path:
        path = self.driver_dir / "gated_job.py"
        path.write_text(GATED_JOB.format(gates=str(self.gates), map_seconds=map_seconds), encoding="utf-8")
        return path

    def start_driver(self, *args, job: Optional[Path] = None, reducers: int = 3, mappers: int = 9) -> Proc:
        argv = [sys.executable, "-m", "zmqmr", "driver", "--input", self.input, "--output", self.output,
                "--reducers", reducers, "--mappers", mappers, "--bind-host", self.driver_host.address,
                "--port", DRIVER_PORT, "--work-dir", self.driver_work, "--worker-timeout", 3,
                "--heartbeat-interval", 0.5, "--log-file", self.driver_log, "-q"]
        if job is not None:
            argv[4:4] = ["--job", job]
        if has_option("driver", "--insecure"):  # listening on a non-loopback address without CURVE
            argv.append("--insecure")
        self.driver = self.driver_host.start([*argv, *args], label="driver")
        return self.driver

    def start_worker(self, name: str, *args) -> Proc:
        host = self.cluster[name]
        argv = [sys.executable, "-m", "zmqmr", "worker", "--driver", self.endpoint, "--name", name,
                "--work-dir", self.work_dir(name), "--bind-host", host.address, "--advertise-host", host.address,
                "--shuffle-port", 0, "--driver-timeout", 30, "--log-file", self.worker_log(name), *args]
        if has_option("worker", "--insecure"):  # the shuffle service, likewise
            argv.append("--insecure")
        proc = host.start(argv, label=f"worker {name}", env_extra={"ZMQMR_TEST_HOST": name})
        self.workers[name] = proc
        return proc

    def start_all(self, *, job: Optional[Path] = None, reducers: int = 3, mappers: int = 9) -> None:
        for name in self.worker_names:  # workers may start first: they say hello until the driver answers
            self.start_worker(name)
        self.start_driver(job=job, reducers=reducers, mappers=mappers)

    # --- watching

    def describe(self) -> str:
        parts = [tail(self.driver_log)]
        if self.driver is not None:
            parts.append(tail(self.driver.output, 30))
        for name, proc in self.workers.items():
            parts.append(tail(self.worker_log(name), 15))
            parts.append(tail(proc.output, 10))
        return "\n".join(parts)

    def log_count(self, text: str) -> int:
        return count_lines(self.driver_log, text)

    def wait_for_log(self, text: str, timeout: float = 30, count: int = 1) -> None:
        """Until `count` lines of the driver's log contain `text` (fails early if the driver exits)."""
        watch = [self.driver] if self.driver is not None else []
        wait_until(lambda: self.log_count(text) >= count, timeout, f"{count} driver log line(s) with {text!r}",
                   watch=watch, describe=self.describe)

    def markers(self, kind: str, host: str) -> List[str]:
        """Gate markers (see GATED_JOB): `kind` is map-arrived or reduce-arrived."""
        return [n for n in os.listdir(self.gates) if n.startswith(f"{kind}-{host}-")]

    def wait_for_markers(self, kind: str, hosts: Iterable[str], timeout: float = 40) -> None:
        hosts = list(hosts)
        watch = ([self.driver] if self.driver else []) + list(self.workers.values())  # none may exit before
        wait_until(lambda: all(self.markers(kind, h) for h in hosts), timeout,
                   f"{kind} markers from {', '.join(hosts)}", watch=watch, describe=self.describe)

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    def status(self, what: str = "--workers", timeout: float = 3) -> Optional[object]:
        """The driver's answer to `zmqmr status ENDPOINT WHAT --json`, from the driver host; None if
        there was no answer."""
        argv = [sys.executable, "-m", "zmqmr", "status", self.endpoint, "--json", "--timeout", timeout]
        if what:
            argv.insert(5, what)
        result = self.driver_host.run(argv, timeout=timeout + 20)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)

    def workers_status(self) -> Dict[str, dict]:
        rows = self.status("--workers")
        return {row["name"]: row for row in rows} if rows is not None else {}

    def wait_for_status(self, predicate: Callable[[Dict[str, dict]], object], timeout: float, what: str):
        """Poll the workers' status until `predicate(rows by name)` is true; return the rows."""
        seen: Dict[str, object] = {}

        def check():
            rows = self.workers_status()
            seen["last"] = rows
            return rows if rows and predicate(rows) else None

        return wait_until(check, timeout, what, interval=0.3, watch=[self.driver] if self.driver else [],
                          describe=lambda: f"last status: {seen.get('last')}\n{self.describe()}")

    def finish_driver(self, timeout: float = 60) -> int:
        assert self.driver is not None
        try:
            return self.driver.wait(timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None


_HELP: Dict[str, str] = {}


def has_option(command: str, option: str) -> bool:
    """Whether `python -m zmqmr COMMAND --help` lists `option` (asked once per command and run):
    options that are new, like --insecure, are given only to a zmqmr that has them."""
    if command not in _HELP:
        _HELP[command] = subprocess.run([sys.executable, "-m", "zmqmr", command, "--help"], cwd=ROOT, env=env(),
                                        stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                        timeout=30).stdout
    return re.search(rf"(^|[\s\[]){re.escape(option)}([\s\]=]|$)", _HELP[command], re.M) is not None
