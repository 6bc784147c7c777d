"""python -m bench dispatch | tiny: how fast tasks go out and come back, and how soon a tiny job ends.

- dispatch: (a) a bare pyzmq ROUTER and 2 DEALER processes passing msgpack maps back and
  forth, one request in flight per dealer and then 8; (b) zmqmr's driver and 2 workers
  running N no-op map tasks (empty splits). Runs alternate (a, b, a, b, ...); medians of
  round trips (tasks) per second, and the ratio zmqmr / raw.
- tiny: `zmqmr local --workers 2` on the bundled book, beside `python -c pass` and
  `python -c "import zmq, msgpack"`; median wall seconds of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.wordcount import compile_package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


# --- (a) the raw loop ------------------------------------------------------------------


def _dealer(endpoint: str, count: int, in_flight: int) -> None:
    import msgpack
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.connect(endpoint)
    sent = received = 0
    while sent < min(in_flight, count):
        sock.send(msgpack.packb({"t": "request", "worker": "w", "inc": "i", "running": [], "want": 1}))
        sent += 1
    while received < count:
        reply = msgpack.unpackb(sock.recv())
        received += 1
        if sent < count:
            sock.send(msgpack.packb({"t": "done", "worker": "w", "inc": "i", "attempt": reply["attempt"],
                                     "stats": {"seconds": 0.0}}))
            sent += 1
    sock.close()
    context.term()


def raw_round_trips(count: int, in_flight: int) -> float:
    """Round trips per second through a ROUTER answering 2 DEALER processes."""
    import msgpack
    import zmq

    fork = multiprocessing.get_context("fork")
    pipes = [fork.Pipe(duplex=False) for _ in range(2)]  # one each: two readers of one pipe garble it
    dealers = [fork.Process(target=_dealer_waiting, args=(reader, count // 2, in_flight)) for reader, _ in pipes]
    for dealer in dealers:  # forked before this process has a ZeroMQ context
        dealer.start()
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.rcvtimeo = 60_000
    port = router.bind_to_random_port("tcp://127.0.0.1")
    for _, writer in pipes:
        writer.send(port)
    started = None
    total = 2 * (count // 2)
    for n in range(total):
        route, body = router.recv_multipart()
        if started is None:
            started = time.perf_counter()
        msgpack.unpackb(body)
        router.send_multipart([route, msgpack.packb({"t": "task", "job_id": "j", "kind": "map", "index": n,
                                                     "attempt": n + 1})])
    seconds = time.perf_counter() - started
    for dealer in dealers:
        dealer.join()
    router.close(linger=0)
    context.term()
    return (total - 1) / seconds


def _dealer_waiting(port_reader, count: int, in_flight: int) -> None:
    _dealer(f"tcp://127.0.0.1:{port_reader.recv()}", count, in_flight)


# --- (b) zmqmr -------------------------------------------------------------------------


def zmqmr_child(tasks: int, out: str) -> None:
    """In a fresh process: a driver and 2 forked workers run `tasks` no-op maps; print timings."""
    import logging

    from zmqmr.driver import Driver, DriverSettings
    from zmqmr.job import spec_for
    from zmqmr.local import all_gone, fork_workers, stop_workers
    from zmqmr.logs import setup_logging
    from zmqmr.plan import JobPlan

    setup_logging("driver", logging.WARNING, logging.WARNING)
    work = tempfile.mkdtemp(prefix="bench-dispatch-work-")
    plan = JobPlan(job=spec_for(None), inputs=[], splits=[()] * tasks, reducers=1, output=out, force=True,
                   work_dir=work, journaled=False)
    driver = Driver(plan, DriverSettings(port=0, progress=False, quiet=True))
    workers = fork_workers(2, ["-q"])
    try:
        endpoint = driver.bind()
        for worker in workers:
            worker.send_endpoint(endpoint)
        driver.health_checks.append(lambda: all_gone(workers))
        code = driver.run()
        stop_workers(workers, [True, True])
    finally:
        stop_workers(workers)
        shutil.rmtree(work, ignore_errors=True)
    scheduler = driver.scheduler
    first = min(t.started_at for t in scheduler.tasks.values() if t.started_at is not None)
    print(json.dumps({"code": code, "seconds": scheduler.ended_at - first}))


def zmqmr_run(tasks: int, tmp: str) -> tuple:
    """(driver seconds from the first task to the job's end, whole process seconds)."""
    out = os.path.join(tmp, "out")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bench.dispatch", "--child", str(tasks), out], env=ENV,
                            cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"the zmqmr run failed:\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["code"] != 0:
        raise SystemExit(f"the zmqmr job failed:\n{result.stderr}")
    return figures["seconds"], wall


def dispatch(args) -> None:
    compile_package()
    tmp = tempfile.mkdtemp(prefix="bench-dispatch-")
    sync, in_flight, driver_s, wall_s = [], [], [], []
    try:
        for _ in range(args.repeat):
            sync.append(raw_round_trips(args.raw_count, 1))
            in_flight.append(raw_round_trips(args.raw_count, 8))
            seconds, wall = zmqmr_run(args.tasks, tmp)
            driver_s.append(seconds)
            wall_s.append(wall)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    raw8 = statistics.median(in_flight)
    rate = args.tasks / statistics.median(driver_s)
    print(f"dispatch: {os.cpu_count()} cores, 2 worker processes, {args.repeat} runs each, alternating (medians)")
    print(f"  raw ROUTER + 2 DEALER, 1 in flight each   {statistics.median(sync):10,.0f} round trips/s")
    print(f"  raw ROUTER + 2 DEALER, 8 in flight each   {raw8:10,.0f} round trips/s")
    print(f"  zmqmr, {args.tasks:,} no-op map tasks       {rate:10,.0f} tasks/s "
          f"(driver {statistics.median(driver_s):.2f} s from first task to job end; "
          f"whole process {statistics.median(wall_s):.2f} s)")
    print(f"  ratio zmqmr / raw (8 in flight): {rate / raw8:.2f}")


# --- tiny --------------------------------------------------------------------------------


def _wall(command) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=ENV, cwd=ROOT, check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def tiny(args) -> None:
    compile_package()
    tmp = tempfile.mkdtemp(prefix="bench-tiny-")
    job = [sys.executable, "-m", "zmqmr", "local", "--workers", "2", "-q", "--input",
           os.path.join(ROOT, "zmqmr", "examples", "data"), "--output", os.path.join(tmp, "out"), "--force"]
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "python -c 'import zmq, msgpack'": [sys.executable, "-c", "import zmq, msgpack"],
                "zmqmr local --workers 2 (tiny job)": job}
    times = {name: [] for name in commands}
    try:
        for _ in range(args.repeat):
            for name, command in commands.items():
                times[name].append(_wall(command))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"tiny: median wall seconds of {args.repeat} runs each, alternating")
    for name, walls in times.items():
        print(f"  {name:36} {statistics.median(walls):6.3f} s")


def add_parser(sub) -> None:
    d = sub.add_parser("dispatch", help="tasks per second through the driver and 2 workers, beside raw pyzmq")
    d.add_argument("--tasks", type=int, default=100_000, help="no-op map tasks per zmqmr run")
    d.add_argument("--raw-count", type=int, default=100_000, help="round trips per raw run")
    d.add_argument("--repeat", type=int, default=3)
    d.set_defaults(func=dispatch)
    t = sub.add_parser("tiny", help="wall time of a tiny job beside a bare interpreter start")
    t.add_argument("--repeat", type=int, default=5)
    t.set_defaults(func=tiny)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_parser(parser.add_subparsers(dest="name", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        zmqmr_child(int(sys.argv[2]), sys.argv[3])
    else:
        main()
