"""Counters: named counts that user code and zmqmr bump during a task attempt.

Only the winning attempt of each task is added into the job's totals, so a retried
or backup attempt never counts twice. Use from a mapper, combiner or reducer:

    import zmqmr
    zmqmr.counters.increment("quality", "empty lines")
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Iterable, Tuple

from .errors import UserCodeError
from .protocol import MAX_COUNTERS, MAX_NAME_LEN, CounterValue
FRAMEWORK = "zmqmr"
LIMIT = 2**62

_attempt: Counter = Counter()


def increment(group: str, name: str, n: int = 1) -> None:
    """Add n to counter (group, name) of the current task attempt."""
    key = (group, name)
    if key not in _attempt:
        _check_new(group, name)
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"counter increments must be whole numbers, not {n!r}")
    value = _attempt[key] + n
    if not -LIMIT <= value <= LIMIT:
        raise UserCodeError(f"counter {group}/{name} would reach {value}, beyond ±2^62")
    _attempt[key] = value


def _check_new(group: str, name: str) -> None:
    for part in (group, name):
        if not isinstance(part, str) or not 0 < len(part) <= MAX_NAME_LEN:
            raise ValueError(f"counter groups and names are strings of 1..{MAX_NAME_LEN} characters, not {part!r}")
    if len(_attempt) >= MAX_COUNTERS:
        raise UserCodeError(f"more than {MAX_COUNTERS} distinct counters in one task; counters are for a "
                            "few named counts, not per-key data (write those as output instead)")


def start_attempt() -> None:
    _attempt.clear()


# zmqmr's own counters that every job's totals show, at 0 if no task added to them. Tasks
# report only counters they changed, so a thousand tiny tasks do not ship zeros around.
ALWAYS_SHOWN = ("input records", "input bytes", "map output records", "spilled records", "reduce input groups",
                "reduce input records", "output records")


def add_framework(name: str, n: int) -> None:
    if n:
        _attempt[(FRAMEWORK, name)] += n


def attempt_counters() -> Tuple[CounterValue, ...]:
    return tuple(CounterValue(group, name, value) for (group, name), value in sorted(_attempt.items()))


def total(values: Iterable[CounterValue]) -> Dict[str, Dict[str, int]]:
    """Sum counters into {group: {name: value}}, sorted, zmqmr's own group first."""
    sums: Counter = Counter({(FRAMEWORK, name): 0 for name in ALWAYS_SHOWN})
    for c in values:
        sums[(c.group, c.name)] += c.value
    out: Dict[str, Dict[str, int]] = {}
    for (group, name), value in sorted(sums.items(), key=lambda item: (item[0][0] != FRAMEWORK, item[0])):
        out.setdefault(group, {})[name] = value
    return out


def format_table(groups: Dict[str, Dict[str, int]]) -> str:
    rows = [(group, name, f"{value:,}") for group, names in groups.items() for name, value in names.items()]
    if not rows:
        return "no counters"
    widths = [max(len(r[i]) for r in rows + [("group", "counter", "value")]) for i in range(3)]
    lines = [f"{'group':{widths[0]}}  {'counter':{widths[1]}}  {'value':>{widths[2]}}"]
    lines += [f"{g:{widths[0]}}  {n:{widths[1]}}  {v:>{widths[2]}}" for g, n, v in rows]
    return "\n".join(lines)
