"""Action plugins. Kill actions rank candidates here, from snapshot data, and submit one command."""

from __future__ import annotations

import math
import signal
import uuid

from cgroupfs.stats import CgroupStats
from ipc.messages import Candidate, KillCommand
from policy.context import TickContext
from policy.paths import is_protected, parse_cgroup_list
from policy.plugins.base import ArgError, Args, Needs, Plugin, Ret, RulesetOptions, register
from policy.plugins.detectors import _as_bool, _as_float
from policy.units import parse_duration

KILL_TIMEOUT = 5.0  # seconds the actuator keeps signalling before it reports the cgroup as not emptied


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)  # type: ignore[arg-type]


class KillPlugin(Plugin):
    """Common to oomd's kill plugins: candidates, dry, post_action_delay, one command per decision."""

    kinds = frozenset({"action"})

    def init_common(self, args: Args, ruleset: RulesetOptions) -> None:
        self.cgroups = args.get("cgroup", parse_cgroup_list, required=True)
        self.dry = args.get("dry", _as_bool, False)
        self.post_action_delay = args.get("post_action_delay", parse_duration, ruleset.post_action_delay)
        # pyoomd's own: SIGTERM, then SIGKILL after this grace. oomd (and the default) send SIGKILL at once.
        self.grace = args.get("grace", parse_duration, 0.0)
        if args.get("recursive", _as_bool, False):
            raise ArgError("recursive", "argument 'recursive': true is not supported yet", at_value=True)
        args.get("debug", _as_bool, False)
        self.interval = ruleset.interval

    def candidates(self, ctx: TickContext) -> list[CgroupStats]:
        """Matching cgroups that hold processes and are not protected."""
        return [
            cg
            for cg in ctx.select(self.cgroups)
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
        # Something was killed (or would have been): end the chain and hold off for post_action_delay.
        # Nothing could be killed: let the chain go on, as oomd does when a kill fails.
        return Ret.STOP if status in ("killed", "dry-run") else Ret.CONTINUE


@register
class KillByMemorySizeOrGrowth(KillPlugin):
    """oomd's three phases: above `size_threshold` % of the candidates' total usage first (largest first),
    then the fastest growing among the largest (P`growing_size_percentile`), then the rest by size."""

    name = "kill_by_memory_size_or_growth"

    def init(self, args: Args, ruleset: RulesetOptions) -> None:
        self.init_common(args, ruleset)
        self.size_threshold = args.get("size_threshold", _as_int, 50)
        self.min_growth_ratio = args.get("min_growth_ratio", _as_float, 1.25)
        self.growing_size_percentile = args.get("growing_size_percentile", _as_int, 80)
        if not 0 <= self.growing_size_percentile < 100:
            raise ArgError(
                "growing_size_percentile", "argument 'growing_size_percentile' must be in [0, 100)", at_value=True
            )

    def needs(self) -> Needs:
        return Needs(cgroups=self.cgroups, fields=frozenset({"memory"}), history=True)

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
