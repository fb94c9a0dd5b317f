"""Pressure records that need no reading this tick: the host has not stalled since they were read, nor had they.

PSI is hierarchical. A task stalled on memory anywhere stalls the host too: its time counts in the root's
`some` total (/proc/pressure/memory), which the collector reads every tick. While that total stands still, no
cgroup's stall total moves, and a cgroup whose averages already read zero, with a total that had stopped moving
long enough for the kernel's 2 s averaging to have seen it, still reads exactly that. Such a record is used
again instead of read: on an idle host a pressure-only policy then costs one read a tick, not one per cgroup
(nor the member lists that verify each cgroup's cgroup2 twin).

Any stall anywhere, a nonzero average, a cgroup made anew, or REFRESH passing sends a cgroup back to its files.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgroupfs.stats import CgroupStats, Pressure

# Read again after this long in any case: the kernel aggregates per-CPU stall time in whole jiffies of
# non-idle time, so a stall of a few milliseconds can be invisible in the host's total, and a twin's verdict
# (whether the cgroup2 directory still holds the same processes) is not checked while a record is reused.
REFRESH = 60.0
# The kernel folds a stall total into the averages every 2 s: a total that has not moved for two such periods
# has been seen by them.
SETTLE = 4.0


@dataclass
class _Reading:
    record: CgroupStats
    directory: str  # its primary directory: the record holds while that is the same directory (inode)
    source: str  # the PSI file it came from, kept open while the record stands in for it
    host_total: int  # the host's some total read at the start of the tick this record was read in
    read_at: float
    steady_since: float  # since when this cgroup's own some total has not moved


def _at_rest(p: Pressure) -> bool:
    return not (p.some_avg10 or p.some_avg60 or p.some_avg300 or p.full_avg10 or p.full_avg60 or p.full_avg300)


class QuietPressure:
    """The last pressure-only record of each cgroup, and whether it may stand in for a reading now."""

    def __init__(self) -> None:
        self._readings: dict[str, _Reading] = {}
        self._seen: set[str] = set()

    def reusable(self, path: str, host_total: int, now: float) -> _Reading | None:
        """The reading that still holds for `path` if its directory is the same, or None: read its file."""
        self._seen.add(path)
        r = self._readings.get(path)
        if r is None or r.host_total != host_total or now - r.read_at >= REFRESH or now - r.steady_since < SETTLE:
            return None
        return r

    def remember(self, record: CgroupStats, directory: str, source: str | None, host_total: int, now: float
                 ) -> None:
        """A record just read from `directory` (its pressure from `source`, None where it has none)."""
        path = record.path
        self._seen.add(path)
        p = record.pressure
        if p is None or source is None or not _at_rest(p):
            self._readings.pop(path, None)
            return
        before = self._readings.get(path)
        steady = (before is not None and before.record.inode == record.inode and before.record.pressure is not None
                  and before.record.pressure.some_total == p.some_total)
        self._readings[path] = _Reading(record, directory, source, host_total, now,
                                        before.steady_since if steady else now)

    def end_tick(self) -> None:
        """Forget the cgroups this tick did not ask about (removed, or no longer watched)."""
        if len(self._readings) > len(self._seen):
            self._readings = {k: v for k, v in self._readings.items() if k in self._seen}
        self._seen = set()
