"""What a plugin sees during one tick: the snapshot, per-cgroup history, and a way to submit a command."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field

from cgroupfs.stats import CgroupStats, HostStats
from ipc.messages import KillCommand, Snapshot
from policy.paths import matches_any

# oomd's --average-size-decay: the weight of history in the running average of usage.
AVERAGE_SIZE_DECAY = 4.0


RATE_FIELDS = (
    "workingset_refault", "pgscan", "pgmajfault", "vmpressure_events", "pressure_events", "io_bytes", "io_ops",
)
_rate_values = operator.attrgetter(*RATE_FIELDS)  # one call for all of a record's counters
_NO_RATES = (None,) * len(RATE_FIELDS)


@dataclass
class History:
    """Per-cgroup figures kept across ticks (oomd's context archive). Kept only while a cgroup is seen."""

    average_usage: dict[str, float] = field(default_factory=dict)
    # path -> field -> per-second rate of a cumulative counter between the last two snapshots that had it
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    # path -> (inode, field -> (monotonic, value)) of its last readings: a tick's snapshot may leave a counter out
    # (actions' figures are read only for the snapshots they act on), and the next reading pairs with this one.
    _last: dict[str, tuple[int, dict[str, tuple[float, int]]]] = field(default_factory=dict)

    def update(self, snapshot: Snapshot) -> None:
        self._update_rates(snapshot)
        seen: dict[str, float] = {}
        for cg in snapshot.cgroups:
            if cg.usage is None:
                continue
            # oomd starts the average at 0, which makes every new cgroup look 4x "grown" on its first tick;
            # we start it at the first reading instead.
            prev = self.average_usage.get(cg.path, float(cg.usage))
            seen[cg.path] = prev * (AVERAGE_SIZE_DECAY - 1) / AVERAGE_SIZE_DECAY + cg.usage / AVERAGE_SIZE_DECAY
        self.average_usage = seen

    def _update_rates(self, snapshot: Snapshot) -> None:
        last: dict[str, tuple[int, dict[str, tuple[float, int]]]] = {}
        rates: dict[str, dict[str, float]] = {}
        now = snapshot.monotonic
        for cg in snapshot.cgroups:
            values = _rate_values(cg)
            before = self._last.get(cg.path)
            if before is not None and before[0] != cg.inode:
                before = None  # a cgroup made anew under the same name: nothing of the old one pairs with it
            if values == _NO_RATES:
                if before is not None:
                    last[cg.path] = before  # none read this time: the next readings pair with the last ones
                continue
            earlier = before[1] if before is not None else {}
            kept = dict(earlier)
            for name, value in zip(RATE_FIELDS, values, strict=True):
                if value is None:
                    continue
                prev = earlier.get(name)
                if prev is not None and now > prev[0]:
                    rates.setdefault(cg.path, {})[name] = max(value - prev[1], 0) / (now - prev[0])
                kept[name] = (now, value)
            last[cg.path] = (cg.inode, kept)
        self._last, self.rates = last, rates

    def rate(self, cg: CgroupStats, name: str) -> float | None:
        """Per second, between the last two snapshots; None on a cgroup's first tick or where the kernel has
        no such counter. On v1 hosts, `workingset_refault` and `vmpressure_events` stand in for v2's `pgscan`."""
        return self.rates.get(cg.path, {}).get(name)

    def growth(self, cg: CgroupStats) -> float:
        avg = self.average_usage.get(cg.path)
        if cg.usage is None or not avg:
            return 0.0
        return cg.usage / avg


@dataclass
class TickContext:
    snapshot: Snapshot
    now: float  # monotonic time of evaluation
    history: History
    protected: frozenset[str]
    generation: int
    dry_run: bool
    dry_run_source: str
    ruleset: str = ""
    group: str = ""  # the detector group that fired, while actions run
    ruleset_cgroup: str | None = None  # the cgroup a per-cgroup ruleset is running for
    submitted: list[KillCommand] = field(default_factory=list)

    @property
    def host(self) -> HostStats:
        return self.snapshot.host

    def select(self, patterns: Iterable[str]) -> list[CgroupStats]:
        """The snapshot's cgroups matching any pattern, in path order."""
        pats = tuple(patterns)
        return [cg for cg in self.snapshot.cgroups if matches_any(pats, cg.path)]

    def submit(self, command: KillCommand) -> None:
        self.submitted.append(command)
