"""Action plugins. Kill actions rank candidates here, from snapshot data, and submit one command.

Every kill plugin ranks the same way oomd's do: the plugin's own figure decides among the candidates, and kill
preferences come first (oomd's sortDescWithKillPrefs): "prefer" cgroups before all others, "avoid" ones after
all others, "omit" ones never. Preferences come from the cgroup's xattrs (oomd's trusted./user.oomd_prefer and
oomd_avoid, systemd's user.oomd_avoid and user.oomd_omit) and from the policy's `prefer`/`avoid`/`omit`
arguments. The actuator takes the first candidate of the list that still qualifies when the command arrives.
"""

from __future__ import annotations

import logging
import math
import shlex
import signal
import uuid
from collections import defaultdict
from collections.abc import Callable

from cgroupfs.stats import CgroupStats, Pressure
from ipc.messages import Candidate, KillCommand
from policy.context import TickContext
from policy.paths import is_protected, join_cgroup, matches_any
from policy.plugins.args import SizeOrPercent
from policy.plugins.base import CGROUP_ARGS, Arg, ArgError, Needs, Plugin, Ret, register

log = logging.getLogger("pyoomd.plugins")

KILL_TIMEOUT = 5.0  # seconds the actuator keeps signalling before it reports the cgroup as not emptied
MB = 1 << 20
# `recursive` reads this many levels below the matched cgroups each tick; a cgroup at the last level read counts
# as a leaf (killing it kills its whole subtree). systemd's deepest common trees (user@.service/app.slice/x) and
# kubelet's (kubepods/burstable/pod/container) stay well within it.
RECURSIVE_DEPTH = 8
# An io operation counts as this many bytes in kill_by_io_cost (see its doc).
IO_OP_BYTES = 4096

# Kill preferences in cgroup xattrs. oomd reads trusted.* and user.* alike; systemd (ManagedOOMPreference=)
# writes user.oomd_avoid and user.oomd_omit. A cgroup with both prefer and avoid is preferred, as in oomd.
PREFER_XATTRS = ("trusted.oomd_prefer", "user.oomd_prefer")
AVOID_XATTRS = ("trusted.oomd_avoid", "user.oomd_avoid")
OMIT_XATTRS = ("user.oomd_omit",)
# oomd counts an xattr by its presence; systemd reads its own as booleans. A value that says false in systemd's
# words therefore does not count (systemd removes the attribute rather than writing one, so both agree in practice).
_FALSE = frozenset({"0", "false", "no", "off", "n", "f"})

PREFER, NORMAL, AVOID = 1, 0, -1
# Signals whose default action does not end a process: an OOM kill with one of them would free nothing.
_NOT_TERMINATING = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGCONT,
                              signal.SIGCHLD, signal.SIGURG, signal.SIGWINCH})

Ranked = list[tuple[CgroupStats, str]]


KILL_ARGS = (
    *CGROUP_ARGS,
    Arg("recursive", "bool", False, "walk down from the matched cgroups to the best leaf, comparing siblings with "
        f"this plugin's ranking ({RECURSIVE_DEPTH} levels are read; a deeper subtree is killed whole)"),
    Arg("post_action_delay", "duration", None, "rest after a kill; default: the ruleset's", unit="s"),
    Arg("dry", "bool", False, "decide and record, but signal nothing"),
    Arg("always_continue", "bool", False, "CONTINUE the action chain even after a kill"),
    Arg("reap_memory", "bool", True, "process_mrelease after SIGKILL, where the kernel has it"),
    Arg("debug", "bool", False, "log the ranking"),
    Arg("kernelkill", "bool", False, "oomd's: kill through cgroup.kill; accepted for oomd configs, as pyoomd always "
        "uses cgroup.kill where the cgroup has one (else a freeze, else a signal loop)"),
    Arg("grace", "duration", 0.0, "pyoomd: SIGTERM first, SIGKILL what is left after this long", unit="s"),
    Arg("signal", "signal", signal.SIGKILL, "pyoomd: the signal to send (SIGKILL, SIGTERM, ...); with `grace`, "
        "leave it at SIGKILL"),
    Arg("target", "choice", "cgroup", "pyoomd: kill the whole cgroup, or only its largest process by RSS",
        choices=("cgroup", "largest_process")),
    Arg("prefer", "globs", (), "pyoomd: cgroups to kill before any other (like the xattr trusted.oomd_prefer)"),
    Arg("avoid", "globs", (), "pyoomd: cgroups to kill only when nothing else is left (like trusted.oomd_avoid)"),
    Arg("omit", "globs", (), "pyoomd: cgroups never to pick, with their subtrees (like systemd's user.oomd_omit); "
        "a kill of an ancestor still kills them"),
    Arg("via", "choice", "auto", "pyoomd: how a victim that is a .service/.scope unit's own cgroup is killed: "
        "'systemd' through the service manager (KillUnit, after checking the unit's cgroup and invocation), "
        "'direct' by pyoomd itself, 'auto' through the manager when it answered its last probe. Any other cgroup, "
        "and any failure of the manager, gets the direct kill", choices=("auto", "systemd", "direct")),
    Arg("prekill_hook", "string", "", "pyoomd: a command run just before the kill, with the victim in its "
        "environment (PYOOMD_CGROUP, PYOOMD_PIDS, PYOOMD_RULESET, ...); the kill waits for it at most the "
        "ruleset's prekill_hook_timeout (default 5 s), never longer. Its executable must be root's and writable by "
        "no one else"),
    Arg("postkill_hook", "string", "", "pyoomd: a command run after the kill, with PYOOMD_RESULT too; never "
        "waited for"),
    Arg("notify", "bool", False, "pyoomd: after a kill, a desktop notification (org.freedesktop.Notifications) "
        "to the session of each user whose processes were killed, on their session bus at /run/user/UID/bus, sent "
        "as that user; never delays the kill, and a user with no session bus gets none"),
    Arg("max_kills", "int", 5, "pyoomd: at most this many kills of one cgroup within `kill_window`; more are "
        "refused and logged (the cgroup is passed over), so that a unit its manager keeps restarting cannot make "
        "pyoomd kill forever. 0: no limit", minimum=0),
    Arg("kill_window", "duration", 600.0, "pyoomd: the window `max_kills` counts in", unit="s", minimum=1),
)


# What every action that ends a cgroup takes, whatever its other arguments: hooks, notifications and the kill
# storm limit.
SHARED_KILL_ARGS = tuple(a for a in KILL_ARGS if a.name in ("prekill_hook", "postkill_hook", "notify",
                                                            "max_kills", "kill_window"))
DEFAULT_PREKILL_TIMEOUT = 5.0  # seconds a kill waits for its prekill hook when the ruleset does not say (as oomd)


def hook_argv(command: str) -> list[str]:
    """A hook's command line, split as a shell would split it (no shell runs it)."""
    return shlex.split(command) if command.strip() else []


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _ancestry(path: str) -> list[str]:
    """`path` and each of its ancestors below the root, deepest first."""
    out = []
    while path != "/":
        out.append(path)
        path = _parent(path)
    return out


def _set(xattrs: dict[str, str] | None, names: tuple[str, ...]) -> str | None:
    """The first of `names` present on the cgroup with a value that does not say false."""
    for name in names:
        value = (xattrs or {}).get(name)
        if value is not None and value.strip().lower() not in _FALSE:
            return name
    return None


def _mb(value: int | float | None) -> int:
    return int(value or 0) >> 20


class KillPlugin(Plugin):
    """Common to oomd's kill plugins: candidates, kill preferences, recursion, dry, post_action_delay, one command
    per decision. A subclass gives `rank` (its own order, and any filter of its own) and `fields`."""

    kinds = frozenset({"action"})
    args = KILL_ARGS
    reads_when_acting = True
    fields: frozenset[str] = frozenset({"memory"})  # field groups the ranking reads (xattrs always added)
    history = False  # the ranking reads History (growth, rates)
    # History used only for per-second rates of counters: two full snapshots a moment apart give them, so the
    # figures can still be read only when the action is about to run (a running average of usage cannot).
    rates_only = False

    cgroup: tuple[str, ...]
    recursive: bool
    post_action_delay: float
    dry: bool
    always_continue: bool
    reap_memory: bool
    debug: bool
    grace: float
    signal: int
    target: str
    prefer: tuple[str, ...]
    avoid: tuple[str, ...]
    omit: tuple[str, ...]
    via: str
    max_kills: int
    kill_window: float
    prekill_hook: str
    postkill_hook: str
    notify: bool

    def setup(self) -> None:
        self.require_cgroup()
        for name in ("prekill_hook", "postkill_hook"):
            try:
                argv = hook_argv(getattr(self, name))
            except ValueError as e:  # an unclosed quote
                raise ArgError(name, f"argument '{name}': {e}", at_value=True) from None
            if argv and not argv[0].startswith("/"):
                raise ArgError(name, f"argument '{name}': give the command's absolute path, not {argv[0]!r} (no "
                               "PATH is searched for a root daemon)", at_value=True)
        if self.post_action_delay is None:
            self.post_action_delay = self.ruleset.post_action_delay
        if self.signal in _NOT_TERMINATING or self.signal == 0:
            name = signal.Signals(self.signal).name if self.signal else "0"
            raise ArgError("signal", f"argument 'signal': {name} does not end a process", at_value=True)
        if self.grace > 0 and self.signal != signal.SIGKILL:
            raise ArgError("signal", "argument 'signal': with 'grace' the kill is SIGTERM, then SIGKILL after the "
                           "grace; drop one of the two", at_value=True)
        self.interval = self.ruleset.interval

    def needs(self) -> Needs:
        # tree: a candidate must hold processes (nr_procs); xattrs: the kill preferences.
        return Needs(cgroups=self.watched_patterns(), fields=self.fields | {"xattrs", "tree"}, history=self.history)

    def watched_patterns(self) -> tuple[str, ...]:
        """With `recursive`, the descendants down to RECURSIVE_DEPTH too: the collector then reads them, and the
        actuator accepts them as targets of this action."""
        base = super().watched_patterns()
        if not self.recursive:
            return base
        below = tuple(join_cgroup(p, "/".join(["*"] * depth)) for p in base for depth in range(1, RECURSIVE_DEPTH + 1))
        return base + below

    # ---- ranking ---------------------------------------------------------------------------------------------

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        """The plugin's own order, best victim first, with the figures that put each there; it may drop some."""
        raise NotImplementedError

    def waiting_for_data(self, ctx: TickContext, cgroups: list[CgroupStats]) -> bool:
        """True while the ranking's figures exist on this host but have no value yet (a rate needs a second
        snapshot): then the plugin waits for the next tick instead of ranking on nothing."""
        return False

    def omitted(self, cg: CgroupStats) -> str | None:
        """Why `cg` may never be picked, or None. Policy patterns cover the subtree below a match too."""
        name = _set(cg.xattrs, OMIT_XATTRS)
        if name:
            return f"xattr {name}"
        if self.omit and any(matches_any(self.omit, p) for p in _ancestry(cg.path)):
            return "policy 'omit'"
        return None

    def preference(self, cg: CgroupStats) -> tuple[int, str]:
        """PREFER, NORMAL or AVOID, and what said so. Prefer wins over avoid, as in oomd."""
        name = _set(cg.xattrs, PREFER_XATTRS)
        if name:
            return PREFER, f"preferred (xattr {name})"
        if self.prefer and matches_any(self.prefer, cg.path):
            return PREFER, "preferred (policy 'prefer')"
        name = _set(cg.xattrs, AVOID_XATTRS)
        if name:
            return AVOID, f"avoided (xattr {name})"
        if self.avoid and matches_any(self.avoid, cg.path):
            return AVOID, "avoided (policy 'avoid')"
        return NORMAL, ""

    def rank_with_preferences(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        """`rank`, then preferred ones first and avoided ones last, each group keeping the plugin's order."""
        ranked = self.rank(ctx, cgroups)
        prefs = {cg.path: self.preference(cg) for cg, _ in ranked}
        ordered = sorted(ranked, key=lambda item: -prefs[item[0].path][0])  # stable: keeps the plugin's order
        return [(cg, f"{why}; {prefs[cg.path][1]}" if prefs[cg.path][1] else why) for cg, why in ordered]

    def ranked_candidates(self, ctx: TickContext) -> Ranked:
        """Every candidate in the order the actuator should try them."""
        if not self.recursive:
            cgroups = [cg for cg in self.select(ctx)
                       if cg.nr_procs and not is_protected(cg.path, ctx.protected) and not self.omitted(cg)]
            return self.rank_with_preferences(ctx, cgroups)
        return self._ranked_recursive(ctx)

    def _ranked_recursive(self, ctx: TickContext) -> Ranked:
        """oomd's depth-first walk: rank the matched cgroups as siblings; for each in turn, rank its children and
        go down into the best first, down to leaves. The leaves, in the order met, are the candidates; so the
        actuator falls back to the next-best sibling, then to the next-best subtree, as oomd backtracks.

        A protected cgroup (an ancestor of pyoomd's own) is gone through but never a candidate itself; a cgroup
        whose children hold no process is a leaf (oomd would skip it and kill none of its own processes)."""
        children: dict[str, list[CgroupStats]] = defaultdict(list)
        for cg in ctx.snapshot.cgroups:
            if cg.path != "/":
                children[_parent(cg.path)].append(cg)
        out: Ranked = []
        seen: set[str] = set()

        def eligible(cg: CgroupStats) -> bool:
            return bool(cg.nr_procs) and cg.path not in seen and not self.omitted(cg)

        def visit(level: list[CgroupStats], trail: str) -> None:
            for cg, why in self.rank_with_preferences(ctx, level):
                if cg.path in seen:
                    continue
                seen.add(cg.path)
                below = [c for c in children.get(cg.path, []) if eligible(c)]
                if below:
                    visit(below, trail or cg.path)
                elif not is_protected(cg.path, ctx.protected):
                    out.append((cg, f"{why} (walked down from {trail})" if trail else why))

        visit([cg for cg in self.select(ctx) if eligible(cg)], "")
        return out

    # ---- the command -----------------------------------------------------------------------------------------

    def run(self, ctx: TickContext) -> Ret:
        if self.waiting_for_data(ctx, [cg for cg in self.select(ctx) if cg.nr_procs]):
            # ASYNC_PAUSED without a command: the chain ends here this tick and the next action does not run,
            # as oomd's KillPgScan waits for its second tick of data.
            return Ret.ASYNC_PAUSED
        ranked = self.ranked_candidates(ctx)
        if self.debug:
            log.info("%s ranking: %s", self.name, "; ".join(f"{cg.path}: {why}" for cg, why in ranked) or "none")
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
                candidates=[
                    Candidate(path=cg.path, inode=cg.inode, usage=cg.usage, why=w, pressure=_full(cg.pressure))
                    for cg, w in ranked
                ],
                mechanism="direct",
                signal=int(self.signal),
                reason=f"{self.name} picked {top.path}: {why}",
                dry_run=dry_run,
                dry_run_source=source,
                grace=self.grace,
                target=self.target,  # type: ignore[arg-type]  # checked by the argument's choices
                reap_memory=self.reap_memory,
                **self.command_options(),
            )
        )
        return Ret.ASYNC_PAUSED

    def command_options(self) -> dict:
        """What the command says about how to act (a subclass that stops units says so here)."""
        return {"via": self.via, "kill_timeout": KILL_TIMEOUT + self.grace, **self.hook_options()}

    def hook_options(self) -> dict:
        timeout = self.ruleset.prekill_hook_timeout
        return {"prekill_hook": hook_argv(self.prekill_hook), "postkill_hook": hook_argv(self.postkill_hook),
                "prekill_timeout": DEFAULT_PREKILL_TIMEOUT if timeout is None else timeout, "notify": self.notify}

    def on_result(self, status: str) -> Ret:
        # Something was killed (or would have been): end the chain and hold off for post_action_delay, unless
        # always_continue. Nothing could be killed: let the chain go on, as oomd does when a kill fails.
        if status in ("killed", "dry-run"):
            return Ret.CONTINUE if self.always_continue else Ret.STOP
        return Ret.CONTINUE


def _full(p: Pressure | None) -> list[float] | None:
    """The 'full' averages oomd's kill line reports (avg10, avg60, avg300), where the cgroup has its own PSI."""
    if p is None or p.full_avg10 is None:
        return None
    return [p.full_avg10, p.full_avg60 or 0.0, p.full_avg300 or 0.0]


def _sorted_by(cgroups: list[CgroupStats], key: Callable[[CgroupStats], float],
               why: Callable[[CgroupStats], str]) -> Ranked:
    return [(cg, why(cg)) for cg in sorted(cgroups, key=key, reverse=True)]


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
    fields = frozenset({"memory"})
    history = True

    size_threshold: int
    min_growth_ratio: float
    growing_size_percentile: int

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
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
            size_mb, total_mb = _mb(cg.usage), _mb(total)
            size_ok, growth_key, _ = key(cg)
            if size_ok:
                return f"{size_mb} MB, above {self.size_threshold}% of the candidates' {total_mb} MB"
            if growth_key:
                return f"{size_mb} MB, growing x{growth_key:.2f} (min {self.min_growth_ratio})"
            return f"{size_mb} MB effective usage, the largest left"

        ranked = sorted(cgroups, key=key, reverse=True)
        return [(cg, why(cg)) for cg in ranked]


@register
class KillBySwapUsage(KillPlugin):
    name = "kill_by_swap_usage"
    doc = ("oomd's: the candidate using the most swap, among those using more than `threshold`. The threshold is "
           "a size (a bare number is MB) or a percentage of SwapTotal, as oomd reads it; the default is oomd's one "
           "byte, so any swap use qualifies. With `biased_swap_kill`, swap beyond the cgroup's share of "
           "protection (memory protection x SwapTotal / MemTotal, v2 only) ranks instead. Swap usage is "
           "memory.swap.current on v2, memsw minus usage on v1 (with swap accounting; without it nothing ranks).")
    args = (
        *KILL_ARGS,
        Arg("threshold", "size_or_percent", SizeOrPercent(bytes=1), "swap usage above which a cgroup may be "
            "picked: a size ('512M', '1.5G'; a bare number is MB) or N% of SwapTotal"),
        Arg("biased_swap_kill", "bool", False, "rank by swap beyond the cgroup's share of memory protection"),
    )
    fields = frozenset({"memory", "swap"})

    threshold: SizeOrPercent
    biased_swap_kill: bool

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        floor = self.threshold.of(ctx.host.swap_total)
        ratio = ctx.host.swap_total / ctx.host.mem_total if ctx.host.mem_total else 0.0

        def excess(cg: CgroupStats) -> int:
            # oomd's getSwapExcess: swap beyond what the cgroup's memory protection entitles it to.
            if cg.protection is None:
                return cg.swap_usage or 0
            return max((cg.swap_usage or 0) - int(ratio * cg.protection), 0)

        key = excess if self.biased_swap_kill else (lambda cg: cg.swap_usage or 0)

        def why(cg: CgroupStats) -> str:
            base = f"{_mb(cg.swap_usage)} MB of swap (above {self.threshold}), {_mb(cg.usage)} MB of memory"
            return f"{base}, {_mb(excess(cg))} MB beyond its protected share" if self.biased_swap_kill else base

        return _sorted_by([cg for cg in cgroups if (cg.swap_usage or 0) > floor], key, why)


@register
class KillByPressure(KillPlugin):
    name = "kill_by_pressure"
    doc = ("oomd's: the candidate with the most 'full' pressure of `resource`, as avg10/2 + avg60/2 of its own "
           "PSI. Where no candidate has PSI of its own (v1 hosts), stand-ins rank instead: the workingset "
           "refault rate for memory (pages thrashed back in per second), the io cost rate of kill_by_io_cost for "
           "io, waiting for a second snapshot to have a rate; the `why` of each candidate says which.")
    args = (
        *KILL_ARGS,
        Arg("resource", "choice", doc="which pressure: memory or io", choices=("memory", "io")),
    )
    history = True
    rates_only = True

    resource: str

    def setup(self) -> None:
        super().setup()
        self.fields = frozenset({"memory", "pressure", "reclaim"} if self.resource == "memory" else {"memory", "io"})

    def psi(self, cg: CgroupStats) -> Pressure | None:
        p = cg.pressure if self.resource == "memory" else cg.io_pressure
        return p if p is not None and p.full_avg10 is not None else None

    def waiting_for_data(self, ctx: TickContext, cgroups: list[CgroupStats]) -> bool:
        if any(self.psi(cg) is not None for cg in cgroups):
            return False
        if self.resource == "io":
            return waiting_for_io_rates(ctx, cgroups)
        return any(cg.workingset_refault is not None for cg in cgroups) and all(
            ctx.history.rate(cg, "workingset_refault") is None for cg in cgroups)

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        psi = self.psi
        if any(psi(cg) is not None for cg in cgroups):
            def key(cg: CgroupStats) -> float:
                p = psi(cg)
                return (p.full_avg10 or 0.0) / 2 + (p.full_avg60 or 0.0) / 2 if p is not None else 0.0

            def why(cg: CgroupStats) -> str:
                p = psi(cg)
                if p is None:
                    return f"no {self.resource} PSI of its own, {_mb(cg.usage)} MB"
                return (f"{self.resource} pressure full avg10 {p.full_avg10:.2f} avg60 {p.full_avg60 or 0:.2f}, "
                        f"{_mb(cg.usage)} MB")

            return _sorted_by(cgroups, key, why)
        if self.resource == "memory":
            return _sorted_by(cgroups, lambda cg: ctx.history.rate(cg, "workingset_refault") or 0.0,
                              lambda cg: f"no PSI here: {_rate_text(ctx, cg, 'workingset_refault')} refaults/s "
                                         f"standing in, {_mb(cg.usage)} MB")
        return _sorted_by(cgroups, lambda cg: io_cost_rate(ctx, cg) or 0.0,
                          lambda cg: f"no PSI here: io cost {_io_cost_text(ctx, cg)} standing in, "
                                     f"{_mb(cg.usage)} MB")


def _rate_text(ctx: TickContext, cg: CgroupStats, name: str) -> str:
    rate = ctx.history.rate(cg, name)
    return "no rate yet" if rate is None else f"{rate:.0f}"


def io_cost_rate(ctx: TickContext, cg: CgroupStats) -> float | None:
    """Bytes per second plus IO_OP_BYTES per operation per second; None until there are two readings."""
    bps, ops = ctx.history.rate(cg, "io_bytes"), ctx.history.rate(cg, "io_ops")
    if bps is None and ops is None:
        return None
    return (bps or 0.0) + IO_OP_BYTES * (ops or 0.0)


def waiting_for_io_rates(ctx: TickContext, cgroups: list[CgroupStats]) -> bool:
    """The io counters exist here, but no candidate has a rate of them yet."""
    return any(cg.io_bytes is not None or cg.io_ops is not None for cg in cgroups) and all(
        io_cost_rate(ctx, cg) is None for cg in cgroups)


def _io_cost_text(ctx: TickContext, cg: CgroupStats) -> str:
    cost = io_cost_rate(ctx, cg)
    return "no rate yet" if cost is None else f"{cost / MB:.1f} MB/s"


@register
class KillByPgScan(KillPlugin):
    name = "kill_by_pg_scan"
    doc = ("oomd's: the candidate whose memory is scanned for reclaim fastest (pgscan per second, v2), among those "
           "being scanned at all. v1 has no per-cgroup pgscan: there the workingset refault rate stands in (pages "
           "reclaimed and needed again, per second), for every candidate alike when any candidate lacks pgscan. "
           "Like oomd, it waits for a second snapshot before it ranks anything.")
    args = KILL_ARGS
    fields = frozenset({"memory", "reclaim"})
    history = True
    rates_only = True

    def counter(self, cgroups: list[CgroupStats]) -> str | None:
        """Which counter ranks: pgscan where every candidate has it, else the refault stand-in."""
        if cgroups and all(cg.pgscan is not None for cg in cgroups):
            return "pgscan"
        if any(cg.workingset_refault is not None for cg in cgroups):
            return "workingset_refault"
        return None

    def waiting_for_data(self, ctx: TickContext, cgroups: list[CgroupStats]) -> bool:
        name = self.counter(cgroups)
        return name is not None and all(ctx.history.rate(cg, name) is None for cg in cgroups)

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        name = self.counter(cgroups)
        if name is None:
            return []
        label = "pgscan" if name == "pgscan" else "refaults (v1 stand-in for pgscan)"
        rates = {cg.path: ctx.history.rate(cg, name) or 0.0 for cg in cgroups}
        return _sorted_by([cg for cg in cgroups if rates[cg.path] > 0], lambda cg: rates[cg.path],
                          lambda cg: f"{rates[cg.path]:.0f} {label}/s, {_mb(cg.usage)} MB")


@register
class KillByIOCost(KillPlugin):
    name = "kill_by_io_cost"
    doc = ("oomd's: the candidate generating the most io cost per second. oomd weighs each device's read/write/"
           f"discard bytes and operations by per-device coefficients; pyoomd has none and counts every operation "
           f"as {IO_OP_BYTES} bytes: cost = bytes/s + {IO_OP_BYTES} x operations/s over all devices (v2 io.stat; v1 "
           "blkio throttle counters, which see only I/O that reached a block device). It waits for a second snapshot "
           "to have a rate (oomd counts a cgroup's first tick as 0).")
    args = KILL_ARGS
    fields = frozenset({"memory", "io"})
    history = True
    rates_only = True

    def waiting_for_data(self, ctx: TickContext, cgroups: list[CgroupStats]) -> bool:
        return waiting_for_io_rates(ctx, cgroups)

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        return _sorted_by(cgroups, lambda cg: io_cost_rate(ctx, cg) or 0.0,
                          lambda cg: f"io cost {_io_cost_text(ctx, cg)}, {_mb(cg.usage)} MB")


# The last component of a cgroup systemd made for a unit that has processes of its own (slices hold none).
_UNIT_SUFFIXES = (".service", ".scope")
STOP_TIMEOUT = 5.0


@register
class StopUnit(KillPlugin):
    name = "stop_unit"
    doc = ("pyoomd: stop the largest candidate that is a .service/.scope unit's own cgroup through the service "
           "manager (StopUnit, mode replace: the unit's ExecStop= runs and its dependents learn of it), wait up to "
           "`stop_timeout` for the stop job, then kill directly whatever is still in its cgroup (an ExecStop= or "
           "TimeoutStopSec= can take minutes during an OOM). Without a reachable manager it kills directly. "
           "The manager is the one --systemd-bus names.")
    args = (
        *CGROUP_ARGS,
        Arg("post_action_delay", "duration", None, "rest after a stop; default: the ruleset's", unit="s"),
        Arg("dry", "bool", False, "decide and record, but stop nothing"),
        Arg("stop_timeout", "duration", STOP_TIMEOUT, "how long the stop job may take before what is left of the "
            "unit is killed directly", unit="s"),
        Arg("debug", "bool", False, "log the ranking"),
        Arg("prefer", "globs", (), "cgroups to stop before any other (like the xattr trusted.oomd_prefer)"),
        Arg("avoid", "globs", (), "cgroups to stop only when nothing else is left (like trusted.oomd_avoid)"),
        Arg("omit", "globs", (), "cgroups never to pick (like systemd's user.oomd_omit)"),
        *SHARED_KILL_ARGS,
    )
    requires = frozenset({"systemd"})
    # KillPlugin's arguments this action does not take: a stop is a whole unit, through the manager.
    recursive = False
    always_continue = False
    reap_memory = True
    grace = 0.0
    signal = signal.SIGKILL  # only for the direct kill of what a stop job leaves behind
    target = "cgroup"
    via = "systemd"

    stop_timeout: float

    def rank(self, ctx: TickContext, cgroups: list[CgroupStats]) -> Ranked:
        units = [cg for cg in cgroups if cg.path.rstrip("/").rsplit("/", 1)[-1].endswith(_UNIT_SUFFIXES)]
        return _sorted_by(units, lambda cg: cg.usage or 0, lambda cg: f"{_mb(cg.usage)} MB, the largest unit")

    def command_options(self) -> dict:
        return {"via": "systemd", "operation": "stop", "stop_timeout": self.stop_timeout,
                "kill_timeout": KILL_TIMEOUT, **self.hook_options()}


@register
class KillUnit(StopUnit):
    name = "kill_unit"
    doc = ("pyoomd: kill the largest candidate that is a .service/.scope unit's own cgroup through the service "
           "manager (KillUnit on all its processes, after checking it is still the same invocation), so systemd "
           "records why the unit died and applies its restart policy; with `grace`, SIGTERM first. Without a "
           "reachable manager it kills directly.")
    args = (
        *CGROUP_ARGS,
        Arg("post_action_delay", "duration", None, "rest after a kill; default: the ruleset's", unit="s"),
        Arg("dry", "bool", False, "decide and record, but kill nothing"),
        Arg("grace", "duration", 0.0, "SIGTERM first, SIGKILL what is left after this long", unit="s"),
        Arg("debug", "bool", False, "log the ranking"),
        Arg("prefer", "globs", (), "cgroups to kill before any other (like the xattr trusted.oomd_prefer)"),
        Arg("avoid", "globs", (), "cgroups to kill only when nothing else is left (like trusted.oomd_avoid)"),
        Arg("omit", "globs", (), "cgroups never to pick (like systemd's user.oomd_omit)"),
        *SHARED_KILL_ARGS,
    )
    stop_timeout = 0.0
    grace: float  # type: ignore[assignment]

    def command_options(self) -> dict:
        return {"via": "systemd", "kill_timeout": KILL_TIMEOUT + self.grace, **self.hook_options()}
