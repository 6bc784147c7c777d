"""Planning a job before any worker arrives: the job's code, its splits, and whether a journal
says it was started before and should be resumed.
"""

from __future__ import annotations

import codecs
import os
import secrets
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple

from . import journal, protocol
from .errors import UsageError
from .inputs import DRIVER_PARALLELISM, InputFile, default_split_bytes, expand_inputs, plan_splits
from .job import load_job, spec_for
from .protocol import DEFAULT_MEMORY_LIMIT


@dataclass
class JobPlan:
    """Everything decided before the first worker arrives."""

    job: protocol.JobSpec
    inputs: Sequence[InputFile]
    splits: Sequence[Tuple[protocol.Segment, ...]]
    reducers: int
    output: str
    force: bool = False
    work_dir: str = ""
    job_id: str = field(default_factory=lambda: secrets.token_hex(6))
    resume: Optional[journal.Replay] = None  # what a killed driver of this job had finished
    journaled: bool = True  # keep a journal in work_dir (not in a throwaway one)

    def journal_plan(self) -> journal.JournalPlan:
        return journal.JournalPlan(
            job_id=self.job_id, job=self.job,
            inputs=tuple((f.key, f.path, f.size, f.gzip, _mtime_ns(f.path)) for f in self.inputs),
            splits=tuple(tuple(s) for s in self.splits), reducers=self.reducers,
            output=os.path.abspath(self.output), work_dir=self.work_dir,
        )


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def check_encoding(encoding: str, errors: str) -> None:
    try:
        codecs.lookup(encoding)
        codecs.lookup_error(errors)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    if not _splits_on_newline_bytes(encoding):
        raise UsageError(f"--encoding {encoding}: its lines do not end in the byte \\n, so its input "
                         "cannot be cut into lines; convert the input to UTF-8 first")


def _splits_on_newline_bytes(encoding: str) -> bool:
    """Input is cut at b"\\n" before decoding; UTF-16 and UTF-32 text cannot be."""
    try:
        return [part.decode(encoding) for part in "ab\ncd".encode(encoding).split(b"\n")] == ["ab", "cd"]
    except UnicodeError:
        return False


def new_plan(job_arg: Optional[str], inputs: Sequence[str], output: str, reducers: int = 1,
             mappers: Optional[int] = None, work_dir: Optional[str] = None, force: bool = False,
             encoding: str = "utf-8", encoding_errors: str = "strict",
             skip_bad_records: Optional[int] = None, memory_limit: int = DEFAULT_MEMORY_LIMIT,
             split_bytes: Optional[int] = None, parallelism: int = DRIVER_PARALLELISM) -> JobPlan:
    """Plan a job from the command line; if its work dir holds this job's journal, resume it."""
    check_encoding(encoding, encoding_errors)
    spec = spec_for(job_arg, encoding, encoding_errors, -1 if skip_bad_records is None else skip_bad_records,
                    memory_limit)
    job = load_job(spec)  # a broken job fails here, before any worker is involved
    if skip_bad_records is not None and job.mapper is None:
        raise UsageError(f"--skip-bad-records needs a mapper, and {job.name} has only map_split, which sees "
                         "whole splits: no single record of them can be skipped")
    files = expand_inputs(inputs)
    split_bytes = split_bytes or default_split_bytes(files, parallelism)
    plan = JobPlan(job=spec, inputs=files, splits=plan_splits(files, mappers, split_bytes), reducers=reducers,
                   output=output, force=force, work_dir=os.path.abspath(work_dir) if work_dir else "")
    if plan.work_dir:
        replay = journal.read(plan.work_dir)
        if replay is not None:
            plan.job_id = replay.plan.job_id
            if plan.journal_plan().fingerprint() != replay.plan.fingerprint():
                raise journal.JournalError(
                    f"the work dir {plan.work_dir} holds the journal of another job ({replay.plan.job.name} "
                    f"into {replay.plan.output}, or its input changed since); resume that one with --resume "
                    f"{plan.work_dir}, use another --work-dir, or remove {journal.journal_path(plan.work_dir)}")
            plan.resume = replay
    return plan


def resumed_plan(work_dir: str) -> JobPlan:
    """The plan of the job whose journal is in work_dir (`zmqmr-driver --resume WORK_DIR`)."""
    work_dir = os.path.abspath(work_dir)
    replay = journal.read(work_dir)
    if replay is None:
        raise UsageError(f"no journal to resume in {work_dir} (looked for {journal.journal_path(work_dir)})")
    old = replay.plan
    files = []
    for key, path, size, gzip, mtime_ns in old.inputs:
        if _mtime_ns(path) != mtime_ns or not os.path.isfile(path) or os.path.getsize(path) != size:
            raise journal.JournalError(f"the input {key} changed since the job started; it cannot be resumed")
        files.append(InputFile(key, path, size, gzip, mtime_ns))
    load_job(old.job)
    return JobPlan(job=old.job, inputs=files, splits=[tuple(s) for s in old.splits], reducers=old.reducers,
                   output=old.output, work_dir=old.work_dir, job_id=old.job_id, resume=replay)
