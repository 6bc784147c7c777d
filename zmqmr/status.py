"""A status client: asks a running driver about the job, its workers or one task."""

from __future__ import annotations

from typing import Any, Optional

import zmq

from . import protocol
from .errors import ProtocolError, ZmqmrError
from .security import CurveKeys, connect_as


class StatusUnavailable(ZmqmrError):
    """The driver did not answer in time, or answered with an error."""


def query(endpoint: str, what: str, kind: str = "", index: int = 0, timeout: float = 5.0,
          keys: Optional[CurveKeys] = None) -> Any:
    """Send one StatusQuery and return the reply's data; with `keys`, over CURVE."""
    context = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    connect_as(sock, keys)
    try:
        sock.connect(endpoint)
        sock.send(protocol.encode(protocol.StatusQuery(what=what, kind=kind, index=index)))
        if not sock.poll(timeout * 1000):
            hint = "" if keys is not None else " (a driver that uses CURVE answers only --curve-secret clients)"
            raise StatusUnavailable(f"no answer from a driver at {endpoint} within {timeout:g} s{hint}")
        try:
            reply = protocol.decode(sock.recv(), protocol.TO_WORKER)
        except ProtocolError as exc:
            raise StatusUnavailable(f"the driver at {endpoint} sent a bad reply: {exc}") from None
    finally:
        sock.close(linger=0)
    if not isinstance(reply, protocol.StatusReply):
        raise StatusUnavailable(f"the driver at {endpoint} answered with {reply.TYPE!r}, not a status")
    if not reply.ok:
        raise StatusUnavailable(reply.error)
    return reply.data


def format_job(data: dict) -> str:
    lines = [f"job {data.get('job_id')} ({data.get('job')}): {data.get('state')}, {data.get('elapsed')} s"]
    for phase in ("maps", "reduces"):
        counts = data.get(phase, {})
        lines.append(f"  {phase:8} " + "  ".join(f"{state} {n}" for state, n in counts.items()))
    lines.append(f"  workers  alive {data.get('workers_alive')}  lost {data.get('workers_lost')}")
    dropped = data.get("dropped_messages") or {}
    if dropped:
        lines.append("  dropped  " + "  ".join(f"{k} {v}" for k, v in sorted(dropped.items())))
    if data.get("failure"):
        lines.append(f"  failure  {data['failure']}")
    return "\n".join(lines)


def format_workers(rows: list) -> str:
    if not rows:
        return "no workers"
    lines = [f"{'worker':24} {'host':16} {'seen':>6} {'done':>5} {'failed':>6}  running"]
    for w in rows:
        lines.append(f"{w['name'][:24]:24} {w['host'][:16]:16} {w['last_seen_ago']:>5.1f}s "
                     f"{w['tasks_done']:>5} {w['tasks_failed']:>6}  {', '.join(w['running']) or '-'}")
        if w.get("blacklisted"):
            lines.append(f"{'':24} gets no more tasks: {w['blacklisted']}")
    return "\n".join(lines)


def format_task(task: dict) -> str:
    lines = [f"{task['kind']} task {task['index']}: {task['state']}"]
    for key in ("worker", "attempt", "backup_worker", "backup_attempt", "attempts", "failures", "worker_losses",
                "seconds", "records", "location"):
        if task.get(key) not in (None, ""):
            lines.append(f"  {key:14} {task[key]}")
    error = task.get("last_error")
    if error:
        lines.append(f"  last error     {error['kind']}: {error['message']}")
        if error.get("location"):
            lines.append(f"  at             {error['location']}")
    return "\n".join(lines)


def format_tasks(rows: list) -> str:
    lines = [f"{'task':12} {'state':9} {'worker':24} {'attempts':>8} {'seconds':>8}"]
    for t in rows:
        seconds = "" if t["seconds"] is None else f"{t['seconds']:.2f}"
        lines.append(f"{t['kind'] + ' ' + str(t['index']):12} {t['state']:9} {(t['worker'] or '-')[:24]:24} "
                     f"{t['attempts']:>8} {seconds:>8}")
    return "\n".join(lines)
