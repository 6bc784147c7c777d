"""The map side's output buffer: values grouped by key in memory, spilled as sorted runs.

Grouping in a dict as pairs arrive costs one lookup per pair and keeps one copy of each
key; the combiner then runs on whole groups, and sorting touches distinct keys only.
Past the memory budget the buffer is combined (if the job has a combiner) and, if still
too big, spilled as one sorted run per partition. At the end each partition becomes one
sorted file, merging the runs if there were spills.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, Iterable, List, Tuple

from . import storage
from .errors import UserCodeError
from .job import Job
from .output import part_name
from .protocol import PartFile
from .usercode import PAIRS, shown, user_error, user_traceback

_SMALL_INTS = range(-5, 257)
CHECK_EVERY = 4096  # pairs between two looks at the buffer's size, while far from the budget
MIN_CHECK_EVERY = 256  # pairs between two looks, at least


def hashable_key(key: Any) -> Any:
    """Keys group in a dict: lists become tuples (as msgpack hands them back anyway)."""
    if isinstance(key, (list, tuple)):
        return tuple(hashable_key(k) for k in key)
    if isinstance(key, dict):
        raise UserCodeError(f"a map output key is a dict ({shown(key)}); keys must be sortable, so use a "
                            "tuple of its items instead")
    return key


def approx_size(obj: Any, depth: int = 0) -> int:
    """Bytes an object holds beyond the pointer to it, roughly and cheaply (shared small ints: 0)."""
    if obj is None or obj is True or obj is False:
        return 0
    kind = type(obj)
    if kind is int and obj in _SMALL_INTS:
        return 0
    size = sys.getsizeof(obj)
    if depth < 3 and kind in (tuple, list, dict) and obj:
        items = list(obj.values())[:16] + list(obj)[:16] if kind is dict else obj[:16]
        size += int(sum(approx_size(x, depth + 1) for x in items) * len(obj) / len(items))
    return size


def rss_bytes() -> int:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def partition_of(partitioner, key: Any, reducers: int) -> int:
    try:
        index = partitioner(key, reducers)
    except Exception as exc:
        raise UserCodeError(f"partitioner raised {type(exc).__name__}: {exc}", f"key {shown(key)}",
                            user_traceback(exc)) from None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < reducers:
        raise UserCodeError(f"partitioner returned {index!r} for key {shown(key)}; "
                            f"it must return an int in 0..{reducers - 1}")
    return index


def sort_records(records: list, what: str) -> None:
    try:
        records.sort(key=storage.first)
    except TypeError as exc:
        raise UserCodeError(f"keys in the {what} are not mutually sortable ({exc}); "
                            "keys of one job must be comparable with each other") from None


def write_records(path: str, records) -> Tuple[int, int]:
    try:
        return storage.write_run(path, records)
    except (TypeError, OverflowError, ValueError) as exc:
        raise UserCodeError(f"the map output holds a key or value that msgpack cannot carry ({exc}); keys "
                            "and values must be str, bytes, int (64-bit), float, bool, None, or lists, "
                            "tuples and dicts of those") from None


class MapOutput:
    """Values grouped by key, within a memory budget; see the module's docstring.

    Pairs come in through `add_pairs`, or straight into `groups` from a hot loop that
    calls `account` every so often. The partitioner is called once per distinct key
    per spill, not once per pair: it must be a pure function of the key, as it must be
    anyway for every reducer to see all of its keys' values.
    """

    KEY_OVERHEAD = 120  # a dict slot, the value list and their slack, per distinct key
    VALUE_OVERHEAD = 9  # a list slot with its slack, per value

    def __init__(self, job: Job, reducers: int, out_dir: str, memory_limit: int):
        self.job, self.reducers, self.out_dir, self.memory = job, reducers, out_dir, memory_limit
        # The budget is what this task may add to the process as it stands (Python, zmqmr, the job).
        self.budget = max(memory_limit - rss_bytes(), memory_limit // 4)
        self.groups: Dict[Any, list] = {}
        self.key_size = self.value_size = 0.0  # running averages of sampled pairs
        self.sampled = False
        self.held = 0  # values in the buffer
        self.until_check = CHECK_EVERY  # pairs add_pairs may add before it calls `account`
        self.mapped = 0  # pairs added, in all
        self.runs: List[List[str]] = [[] for _ in range(reducers)]
        self.spills = 0
        self.combine_in = self.combine_out = 0
        self.spilled = 0  # values written to disk, in runs and in the final files
        self.written = 0  # values in the final files

    def add_pairs(self, pairs: Iterable[Tuple[Any, Any]]) -> None:
        """Add every pair, looking at the buffer's size every so often.

        The per-line loop of `tasks._map_lines` inlines this, to save a call per line.
        """
        groups = self.groups
        get = groups.get
        until_check = self.until_check
        for key, value in pairs:
            try:
                held = get(key)
            except TypeError:
                key = hashable_key(key)
                held = get(key)
            if held is None:
                groups[key] = [value]
            else:
                held.append(value)
            until_check -= 1
            if until_check <= 0:
                until_check = self.account((key, value))
                groups = self.groups
                get = groups.get
        self.until_check = until_check

    def account(self, sample: Tuple[Any, Any] = None) -> int:
        """Count what the caller added to `groups` since the last call; combine or spill if past the budget.

        Counting here, once per check, keeps a counter out of the per-pair loop. Returns
        how many pairs may be added before the next call.
        """
        held = sum(map(len, self.groups.values()))
        self.mapped += held - self.held
        self.held = held
        if sample is not None:
            self._sample(*sample)
        if self._estimate() >= self.budget:
            if self.job.combiner is not None:
                self.held = self._combine_all()
            if self._estimate() >= self.budget / 2:
                self.spill()
        # The next look comes before the buffer can pass the budget, even if every pair
        # to come has a new key; far from the budget, rarely, so looking stays cheap.
        per_pair = self.KEY_OVERHEAD + self.key_size + self.VALUE_OVERHEAD + self.value_size
        room = max(0.0, self.budget - self._estimate()) / per_pair
        return max(MIN_CHECK_EVERY, min(int(room / 2), max(CHECK_EVERY, self.held // 8, len(self.groups))))

    def _sample(self, key: Any, value: Any) -> None:
        key_size, value_size = approx_size(key), approx_size(value)
        if not self.sampled:
            self.key_size, self.value_size, self.sampled = key_size, value_size, True
        else:
            self.key_size = 0.8 * self.key_size + 0.2 * key_size
            self.value_size = 0.8 * self.value_size + 0.2 * value_size

    def _estimate(self) -> float:
        return len(self.groups) * (self.KEY_OVERHEAD + self.key_size) + \
            self.held * (self.VALUE_OVERHEAD + self.value_size)

    def _combine_all(self) -> int:
        """Combine every key holding several values; return the values left."""
        left = 0
        groups = self.groups
        emptied = []
        for key, values in groups.items():
            if len(values) > 1:
                values = groups[key] = self.combine(key, values)
                if not values:
                    emptied.append(key)
            left += len(values)
        for key in emptied:  # the combiner dropped them: the reducer must not see them
            del groups[key]
        return left

    def combine(self, key: Any, values: List[Any]) -> List[Any]:
        """The job's combiner over one key's values; the combined values."""
        self.combine_in += len(values)
        out = []
        try:
            for out_key, value in self.job.combiner(key, iter(values)):
                if out_key != key:
                    raise UserCodeError(f"combiner emitted key {shown(out_key)} for input key {shown(key)}; "
                                        "a combiner must keep the key it is given", f"key {shown(key)}")
                out.append(value)
        except UserCodeError:
            raise
        except Exception as exc:
            raise user_error("combiner", exc, f"key {shown(key)}", PAIRS) from None
        self.combine_out += len(out)
        return out

    def _sorted_partitions(self) -> List[List[Tuple[Any, List[Any]]]]:
        """The buffer as (key, values) records per partition, combined and sorted by key; empties it."""
        partitions: List[List[Tuple[Any, List[Any]]]] = [[] for _ in range(self.reducers)]
        partitioner, reducers = self.job.partitioner, self.reducers
        combine = self.combine if self.job.combiner is not None else None
        for key, values in self.groups.items():
            if combine is not None and len(values) > 1:
                values = combine(key, values)
                if not values:
                    continue
            partitions[0 if reducers == 1 else partition_of(partitioner, key, reducers)].append((key, values))
        self.groups = {}
        self.held = 0
        for index, records in enumerate(partitions):
            sort_records(records, f"map output for partition {index}")
        return partitions

    def spill(self) -> None:
        """Write the buffer as one sorted run per partition, and empty it."""
        os.makedirs(self.out_dir, exist_ok=True)
        for index, records in enumerate(self._sorted_partitions()):
            if records:
                path = os.path.join(self.out_dir, f"spill-{self.spills}-{index}.run")
                self.spilled += write_records(path, records)[1]
                self.runs[index].append(path)
        self.spills += 1

    def finish(self) -> List[PartFile]:
        """One sorted file per non-empty partition: the buffer itself, or the merge of the runs.

        An empty split writes nothing at all, not even its directory.
        """
        if not self.spills:
            final = [(index, iter(records)) for index, records in enumerate(self._sorted_partitions()) if records]
        else:
            if self.groups:
                self.spill()
            combine = self.combine if self.job.combiner is not None else None
            final = []
            for index, runs in enumerate(self.runs):
                if runs:
                    runs = storage.merge_to_fan_in(runs, self.memory, self.out_dir, combine, f"{index}-")
                    final.append((index, storage.combine_records(storage.merged_records(runs, self.memory),
                                                                 combine)))
        parts = []
        for index, records in final:
            os.makedirs(self.out_dir, exist_ok=True)
            path = os.path.join(self.out_dir, part_name(index) + ".mpk")
            size, values = write_records(path, records)
            self.spilled += values
            self.written += values
            parts.append(PartFile(partition=index, path=path, size=size))
        if self.spills:
            for name in os.listdir(self.out_dir):
                if name.endswith(".run"):
                    os.remove(os.path.join(self.out_dir, name))
        return parts
