"""The plugin contract, after oomd's: `init(args)` once, `run(context) -> CONTINUE | STOP | ASYNC_PAUSED`."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from policy.context import TickContext
from policy.model import ArgValue, PluginSpec


class Ret(enum.Enum):
    CONTINUE = "continue"  # detector: the condition holds; action: run the next action
    STOP = "stop"  # detector: the condition does not hold; action: end the chain
    ASYNC_PAUSED = "async_paused"  # action: waiting for the actuator; resume here on a later tick


class ArgError(ValueError):
    """A bad plugin argument; `arg` names it (None when the problem is the plugin as a whole)."""

    def __init__(self, arg: str | None, message: str, at_value: bool = False) -> None:
        super().__init__(message)
        self.arg = arg
        self.at_value = at_value  # the value is wrong (point at it), not the argument's name


@dataclass(frozen=True)
class Needs:
    """What the collector must read for this plugin every tick."""

    cgroups: tuple[str, ...] = ()  # patterns
    fields: frozenset[str] = frozenset()  # "memory", "pressure"
    history: bool = False  # per-tick history of its cgroups (growth rates)
    # (pattern, percent): wait on pressure events of these cgroups, and evaluate at once when one comes;
    # the percent is the share of time stalled that counts as an event (the plugin's threshold).
    pressure_watch: tuple[tuple[str, float], ...] = ()
    # (pattern, percent of MemTotal or None, bytes or None): wait for usage to cross this, where the kernel can say
    usage_watch: tuple[tuple[str, float | None, int | None], ...] = ()


T = TypeVar("T")


class Args:
    """Typed access to a plugin's arguments; every argument must be consumed, or it is an unknown one."""

    def __init__(self, raw: dict[str, ArgValue]) -> None:
        self._raw = dict(raw)
        self._used: set[str] = set()

    def get(self, name: str, parse: Callable[[Any], T], default: T | None = None, required: bool = False) -> T:
        self._used.add(name)
        if name not in self._raw:
            if required:
                raise ArgError(None, f"missing required argument '{name}'")
            return default  # type: ignore[return-value]
        try:
            return parse(self._raw[name])
        except (ValueError, TypeError) as e:
            raise ArgError(name, f"argument '{name}': {e}", at_value=True) from None

    def has(self, name: str) -> bool:
        return name in self._raw

    def finish(self) -> None:
        for name in self._raw:
            if name not in self._used:
                raise ArgError(name, f"unknown argument '{name}'")


class Plugin:
    name: ClassVar[str]
    kinds: ClassVar[frozenset[Literal["detector", "action"]]]

    def init(self, args: Args, ruleset: RulesetOptions) -> None:
        raise NotImplementedError

    def needs(self) -> Needs:
        return Needs()

    def run(self, ctx: TickContext) -> Ret:
        raise NotImplementedError

    # Actions that talk to the actuator learn how their command ended.
    def on_result(self, status: str) -> Ret:
        return Ret.STOP


@dataclass(frozen=True)
class RulesetOptions:
    name: str
    post_action_delay: float
    interval: float


REGISTRY: dict[str, type[Plugin]] = {}

P = TypeVar("P", bound=type[Plugin])


def register(cls: P) -> P:
    REGISTRY[cls.name] = cls
    return cls


def build_plugin(spec: PluginSpec, kind: Literal["detector", "action"], ruleset: RulesetOptions) -> Plugin:
    cls = REGISTRY.get(spec.name)
    if cls is None:
        known = ", ".join(sorted(n for n, c in REGISTRY.items() if kind in c.kinds))
        raise ArgError(None, f"unknown {kind} plugin '{spec.name}' (known: {known})")
    if kind not in cls.kinds:
        raise ArgError(None, f"'{spec.name}' is not a {kind} plugin")
    plugin = cls()
    args = Args(spec.args)
    plugin.init(args, ruleset)
    args.finish()
    return plugin
