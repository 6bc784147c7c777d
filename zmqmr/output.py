"""The output directory: refusing to clobber, formatting records, committing atomically.

Reducers write under OUTPUT/_temporary/JOB_ID/; only the driver moves files to their
final names, once every reduce task has finished, and writes _SUCCESS last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Dict, Iterable, Optional, Sequence

from .errors import OutputError

log = logging.getLogger("zmqmr.output")

TEMPORARY = "_temporary"
SUCCESS = "_SUCCESS"


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def _is_ours(name: str) -> bool:
    """Files a previous zmqmr run leaves in an output directory."""
    return name.startswith("part-") or name.startswith("_")


def format_value(value: Any) -> str:
    """Strings and numbers plainly; everything else as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    raise TypeError(f"cannot write a {type(value).__name__} value")


def format_record(key: Any, value: Any) -> str:
    return f"{format_value(key)}\t{format_value(value)}\n"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutputDir:
    def __init__(self, path: str, job_id: str):
        self.path = os.path.abspath(path)
        self.job_id = job_id
        self.temp_root = os.path.join(self.path, TEMPORARY)
        self.temp_dir = os.path.join(self.temp_root, job_id)
        self.created = False
        self.previous: list = []  # zmqmr's earlier output, replaced at commit (--force)

    def prepare(self, force: bool, input_paths: Iterable[str], resume: bool = False) -> None:
        """Make the directory ready, or raise OutputError saying why it cannot be used.

        A resumed job finds its own reducers' output under _temporary/JOB_ID and keeps it.
        """
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise OutputError(f"output {self.path} exists and is not a directory")
        real = os.path.realpath(self.path)
        for path in input_paths:
            if os.path.realpath(path).startswith(real + os.sep):
                raise OutputError(f"output directory {self.path} contains the input file {path}")
        if resume and os.path.isdir(self.temp_dir):
            # zmqmr's files here are older output (a --force run) or a commit the killed driver began:
            # replaced at commit, as with --force.
            self._note_previous_output(sorted(os.listdir(self.path)))
            return
        if os.path.isdir(self.path):
            names = sorted(os.listdir(self.path))
            if names and not force:
                raise OutputError(
                    f"output directory {self.path} exists and is not empty "
                    "(choose another --output, or add --force to replace zmqmr's earlier output)"
                )
            self._note_previous_output(names)
        else:
            try:
                os.makedirs(self.path)
            except OSError as exc:
                raise OutputError(f"cannot create output directory {self.path}: {exc.strerror}") from None
            self.created = True
        try:
            os.makedirs(self.temp_dir)
        except OSError as exc:
            raise OutputError(f"cannot write to output directory {self.path}: {exc.strerror}") from None

    def _note_previous_output(self, names: Sequence[str]) -> None:
        """--force: zmqmr's earlier output is replaced at commit, so a job that fails keeps it."""
        others = [n for n in names if not _is_ours(n)]
        if others:
            log.warning("--force: leaving %d file(s) zmqmr did not write in %s, e.g. %s",
                        len(others), self.path, others[0])
        self.previous = [n for n in names if _is_ours(n) and n != TEMPORARY]

    def _remove_previous_output(self) -> None:
        for name in sorted(self.previous, key=lambda n: n != SUCCESS):  # _SUCCESS first
            path = os.path.join(self.path, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        self.previous = []

    def contains(self, path: str) -> bool:
        return os.path.realpath(path).startswith(os.path.realpath(self.temp_dir) + os.sep)

    def commit(self, reduce_outputs: Sequence[str], extra_files: Optional[Dict[str, str]] = None) -> None:
        """Move each reducer's file to part-NNNNN, write the extra files, then _SUCCESS, then clean up."""
        for path in reduce_outputs:
            if not self.contains(path) or not os.path.isfile(path):
                raise OutputError(f"reduce output {path} is not a file under {self.temp_dir}")
        self._remove_previous_output()
        for index, path in enumerate(reduce_outputs):
            os.replace(path, os.path.join(self.path, part_name(index)))
        for name, text in (extra_files or {}).items():
            self._write_atomically(name, text)
        _fsync_dir(self.path)
        self._write_atomically(SUCCESS, "")
        _fsync_dir(self.path)
        self.remove_temporary()

    def _write_atomically(self, name: str, text: str) -> None:
        path = os.path.join(self.path, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)

    def remove_temporary(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        try:
            os.rmdir(self.temp_root)
        except OSError:
            pass  # another job's temporary files, or already gone

    def abort(self) -> None:
        """After a failed job: no partial output stays, and a directory we made goes away."""
        self.remove_temporary()
        if self.created:
            try:
                os.rmdir(self.path)
            except OSError:
                pass
