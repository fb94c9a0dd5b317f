"""Detector plugins: each says CONTINUE while its condition holds, STOP otherwise."""

from __future__ import annotations

import re

from policy.context import TickContext
from policy.paths import parse_cgroup_list
from policy.plugins.base import ArgError, Args, Needs, Plugin, Ret, RulesetOptions, register
from policy.units import parse_duration, parse_size


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise ValueError(f"expected true or false, got {value!r}")


def _as_float(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


class _HeldFor:
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


@register
class PressureAbove(Plugin):
    """10 s `full` pressure of the most pressured matching cgroup above `threshold` % for `duration`."""

    name = "pressure_above"
    kinds = frozenset({"detector"})

    def init(self, args: Args, ruleset: RulesetOptions) -> None:
        self.cgroups = args.get("cgroup", parse_cgroup_list, required=True)
        resource = args.get("resource", str, required=True)
        if resource != "memory":
            raise ArgError("resource", f"argument 'resource': '{resource}' is not supported yet (memory is)",
                           at_value=True)
        self.threshold = args.get("threshold", _as_float, required=True)
        self.held = _HeldFor(args.get("duration", parse_duration, required=True))

    def needs(self) -> Needs:
        return Needs(
            cgroups=self.cgroups,
            fields=frozenset({"pressure", "memory"}),
            pressure_watch=tuple((pattern, self.threshold) for pattern in self.cgroups),
        )

    def run(self, ctx: TickContext) -> Ret:
        best = None
        best_weight = 0.0
        for cg in ctx.select(self.cgroups):
            p = cg.pressure
            if p is None or p.full_avg10 is None:
                continue
            # oomd's weighting: the 10 s average counts most, then 60 s, then 300 s.
            weight = p.full_avg10 * 3 + (p.full_avg60 or 0) * 2 + (p.full_avg300 or 0)
            if best is None or weight > best_weight:
                best, best_weight = p, weight
        holds = best is not None and best.full_avg10 is not None and best.full_avg10 > self.threshold
        return Ret.CONTINUE if self.held.update(holds, ctx.now) else Ret.STOP


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@register
class MemoryAbove(Plugin):
    """Usage (or anon usage) of the largest matching cgroup above a threshold for `duration`."""

    name = "memory_above"
    kinds = frozenset({"detector"})

    def init(self, args: Args, ruleset: RulesetOptions) -> None:
        self.cgroups = args.get("cgroup", parse_cgroup_list, required=True)
        self.anon = args.has("threshold_anon")
        key = "threshold_anon" if self.anon else "threshold"
        if self.anon and args.has("threshold"):
            args.get("threshold", str)  # oomd drops it when threshold_anon is given
        self.percent: float | None = None
        self.bytes = 0
        raw = args.get(key, lambda v: v, required=True)
        m = _PERCENT.match(str(raw))
        if m:
            self.percent = float(m.group(1))
        else:
            self.bytes = args.get(key, parse_size)
        self.held = _HeldFor(args.get("duration", parse_duration, required=True))
        args.get("debug", _as_bool, False)

    def needs(self) -> Needs:
        watch = () if self.anon else tuple(
            (pattern, self.percent, None if self.percent is not None else self.bytes) for pattern in self.cgroups
        )
        return Needs(cgroups=self.cgroups, fields=frozenset({"memory"}), usage_watch=watch)

    def threshold(self, ctx: TickContext) -> int:
        if self.percent is not None:
            return int(ctx.host.mem_total * self.percent / 100)
        return self.bytes

    def run(self, ctx: TickContext) -> Ret:
        usages = [(cg.anon if self.anon else cg.usage) or 0 for cg in ctx.select(self.cgroups)]
        current = max(usages, default=0)
        return Ret.CONTINUE if self.held.update(current > self.threshold(ctx), ctx.now) else Ret.STOP


@register
class Continue(Plugin):
    name = "continue"
    kinds = frozenset({"detector", "action"})

    def init(self, args: Args, ruleset: RulesetOptions) -> None:
        pass

    def run(self, ctx: TickContext) -> Ret:
        return Ret.CONTINUE


@register
class Stop(Plugin):
    name = "stop"
    kinds = frozenset({"detector", "action"})

    def init(self, args: Args, ruleset: RulesetOptions) -> None:
        pass

    def run(self, ctx: TickContext) -> Ret:
        return Ret.STOP
