"""Action plugins. Kill actions rank candidates here, from snapshot data, and submit one command."""

from __future__ import annotations

import math
import signal
import uuid

from cgroupfs.stats import CgroupStats
from ipc.messages import Candidate, KillCommand
from policy.context import TickContext
from policy.paths import is_protected
from policy.plugins.base import CGROUP_ARGS, Arg, ArgError, Needs, Plugin, Ret, register

KILL_TIMEOUT = 5.0  # seconds the actuator keeps signalling before it reports the cgroup as not emptied


KILL_ARGS = (
    *CGROUP_ARGS,
    Arg("recursive", "bool", False, "walk down from the matches to the best leaf (not supported yet)"),
    Arg("post_action_delay", "duration", None, "rest after a kill; default: the ruleset's", unit="s"),
    Arg("dry", "bool", False, "decide and record, but signal nothing"),
    Arg("always_continue", "bool", False, "CONTINUE the action chain even after a kill"),
    Arg("reap_memory", "bool", True, "process_mrelease after SIGKILL, where the kernel has it"),
    Arg("debug", "bool", False, "log the ranking"),
    Arg("grace", "duration", 0.0, "pyoomd: SIGTERM first, SIGKILL what is left after this long", unit="s"),
)


class KillPlugin(Plugin):
    """Common to oomd's kill plugins: candidates, dry, post_action_delay, one command per decision."""

    kinds = frozenset({"action"})
    args = KILL_ARGS

    cgroup: tuple[str, ...]
    recursive: bool
    post_action_delay: float
    dry: bool
    always_continue: bool
    grace: float

    def setup(self) -> None:
        self.require_cgroup()
        if self.recursive:
            raise ArgError("recursive", "argument 'recursive': true is not supported yet", at_value=True)
        if self.post_action_delay is None:
            self.post_action_delay = self.ruleset.post_action_delay
        self.interval = self.ruleset.interval

    def candidates(self, ctx: TickContext) -> list[CgroupStats]:
        """Matching cgroups that hold processes and are not protected."""
        return [
            cg
            for cg in self.select(ctx)
            if cg.nr_procs and not is_protected(cg.path, ctx.protected)
        ]

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> list[tuple[CgroupStats, str]]:
        raise NotImplementedError

    def run(self, ctx: TickContext) -> Ret:
        ranked = self.rank(ctx, self.candidates(ctx))
        if not ranked:
            return Ret.CONTINUE  # nothing to kill: let the next action try
        dry_run, source = (True, "plugin argument 'dry'") if self.dry else (ctx.dry_run, ctx.dry_run_source)
        top, why = ranked[0]
        ctx.submit(
            KillCommand(
                id=uuid.uuid4().hex,
                generation=ctx.generation,
                ruleset=ctx.ruleset,
                group=ctx.group,
                plugin=self.name,
                snapshot_time=ctx.snapshot.time,
                not_after=ctx.now + self.interval + 0.5,
                candidates=[Candidate(path=cg.path, inode=cg.inode, usage=cg.usage, why=w) for cg, w in ranked],
                mechanism="direct",
                signal=int(signal.SIGKILL),
                reason=f"{self.name} picked {top.path}: {why}",
                dry_run=dry_run,
                dry_run_source=source,
                kill_timeout=KILL_TIMEOUT + self.grace,
                grace=self.grace,
            )
        )
        return Ret.ASYNC_PAUSED

    def on_result(self, status: str) -> Ret:
        # Something was killed (or would have been): end the chain and hold off for post_action_delay, unless
        # always_continue. Nothing could be killed: let the chain go on, as oomd does when a kill fails.
        if status in ("killed", "dry-run"):
            return Ret.CONTINUE if self.always_continue else Ret.STOP
        return Ret.CONTINUE


@register
class KillByMemorySizeOrGrowth(KillPlugin):
    name = "kill_by_memory_size_or_growth"
    doc = ("oomd's three phases: candidates above `size_threshold` % of their total usage first (largest first), "
           "then the fastest growing among the largest (P`growing_size_percentile`), then the rest by size. "
           "Usage is memory.current - protection on v2, the v1 memory controller's usage on v1 and hybrid hosts.")
    args = (
        *KILL_ARGS,
        Arg("size_threshold", "int", 50, "percent of the candidates' total usage", unit="%", minimum=0, maximum=100),
        Arg("min_growth_ratio", "float", 1.25, "usage over its running average", minimum=0),
        Arg("growing_size_percentile", "int", 80, "only the largest candidates may be picked for growth",
            minimum=0, maximum=99),
    )

    size_threshold: int
    min_growth_ratio: float
    growing_size_percentile: int

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({"memory"}), history=True)

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> list[tuple[CgroupStats, str]]:
        if not cgroups:
            return []
        total = sum(cg.usage or 0 for cg in cgroups)
        size_floor = total * self.size_threshold / 100

        def effective(cg: CgroupStats) -> int:
            return (cg.usage or 0) - (cg.protection or 0)

        growth_floor = 0
        if self.growing_size_percentile > 0:
            nth = math.ceil(len(cgroups) * (100 - self.growing_size_percentile) / 100) - 1
            growth_floor = sorted((effective(cg) for cg in cgroups), reverse=True)[max(nth, 0)]

        def key(cg: CgroupStats) -> tuple[int, float, int]:
            size_ok = (cg.usage or 0) >= size_floor
            growth = ctx.history.growth(cg)
            growth_ok = growth >= self.min_growth_ratio and effective(cg) >= growth_floor
            return (effective(cg) if size_ok else 0, growth if growth_ok else 0.0, effective(cg))

        def why(cg: CgroupStats) -> str:
            size_mb, total_mb = (cg.usage or 0) >> 20, int(total) >> 20
            size_ok, growth_key, _ = key(cg)
            if size_ok:
                return f"{size_mb} MB, above {self.size_threshold}% of the candidates' {total_mb} MB"
            if growth_key:
                return f"{size_mb} MB, growing x{growth_key:.2f} (min {self.min_growth_ratio})"
            return f"{size_mb} MB effective usage, the largest left"

        ranked = sorted(cgroups, key=key, reverse=True)
        return [(cg, why(cg)) for cg in ranked]
