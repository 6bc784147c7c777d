"""Command lines of zmqmr-driver, zmqmr-worker, zmqmr-local and zmqmr-status: parsing only.

User mistakes end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from typing import Callable, List, Optional

from . import __version__
from .errors import UsageError, ZmqmrError
from .logs import LEVELS, setup_logging
from .inputs import DEFAULT_SPLIT_BYTES, DRIVER_PARALLELISM, TASKS_PER_WORKER
from .protocol import DEFAULT_MEMORY_LIMIT, MAX_NAME_LEN, MIN_MEMORY_LIMIT, STAGING_MODES

DESCRIPTION = {
    "zmqmr-driver": "Run a MapReduce job: hand out tasks to zmqmr-worker processes and commit the output.",
    "zmqmr-worker": "Take tasks from a zmqmr driver and run them, until the job is over.",
    "zmqmr-local": "Run a MapReduce job on this machine: a driver and N worker processes in one command.",
    "zmqmr-status": "Ask a running zmqmr driver about its job, its workers or one task.",
    "zmqmr-keygen": "Make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret (secret, mode 0600).",
}

EXAMPLES = {
    "zmqmr-driver": "example: zmqmr-driver --job myjob.py --input logs/ --output out/ --reducers 4 --port 5555",
    "zmqmr-worker": "example: zmqmr-worker --driver tcp://driver-host:5555",
    "zmqmr-local": "example: zmqmr-local --workers 4 --input books/ --output counts/   (built-in word count)",
    "zmqmr-status": "example: zmqmr-status tcp://localhost:5555 --task map 3",
    "zmqmr-keygen": "example: zmqmr-keygen keys/ driver   (then copy keys/driver.key to every worker host)",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser(prog: str) -> Parser:
    parser = Parser(prog=prog, description=DESCRIPTION[prog], epilog=EXAMPLES[prog],
                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _number(kind: type, low: float, what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value >= low or value != value:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


positive_int = _number(int, 1, "a whole number of at least 1")
port_number = _number(int, 0, "a port number")
positive_seconds = _number(float, 0.001, "a positive number of seconds")

_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def byte_size(low: int) -> Callable[[str], int]:
    """Parse sizes such as 4096, 64K, 256M, 1.5G or 2GiB (powers of 1024), at least `low` bytes."""
    def parse(text: str) -> int:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a size (examples: 4096, 64K, 256M, 2G)")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is less than the least allowed, {low // 1024**2}M")
        return value
    return parse


def _add_logging(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    loudness = group.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="log everything, every task event included")
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="only warnings and errors on the terminal; no progress display or counters table")
    group.add_argument("--log-level", choices=LEVELS, default="INFO", type=str.upper,
                       help="the least important events to log (terminal and --log-file)")
    group.add_argument("--log-file", metavar="FILE", help="also append the log to FILE")
    group.add_argument("--log-json", action="store_true", help="log lines as JSON objects")


def _add_job_options(parser: argparse.ArgumentParser, default_port: int) -> None:
    job = parser.add_argument_group("job")
    job.add_argument("--job", help="a job file (.py) or an importable module name; "
                                   "without it, the built-in word count runs")
    job.add_argument("--input", "-i", "--i_path", dest="input", nargs="+", metavar="PATH",
                     help="input files and directories (directories are read recursively; .gz is decompressed)")
    job.add_argument("--output", "-o", "--o_path", dest="output", metavar="DIR",
                     help="output directory; must not exist or be empty (see --force)")
    job.add_argument("--force", action="store_true",
                     help="replace zmqmr's earlier output in a non-empty output directory")
    job.add_argument("--mappers", type=positive_int, metavar="N",
                     help="number of map tasks, cut evenly over all input bytes (default: see --split-size)")
    job.add_argument("--split-size", type=byte_size(1), metavar="SIZE",
                     help="input bytes per map task; small files share a task, big ones are cut at lines "
                          f"(default: {DEFAULT_SPLIT_BYTES // 2**20}M, or less so that each worker gets "
                          f"{TASKS_PER_WORKER} tasks; zmqmr-driver plans for {DRIVER_PARALLELISM} workers)")
    job.add_argument("--memory-limit", type=byte_size(MIN_MEMORY_LIMIT), default=DEFAULT_MEMORY_LIMIT,
                     metavar="SIZE", help="memory for each task's buffers; past it, map output spills to "
                                          "sorted files on disk and reducers merge from disk")
    job.add_argument("--reducers", type=positive_int, default=1, metavar="N", help="number of reduce tasks")
    job.add_argument("--work-dir", "--m_path", dest="work_dir", metavar="DIR",
                     help="directory for intermediate files, shared by all workers "
                          "(default: each worker's own temporary directory)")
    job.add_argument("--encoding", default="utf-8", help="text encoding of the input")
    job.add_argument("--encoding-errors", default="strict",
                     help="what to do with undecodable input bytes: strict (fail), replace, ignore, ...")
    net = parser.add_argument_group("network and fault tolerance")
    net.add_argument("--port", type=port_number, default=default_port,
                     help="TCP port the driver listens on (0: any free port)")
    net.add_argument("--bind-host", default="127.0.0.1",
                     help="address the driver listens on; another than loopback needs CURVE (--curve-secret) "
                          "or --insecure")
    sec = parser.add_argument_group("security (see the README's Security section)")
    sec.add_argument("--curve-secret", metavar="FILE",
                     help="the driver's secret key (from zmqmr-keygen): encrypt and authenticate with CURVE")
    sec.add_argument("--authorized-keys", metavar="DIR",
                     help="with --curve-secret: the public keys (*.key) of the workers and status clients admitted")
    sec.add_argument("--insecure", action="store_true",
                     help="allow listening on a non-loopback address without CURVE (a warning says what is exposed)")
    net.add_argument("--staging", choices=STAGING_MODES, default="auto",
                     help="whether workers read input from, and send reduce output to, the driver over the socket: "
                          "auto (where a worker cannot see the files: checked per file), always, or never "
                          "(shared storage)")
    net.add_argument("--heartbeat-interval", type=positive_seconds, default=1.0, metavar="SECONDS",
                     help="how often workers report while busy")
    net.add_argument("--worker-timeout", type=positive_seconds, default=5.0, metavar="SECONDS",
                     help="silence after which a worker is lost and its tasks run elsewhere")
    net.add_argument("--max-attempts", type=positive_int, default=4, metavar="N",
                     help="failed attempts of one task before the job fails")
    net.add_argument("--max-worker-losses", type=positive_int, default=8, metavar="N",
                     help="times one task may lose its worker before the job fails")
    net.add_argument("--task-timeout", type=positive_seconds, metavar="SECONDS",
                     help="cancel and retry an attempt that runs longer than this (default: no limit); "
                          "the error names the record it was reading")
    net.add_argument("--skip-bad-records", type=_number(int, 0, "a whole number"), metavar="N",
                     help="skip up to N records (or reduce keys) that the user's code fails on, listing them in "
                          "OUTPUT/_bad_records/; more fail the job (default: any failure fails the attempt)")
    net.add_argument("--no-speculation", dest="speculation", action="store_false",
                     help="never start backup attempts of slow tasks (for jobs with side effects)")
    net.add_argument("--speculation-factor", type=_number(float, 1.0, "a number of at least 1"), default=2.0,
                     metavar="X", help="a task is a straggler when it has run X times its phase's median task time")
    net.add_argument("--speculation-min-seconds", type=_number(float, 0.0, "a number of seconds"), default=10.0,
                     metavar="SECONDS", help="... and at least this long")
    net.add_argument("--blacklist-after", type=_number(int, 0, "a whole number"), default=3, metavar="N",
                     help="a worker on which N different tasks of this job failed gets no more tasks (0: never)")
    watch = parser.add_argument_group("watching the job")
    watch.add_argument("--http-port", type=port_number, metavar="PORT",
                       help="serve a live status page (and /job, /workers, /task/TYPE/ID as JSON) on "
                            "--bind-host at this port (0: any free port)")
    watch.add_argument("--counters-json", metavar="FILE",
                       help="write the job's counters to FILE instead of OUTPUT/_counters.json")
    _add_logging(parser)


def _setup_logging(args: argparse.Namespace, name: str, default: Optional[int] = None,
                   live_progress: bool = False) -> None:
    chosen = getattr(logging, args.log_level)
    if args.verbose:
        terminal = logging.DEBUG
    elif args.quiet:
        terminal = max(logging.WARNING, chosen)
    else:
        terminal = chosen if default is None else max(default, chosen)
    try:
        setup_logging(name, terminal, logging.DEBUG if args.verbose else chosen, args.log_file, args.log_json,
                      hide_task_events=live_progress and not args.verbose)
    except OSError as exc:
        raise UsageError(f"cannot write the log file {args.log_file}: {exc.strerror}") from None


def _shows_progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _live_progress(args: argparse.Namespace) -> bool:
    return _shows_progress(args) and sys.stderr.isatty()


def _terminate_on_sigterm() -> None:
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


def _main(prog: str, body: Callable[[Optional[List[str]]], int], argv: Optional[List[str]]) -> int:
    _terminate_on_sigterm()
    try:
        return body(argv)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except ZmqmrError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# --- zmqmr-driver and zmqmr-local ----------------------------------------------------------


def _plan(args: argparse.Namespace):
    from .plan import new_plan, resumed_plan

    if getattr(args, "resume", None):
        return resumed_plan(args.resume)
    return new_plan(args.job, args.input, args.output, reducers=args.reducers, mappers=args.mappers,
                    work_dir=args.work_dir, force=args.force, encoding=args.encoding,
                    encoding_errors=args.encoding_errors, skip_bad_records=args.skip_bad_records,
                    memory_limit=args.memory_limit, split_bytes=args.split_size,
                    parallelism=getattr(args, "workers", DRIVER_PARALLELISM))


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not getattr(args, "resume", None):
        missing = [name for name in ("input", "output") if not getattr(args, name)]
        if missing:
            parser.error(f"the following arguments are required: {', '.join('--' + m for m in missing)}")
    if args.heartbeat_interval * 2 > args.worker_timeout:
        parser.error(f"--heartbeat-interval ({args.heartbeat_interval:g} s) must be at most half of "
                     f"--worker-timeout ({args.worker_timeout:g} s), or busy workers would look lost")


def _driver_curve(args: argparse.Namespace):
    """The driver's CURVE settings, or None; refuses to expose a plain-text port unless --insecure."""
    from .security import Curve, exposure_warning, is_loopback, load_authorized, load_secret

    secret, authorized = getattr(args, "curve_secret", None), getattr(args, "authorized_keys", None)
    if bool(secret) != bool(authorized):
        raise UsageError("--curve-secret and --authorized-keys go together: the driver's key, and whom it admits")
    exposed = [] if secret or is_loopback(args.bind_host) else [f"the driver port {args.port}"]
    if args.http_port is not None and not is_loopback(args.bind_host):
        exposed.append(f"the status page (--http-port {args.http_port}, plain HTTP)")
    if exposed and not getattr(args, "insecure", False):
        raise UsageError(f"--bind-host {args.bind_host} would expose {' and '.join(exposed)} without authentication; "
                         "give --curve-secret and --authorized-keys (see zmqmr-keygen), or --insecure on a network "
                         "you trust")
    if exposed:
        logging.getLogger("zmqmr.driver").warning(exposure_warning(" and ".join(exposed), args.bind_host))
    return Curve(load_secret(secret), load_authorized(authorized)) if secret else None


def _driver_settings(args: argparse.Namespace):
    from .driver import DriverSettings
    from .scheduler import SchedulerConfig

    config = SchedulerConfig(worker_timeout=args.worker_timeout, max_attempts=args.max_attempts,
                             max_worker_losses=args.max_worker_losses,
                             exit_grace=max(2.0, 3 * args.heartbeat_interval),
                             blacklist_after=args.blacklist_after, task_timeout=args.task_timeout,
                             skip_bad_records=args.skip_bad_records, speculation=args.speculation,
                             speculation_factor=args.speculation_factor,
                             speculation_min_seconds=args.speculation_min_seconds)
    return DriverSettings(bind_host=args.bind_host, port=args.port, heartbeat_interval=args.heartbeat_interval,
                          scheduler=config, http_port=args.http_port, counters_json=args.counters_json,
                          progress=_shows_progress(args), quiet=args.quiet, staging=args.staging,
                          curve=_driver_curve(args))


def _driver(argv: Optional[List[str]]) -> int:
    from .driver import Driver

    parser = _parser("zmqmr-driver")
    parser.add_argument("--resume", metavar="WORK_DIR",
                        help="go on with the job whose journal is in WORK_DIR, after the driver was killed "
                             "(the job's other options come from the journal)")
    _add_job_options(parser, default_port=5555)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    _setup_logging(args, "driver", live_progress=_live_progress(args))
    return Driver(_plan(args), _driver_settings(args)).run()


def _local(argv: Optional[List[str]]) -> int:
    from .local import run_local

    parser = _parser("zmqmr-local")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, metavar="N",
                        help="number of worker processes")
    _add_job_options(parser, default_port=0)
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.curve_secret or args.authorized_keys:
        parser.error("zmqmr-local keeps to this host, over loopback: --curve-secret is for zmqmr-driver")
    _setup_logging(args, "driver", live_progress=_live_progress(args))
    worker_options = ["--log-level", args.log_level] + ["-v"] * args.verbose + ["--log-json"] * args.log_json
    if args.log_file:
        worker_options += ["--log-file", args.log_file]
    return run_local(_plan(args), _driver_settings(args), args.workers, worker_options)


# --- zmqmr-worker ------------------------------------------------------------------------------


def _worker(argv: Optional[List[str]]) -> int:
    from .procutil import die_with_parent
    from .worker import Worker, WorkerSettings
    from .workdir import default_work_dir

    parser = _parser("zmqmr-worker")
    parser.add_argument("--driver", metavar="ENDPOINT",
                        help="the driver's address, such as tcp://driver-host:5555 (required, but with --clean)")
    parser.add_argument("--name", help="this worker's name (default: HOST-PID); "
                                       "a restarted worker may reuse its name")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="directory for map output (default: the driver's --work-dir if this host sees it, "
                             f"else {default_work_dir()})")
    parser.add_argument("--clean", action="store_true",
                        help="remove what failed or killed jobs left in the work dir, and exit")
    shuffle = parser.add_argument_group("shuffle service (reducers on other hosts fetch this worker's map output)")
    shuffle.add_argument("--bind-host", metavar="ADDRESS",
                         help="address to serve on (default: this host's address on the route to the driver)")
    shuffle.add_argument("--advertise-host", metavar="ADDRESS",
                         help="address other hosts reach the service at, if not the bound one (NAT, 0.0.0.0)")
    shuffle.add_argument("--shuffle-port", type=port_number, default=0, metavar="PORT",
                         help="port to serve on (0: any free port)")
    parser.add_argument("--heartbeat-interval", type=positive_seconds, metavar="SECONDS",
                        help="how often to report while busy (default: the driver's setting)")
    parser.add_argument("--driver-timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                        help="exit with an error after this long without a word from the driver")
    sec = parser.add_argument_group("security (see the README's Security section)")
    sec.add_argument("--curve-secret", metavar="FILE", help="this worker's secret key (from zmqmr-keygen)")
    sec.add_argument("--driver-key", metavar="FILE",
                     help="with --curve-secret: the driver's public key; any other driver is refused")
    sec.add_argument("--insecure", action="store_true",
                     help="allow the shuffle service on a non-loopback address without CURVE")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    _add_logging(parser)
    args = parser.parse_args(argv)
    if args.clean:
        return _clean_work_dir(args.work_dir or default_work_dir())
    if not args.driver:
        parser.error("the following arguments are required: --driver")
    if not args.driver.startswith(("tcp://", "ipc://", "inproc://")):
        parser.error(f"--driver {args.driver!r} is not a ZeroMQ endpoint such as tcp://host:5555")
    if args.name is not None and not 0 < len(args.name) <= MAX_NAME_LEN:
        parser.error(f"--name must be 1 to {MAX_NAME_LEN} characters long")
    if args.parent_pid:
        die_with_parent(args.parent_pid)
    settings = WorkerSettings(driver=args.driver, name=args.name, work_dir=args.work_dir,
                              heartbeat_interval=args.heartbeat_interval, driver_timeout=args.driver_timeout,
                              bind_host=args.bind_host, advertise_host=args.advertise_host,
                              shuffle_port=args.shuffle_port, curve_keys=_client_keys(args))
    if settings.curve_keys is None:
        from .security import exposure_warning, is_loopback
        from .worker import shuffle_addresses

        bind = shuffle_addresses(settings)[0]
        if not is_loopback(bind) and not args.insecure:
            raise UsageError(f"the shuffle service would listen on {bind} without authentication; give "
                             "--curve-secret and --driver-key (see zmqmr-keygen), or --insecure on a network you trust")
        if not is_loopback(bind):
            logging.getLogger("zmqmr.worker").warning(exposure_warning("this worker's shuffle service", bind))
    worker = Worker(settings)
    _setup_logging(args, worker.name, logging.WARNING if args.parent_pid else None)
    return worker.run()


def _client_keys(args: argparse.Namespace):
    """A CURVE client's keys (its secret key file and the driver's public key), or None."""
    from .security import CurveKeys, load_public, load_secret

    if bool(args.curve_secret) != bool(args.driver_key):
        raise UsageError("--curve-secret and --driver-key go together: this side's key, and the driver's")
    if not args.curve_secret:
        return None
    own = load_secret(args.curve_secret)
    return CurveKeys(own.public, own.secret, load_public(args.driver_key))


def _clean_work_dir(work_dir: str) -> int:
    from .workdir import remove_stale

    if not os.path.isdir(work_dir):
        print(f"{work_dir} does not exist: nothing to clean")
        return 0
    removed = remove_stale(work_dir)
    for path in removed:
        print(f"removed {path}")
    print(f"{len(removed)} job director{'y' if len(removed) == 1 else 'ies'} removed from {work_dir}; "
          "directories of running jobs are kept")
    return 0


# --- zmqmr-status ------------------------------------------------------------------------------


def _status(argv: Optional[List[str]]) -> int:
    from . import status

    parser = _parser("zmqmr-status")
    parser.add_argument("endpoint", help="the driver's address, such as tcp://localhost:5555")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--task", nargs=2, metavar=("KIND", "INDEX"), help="one task, e.g. --task map 3")
    what.add_argument("--workers", action="store_true", help="only the workers")
    what.add_argument("--tasks", action="store_true", help="every task")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--timeout", type=positive_seconds, default=5.0, metavar="SECONDS")
    parser.add_argument("--curve-secret", metavar="FILE", help="this client's secret key, for a driver using CURVE")
    parser.add_argument("--driver-key", metavar="FILE", help="with --curve-secret: the driver's public key")
    args = parser.parse_args(argv)
    keys = _client_keys(args)
    if args.task:
        kind, index = args.task
        if kind not in ("map", "reduce") or not index.isdigit():
            parser.error("--task takes a kind (map or reduce) and a task number")
        replies = {"task": status.query(args.endpoint, "task", kind, int(index), args.timeout, keys)}
    elif args.workers:
        replies = {"workers": status.query(args.endpoint, "workers", timeout=args.timeout, keys=keys)}
    elif args.tasks:
        replies = {"tasks": status.query(args.endpoint, "tasks", timeout=args.timeout, keys=keys)}
    else:
        replies = {"job": status.query(args.endpoint, "job", timeout=args.timeout, keys=keys),
                   "workers": status.query(args.endpoint, "workers", timeout=args.timeout, keys=keys)}
    if args.json:
        print(json.dumps(replies if len(replies) > 1 else next(iter(replies.values())), indent=2))
        return 0
    formatters = {"job": status.format_job, "workers": status.format_workers, "task": status.format_task,
                  "tasks": status.format_tasks}
    print("\n\n".join(formatters[name](data) for name, data in replies.items()))
    return 0


# --- zmqmr-keygen ------------------------------------------------------------------------------


def _keygen(argv: Optional[List[str]]) -> int:
    from .security import generate

    parser = _parser("zmqmr-keygen")
    parser.add_argument("directory", help="where to write the key files")
    parser.add_argument("name", help="the key's name, such as the host's: NAME.key and NAME.key_secret")
    args = parser.parse_args(argv)
    public, secret = generate(args.directory, args.name)
    print(f"public key: {public}  (give it to the other side: a worker's goes in the driver's --authorized-keys, "
          "the driver's to every worker as --driver-key)")
    print(f"secret key: {secret}  (mode 0600; it stays on this host)")
    return 0


def driver_main(argv: Optional[List[str]] = None) -> int:
    return _main("zmqmr-driver", _driver, argv)


def worker_main(argv: Optional[List[str]] = None) -> int:
    return _main("zmqmr-worker", _worker, argv)


def local_main(argv: Optional[List[str]] = None) -> int:
    return _main("zmqmr-local", _local, argv)


def status_main(argv: Optional[List[str]] = None) -> int:
    return _main("zmqmr-status", _status, argv)


def keygen_main(argv: Optional[List[str]] = None) -> int:
    return _main("zmqmr-keygen", _keygen, argv)


COMMANDS = {"driver": driver_main, "worker": worker_main, "local": local_main, "status": status_main,
            "keygen": keygen_main}
