"""Showing the user's own traceback, with zmqmr's frames taken out.

A failure inside a mapper should read like a failure in the user's script, not like a
failure in a framework.
"""

from __future__ import annotations

import os
import traceback

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_EXAMPLES_DIR = os.path.join(_PACKAGE_DIR, "examples")


def _is_framework(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep) and not path.startswith(_EXAMPLES_DIR + os.sep)


def user_traceback(exc: BaseException) -> str:
    """Format `exc` with zmqmr's own frames removed (all of them kept if none is the user's)."""
    te = traceback.TracebackException.from_exception(exc)
    _trim(te)
    return "".join(te.format()).rstrip("\n")


def _trim(te: traceback.TracebackException) -> None:
    frames = [f for f in te.stack if not _is_framework(f.filename) and "importlib._bootstrap" not in f.filename]
    if frames:
        te.stack = traceback.StackSummary.from_list(frames)
    for linked in (te.__cause__, te.__context__):
        if linked is not None:
            _trim(linked)
