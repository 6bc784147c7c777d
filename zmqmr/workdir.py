"""Work directories: where a worker keeps a job's intermediate files, how a job's directory is
claimed while in use, and removing what failed or killed jobs left behind.

A job's files live in WORK_DIR/JOB_ID/. Every process using that directory (the driver, and
each worker) holds a shared flock on its lock file; a directory nobody holds is garbage, and
whoever starts the next job in the same work dir (or `zmqmr-worker --clean`) removes it.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import stat
import tempfile
from typing import List, Optional

JOB_DIR = re.compile(r"[0-9a-f]{12}")  # a job id: secrets.token_hex(6)
LOCK_NAME = ".lock"
PROBE_NAME = ".zmqmr-probe"


def default_work_dir() -> str:
    """A worker's work dir when it is given none and shares none with the driver: one per user and
    host, so that the next job (or --clean) finds what a killed worker left."""
    return os.path.join(tempfile.gettempdir(), f"zmqmr-work-{os.getuid()}")


class JobDir:
    """A job's directory under a work dir, claimed (shared lock) for as long as this object lives."""

    def __init__(self, work_dir: str, job_id: str):
        self.work_dir, self.job_id = work_dir, job_id
        self.path = os.path.join(work_dir, job_id)
        self.fd: Optional[int] = None
        for _ in range(10):  # a cleaner may remove the directory between makedirs and flock
            os.makedirs(self.path, exist_ok=True)
            lock = os.path.join(self.path, LOCK_NAME)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_SH)
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except OSError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)
        raise OSError(f"cannot claim {self.path}: something keeps removing it")

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove_if_last(self) -> bool:
        """Remove the directory if no other process holds it (they may still need what is in it);
        True if it was removed."""
        if self.fd is None:
            return False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # from shared to exclusive, or not at all
        except OSError:
            self.release()
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()
        return True


def private_dir(path: str) -> str:
    """`path` as a directory of this user's alone (mode 0700): a work dir in a shared place such as
    /tmp must not be one that another user made, or can read or change."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise OSError(f"{path} is not a directory of this user's (someone else made it, or it is a link)")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def remove_stale(work_dir: str, keep: str = "") -> List[str]:
    """Remove the job directories under work_dir that no process holds (of jobs that failed or were
    killed), except `keep`. Returns their paths. Anything not named like a job is left alone."""
    removed = []
    try:
        names = sorted(os.listdir(work_dir))
    except OSError:
        return removed
    for name in names:
        path = os.path.join(work_dir, name)
        if name == keep or not JOB_DIR.fullmatch(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # in use
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def new_probe_token() -> str:
    return secrets.token_hex(16)


def write_probe(directory: str, token: str) -> None:
    """Leave the token in `directory`; a worker that reads the same token there shares the directory."""
    path = os.path.join(directory, PROBE_NAME)
    with open(path + ".tmp", "w") as f:
        f.write(token)
    os.replace(path + ".tmp", path)


def shares(directory: str, token: str) -> bool:
    """True if `directory` is the one the driver wrote `token` into (shared storage, or this host)."""
    if not token or not directory:
        return False
    try:
        with open(os.path.join(directory, PROBE_NAME)) as f:
            return f.read(64) == token
    except (OSError, UnicodeDecodeError):
        return False
