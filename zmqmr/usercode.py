"""Showing the user's own traceback, with zmqmr's frames taken out.

A failure inside a mapper should read like a failure in the user's script, not like a
failure in a framework.
"""

from __future__ import annotations

import os
import traceback

from .errors import UserCodeError

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


# --- errors in the user's functions ----------------------------------------------------

SHOWN_RECORD_CHARS = 200
PAIRS = "it must return an iterable of (key, value) pairs"
# zmqmr's files that iterate over what user functions return: an error raised in one of
# them (unpacking a pair, iterating None) is the user breaking a contract, not raising.
_CONTRACT_FILES = {os.path.join(_PACKAGE_DIR, name) for name in ("tasks.py", "mapbuffer.py")}


def shown(record) -> str:
    """A record as the user should see it in an error: repr, cut short."""
    text = repr(record)
    return text if len(text) <= SHOWN_RECORD_CHARS else text[:SHOWN_RECORD_CHARS] + "..."


def _raised_by_framework(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in _CONTRACT_FILES


def user_error(function: str, exc: BaseException, location: str, contract: str = PAIRS):
    """The UserCodeError for an exception that escaped the user's `function`."""
    if _raised_by_framework(exc):
        if isinstance(exc, TypeError) and "NoneType" in str(exc):
            message = f"{function} returned None; {contract}"
        else:
            message = f"{function} broke its contract ({exc}); {contract}"
        return UserCodeError(message, location)
    return UserCodeError(f"{function} raised {type(exc).__name__}: {exc}", location, user_traceback(exc))
