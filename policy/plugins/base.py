"""The plugin contract, after oomd's: declared arguments, `run(context) -> CONTINUE | STOP | ASYNC_PAUSED`.

A plugin is a class with a name, the kinds it can serve (detector, action), its argument declarations and a
`run`. Arguments are parsed from the declarations before the plugin sees them and set as attributes of the
same names; `setup()` checks what spans several arguments. Plugins of other packages register through the
entry-point groups `pyoomd.detectors` and `pyoomd.actions` (see policy/plugins/registry.py).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from cgroupfs.stats import CgroupStats
from cgroupfs.watch import TriggerSpec
from policy.context import TickContext
from policy.model import PluginSpec
from policy.paths import join_cgroup
from policy.plugins.args import REQUIRED, Arg, ArgError, parse_args

__all__ = ["REQUIRED", "Arg", "ArgError", "Needs", "Plugin", "Ret", "RulesetOptions", "build_plugin", "register"]

PluginKind = Literal["detector", "action"]


class Ret(enum.Enum):
    CONTINUE = "continue"  # detector: the condition holds; action: run the next action
    STOP = "stop"  # detector: the condition does not hold; action: end the chain
    ASYNC_PAUSED = "async_paused"  # action: not done yet; run it again next tick (detectors: same as CONTINUE)


@dataclass(frozen=True)
class Needs:
    """What the collector must read for this plugin every tick."""

    cgroups: tuple[str, ...] = ()  # patterns
    fields: frozenset[str] = frozenset()  # field groups: memory, swap, reclaim, oom, tree, pressure, io, xattrs
    history: bool = False  # per-tick history of its cgroups (growth and scan rates: oomd's prerun)
    # (pattern, percent): wait on pressure events of these cgroups, and evaluate at once when one comes;
    # the percent is the share of time stalled that counts as an event (the plugin's threshold).
    pressure_watch: tuple[tuple[str, float], ...] = ()
    # (pattern, percent of MemTotal or None, bytes or None): wait for usage to cross this, where the kernel can say
    usage_watch: tuple[tuple[str, float | None, int | None], ...] = ()
    # (pattern, trigger): PSI triggers exactly as asked, counted per trigger key in the snapshot
    trigger_watch: tuple[tuple[str, TriggerSpec], ...] = ()
    # What only actions read, and only when they are about to run: a "full" snapshot reads these too, a tick's
    # does not (a ruleset that fires asks for one first). An action that needs history reads every tick instead.
    action_cgroups: tuple[str, ...] = ()
    action_fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RulesetOptions:
    name: str
    post_action_delay: float
    interval: float
    cgroup: tuple[str, ...] = ()  # the ruleset's own cgroup patterns (per-cgroup rulesets), for ruleset_cgroup
    prekill_hook_timeout: float | None = None


# Every plugin that watches cgroups takes these two, as in oomd.
CGROUP_ARGS = (
    Arg("cgroup", "cgroups", (), "cgroups to watch: comma-separated paths relative to the root, globs per "
        "component (system.slice/*); '/' is the whole host"),
    Arg("ruleset_cgroup", "cgroups", (), "like cgroup, but relative to the cgroup a per-cgroup ruleset is "
        "running for"),
)


class Plugin:
    name: ClassVar[str]
    kinds: ClassVar[frozenset[PluginKind]]
    doc: ClassVar[str] = ""
    args: ClassVar[tuple[Arg, ...]] = ()
    # What the host must offer: "per-cgroup psi", "v2", "systemd", "io.stat" (pyoomd check --host reports it).
    requires: ClassVar[frozenset[str]] = frozenset()
    # An action whose figures matter only at the moment it runs (a kill's ranking): they are read for the
    # snapshot it acts on, not every tick (policy/engine.py reads_on_demand).
    reads_when_acting: ClassVar[bool] = False

    def __init__(self, values: Mapping[str, Any], ruleset: RulesetOptions) -> None:
        self.ruleset = ruleset
        for name, value in values.items():
            setattr(self, name, value)

    def setup(self) -> None:
        """Check what spans several arguments; raise ArgError."""

    def needs(self) -> Needs:
        return Needs()

    def run(self, ctx: TickContext) -> Ret:
        raise NotImplementedError

    def on_result(self, status: str) -> Ret:
        """Actions that talk to the actuator learn how their command ended."""
        return Ret.STOP

    # ---- cgroup arguments -----------------------------------------------------------------------------------

    def watched_patterns(self) -> tuple[str, ...]:
        """Every pattern the collector must read: `cgroup`, and `ruleset_cgroup` under the ruleset's cgroups."""
        own: tuple[str, ...] = getattr(self, "cgroup", ())
        rel: tuple[str, ...] = getattr(self, "ruleset_cgroup", ())
        joined = tuple(join_cgroup(base, r) for base in self.ruleset.cgroup for r in rel)
        return own + joined

    def select(self, ctx: TickContext) -> list[CgroupStats]:
        """The snapshot's cgroups this plugin watches now (ruleset_cgroup relative to the ruleset's cgroup)."""
        patterns: tuple[str, ...] = getattr(self, "cgroup", ())
        rel: tuple[str, ...] = getattr(self, "ruleset_cgroup", ())
        if rel and ctx.ruleset_cgroup is not None:
            patterns = patterns + tuple(join_cgroup(ctx.ruleset_cgroup, r) for r in rel)
        return ctx.select(patterns)

    def require_cgroup(self) -> None:
        if not getattr(self, "cgroup", ()) and not getattr(self, "ruleset_cgroup", ()):
            raise ArgError(None, "missing required argument 'cgroup' (or 'ruleset_cgroup')")


REGISTRY: dict[str, type[Plugin]] = {}

P = TypeVar("P", bound=type[Plugin])


def register(cls: P) -> P:
    REGISTRY[cls.name] = cls
    return cls


def build_plugin(spec: PluginSpec, kind: PluginKind, ruleset: RulesetOptions) -> Plugin:
    from policy.plugins.registry import lookup

    cls = lookup(spec.name, kind)
    plugin = cls(parse_args(spec.name, cls.args, spec.args), ruleset)
    plugin.setup()
    return plugin
