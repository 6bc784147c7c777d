"""The driver's read-only status page: HTML for people, JSON for scripts, over plain HTTP.

The page is rendered on the server from one snapshot dict and refreshes itself with a
meta tag, so it needs no JavaScript and nothing from outside. The server only ever
calls the snapshot callable, which returns the driver's latest published dict; a
handler never touches the driver's own state.
"""

from __future__ import annotations

import html
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .errors import UsageError

log = logging.getLogger("zmqmr.http")

MAX_TASK_ROWS = 500
MAX_ERRORS_SHOWN = 20
TERMINAL_STATES = ("SUCCEEDED", "FAILED")
TASK_STATES = ("BLOCKED", "READY", "RUNNING", "FINISHED")
NO_VALUE = "–"

# ---------------------------------------------------------------------------------------
# Formatting


def esc(value: Any) -> str:
    """Every string that reaches the page goes through here."""
    return NO_VALUE if value is None or value == "" else html.escape(str(value), quote=True)


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return esc(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return NO_VALUE
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_megabytes(n_bytes: float | None) -> str:
    return NO_VALUE if n_bytes is None else f"{n_bytes / 1e6:,.1f} MB"


def format_seconds(seconds: float | None) -> str:
    return NO_VALUE if seconds is None else f"{seconds:.2f}"


def percent(done: float, total: float) -> float:
    return 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * done / total))


def task_name(task: dict) -> str:
    return f"{task.get('kind')} {task.get('index')}"


# ---------------------------------------------------------------------------------------
# The page

STYLE = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --panel:#fff; --bg:#f5f7fa;
        --blue:#2563eb; --green:#16a34a; --amber:#d97706; --red:#dc2626; --grey:#9aa5b1; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 14px/1.45 system-ui, -apple-system,
       "Segoe UI", Roboto, "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 40px; }
header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 14px; margin-bottom: 4px; }
h1 { font-size: 22px; margin: 0; font-weight: 650; }
h2 { font-size: 15px; margin: 0 0 10px; font-weight: 650; }
h2 small { color: var(--muted); font-weight: 400; margin-left: 6px; }
.sub { color: var(--muted); margin: 0 0 14px; overflow-wrap: anywhere; }
code, pre, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
nav { display: flex; gap: 16px; margin: 0 0 14px; font-size: 13px; }
nav a { color: var(--blue); text-decoration: none; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
          padding: 14px 16px; margin-bottom: 16px; }
.grid { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 16px; align-items: start;
        margin-bottom: 16px; }
.grid section { margin-bottom: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px; margin: 0; }
.cards div { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.cards dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.cards dd { margin: 2px 0 0; font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums;
            overflow-wrap: anywhere; }
.cards dd small { display: block; font-size: 12.5px; color: var(--muted); font-weight: 400; }
.summary { margin-bottom: 16px; }
.phase { display: grid; grid-template-columns: 80px 1fr 150px; gap: 12px; align-items: center; margin: 6px 0; }
.phase b { font-weight: 600; }
.bar { position: relative; height: 18px; background: #edf0f3; border-radius: 9px; overflow: hidden; display: flex; }
.bar span { display: block; height: 100%; }
.bar .done { background: var(--green); }
.bar .running { background: repeating-linear-gradient(45deg, #60a5fa 0 6px, #3b82f6 6px 12px); }
.phase .count { font-variant-numeric: tabular-nums; text-align: right; }
.states { grid-column: 2 / 4; color: var(--muted); font-size: 12px; margin-top: -4px; }
.states span { margin-right: 12px; }
.bytes { color: var(--muted); font-size: 12px; margin-left: 8px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase;
     letter-spacing: .03em; border-bottom: 2px solid var(--line); padding: 6px 8px; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: 5px 8px; vertical-align: top; overflow-wrap: anywhere; }
tbody tr:nth-child(even) { background: #fafbfc; }
tbody tr:hover { background: #eef4ff; }
.num { text-align: right; white-space: nowrap; }
.pill { display: inline-block; min-width: 74px; text-align: center; padding: 1px 8px; border-radius: 10px;
        font-size: 11.5px; font-weight: 600; letter-spacing: .03em; color: #fff; background: var(--grey); }
.s-RUNNING, .s-MAPPING, .s-REDUCING, .s-COMMITTING { background: var(--blue); }
.s-FINISHED, .s-SUCCEEDED { background: var(--green); }
.s-READY { background: var(--amber); }
.s-FAILED { background: var(--red); }
tr.failing td:first-child { box-shadow: inset 3px 0 0 var(--red); }
.err { color: var(--red); font-size: 12px; }
.muted { color: var(--muted); }
.note { color: var(--muted); font-size: 12.5px; margin: 8px 0 0; }
.banner { background: #fef2f2; border: 1px solid #fecaca; color: #991b1b; border-radius: 8px;
          padding: 10px 14px; margin-bottom: 16px; white-space: pre-wrap; overflow-wrap: anywhere; }
.error { border-top: 1px solid var(--line); padding: 10px 0 4px; }
.error:first-of-type { border-top: 0; padding-top: 0; }
.error .what { font-weight: 600; }
.error .where { color: var(--muted); font-size: 12.5px; }
pre { background: #1f2933; color: #e4e7eb; padding: 10px 12px; border-radius: 6px; overflow-x: auto;
      white-space: pre; margin: 6px 0 0; max-height: 320px; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
footer a { color: var(--blue); }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; } .phase { grid-template-columns: 64px 1fr; }
  .phase .count { grid-column: 2; text-align: left; } .states { grid-column: 2; } }
"""


def render_page(snapshot: dict) -> str:
    """The whole status page for one snapshot: self-contained HTML, no scripts."""
    job = snapshot.get("job") or {}
    progress = snapshot.get("progress") or {}
    tasks = snapshot.get("tasks") or []
    workers = snapshot.get("workers") or []
    counters = snapshot.get("counters") or {}
    errors = snapshot.get("errors") or []
    state = job.get("state")
    refresh = "" if state in TERMINAL_STATES else '<meta http-equiv="refresh" content="1">\n'
    title = f"zmqmr {esc(job.get('job_id'))} · {esc(state)}"
    body = "\n".join([
        render_header(job),
        render_nav(tasks, workers, errors),
        render_failure(job),
        render_summary(job, progress),
        render_phases(job, progress),
        '<div class="grid">',
        render_workers(workers),
        render_counters(counters),
        "</div>",
        render_errors(errors),
        render_tasks(tasks),
        render_footer(),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"{refresh}<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def render_footer() -> str:
    links = " ".join(f'<a href="{path}">{path}</a>' for path in ("/job", "/tasks", "/workers", "/counters"))
    return f"<footer>zmqmr {esc(__version__)} · JSON: {links}</footer>"


def pill(state: Any) -> str:
    return f'<span class="pill s-{esc(state)}">{esc(state)}</span>'


def render_header(job: dict) -> str:
    return (
        f'<header><h1>zmqmr job <span class="mono">{esc(job.get("job_id"))}</span></h1>'
        f"{pill(job.get('state'))}</header>\n"
        f'<p class="sub">{esc(job.get("job"))} → {esc(job.get("output"))}</p>'
    )


def render_nav(tasks: list, workers: list, errors: list) -> str:
    return (
        f'<nav><a href="#phases">Progress</a><a href="#workers">Workers ({len(workers)})</a>'
        f'<a href="#counters">Counters</a><a href="#errors">Errors ({len(errors)})</a>'
        f'<a href="#tasks">Tasks ({len(tasks):,})</a></nav>'
    )


def render_failure(job: dict) -> str:
    if not job.get("failure"):
        return ""
    return f'<div class="banner" id="failure"><b>The job failed.</b> {esc(job["failure"])}</div>'


def render_summary(job: dict, progress: dict) -> str:
    state = job.get("state")
    eta = "done" if state in TERMINAL_STATES else format_duration(progress.get("eta_seconds"))
    rate = progress.get("bytes_per_second")
    dropped = job.get("dropped_messages") or {}
    cards = [
        ("State", esc(state), ""),
        ("Elapsed", format_duration(job.get("elapsed")), ""),
        ("ETA", eta, ""),
        ("Input rate", NO_VALUE if rate is None else f"{rate / 1e6:,.1f} MB/s", ""),
        ("Workers", f"{format_number(job.get('workers_alive'))} alive",
         f"{format_number(job.get('workers_lost'))} lost"),
        ("Input", format_megabytes(job.get("input_bytes")), f"{format_number(job.get('inputs'))} inputs"),
        ("Dropped messages", format_number(sum(dropped.values())),
         ", ".join(f"{esc(reason)} {format_number(n)}" for reason, n in sorted(dropped.items()))),
    ]
    items = "".join(f"<div><dt>{label}</dt><dd>{value}<small>{note}</small></dd></div>" for label, value, note in cards)
    return f'<dl class="cards summary" id="summary">{items}</dl>'


def render_phases(job: dict, progress: dict) -> str:
    maps = job.get("maps") or {}
    reduces = job.get("reduces") or {}
    map_bytes = (
        f'<span class="bytes">{format_megabytes(progress.get("map_bytes_done"))} of '
        f'{format_megabytes(progress.get("map_bytes_total"))}</span>'
        if progress.get("map_bytes_total") else ""
    )
    rows = [
        render_phase("Map", "map-progress", maps, progress.get("maps_done"), progress.get("maps_total"), map_bytes),
        render_phase("Reduce", "reduce-progress", reduces, progress.get("reduces_done"),
                     progress.get("reduces_total"), ""),
    ]
    return f'<section id="phases"><h2>Progress</h2>{"".join(rows)}</section>'


def render_phase(label: str, element_id: str, counts: dict, done: int | None, total: int | None,
                 extra: str) -> str:
    done = counts.get("FINISHED", 0) if done is None else done
    total = sum(counts.values()) if total is None else total
    running = counts.get("RUNNING", 0)
    share = percent(done, total)
    states = "".join(f"<span>{esc(name.lower())} {format_number(counts.get(name, 0))}</span>"
                     for name in TASK_STATES)
    return (
        f'<div class="phase"><b>{esc(label)}</b>'
        f'<div class="bar" id="{element_id}" data-done="{int(done)}" data-total="{int(total)}" '
        f'role="progressbar" aria-valuemin="0" aria-valuemax="{int(total)}" aria-valuenow="{int(done)}">'
        f'<span class="done" style="width:{share:.2f}%"></span>'
        f'<span class="running" style="width:{percent(running, total):.2f}%"></span></div>'
        f'<span class="count">{format_number(done)} / {format_number(total)} · {share:.0f}%</span>'
        f'<div class="states">{states}{extra}</div></div>'
    )


def is_failing(task: dict) -> bool:
    return task.get("state") == "FAILED" or (task.get("state") != "FINISHED" and bool(task.get("last_error")))


def task_order(task: dict) -> tuple[int, int, Any]:
    """Running tasks first, then those that failed and are not done, then the rest in order."""
    urgency = 0 if task.get("state") == "RUNNING" else 1 if is_failing(task) else 2
    return urgency, 0 if task.get("kind") == "map" else 1, task.get("index") or 0


def render_tasks(tasks: list[dict]) -> str:
    shown = sorted(tasks, key=task_order)[:MAX_TASK_ROWS]
    rows = "\n".join(render_task_row(task) for task in shown)
    note = ""
    if len(tasks) > len(shown):
        note = (f'<p class="note">Showing {len(shown):,} of {len(tasks):,} tasks: running and failing first. '
                'Every task: <a href="/tasks">/tasks</a> (JSON).</p>')
    elif not tasks:
        note = '<p class="note">No tasks yet.</p>'
    head = "".join(f"<th{cls}>{name}</th>" for name, cls in (
        ("Task", ""), ("State", ""), ("Worker", ""), ("Attempts", ' class="num"'),
        ("Seconds", ' class="num"'), ("Records in", ' class="num"'), ("Records out", ' class="num"'),
    ))
    return (
        f'<section><h2>Tasks<small>{len(tasks):,}</small></h2>'
        f'<table id="tasks"><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody></table>{note}</section>'
    )


def render_task_row(task: dict) -> str:
    stats = task.get("stats") or {}
    error = task.get("last_error")
    failures = task.get("failures") or 0
    losses = task.get("worker_losses") or 0
    trouble = ", ".join(text for n, text in ((failures, f"{failures} failed"), (losses, f"{losses} lost")) if n)
    attempts = format_number(task.get("attempts"))
    if trouble:
        attempts += f' <span class="err">({esc(trouble)})</span>'
    name = esc(task_name(task))
    if error:
        name += f'<br><span class="err">{esc(error.get("kind"))}: {esc(error.get("message"))}</span>'
    row_class = ' class="failing"' if is_failing(task) else ""
    backup = ""
    if task.get("backup_worker"):
        backup = f' <span class="muted">+ backup on {esc(task.get("backup_worker"))}</span>'
    return (
        f'<tr data-state="{esc(task.get("state"))}"{row_class}><td>{name}</td><td>{pill(task.get("state"))}</td>'
        f'<td>{esc(task.get("worker"))}{backup}</td><td class="num">{attempts}</td>'
        f'<td class="num">{format_seconds(task.get("seconds"))}</td>'
        f'<td class="num">{format_number(stats.get("records_in", task.get("records")))}</td>'
        f'<td class="num">{format_number(stats.get("records_out"))}</td></tr>'
    )


def render_workers(workers: list[dict]) -> str:
    rows = "\n".join(
        f'<tr><td>{esc(w.get("name"))}</td><td class="mono">{esc(w.get("host"))}:{esc(w.get("pid"))}</td>'
        f'<td class="num">{format_duration(w.get("last_seen_ago"))} ago</td>'
        f'<td>{esc(", ".join(map(str, w.get("running") or [])))}</td>'
        f'<td class="num">{format_number(w.get("tasks_done"))}</td>'
        f'<td class="num">{format_number(w.get("tasks_failed"))}'
        + (f'<br><span class="err">no more tasks: {esc(w["blacklisted"])}</span>' if w.get("blacklisted") else "")
        + '</td></tr>'
        for w in workers
    )
    note = "" if workers else '<p class="note">No worker has said hello yet.</p>'
    return (
        f'<section><h2>Workers<small>{len(workers)}</small></h2><table id="workers"><thead><tr><th>Name</th>'
        '<th>Host:pid</th><th class="num">Last seen</th><th>Running</th><th class="num">Done</th>'
        f'<th class="num">Failed</th></tr></thead>\n<tbody>\n{rows}\n</tbody></table>{note}</section>'
    )


def counter_rows(counters: dict[str, dict[str, Any]]) -> Iterable[tuple[str, str, Any]]:
    for group, names in counters.items():
        for name, value in (names or {}).items():
            yield group, name, value


def render_counters(counters: dict[str, dict[str, Any]]) -> str:
    rows = "\n".join(
        f'<tr><td class="muted">{esc(group)}</td><td>{esc(name)}</td><td class="num">{format_number(value)}</td></tr>'
        for group, name, value in counter_rows(counters)
    )
    note = "" if rows else '<p class="note">No counters yet.</p>'
    return (
        '<section><h2>Counters</h2><table id="counters"><thead><tr><th>Group</th><th>Name</th>'
        f'<th class="num">Value</th></tr></thead>\n<tbody>\n{rows}\n</tbody></table>{note}</section>'
    )


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return NO_VALUE
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def render_error(error: dict) -> str:
    where = " · ".join(filter(None, [
        format_time(error.get("time")),
        f"attempt {esc(error['attempt'])}" if error.get("attempt") is not None else "",
        f"on {esc(error.get('worker'))} ({esc(error.get('host'))})" if error.get("worker") else "",
    ]))
    location = f'<div class="where">at {esc(error["location"])}</div>' if error.get("location") else ""
    traceback = f'<pre>{esc(error["traceback"])}</pre>' if error.get("traceback") else ""
    return (
        f'<div class="error"><div class="what">{esc(error.get("task"))}: {esc(error.get("kind"))}: '
        f'{esc(error.get("message"))}</div><div class="where">{where}</div>{location}{traceback}</div>'
    )


def render_errors(errors: list[dict]) -> str:
    shown = list(reversed(errors))[:MAX_ERRORS_SHOWN]
    body = "\n".join(render_error(error) for error in shown) or '<p class="note">No errors.</p>'
    more = ""
    if len(errors) > len(shown):
        more = f'<p class="note">{len(errors) - len(shown):,} older errors not shown.</p>'
    heading = f"<h2>Latest errors<small>{len(errors)}, newest first</small></h2>"
    return f'<section id="errors">{heading}{body}{more}</section>'


# ---------------------------------------------------------------------------------------
# The server

TASK_PATH = re.compile(r"/task/(map|reduce)/([0-9]{1,9})")


def find_task(snapshot: dict, kind: str, index: int) -> dict | None:
    for task in snapshot.get("tasks") or []:
        if task.get("kind") == kind and task.get("index") == index:
            return task
    return None


def route(snapshot: dict, path: str) -> tuple[int, str, Any]:
    """(status, content type, body) for a GET of path; pure, so tests need no server."""
    if path == "/":
        return 200, "text/html; charset=utf-8", render_page(snapshot)
    if path == "/job":
        return 200, "application/json", {**(snapshot.get("job") or {}), **(snapshot.get("progress") or {})}
    if path in ("/workers", "/tasks"):
        return 200, "application/json", snapshot.get(path[1:]) or []
    if path == "/counters":
        return 200, "application/json", snapshot.get("counters") or {}
    match = TASK_PATH.fullmatch(path)
    if match:
        task = find_task(snapshot, match.group(1), int(match.group(2)))
        if task is not None:
            return 200, "application/json", task
        return 404, "application/json", {"error": f"no {match.group(1)} task {match.group(2)}"}
    return 404, "application/json", {"error": f"no such page: {path}"}


class StatusRequestHandler(BaseHTTPRequestHandler):
    server: StatusHTTPServer
    server_version = f"zmqmr/{__version__}"
    sys_version = ""

    def do_GET(self) -> None:
        try:
            status, content_type, body = route(self.server.snapshot() or {}, urlsplit(self.path).path)
        except Exception:
            log.exception("the status page failed on %s", self.path)
            status, content_type, body = 500, "application/json", {"error": "the status page failed; see the log"}
        self.reply(status, content_type, body)

    def __getattr__(self, name: str) -> Callable[[], None]:
        """Any method but GET (do_POST, do_HEAD, ...) is refused with 405."""
        if name.startswith("do_"):
            return self.refuse_method
        raise AttributeError(name)

    def refuse_method(self) -> None:
        self.reply(405, "application/json", {"error": f"{self.command} is not allowed; this page is read-only"},
                   extra_headers={"Allow": "GET"})

    def reply(self, status: int, content_type: str, body: Any, extra_headers: dict[str, str] | None = None):
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


class StatusHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], snapshot: Callable[[], dict]):
        self.snapshot = snapshot
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, StatusRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("status page request from %s failed: %r", client_address, sys.exc_info()[1])


class StatusServer:
    """Serves the status page from a daemon thread; start() and stop() never wait on a request."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict]):
        self.host = host
        self.port = port
        self.snapshot = snapshot
        self._httpd: StatusHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and start serving; return the port (useful with port 0)."""
        try:
            self._httpd = StatusHTTPServer((self.host, self.port), self.snapshot)
        except (OSError, OverflowError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UsageError(f"cannot serve the status page on {self.host}:{self.port}: {reason}") from None
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="zmqmr-http", daemon=True)
        self._thread.start()
        log.debug("serving the status page on %s:%d", self.host, self.port)
        return self.port

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
