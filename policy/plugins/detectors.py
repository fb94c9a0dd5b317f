"""Detector plugins: each says CONTINUE while its condition holds, STOP otherwise.

A detector whose figure the host cannot provide (a None in the snapshot) says STOP: no data is never read as
"no pressure" or "zero", and never as a reason to act.
"""

from __future__ import annotations

import logging
from collections import deque

from cgroupfs.events import PSI_KINDS, PSI_WINDOW_MAX_US, PSI_WINDOW_MIN_US, VMPRESSURE_LEVELS
from cgroupfs.stats import CgroupStats, Pressure
from cgroupfs.watch import VMPRESSURE_LEVEL, TriggerSpec
from policy.context import TickContext
from policy.plugins.args import SizeOrPercent
from policy.plugins.base import CGROUP_ARGS, Arg, ArgError, Needs, Plugin, Ret, register

log = logging.getLogger("pyoomd.plugins")

MB = 1 << 20


# Readings come once a tick, and a tick's timer wakes a few milliseconds early or late: "held for 2 s" seen at
# readings 1.998 s apart must count, or it waits a whole tick more (measured: condition to kill 1.3 s, not 0.3).
HELD_SLACK = 0.05


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
        return now - self.since >= self.duration - HELD_SLACK


class RiseWithin:
    """How much a cumulative counter of each cgroup rose within the last `window` seconds, from the values seen
    at each run. The baseline is the newest earlier reading at least `window` old (or, while there is none yet,
    the oldest one): readings come once a tick, so events of up to one tick before the window may count too.
    A cgroup seen for the first time has risen by 0 (what it counted before we looked is not "within"), and a
    counter that went down (a new cgroup of the same name, a restarted watch) starts over."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: dict[str, tuple[int, deque[tuple[float, int]]]] = {}

    def rise(self, cg: CgroupStats, value: int, now: float) -> int:
        entry = self._seen.get(cg.path)
        if entry is None or entry[0] != cg.inode or value < entry[1][-1][1]:
            entry = (cg.inode, deque())
            self._seen[cg.path] = entry
        samples = entry[1]
        cutoff = now - self.window
        # Keep the newest reading at or before the cutoff as the baseline; older ones can never be one again.
        while len(samples) >= 2 and samples[1][0] <= cutoff:
            samples.popleft()
        risen = value - samples[0][1] if samples else 0
        samples.append((now, value))
        return risen

    def keep_only(self, paths: set[str]) -> None:
        """Forget cgroups no longer seen, so a long-running daemon does not collect dead ones."""
        for path in [p for p in self._seen if p not in paths]:
            del self._seen[path]


RESOURCE = Arg("resource", "choice", doc="which pressure: memory or io", choices=("memory", "io"))
# The snapshot field that holds each resource's PSI for a cgroup, and the field group that makes it read.
PRESSURE_FIELD = {"memory": "pressure", "io": "io_pressure"}
PRESSURE_GROUP = {"memory": "pressure", "io": "io"}


def most_pressured(cgroups: list[CgroupStats], resource: str) -> Pressure | None:
    """The 'full' PSI of the most pressured cgroup, by oomd's weighting (3 x avg10 + 2 x avg60 + avg300: the
    10 s average counts most). Cgroups without the figure (no PSI of their own on this layout) are skipped;
    None when none has it."""
    best: Pressure | None = None
    best_weight = 0.0
    for cg in cgroups:
        p: Pressure | None = getattr(cg, PRESSURE_FIELD[resource])
        if p is None or p.full_avg10 is None:
            continue
        weight = p.full_avg10 * 3 + (p.full_avg60 or 0) * 2 + (p.full_avg300 or 0)
        if best is None or weight > best_weight:
            best, best_weight = p, weight
    return best


@register
class PressureAbove(Plugin):
    name = "pressure_above"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE while the 10 s 'full' pressure of the most pressured matching cgroup (picked by oomd's "
           "weighting: 3 x avg10 + 2 x avg60 + avg300) is above `threshold`, held for `duration`.")
    args = (
        *CGROUP_ARGS,
        RESOURCE,
        Arg("threshold", "float", doc="percent of time stalled ('full', as oomd)", unit="%", minimum=0),
        Arg("duration", "duration", doc="how long it must hold without a break", unit="s"),
    )
    # Any cgroup but "/" needs a PSI file of its own (v2, or a hybrid's cgroup2 twin); "/" on the host itself has
    # /proc/pressure. A class-wide `requires` cannot say that exception: the host check has to.
    requires = frozenset({"per-cgroup psi"})

    cgroup: tuple[str, ...]
    resource: str
    threshold: float
    duration: float

    def setup(self) -> None:
        self.require_cgroup()
        self.held = HeldFor(self.duration)

    def needs(self) -> Needs:
        patterns = self.watched_patterns()
        if self.resource == "io":
            # The collector's pressure events are memory PSI (or v1 vmpressure): nothing to wait on for io.
            return Needs(cgroups=patterns, fields=frozenset({"io"}))
        return Needs(
            cgroups=patterns,
            fields=frozenset({"pressure"}),
            pressure_watch=tuple((pattern, self.threshold) for pattern in patterns),
        )

    def run(self, ctx: TickContext) -> Ret:
        best = most_pressured(self.select(ctx), self.resource)
        holds = best is not None and best.full_avg10 is not None and best.full_avg10 > self.threshold
        return Ret.CONTINUE if self.held.update(holds, ctx.now) else Ret.STOP


@register
class PressureRisingBeyond(Plugin):
    name = "pressure_rising_beyond"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE while the 60 s 'full' pressure of the most pressured matching cgroup has been above "
           "`threshold` for `duration`, its 10 s pressure is above it too, and the 10 s pressure is not falling "
           "fast (below `fast_fall_ratio` times its value at the previous run).")
    args = (
        *CGROUP_ARGS,
        RESOURCE,
        Arg("threshold", "float", doc="percent of time stalled ('full', as oomd)", unit="%", minimum=0),
        Arg("duration", "duration", doc="how long the 60 s pressure must stay above without a break", unit="s"),
        Arg("fast_fall_ratio", "float", 0.85, "the 10 s pressure falls fast when below this share of its value "
            "at the previous run; 0 never counts as falling", minimum=0),
    )
    requires = frozenset({"per-cgroup psi"})

    cgroup: tuple[str, ...]
    resource: str
    threshold: float
    duration: float
    fast_fall_ratio: float

    def setup(self) -> None:
        self.require_cgroup()
        self.held = HeldFor(self.duration)
        # oomd starts from 100% so that the very first reading counts as falling unless it is very high: a
        # freshly started daemon does not fire on pressure it has seen for only one tick.
        self.last_avg10 = 100.0

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({PRESSURE_GROUP[self.resource]}))

    def run(self, ctx: TickContext) -> Ret:
        best = most_pressured(self.select(ctx), self.resource)
        last, self.last_avg10 = self.last_avg10, (best.full_avg10 or 0.0) if best is not None else 0.0
        if best is None or best.full_avg10 is None or best.full_avg60 is None:
            self.held.update(False, ctx.now)
            return Ret.STOP
        sustained = self.held.update(best.full_avg60 > self.threshold, ctx.now)
        above_now = best.full_avg10 > self.threshold
        falling_fast = best.full_avg10 < last * self.fast_fall_ratio
        return Ret.CONTINUE if sustained and above_now and not falling_fast else Ret.STOP


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


# What stands for "memory was reclaimed" where a cgroup lacks pgscan (v1 memory.stat has none): refaults need
# pages that reclaim evicted; major faults, the last resort, also count first reads of files.
RECLAIM_FIGURES = ("pgscan", "workingset_refault", "pgmajfault")


@register
class MemoryReclaim(Plugin):
    name = "memory_reclaim"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE if any matching cgroup's memory was reclaimed within the last `duration`: its pgscan rose "
           "(v2), or where there is no pgscan (v1 memory), its refaults, or else its major faults, rose.")
    args = (
        *CGROUP_ARGS,
        Arg("duration", "duration", doc="how long a reclaim counts after it was seen", unit="s"),
    )

    duration: float

    def setup(self) -> None:
        self.require_cgroup()
        self.reclaimed_at: float | None = None

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({"reclaim"}), history=True)

    def run(self, ctx: TickContext) -> Ret:
        for cg in self.select(ctx):
            figure = next((f for f in RECLAIM_FIGURES if getattr(cg, f) is not None), None)
            # No rate on a cgroup's first tick: a counter that is merely non-zero says nothing about "recently".
            rate = ctx.history.rate(cg, figure) if figure is not None else None
            if rate is not None and rate > 0:
                self.reclaimed_at = ctx.now
        # A reclaim seen counts for `duration` even if the cgroup has gone since (as in oomd).
        recent = self.reclaimed_at is not None and ctx.now - self.reclaimed_at <= self.duration
        return Ret.CONTINUE if recent else Ret.STOP


@register
class SwapFree(Plugin):
    name = "swap_free"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE while the host's free swap is below `threshold_pct` percent of its total swap. A host "
           "without swap never holds (as in oomd).")
    args = (
        Arg("threshold_pct", "float", doc="free swap, in percent of the total, below which it holds", unit="%",
            minimum=0, maximum=100),
        Arg("swapout_bps_threshold", "int", 0, "oomd: also require at least this many bytes swapped out per "
            "second (not supported yet: only 0)", unit="B/s", minimum=0),
    )

    threshold_pct: float
    swapout_bps_threshold: int

    def setup(self) -> None:
        if self.swapout_bps_threshold:
            raise ArgError("swapout_bps_threshold", "argument 'swapout_bps_threshold': the host's swap-out rate "
                           "is not collected yet (only 0 is supported)", at_value=True)

    def run(self, ctx: TickContext) -> Ret:
        host = ctx.host
        # Strictly below, as oomd: with no swap the threshold is 0 and nothing is below it.
        holds = host.swap_free < host.swap_total * self.threshold_pct / 100
        return Ret.CONTINUE if holds else Ret.STOP


@register
class Exists(Plugin):
    name = "exists"
    kinds = frozenset({"detector"})
    doc = "CONTINUE if any matching cgroup exists (with `negate`: if none does)."
    args = (
        *CGROUP_ARGS,
        Arg("negate", "bool", False, "hold when no matching cgroup exists instead"),
        Arg("debug", "bool", False, "accepted for oomd compatibility; logs nothing more"),
    )

    negate: bool

    def setup(self) -> None:
        self.require_cgroup()

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns())

    def run(self, ctx: TickContext) -> Ret:
        exists = bool(self.select(ctx))
        return Ret.CONTINUE if exists != self.negate else Ret.STOP


@register
class NrDyingDescendants(Plugin):
    name = "nr_dying_descendants"
    kinds = frozenset({"detector"})
    doc = ("CONTINUE if any matching cgroup's count of dying descendants (removed cgroups still pinned by their "
           "memory) is at most `count` (with `lte: false`: above it); `negate` inverts the answer. cgroup2 only.")
    args = (
        *CGROUP_ARGS,
        Arg("count", "int", doc="how many dying descendants", minimum=0),
        Arg("lte", "bool", True, "hold when at most `count` (false: when more than `count`)"),
        Arg("negate", "bool", False, "hold when the comparison holds for none of the matching cgroups"),
        Arg("debug", "bool", False, "log the figure that decided"),
    )
    requires = frozenset({"v2"})

    count: int
    lte: bool
    negate: bool
    debug: bool

    def setup(self) -> None:
        self.require_cgroup()

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({"tree"}))

    def run(self, ctx: TickContext) -> Ret:
        figures = [(cg.path, cg.nr_dying_descendants) for cg in self.select(ctx) if cg.nr_dying_descendants is not None]
        if not figures:
            return Ret.STOP  # no figure on this layout (v1, or no cgroup.stat): negate does not make up one
        hit = next(((p, n) for p, n in figures if (n <= self.count if self.lte else n > self.count)), None)
        if self.debug and hit is not None:
            log.info("nr_dying_descendants of %s is %d %s %d", hit[0], hit[1], "<=" if self.lte else ">", self.count)
        return Ret.CONTINUE if (hit is not None) != self.negate else Ret.STOP


@register
class DumpCgroupOverview(Plugin):
    name = "dump_cgroup_overview"
    kinds = frozenset({"detector"})
    doc = ("Logs one overview line per matching cgroup (usage, memory pressure, host swap, reclaim counters) "
           "while its memory pressure is non-negligible, or every run with `always`; always CONTINUE.")
    args = (
        *CGROUP_ARGS,
        Arg("always", "bool", False, "log every run, whatever the pressure"),
    )

    always: bool

    def setup(self) -> None:
        self.require_cgroup()

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({"memory", "pressure", "reclaim"}))

    def run(self, ctx: TickContext) -> Ret:
        for cg in self.select(ctx):
            p = cg.pressure
            # oomd's "non-negligible": at least 1% over 10 s and any over 60 s ('full'). Without PSI of its own
            # (v1) a cgroup's pressure is unknown, so it is logged only with `always`.
            noticeable = p is not None and (p.full_avg10 or 0) >= 1 and (p.full_avg60 or 0) > 0
            if self.always or noticeable:
                log.info("%s", overview_line(cg, ctx))
        return Ret.CONTINUE


def overview_line(cg: CgroupStats, ctx: TickContext) -> str:
    """One cgroup at a glance; a figure this layout lacks reads 'n/a' rather than 0."""

    def mb(value: int | None) -> str:
        return "n/a" if value is None else f"{value // MB}MB"

    p = cg.pressure
    pressure = "n/a" if p is None else f"{p.full_avg10 or 0:.2f}:{p.full_avg60 or 0:.2f}:{p.full_avg300 or 0:.2f}"
    counters = " ".join(f"{name}={'n/a' if getattr(cg, name) is None else getattr(cg, name)}"
                        for name in RECLAIM_FIGURES)
    host = ctx.host
    return (f"cgroup={cg.path} total={mb(cg.usage)} pressure={pressure} "
            f"swapfree={mb(host.swap_free)}/{mb(host.swap_total)} {counters}")


@register
class PressureTrigger(Plugin):
    name = "pressure_trigger"
    kinds = frozenset({"detector"})
    doc = ("pyoomd: CONTINUE from the moment the kernel's PSI trigger fires (tasks stalled for `stall` within "
           "`window`) until a whole `window` passes without it firing again.")
    args = (
        *CGROUP_ARGS,
        Arg("resource", "choice", doc="which pressure", choices=("memory", "io", "cpu")),
        Arg("type", "choice", "some", "'some': at least one task stalled; 'full': all non-idle tasks stalled",
            choices=PSI_KINDS),
        Arg("stall", "duration", doc="stall time within the window that fires the trigger (e.g. 150ms)",
            unit="s"),
        Arg("window", "duration", doc="the kernel's tracking window", unit="s",
            minimum=PSI_WINDOW_MIN_US / 1e6, maximum=PSI_WINDOW_MAX_US / 1e6),
    )
    # "/" has the host's PSI (/proc/pressure/*); any other cgroup needs a PSI file of its own.
    requires = frozenset({"per-cgroup psi"})

    resource: str
    type: str
    stall: float
    window: float

    def setup(self) -> None:
        self.require_cgroup()
        stall_us, window_us = round(self.stall * 1e6), round(self.window * 1e6)
        # The collector opens the trigger as asked; the kernel refuses a stall of 0 or longer than the window.
        if not 0 < stall_us <= window_us:
            raise ArgError("stall", f"argument 'stall': must be above 0 and at most the window ({self.window:g}s)",
                           at_value=True)
        self.spec = TriggerSpec(self.resource, self.type, stall_us, window_us)
        self.seen: dict[str, tuple[int, int, float]] = {}  # path -> (inode, count, ctx.now it last rose)

    def needs(self) -> Needs:
        patterns = self.watched_patterns()
        return Needs(cgroups=patterns, trigger_watch=tuple((p, self.spec) for p in patterns))

    def run(self, ctx: TickContext) -> Ret:
        key = self.spec.key
        holds = False
        seen: dict[str, tuple[int, int, float]] = {}
        for cg in self.select(ctx):
            count = (cg.triggers or {}).get(key)
            if count is None:
                continue  # no trigger on this cgroup (no PSI file of its own here): nothing to say
            prev = self.seen.get(cg.path)
            rose_at = -float("inf")
            if prev is not None and prev[0] == cg.inode:
                rose_at = ctx.now if count > prev[1] else prev[2]
            seen[cg.path] = (cg.inode, count, rose_at)
            last_wall = (cg.trigger_last or {}).get(key)
            # Best: the collector's own wall-clock time of the firing, carried onto the monotonic clock through
            # the snapshot's pair of clocks (ctx.now may be later than the snapshot). Else: when we saw it rise.
            fired_at = ctx.snapshot.monotonic - (ctx.snapshot.time - last_wall) if last_wall else rose_at
            holds = holds or ctx.now - fired_at <= self.window
        self.seen = seen
        return Ret.CONTINUE if holds else Ret.STOP


@register
class VmPressure(Plugin):
    name = "vmpressure"
    kinds = frozenset({"detector"})
    doc = ("pyoomd, cgroup v1: CONTINUE while at least `count` vmpressure events of `level` arrived within the "
           "last `duration` for any matching memory cgroup.")
    args = (
        *CGROUP_ARGS,
        Arg("level", "choice", VMPRESSURE_LEVEL, "the kernel's vmpressure level (only 'medium' is collected yet)",
            choices=VMPRESSURE_LEVELS),
        Arg("count", "int", 1, "how many events", minimum=1),
        Arg("duration", "duration", doc="the window the events must arrive in", unit="s"),
    )
    requires = frozenset({"v1"})

    level: str
    count: int
    duration: float

    def setup(self) -> None:
        self.require_cgroup()
        if self.level != VMPRESSURE_LEVEL:
            raise ArgError("level", f"argument 'level': only '{VMPRESSURE_LEVEL}' vmpressure events are collected "
                           f"yet, not '{self.level}'", at_value=True)
        self.events = RiseWithin(self.duration)

    def needs(self) -> Needs:
        patterns = self.watched_patterns()
        # The collector waits on vmpressure for watched cgroups without PSI of their own. 100% asks for nothing
        # stricter: where another plugin watches the same cgroup, its lower threshold wins.
        return Needs(cgroups=patterns, pressure_watch=tuple((p, 100.0) for p in patterns))

    def run(self, ctx: TickContext) -> Ret:
        holds = False
        seen: set[str] = set()
        for cg in self.select(ctx):
            if cg.vmpressure_events is None:
                continue  # not watched by vmpressure here (PSI instead, or no v1 memory cgroup)
            seen.add(cg.path)
            holds = self.events.rise(cg, cg.vmpressure_events, ctx.now) >= self.count or holds
        self.events.keep_only(seen)
        return Ret.CONTINUE if holds else Ret.STOP


@register
class OomKillsRising(Plugin):
    name = "oom_kills_rising"
    kinds = frozenset({"detector"})
    doc = ("pyoomd: CONTINUE while the kernel OOM-killed at least `count` processes within the last `duration` "
           "in any matching cgroup (its subtree), as its oom_kill counter says (v1 4.13+, v2).")
    args = (
        *CGROUP_ARGS,
        Arg("count", "int", 1, "how many kernel OOM kills", minimum=1),
        Arg("duration", "duration", doc="the window the kills must happen in", unit="s"),
    )

    count: int
    duration: float

    def setup(self) -> None:
        self.require_cgroup()
        self.kills = RiseWithin(self.duration)

    def needs(self) -> Needs:
        return Needs(cgroups=self.watched_patterns(), fields=frozenset({"oom"}))

    def run(self, ctx: TickContext) -> Ret:
        holds = False
        seen: set[str] = set()
        for cg in self.select(ctx):
            if cg.oom_kills is None:
                continue  # the kernel does not count them here (v1 before 4.13)
            seen.add(cg.path)
            holds = self.kills.rise(cg, cg.oom_kills, ctx.now) >= self.count or holds
        self.kills.keep_only(seen)
        return Ret.CONTINUE if holds else Ret.STOP


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
