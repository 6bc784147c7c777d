"""Loading the user's job (a file or a module) and checking it has what MapReduce needs.

A job file is read once by the driver and shipped to the workers with its SHA-256, so
a worker on another host needs only zmqmr installed. A module name is imported where
the code runs.
"""

from __future__ import annotations

import hashlib
import importlib
import linecache
import os
import re
import sys
import types
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import msgpack

from .errors import JobLoadError
from .protocol import DEFAULT_MEMORY_LIMIT, MAX_SOURCE_LEN, JobSpec
from .usercode import user_traceback

BUILTIN_JOB = "zmqmr.examples.wordcount"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def stable_hash(key: Any) -> int:
    """A hash that is the same in every process, unlike the randomized built-in hash().

    Keys that compare equal must land in the same partition, so integral floats and
    booleans hash as the integers they equal.
    """
    if isinstance(key, str):
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))
    return zlib.crc32(msgpack.packb(_canonical(key), use_bin_type=True))


def _canonical(key: Any) -> Any:
    """Equal keys, one form: integral floats and booleans as ints, lists as tuples, all the way down."""
    if isinstance(key, bool):
        return int(key)
    if isinstance(key, float) and key.is_integer() and -(2**63) <= key < 2**63:
        return int(key)
    if isinstance(key, (list, tuple)):
        return tuple(_canonical(k) for k in key)
    if isinstance(key, dict):
        return {_canonical(k): _canonical(v) for k, v in key.items()}
    return key


def default_partitioner(key: Any, num_reducers: int) -> int:
    return stable_hash(key) % num_reducers


@dataclass(frozen=True)
class Job:
    name: str
    mapper: Optional[Callable]  # mapper(key, line); a job has it, or map_split, or both
    reducer: Callable
    combiner: Optional[Callable]
    partitioner: Callable[[Any, int], int]
    map_split: Optional[Callable] = None  # map_split(key, lines): every line of a split in one call


def spec_for(job_arg: Optional[str], encoding: str = "utf-8", encoding_errors: str = "strict",
             skip_bad_records: int = -1, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> JobSpec:
    """Driver side: turn `--job` into a JobSpec, reading a file job's source."""
    name = job_arg or BUILTIN_JOB
    common = dict(encoding=encoding, encoding_errors=encoding_errors, skip_bad_records=skip_bad_records,
                  memory_limit=memory_limit)
    if name.endswith(".py") or os.sep in name or os.path.isfile(name):
        try:
            with open(name, "rb") as f:
                raw = f.read(MAX_SOURCE_LEN + 1)
        except OSError as exc:
            raise JobLoadError(f"cannot read job file {name}: {exc.strerror}") from None
        if len(raw) > MAX_SOURCE_LEN:
            raise JobLoadError(f"job file {name} is larger than {MAX_SOURCE_LEN} bytes")
        try:
            source = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JobLoadError(f"job file {name} is not UTF-8 text") from None
        digest = hashlib.sha256(raw).hexdigest()
        return JobSpec(name=os.path.abspath(name), source=source, sha256=digest, **common)
    if not _MODULE_NAME.match(name):
        raise JobLoadError(f"--job {name}: neither a .py file nor a module name")
    return JobSpec(name=name, **common)


_cache: Dict[tuple, Job] = {}


def load_job(spec: JobSpec) -> Job:
    """Load (once per process) the job a spec names, raising JobLoadError on any problem."""
    if spec.source is not None and hashlib.sha256(spec.source.encode("utf-8")).hexdigest() != spec.sha256:
        raise JobLoadError(f"job file {spec.name}: content does not match its SHA-256")
    cache_key = (spec.name, spec.sha256)
    job = _cache.get(cache_key)
    if job is None:
        module = _load_source(spec) if spec.source is not None else _import(spec.name)
        job = _job_from(module, spec.name)
        _cache[cache_key] = job
    return job


def _import(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name and name.startswith(exc.name):
            raise JobLoadError(f"job module {name} not found (on host {os.uname().nodename})") from None
        raise JobLoadError(f"job module {name} failed to import:\n{user_traceback(exc)}") from None
    except BaseException as exc:
        raise JobLoadError(f"job module {name} failed to import:\n{user_traceback(exc)}") from None


def _load_source(spec: JobSpec) -> types.ModuleType:
    module_name = "zmqmr_job_" + spec.sha256[:16]
    module = types.ModuleType(module_name)
    module.__file__ = spec.name
    # Tracebacks on a worker show the user's lines even where the file does not exist.
    linecache.cache[spec.name] = (len(spec.source), None, spec.source.splitlines(True), spec.name)
    try:
        code = compile(spec.source, spec.name, "exec")
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.lineno else exc.filename
        raise JobLoadError(f"job file {where}: syntax error: {exc.msg}") from None
    sys.modules[module_name] = module
    try:
        exec(code, module.__dict__)
    except BaseException as exc:
        del sys.modules[module_name]
        raise JobLoadError(f"job file {spec.name} failed to import:\n{user_traceback(exc)}") from None
    return module


def _job_from(module: types.ModuleType, name: str) -> Job:
    found = {}
    for attr in ("mapper", "map_split", "reducer", "combiner", "partitioner"):
        fn = getattr(module, attr, None)
        if fn is not None and not callable(fn):
            raise JobLoadError(f"job {name}: {attr} is not a function")
        found[attr] = fn
    missing = [a for a in ("mapper", "reducer") if found[a] is None and not (a == "mapper" and found["map_split"])]
    if missing:
        raise JobLoadError(f"job {name} defines no {' and no '.join(missing)}"
                           + (" (nor a map_split)" if "mapper" in missing else ""))
    return Job(
        name=name,
        mapper=found["mapper"],
        reducer=found["reducer"],
        combiner=found["combiner"],
        partitioner=found["partitioner"] or default_partitioner,
        map_split=found["map_split"],
    )
