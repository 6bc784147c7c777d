"""The live status page: rendering, the HTTP routes, and a real headless browser reading it.

`browser_dump_dom` and `browser_screenshot` drive Debian's chromium and skip the test when
it is not installed; they are meant for any test that wants to look at the page.
Set ZMQMR_UPDATE_SCREENSHOT=1 to rewrite docs/status-page.png from the browser test.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser

import pytest
from conftest import ROOT

from zmqmr.errors import UsageError
from zmqmr.webstatus import MAX_TASK_ROWS, StatusServer, render_page

BROWSER_TIMEOUT = 60
SCREENSHOT = os.path.join(ROOT, "docs", "status-page.png")
HOSTILE = '<script>alert("x")</script>'

TRACEBACK = """Traceback (most recent call last):
  File "/home/ana/jobs/sessions.py", line 31, in mapper
    rate = clicks / views
           ~~~~~~~^~~~~~~
ZeroDivisionError: division by zero"""


# --- a fake job ----------------------------------------------------------------------------


def map_task(index: int, state: str, worker=None, seconds=None) -> dict:
    task = {"kind": "map", "index": index, "state": state, "worker": worker, "attempt": None,
            "attempts": 0 if state == "READY" else 1, "failures": 0, "worker_losses": 0, "seconds": seconds}
    if state == "RUNNING":
        task["attempt"] = 100 + index
    if state == "FINISHED":
        records = 61_000 + 137 * index
        task["stats"] = {"records_in": records, "bytes_in": 4_194_304, "records_out": records // 9,
                         "seconds": seconds}
    return task


def make_snapshot(maps_done: int = 40, maps: int = 64, running: int = 3, reduces: int = 4,
                  state: str = "MAPPING") -> dict:
    """A job `maps_done` map tasks in, the next `running` ones running, the first running one retried."""
    workers = ["local-0", "local-1"]
    tasks = []
    for index in range(maps):
        if index < maps_done:
            tasks.append(map_task(index, "FINISHED", seconds=round(2.9 + (index % 7) * 0.13, 2)))
        elif index < maps_done + running:
            tasks.append(map_task(index, "RUNNING", workers[index % 2], seconds=round(1.1 + index % 3, 2)))
        else:
            tasks.append(map_task(index, "READY"))
    error = {"time": 1764300000.0, "task": f"map {maps_done}", "attempt": 17, "worker": "local-1", "host": "vm",
             "kind": "UserCodeError", "message": "mapper raised ZeroDivisionError: division by zero",
             "location": "logs/2024-06-01.txt at byte 1234 (line 17), record 'u42 0 0'", "traceback": TRACEBACK}
    errors = []
    if running:
        retried = tasks[maps_done]
        retried.update(attempts=2, failures=1, last_error={k: error[k] for k in
                                                           ("kind", "message", "traceback", "location", "host")})
        errors.append(error)
    tasks += [{"kind": "reduce", "index": i, "state": "BLOCKED", "worker": None, "attempt": None, "attempts": 0,
               "failures": 0, "worker_losses": 0, "seconds": None} for i in range(reduces)]
    counts = {s: sum(1 for t in tasks if t["kind"] == "map" and t["state"] == s)
              for s in ("BLOCKED", "READY", "RUNNING", "FINISHED")}
    map_bytes = 4_194_304 * maps
    return {
        "job": {"job_id": "3f2a9c1b7d10", "job": "/home/ana/jobs/sessions.py", "state": state,
                "elapsed": round(0.31 * maps_done + 1.2, 1), "maps": counts,
                "reduces": {"BLOCKED": reduces, "READY": 0, "RUNNING": 0, "FINISHED": 0},
                "workers_alive": 2, "workers_lost": 0, "inputs": maps, "input_bytes": map_bytes,
                "output": "/data/out/sessions", "dropped_messages": {"malformed": 3}},
        "progress": {"maps_done": maps_done, "maps_total": maps, "reduces_done": 0, "reduces_total": reduces,
                     "map_bytes_done": 4_194_304 * maps_done, "map_bytes_total": map_bytes,
                     "bytes_per_second": 13_530_000.0, "eta_seconds": 0.31 * (maps - maps_done)},
        "tasks": tasks,
        "workers": [{"name": name, "host": "vm", "pid": 4711 + n, "last_seen_ago": 0.2 + 0.3 * n,
                     "running": [f"map {t['index']}" for t in tasks if t["worker"] == name],
                     "tasks_done": maps_done // 2 + n, "tasks_failed": n} for n, name in enumerate(workers)],
        "counters": {"zmqmr": {"input records": 2_440_000 + maps_done, "map output records": 271_000,
                               "failed attempts": len(errors)},
                     "sessions": {"empty lines": 12, "bot visits": 3_170}},
        "errors": errors,
    }


class Page(HTMLParser):
    """What the tests read from a page: attributes by id, the task rows, tags and meta tags."""

    def __init__(self, text: str):
        super().__init__()
        self.by_id: dict = {}
        self.rows: list = []  # [data-state, the task's name]
        self.tags: set = set()
        self.metas: list = []
        self._in_tasks = False
        self._cell = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.by_id[attrs["id"]] = attrs
        if tag == "meta":
            self.metas.append(attrs)
        if tag == "table":
            self._in_tasks = attrs.get("id") == "tasks"
        elif self._in_tasks and tag == "tr" and "data-state" in attrs:
            self.rows.append([attrs["data-state"], ""])
            self._cell = 0
        elif self._in_tasks and tag == "td":
            self._cell += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_tasks = False

    def handle_data(self, data):
        if self._in_tasks and self.rows and self._cell == 1 and not self.rows[-1][1]:
            self.rows[-1][1] = data.strip()

    def task_names(self) -> list:
        return [name for _, name in self.rows]

    def progress(self, element_id: str = "map-progress") -> tuple:
        attrs = self.by_id[element_id]
        return int(attrs["data-done"]), int(attrs["data-total"])


def refreshes(page: Page) -> bool:
    return any(m.get("http-equiv") == "refresh" for m in page.metas)


# --- rendering -----------------------------------------------------------------------------


def test_every_section_is_shown_and_the_page_stands_alone():
    text = render_page(make_snapshot())
    page = Page(text)
    for element_id in ("summary", "phases", "map-progress", "reduce-progress", "tasks", "workers", "counters",
                       "errors"):
        assert element_id in page.by_id, element_id
    assert page.progress() == (40, 64) and page.progress("reduce-progress") == (0, 4)
    assert refreshes(page)
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    assert "http://" not in text and "https://" not in text and "@import" not in text and "url(" not in text
    for shown in ("MAPPING", "3f2a9c1b7d10", "13.5", "local-1", "vm:4712", "bot visits", "3,170",
                  "ZeroDivisionError: division by zero", "logs/2024-06-01.txt at byte 1234", "<pre>Traceback"):
        assert shown in text, shown


def test_task_rows_carry_their_state_running_and_failing_first():
    snapshot = make_snapshot(maps_done=40, running=3)
    page = Page(render_page(snapshot))
    assert len(page.rows) == 68
    assert [state for state, _ in page.rows[:3]] == ["RUNNING"] * 3
    assert sorted(page.task_names()) == sorted(f"{t['kind']} {t['index']}" for t in snapshot["tasks"])
    states = {f"{t['kind']} {t['index']}": t["state"] for t in snapshot["tasks"]}
    assert all(states[name] == state for (state, _), name in zip(page.rows, page.task_names()))


def test_hostile_strings_are_escaped():
    snapshot = make_snapshot()
    snapshot["job"].update(job=HOSTILE, output=HOSTILE, state=HOSTILE, failure=HOSTILE)
    snapshot["workers"][0].update(name=HOSTILE, host=HOSTILE, running=[HOSTILE])
    snapshot["tasks"][0].update(worker=HOSTILE, state='x" onmouseover="alert(1)')
    snapshot["tasks"][1]["last_error"] = {"kind": HOSTILE, "message": HOSTILE}
    snapshot["counters"][HOSTILE] = {HOSTILE: HOSTILE}
    snapshot["errors"][0].update(traceback=f"</pre>{HOSTILE}", message=HOSTILE, location=HOSTILE, task=HOSTILE)
    text = render_page(snapshot)
    page = Page(text)
    assert "<script" not in text.lower() and "script" not in page.tags
    assert "&lt;script&gt;" in text and "&lt;/pre&gt;&lt;script&gt;" in text
    assert 'x" onmouseover="alert(1)' in (state for state, _ in page.rows)  # stayed inside its attribute
    assert 'onmouseover="alert' not in text


def test_an_empty_job_renders():
    snapshot = {"job": {"job_id": "0", "state": "MAPPING", "elapsed": 0.0, "maps": {}, "reduces": {}},
                "progress": {"eta_seconds": None}, "tasks": [], "workers": [], "counters": {}, "errors": []}
    for shape in (snapshot, {}):
        page = Page(render_page(shape))
        assert page.rows == []
        assert page.progress() == (0, 0)
        assert "tasks" in page.by_id and "workers" in page.by_id


def test_a_failed_job_shows_why_and_stops_refreshing():
    snapshot = make_snapshot(maps_done=12, running=1)
    snapshot["job"].update(state="FAILED", failure="map task 12 failed 4 times: mapper raised ZeroDivisionError")
    text = render_page(snapshot)
    page = Page(text)
    assert "failure" in page.by_id and "map task 12 failed 4 times" in text
    assert not refreshes(page)  # the driver is about to exit: keep the last state on screen
    assert page.rows[0][0] == "RUNNING" and page.task_names()[0] == "map 12"


def test_many_tasks_stay_bounded():
    snapshot = make_snapshot(maps_done=4000, maps=5000, running=0)
    tasks = snapshot["tasks"]
    for task in tasks[4990:5000]:
        task.update(state="RUNNING", worker="local-0")
    tasks[4500].update(attempts=3, failures=2, last_error={"kind": "UserCodeError", "message": "boom"})
    text = render_page(snapshot)
    page = Page(text)
    assert len(page.rows) == MAX_TASK_ROWS
    assert page.task_names()[:11] == [f"map {i}" for i in range(4990, 5000)] + ["map 4500"]
    assert f"Showing {MAX_TASK_ROWS:,} of 5,004 tasks" in text
    assert len(text) < 250_000


# --- the server ----------------------------------------------------------------------------


class FakeDriver:
    """Publishes a snapshot the way the driver does: the server reads whatever is current."""

    def __init__(self, snapshot: dict):
        self.current = snapshot

    def snapshot(self) -> dict:
        return self.current


@pytest.fixture
def served():
    driver = FakeDriver(make_snapshot(maps_done=10))
    server = StatusServer("127.0.0.1", 0, driver.snapshot)
    port = server.start()
    yield driver, port
    server.stop()
    server.stop()  # a second stop is harmless


def fetch(port: int, path: str, method: str = "GET", host: str = "127.0.0.1"):
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def fetch_json(port: int, path: str, status: int = 200):
    code, headers, body = fetch(port, path)
    assert code == status, body
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    return json.loads(body)


def test_every_route_follows_the_latest_snapshot(served):
    driver, port = served
    status, headers, body = fetch(port, "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-store"
    assert Page(body.decode()).progress() == (10, 64)
    job = fetch_json(port, "/job")
    assert job["state"] == "MAPPING" and job["maps_done"] == 10 and job["maps_total"] == 64
    assert job["job_id"] == "3f2a9c1b7d10" and job["maps"]["FINISHED"] == 10

    driver.current = make_snapshot(maps_done=64, running=0, state="REDUCING")
    assert Page(fetch(port, "/")[2].decode()).progress() == (64, 64)
    assert fetch_json(port, "/job")["state"] == "REDUCING"
    assert fetch_json(port, "/workers") == driver.current["workers"]
    assert fetch_json(port, "/tasks") == driver.current["tasks"]
    assert fetch_json(port, "/counters") == driver.current["counters"]
    assert fetch_json(port, "/job?pretty=1")["maps_done"] == 64  # a query string is ignored


def test_legacy_task_path(served):
    driver, port = served
    assert fetch_json(port, "/task/map/3") == driver.current["tasks"][3]
    assert fetch_json(port, "/task/reduce/1")["state"] == "BLOCKED"
    assert "no map task 999" in fetch_json(port, "/task/map/999", 404)["error"]
    for path in ("/task/shuffle/1", "/task/map/x", "/task/map/-1", "/task/map", "/nope", "/tasks/"):
        assert "error" in fetch_json(port, path, 404), path


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "HEAD"])
def test_only_get_is_allowed(served, method):
    _, port = served
    status, headers, body = fetch(port, "/job", method)
    assert status == 405 and headers["Allow"] == "GET"
    if method != "HEAD":
        assert "read-only" in json.loads(body)["error"]


def test_a_failing_snapshot_is_a_500_and_the_server_lives_on(served, caplog):
    driver, port = served
    good = driver.current
    driver.current = {"job": "not a dict"}
    assert "error" in fetch_json(port, "/", 500)
    driver.current = good
    assert fetch(port, "/")[0] == 200
    assert "the status page failed on /" in caplog.text


def test_the_page_renders_before_the_first_snapshot(served):
    driver, port = served
    driver.current = None
    status, _, body = fetch(port, "/")
    assert status == 200 and Page(body.decode()).progress() == (0, 0)


def test_an_ipv6_address_is_served():
    server = StatusServer("::1", 0, FakeDriver(make_snapshot()).snapshot)
    try:
        port = server.start()
    except UsageError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        assert fetch(port, "/job", host="::1")[0] == 200
    finally:
        server.stop()


def test_requests_are_not_logged_to_stderr(served, capfd):
    _, port = served
    for path in ("/", "/job", "/nope"):
        fetch(port, path)
    fetch(port, "/", "POST")
    assert capfd.readouterr().err == ""


def test_a_port_in_use_is_a_usage_error(served):
    _, port = served
    with pytest.raises(UsageError, match=f"cannot serve the status page on 127.0.0.1:{port}: "):
        StatusServer("127.0.0.1", port, dict).start()
    with pytest.raises(UsageError, match="cannot serve the status page on no-such-host.invalid:0: "):
        StatusServer("no-such-host.invalid", 0, dict).start()


# --- a real browser ------------------------------------------------------------------------


def run_browser(*args: str) -> str:
    """Run headless chromium once in a fresh profile; return its stdout. Skips without chromium."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="zmqmr-chromium-") as profile:
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"chromium did not finish in {BROWSER_TIMEOUT} s: {argv}\n{err[-3000:]}")
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {argv}\n{err[-3000:]}"
    return out


def browser_dump_dom(url: str) -> str:
    """The DOM a real browser built from url, serialized as HTML."""
    return run_browser("--dump-dom", url)


def browser_screenshot(url: str, path: str) -> None:
    """A 1280x1000 PNG of url as a real browser draws it."""
    run_browser(f"--screenshot={path}", "--window-size=1280,1000", url)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", f"chromium wrote no PNG to {path}"


def test_a_browser_sees_the_job_progress(tmp_path):
    driver = FakeDriver(make_snapshot(maps_done=20, running=2))
    server = StatusServer("127.0.0.1", 0, driver.snapshot)
    url = f"http://127.0.0.1:{server.start()}/"
    try:
        before = Page(browser_dump_dom(url))
        driver.current = make_snapshot(maps_done=45, running=3)
        after = Page(browser_dump_dom(url))
        update = os.environ.get("ZMQMR_UPDATE_SCREENSHOT") == "1"
        browser_screenshot(url, SCREENSHOT if update else str(tmp_path / "status-page.png"))
    finally:
        server.stop()

    assert before.progress() == (20, 64) and after.progress() == (45, 64)
    expected = {f"{t['kind']} {t['index']}": t["state"] for t in driver.current["tasks"]}
    assert dict(zip(after.task_names(), (state for state, _ in after.rows))) == expected
    assert [state for state, _ in after.rows[:3]] == ["RUNNING"] * 3


def test_a_browser_follows_a_real_running_job(procs, tmp_path):
    """A driver with --http-port and two workers: the page shows the job's real tasks, and it moves.

    Gates keep the job running between the browser's looks, however slow the machine: the maps
    reading files 4-6 wait for the first gate and those reading file 7 for the second, so the
    driver (and its page) outlives each look. --mappers 8 cuts the eight files (of about the
    same size) into eight tasks of about one file each.
    """
    from conftest import free_port, make_corpus, wait_for, zmqmr_command

    corpus = make_corpus(tmp_path / "input", files=8, lines=400)
    job = tmp_path / "gated.py"
    flag, gate1, gate2 = tmp_path / "failed-once", tmp_path / "gate1", tmp_path / "gate2"
    job.write_text(
        "import os, time, zmqmr\n"
        "def wait_for_gate(path):\n"
        "    deadline = time.monotonic() + 300\n"
        "    while not os.path.exists(path):\n"
        "        if time.monotonic() > deadline:\n"
        "            raise RuntimeError('the test never opened ' + path)\n"
        "        time.sleep(0.05)\n"
        "def mapper(path, line):\n"
        f"    if path[-6:-4] in ('04', '05', '06'):\n"
        f"        wait_for_gate({str(gate1)!r})\n"
        f"    if path[-6:-4] == '07':\n"
        f"        wait_for_gate({str(gate2)!r})\n"
        "    zmqmr.counters.increment('demo', 'lines seen')\n"
        f"    if path.endswith('text-03.txt') and 'fox' in line and not os.path.exists({str(flag)!r}):\n"
        f"        open({str(flag)!r}, 'w').close()\n"
        "        raise ValueError('a flaky line: ' + line[:30])\n"
        "    yield len(line.split()), 1\n"
        "def reducer(key, values):\n"
        "    yield key, sum(values)\n")
    port, http_port = free_port(), free_port()
    driver = procs.start(zmqmr_command("local", "--workers", 2, "--job", job, "--input", *corpus,
                                       "--output", tmp_path / "out", "--reducers", 2, "--port", port,
                                       "--http-port", http_port, "--mappers", 8))
    url = f"http://127.0.0.1:{http_port}/"

    def page_with_progress(at_least: int):
        page = Page(browser_dump_dom(url))
        if "map-progress" not in page.by_id:  # not serving yet: the browser shows its own error page
            return None
        return page if page.progress()[0] >= at_least else None

    first = wait_for(lambda: page_with_progress(1), 60, "a page with a finished map task", interval=0.3)
    done, total = first.progress()
    assert total == 8 and 1 <= done <= 5
    assert sorted(first.task_names()) == sorted([f"map {i}" for i in range(8)] + ["reduce 0", "reduce 1"])
    assert "RUNNING" in {state for state, _ in first.rows}
    gate1.touch()
    later = wait_for(lambda: page_with_progress(done + 1), 60, "the map progress to move", interval=0.3)
    assert done < later.progress()[0] < total
    if os.environ.get("ZMQMR_UPDATE_SCREENSHOT") == "1":
        browser_screenshot(url, SCREENSHOT)
    gate2.touch()
    assert driver.wait(timeout=60) == 0
