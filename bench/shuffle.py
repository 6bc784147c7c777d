"""python -m bench shuffle: a reducer fetches a partition of --size (1G) over the shuffle service,
and its peak RSS is printed beside its memory budget.

The map output is written as a map worker would (sorted msgpack runs, one per map task) in a
work dir that only the serving process reads; the reduce attempt is told the files live on
another host, so it must fetch every byte over ZeroMQ before merging them. Both run in their
own processes; the reducer's VmHWM is its peak resident set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import msgpack

from bench.wordcount import ENV, compile_package, parse_size

JOB_ID = "5b0ffe5b0ffe"
VALUES = 256  # values per record, as zmqmr's map side writes them
JOB = '''
def mapper(path, line):
    yield line, 1

def reducer(key, values):
    yield key, sum(values)
'''

SERVE = '''
import sys, zmq
from zmqmr.shuffle import ShuffleService
work, job, maps = sys.argv[1], sys.argv[2], int(sys.argv[3])
context = zmq.Context()
service = ShuffleService(context, "127.0.0.1", 0, "127.0.0.1")
service.serve_job(job, work)
for m in range(maps):
    service.offer(m, m + 1)
print(service.endpoint, flush=True)
poller = zmq.Poller()
poller.register(service.sock, zmq.POLLIN)
while True:
    if poller.poll(1000):
        service.handle()
'''

REDUCE = '''
import json, sys, time
from zmqmr import protocol
from zmqmr.executor import Reach, run_assignment
from zmqmr.job import spec_for
job_file, limit, out_dir, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
work = sys.argv[5]
welcome = protocol.Welcome(job_id=sources[0]["job"], job=spec_for(job_file, memory_limit=limit), reducers=1,
                           heartbeat_interval=1.0, staging="never")
task = protocol.Task(job_id=welcome.job_id, kind="reduce", index=0, attempt=99, output_dir=out_dir,
                     sources=tuple(protocol.MapOutput(map=s["map"], path=s["path"], size=s["size"],
                                                      shuffle=s["shuffle"]) for s in sources))
started = time.monotonic()
report = run_assignment(welcome, task, work, "bench", "1", reach=Reach("bench", "1"))
seconds = time.monotonic() - started
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"type": report.TYPE, "seconds": seconds, "peak_kib": peak,
                  "error": getattr(getattr(report, "error", None), "message", "")}))
'''


def write_map_outputs(work: str, size: int, maps: int):
    """`maps` sorted runs of about size/maps bytes each, keys interleaved across them; their paths."""
    values = msgpack.packb(list(range(VALUES)))  # 256 small ints: about 300 bytes a record
    record = len(msgpack.packb("k00000000")) + len(values) + 1
    per_map = size // maps // record
    paths = []
    for m in range(maps):
        directory = os.path.join(work, JOB_ID, f"map-{m:05d}-a{m + 1}")
        os.makedirs(directory)
        path = os.path.join(directory, "part-00000.mpk")
        with open(path, "wb") as f:
            block = bytearray()
            for i in range(per_map):
                block += b"\x92" + msgpack.packb(f"k{i * maps + m:08d}") + values
                if len(block) > 1 << 20:
                    f.write(block)
                    block.clear()
            f.write(block)
        paths.append(path)
    return paths


def run(args) -> None:
    compile_package()
    size, limit = parse_size(args.size), parse_size(args.memory_limit)
    scratch = tempfile.mkdtemp(prefix="bench-shuffle-")
    server = None
    try:
        serving, fetching = os.path.join(scratch, "serving"), os.path.join(scratch, "fetching")
        paths = write_map_outputs(serving, size, args.maps)
        total = sum(os.path.getsize(p) for p in paths)
        job = os.path.join(scratch, "job.py")
        with open(job, "w") as f:
            f.write(JOB)
        server = subprocess.Popen([sys.executable, "-c", SERVE, serving, JOB_ID, str(args.maps)], env=ENV,
                                  stdout=subprocess.PIPE, text=True)
        endpoint = server.stdout.readline().strip()
        sources = [{"job": JOB_ID, "map": m, "size": os.path.getsize(p), "shuffle": endpoint,
                    "path": "/on-another-host" + p} for m, p in enumerate(paths)]  # not readable here: fetched
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-c", REDUCE, job, str(limit), os.path.join(scratch, "out", "_temporary", JOB_ID),
                                 json.dumps(sources), fetching], env=ENV, capture_output=True, text=True)
        wall = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        report = json.loads(result.stdout.strip().splitlines()[-1])
        if report["type"] != "done":
            raise SystemExit(f"the reduce attempt failed: {report['error']}")
        peak = report["peak_kib"] * 1024
        print(f"shuffle: one reduce partition of {total / 2**20:.0f} MiB in {args.maps} map files, fetched over "
              f"the shuffle service on 127.0.0.1, with --memory-limit {limit / 2**20:.0f} MiB")
        print(f"  reduce attempt (fetch, merge, reduce): {report['seconds']:.1f} s "
              f"({total / 2**20 / report['seconds']:.0f} MiB/s); process {wall:.1f} s")
        print(f"  reducer peak RSS: {peak / 2**20:.1f} MiB; budget + 64 MiB = {(limit + 2**26) / 2**20:.0f} MiB; "
              f"ratio {peak / (limit + 2**26):.2f}  [target < 1]")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def add_parser(sub) -> None:
    p = sub.add_parser("shuffle", help="peak RSS of a reducer fetching a big partition over the shuffle service")
    p.add_argument("--size", default="1G", help="the partition's size")
    p.add_argument("--maps", type=int, default=8, help="map output files it comes in")
    p.add_argument("--memory-limit", default="256M", help="the reducer's --memory-limit")
    p.set_defaults(func=run)
