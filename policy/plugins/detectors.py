"""Detector plugins: each says CONTINUE while its condition holds, STOP otherwise."""

from __future__ import annotations

from policy.context import TickContext
from policy.plugins.args import SizeOrPercent
from policy.plugins.base import CGROUP_ARGS, Arg, ArgError, Needs, Plugin, Ret, register


class HeldFor:
    """oomd's `hit_thres_at_`: a condition must hold continuously for `duration` seconds."""

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.since: float | None = None

    def update(self, holds: bool, now: float) -> bool:
        if not holds:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since >= self.duration


RESOURCE = Arg("resource", "choice", doc="which pressure: memory or io", choices=("memory", "io"))


@register
class PressureAbove(Plugin):
    name = "pressure_above"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE while the 10 s pressure of the most pressured matching cgroup (oomd's weighting: "
           "3 x avg10 + 2 x avg60 + avg300 picks it) is above `threshold`, held for `duration`.")
    args = (
        *CGROUP_ARGS,
        RESOURCE,
        Arg("threshold", "float", doc="percent of time stalled (memory: 'full', as oomd)", unit="%", minimum=0),
        Arg("duration", "duration", doc="how long it must hold without a break", unit="s"),
    )
    requires = frozenset({"per-cgroup psi"})

    cgroup: tuple[str, ...]
    resource: str
    threshold: float
    duration: float

    def setup(self) -> None:
        self.require_cgroup()
        if self.resource != "memory":
            raise ArgError("resource", "argument 'resource': 'io' is not supported yet (memory is)", at_value=True)
        self.held = HeldFor(self.duration)

    def needs(self) -> Needs:
        patterns = self.watched_patterns()
        return Needs(
            cgroups=patterns,
            fields=frozenset({"pressure", "memory"}),
            pressure_watch=tuple((pattern, self.threshold) for pattern in patterns),
        )

    def run(self, ctx: TickContext) -> Ret:
        best = None
        best_weight = 0.0
        for cg in self.select(ctx):
            p = cg.pressure
            if p is None or p.full_avg10 is None:
                continue
            # oomd's weighting: the 10 s average counts most, then 60 s, then 300 s.
            weight = p.full_avg10 * 3 + (p.full_avg60 or 0) * 2 + (p.full_avg300 or 0)
            if best is None or weight > best_weight:
                best, best_weight = p, weight
        holds = best is not None and best.full_avg10 is not None and best.full_avg10 > self.threshold
        return Ret.CONTINUE if self.held.update(holds, ctx.now) else Ret.STOP


@register
class MemoryAbove(Plugin):
    name = "memory_above"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE while the usage (or, with `threshold_anon`, the anonymous memory) of the largest matching "
           "cgroup is above the threshold, held for `duration`. Give `threshold` or `threshold_anon`; with both, "
           "`threshold_anon` wins (as in oomd).")
    args = (
        *CGROUP_ARGS,
        Arg("threshold", "size_or_percent", None, "a size (1.5G, 512M, '1.5M 32K 512'; a bare number is MB) "
            "or N% of MemTotal"),
        Arg("threshold_anon", "size_or_percent", None, "the same, compared with anonymous memory"),
        Arg("duration", "duration", doc="how long it must hold without a break", unit="s"),
        Arg("debug", "bool", False, "log every comparison"),
    )

    threshold: SizeOrPercent | None
    threshold_anon: SizeOrPercent | None
    duration: float

    def setup(self) -> None:
        self.require_cgroup()
        if self.threshold is None and self.threshold_anon is None:
            raise ArgError(None, "missing required argument 'threshold' (or 'threshold_anon')")
        self.anon = self.threshold_anon is not None
        self.limit: SizeOrPercent = self.threshold_anon if self.threshold_anon is not None else self.threshold  # type: ignore[assignment]
        self.held = HeldFor(self.duration)

    def needs(self) -> Needs:
        patterns = self.watched_patterns()
        watch = () if self.anon else tuple((p, self.limit.percent, self.limit.bytes) for p in patterns)
        return Needs(cgroups=patterns, fields=frozenset({"memory"}), usage_watch=watch)

    def run(self, ctx: TickContext) -> Ret:
        usages = [(cg.anon if self.anon else cg.usage) or 0 for cg in self.select(ctx)]
        current = max(usages, default=0)
        holds = current > self.limit.of(ctx.host.mem_total)
        return Ret.CONTINUE if self.held.update(holds, ctx.now) else Ret.STOP


@register
class Continue(Plugin):
    name = "continue"
    kinds = frozenset({"detector", "action"})
    doc = "Always CONTINUE."

    def run(self, ctx: TickContext) -> Ret:
        return Ret.CONTINUE


@register
class Stop(Plugin):
    name = "stop"
    kinds = frozenset({"detector", "action"})
    doc = "Always STOP."

    def run(self, ctx: TickContext) -> Ret:
        return Ret.STOP
