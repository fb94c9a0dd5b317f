"""What a plugin sees during one tick: the snapshot, per-cgroup history, and a way to submit a command."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cgroupfs.stats import CgroupStats, HostStats
from ipc.messages import KillCommand, Snapshot
from policy.paths import matches_any

# oomd's --average-size-decay: the weight of history in the running average of usage.
AVERAGE_SIZE_DECAY = 4.0


@dataclass
class History:
    """Per-cgroup figures kept across ticks (oomd's context archive). Kept only while a cgroup is seen."""

    average_usage: dict[str, float] = field(default_factory=dict)

    def update(self, snapshot: Snapshot) -> None:
        seen: dict[str, float] = {}
        for cg in snapshot.cgroups:
            if cg.usage is None:
                continue
            # oomd starts the average at 0, which makes every new cgroup look 4x "grown" on its first tick;
            # we start it at the first reading instead.
            prev = self.average_usage.get(cg.path, float(cg.usage))
            seen[cg.path] = prev * (AVERAGE_SIZE_DECAY - 1) / AVERAGE_SIZE_DECAY + cg.usage / AVERAGE_SIZE_DECAY
        self.average_usage = seen

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
