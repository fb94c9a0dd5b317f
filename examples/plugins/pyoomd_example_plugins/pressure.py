"""`memory_pressure_threshold`: the detector most oomd users write first.

"Memory pressure above N percent, on the average I choose, for this long." It reads the `pressure` figures
pyoomd's collector already takes for the cgroups the plugin declares, so it works wherever the cgroup has PSI
of its own (cgroup2, or a hybrid host's verified cgroup2 twin).
"""

from __future__ import annotations

from policy.context import TickContext
from policy.plugins.base import CGROUP_ARGS, Arg, Needs, Plugin, Ret

AVERAGES = {"10s": "avg10", "60s": "avg60", "300s": "avg300"}


class MemoryPressureThreshold(Plugin):
    kinds = frozenset({"detector"})
    doc = ("CONTINUE while the `some` memory pressure of any matching cgroup, on the chosen average (`window`), "
           "is above `threshold` percent, continuously for `duration`.")
    args = (
        *CGROUP_ARGS,
        Arg("threshold", "float", doc="percent of time some task stalled on memory", unit="%", minimum=0,
            maximum=100),
        Arg("duration", "duration", 0.0, "how long it must hold without a break", unit="s"),
        Arg("window", "choice", "10s", "which of the kernel's averages", choices=tuple(AVERAGES)),
    )
    requires = frozenset({"per-cgroup psi"})

    threshold: float
    duration: float
    window: str

    def setup(self) -> None:
        self.require_cgroup()
        self.since: float | None = None

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({"pressure"}))

    def run(self, ctx: TickContext) -> Ret:
        field = "some_" + AVERAGES[self.window]
        values = [getattr(cg.pressure, field) for cg in self.select(ctx) if cg.pressure is not None]
        if not values or max(values) <= self.threshold:
            self.since = None
            return Ret.STOP
        if self.since is None:
            self.since = ctx.now
        return Ret.CONTINUE if ctx.now - self.since >= self.duration else Ret.STOP
