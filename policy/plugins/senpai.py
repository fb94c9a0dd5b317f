"""oomd's senpai: tune each cgroup's memory.high so that it stays under a light, steady memory pressure.

Squeezed just hard enough that its tasks stall a little, a cgroup gives back what it does not need, and
memory.current then tells how much it really uses (its working set). Like oomd, senpai is an action that always
CONTINUEs, so it sits in a ruleset whose detector always holds. Its writes go to the actuator as WriteCommands,
fire and forget: the actuator re-checks each one (policy, protection, inode, the file) and writes only
memory.high or memory.reclaim of a cgroup2 directory with the memory controller.

Two modes, both in oomd's current source:
- default: senpai owns memory.high. It starts at the cgroup's current usage; while the stall time (memory
  pressure 'some', cumulative since the last adjustment) stays under `pressure_ms`, it lowers memory.high every
  `interval` ticks by up to `max_probe`; once the stall time reaches `pressure_ms` it raises it at once, by up to
  `max_backoff`. Both steps grow with the square of the deviation from the target (`coeff_probe`,
  `coeff_backoff`), and memory.high stays between a floor (`limit_min_bytes` above what cannot be reclaimed)
  and a ceiling (`limit_max_bytes` above current usage, MemTotal, memory.max).
- immediate_backoff: memory.high is left alone; every `interval` ticks, while memory and io pressure (avg10 and
  avg60 of 'some') are under `pressure_pct` / `io_pressure_pct`, it asks the kernel to reclaim `max_probe` of what
  lies above the floor through memory.reclaim (kernel 5.19+), and stops the moment pressure shows.

cgroup2 only: v1 has no memory.high, only the hard limit, and lowering that would make a second OOM killer.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from typing import ClassVar

from cgroupfs.stats import CgroupStats
from ipc.messages import WritableFile, WriteCommand
from policy.context import TickContext
from policy.plugins.base import CGROUP_ARGS, Arg, ArgError, Needs, Plugin, Ret, register

log = logging.getLogger("pyoomd.plugins")

PAGE_MASK = ~0xFFF  # the kernel keeps memory.high in pages; oomd rounds to 4K as well
US_PER_MS = 1000
GIB = 1 << 30
DEADLINE_SLACK = 0.5  # seconds past the next tick during which the actuator may still apply a write
_GLOB = re.compile(r"[*?\[]")
_BYTES = re.compile(r"[0-9]{1,19}")


@dataclass
class CgroupState:
    """What senpai keeps for one cgroup between ticks (oomd's CgroupState), keyed by its inode."""

    path: str
    limit: int  # memory.high as last written (default mode); 0 in immediate_backoff, which leaves it alone
    last_total: int  # memory pressure 'some' total at the last reading, microseconds
    due: float  # monotonic time from which the next probe may be made (oomd's tick count-down)
    cumulative: int = 0  # stall microseconds since the last adjustment
    probe_count: int = 0  # since the last aggregate log line
    probe_bytes: int = 0


@register
class Senpai(Plugin):
    name = "senpai"
    kinds = frozenset({"action"})
    # Its own memory.pressure too: every decision is made on the cgroup's stall time.
    requires = frozenset({"v2", "per-cgroup psi"})
    # The control files this action may have the actuator write; the actuator refuses any other.
    writes: ClassVar[frozenset[WritableFile]] = frozenset({"memory.high", "memory.reclaim"})
    doc = ("oomd's memory.high autotuner: keeps each matching cgroup under a light memory pressure so that its "
           "usage shows its working set; always CONTINUE. Default mode: lowers memory.high while the stall time "
           "since the last adjustment is under `pressure_ms`, raises it at once when it is above. With "
           "`immediate_backoff`: reclaims a little through memory.reclaim (kernel 5.19+) while pressure is low, "
           "leaving memory.high alone. `interval` and `log_interval` count ticks, as in oomd. cgroup2 with the "
           "memory controller only; elsewhere it does nothing and says why once.")
    args = (
        *CGROUP_ARGS,
        Arg("limit_min_bytes", "int", 100 << 20, "floor of memory.high above what cannot be reclaimed "
            "(usage - file cache - what swap can take)", unit="bytes", minimum=0),
        Arg("limit_max_bytes", "int", 10 << 30, "ceiling of memory.high above current usage (also capped at "
            "MemTotal and memory.max)", unit="bytes", minimum=0),
        Arg("interval", "int", 6, "ticks between two probes", unit="ticks", minimum=0),
        Arg("pressure_ms", "int", 10, "target stall time (memory 'some') between two adjustments; reaching it "
            "backs off", unit="ms", minimum=1),
        Arg("pressure_pct", "float", 0.1, "immediate_backoff: reclaim only while memory pressure (some avg10, "
            "avg60) is below this", unit="%", minimum=0),
        Arg("io_pressure_pct", "float", 0.1, "immediate_backoff: reclaim only while io pressure (some avg10, "
            "avg60) is below this", unit="%", minimum=0),
        Arg("max_probe", "float", 0.01, "largest step down, as a share of memory.high (immediate_backoff: of "
            "usage above the floor)", minimum=0, maximum=1),
        Arg("max_backoff", "float", 1.0, "largest step up, as a share of memory.high", minimum=0),
        Arg("coeff_probe", "float", 10.0, "the full probe step is taken once stalls fall to pressure_ms / this"),
        Arg("coeff_backoff", "float", 20.0, "the full backoff step is taken once stalls reach pressure_ms x this"),
        Arg("immediate_backoff", "bool", False, "reclaim through memory.reclaim instead of owning memory.high"),
        Arg("memory_high_timeout_ms", "int", 0, "oomd's timeout for its memory.high poke on kernels without "
            "memory.reclaim, which pyoomd does not do; accepted so that oomd configs load", unit="ms", minimum=0),
        Arg("swap_threshold", "float", 0.8, "swap_validation: reclaim only while swap use (of swap.max, up the "
            "tree, and of the host's swap) is below this share", minimum=0),
        Arg("swapout_bps_threshold", "int", 1 << 20, "oomd's, for modulate_swappiness (not supported); accepted "
            "so that oomd configs load", unit="bytes/s", minimum=0),
        Arg("swap_validation", "bool", False, "immediate_backoff: also wait while swap is nearly full"),
        Arg("modulate_swappiness", "bool", False, "oomd's: lower vm.swappiness while reclaiming. Not supported "
            "(pyoomd writes no host-wide setting): must stay false"),
        Arg("log_interval", "int", 60, "ticks between the summary lines of probes made", unit="ticks", minimum=0),
        Arg("dry", "bool", False, "pyoomd: decide and log, but write nothing"),
    )

    cgroup: tuple[str, ...]
    limit_min_bytes: int
    limit_max_bytes: int
    interval: int  # in ticks, as oomd's (the ruleset's interval in seconds is self.ruleset.interval)
    pressure_ms: int
    pressure_pct: float
    io_pressure_pct: float
    max_probe: float
    max_backoff: float
    coeff_probe: float
    coeff_backoff: float
    immediate_backoff: bool
    memory_high_timeout_ms: int
    swap_threshold: float
    swapout_bps_threshold: int
    swap_validation: bool
    modulate_swappiness: bool
    log_interval: int
    dry: bool

    def setup(self) -> None:
        self.require_cgroup()
        for name in ("coeff_probe", "coeff_backoff"):
            if getattr(self, name) <= 0:
                raise ArgError(name, f"argument '{name}': must be above 0", at_value=True)
        if self.modulate_swappiness:
            raise ArgError("modulate_swappiness", "argument 'modulate_swappiness': not supported: it changes "
                           "vm.swappiness for the whole host, and pyoomd writes only memory.high and memory.reclaim",
                           at_value=True)
        self.tracked: dict[int, CgroupState] = {}
        self.explained: set[str] = set()  # reasons already logged for leaving a cgroup alone
        self.next_summary: float | None = None

    def needs(self) -> Needs:
        fields = {"memory", "swap", "pressure"} | ({"io"} if self.immediate_backoff else set())
        return Needs(cgroups=self.watched_patterns() + self._ancestor_patterns(), fields=frozenset(fields))

    def _ancestor_patterns(self) -> tuple[str, ...]:
        """The literal ancestors of the watched patterns: their swap.max limits what swap can take from ours
        (oomd's effective swap free). Read only, never written: the actuator's targets are watched_patterns()."""
        out: list[str] = []
        for pattern in self.watched_patterns():
            parts = [p for p in pattern.split("/") if p]
            for depth in range(1, len(parts)):
                head = parts[:depth]
                if any(_GLOB.search(p) for p in head):
                    break  # a glob ancestor could match a whole level of the tree: not worth reading each tick
                path = "/" + "/".join(head)
                if path not in out:
                    out.append(path)
        return tuple(out)

    # ---- the tick --------------------------------------------------------------------------------------------

    def tick_seconds(self) -> float:
        return self.ruleset.interval

    def due_after(self, now: float, ticks: int) -> float:
        """When `ticks` ticks have passed, and the next one with them. oomd counts ticks; we count time, as the
        collector also sends snapshots on pressure events (and a conflated channel may drop one), which would
        make a count run fast or slow. Half a tick of slack absorbs the jitter of tick times."""
        return now + (ticks + 0.5) * self.tick_seconds()

    def run(self, ctx: TickContext) -> Ret:
        now = ctx.snapshot.monotonic
        by_path = {cg.path: cg for cg in ctx.snapshot.cgroups}
        seen: set[int] = set()
        for cg in self.select(ctx):
            why = self.unsupported(cg)
            if why is not None:
                self.explain(cg.path, why)
                continue
            seen.add(cg.inode)
            state = self.tracked.get(cg.inode)
            if state is None or state.path != cg.path:
                # New (or recreated under another name): track it; it is polled from the next tick on.
                state = self.initialize(ctx, cg, by_path, now)
                if state is None:
                    self.tracked.pop(cg.inode, None)
                else:
                    self.tracked[cg.inode] = state
                continue
            tick = self.tick_immediate_backoff if self.immediate_backoff else self.tick
            if not tick(ctx, cg, state, by_path, now):
                del self.tracked[cg.inode]  # figures missing: start afresh when they are back, as oomd does
        for inode in [i for i in self.tracked if i not in seen]:
            del self.tracked[inode]  # gone, or no longer matched
        self.summarize(now)
        return Ret.CONTINUE

    def unsupported(self, cg: CgroupStats) -> str | None:
        """Why senpai cannot tune `cg` on this host, or None. The snapshot says which memory accounting it has:
        only cgroup2's memory controller yields a protection figure (v1 has no memory.min/low), and a cgroup2
        directory without the controller has only an estimate of its usage."""
        if cg.path == "/":
            return "the root cgroup has no memory.high"
        if cg.memory_estimated:
            return ("its cgroup2 directory has no memory controller, so no memory.high (on a hybrid host memory is "
                    "accounted in the v1 memory controller; on a v2 host the parent does not delegate 'memory')")
        if cg.usage is None or cg.protection is None:
            return ("memory is accounted in the v1 memory controller here: v1 has no memory.high, only the hard "
                    "limit, and lowering that would make a second OOM killer")
        if cg.pressure is None:
            return "it has no memory.pressure of its own (a kernel without PSI, or booted with psi=0)"
        return None

    def explain(self, path: str, why: str) -> None:
        if why not in self.explained:
            self.explained.add(why)
            log.warning("senpai leaves %s (and any other cgroup like it) alone: %s", path, why)

    def initialize(self, ctx: TickContext, cg: CgroupStats, by_path: dict[str, CgroupStats],
                   now: float) -> CgroupState | None:
        assert cg.pressure is not None and cg.usage is not None  # checked by unsupported()
        total = cg.pressure.some_total
        if self.immediate_backoff:
            return CgroupState(path=cg.path, limit=0, last_total=total, due=self.due_after(now, self.interval))
        bounds = self.bounds(ctx, cg, by_path)
        if bounds is None:
            return None
        # oomd starts memory.high at the current usage as it is. We keep the start within the bounds every later
        # step keeps to, so a small cgroup is not squeezed below limit_min_bytes for its first ticks.
        start = max(bounds[0], min(bounds[1], cg.usage)) & PAGE_MASK
        self.write(ctx, cg, "memory.high", start, f"senpai starts {cg.path} at memory.high {start} (its usage "
                   f"{cg.usage}, within {bounds[0]}..{bounds[1]})")
        log.info("senpai tracks %s: memory.high set to %.3f GiB%s", cg.path, start / GIB, self.dry_note(ctx))
        return CgroupState(path=cg.path, limit=start, last_total=total, due=self.due_after(now, self.interval))

    def tick(self, ctx: TickContext, cg: CgroupStats, state: CgroupState, by_path: dict[str, CgroupStats],
             now: float) -> bool:
        """oomd's default mode. oomd first compares memory.high with what it wrote and starts over if someone
        else changed it; the snapshot has no memory.high, so senpai goes on from its own value (and its next
        write replaces theirs, as oomd's restart does)."""
        assert cg.pressure is not None
        total = cg.pressure.some_total
        delta = max(total - state.last_total, 0)
        state.last_total = total
        state.cumulative += delta
        target = self.pressure_ms * US_PER_MS
        if state.cumulative >= target:
            # Too much pressure: back off at once. oomd divides durations in whole microsecond counts, so the
            # error is a whole number; the step grows with its square and reaches max_backoff at coeff_backoff.
            error = state.cumulative // target
            factor = min((error / self.coeff_backoff) ** 2 * self.max_backoff, self.max_backoff)
            before, cumulative = state.limit, state.cumulative
            if not self.adjust(ctx, cg, state, by_path, now, factor):
                return False
            log.info("senpai backs off %s: memory.high %.3f -> %.3f GiB, stalled %d us since the last adjustment "
                     "(target %d ms; total %d us, delta %d us), adjust %+.4f%s", cg.path, before / GIB,
                     state.limit / GIB, cumulative, self.pressure_ms, total, delta, factor, self.dry_note(ctx))
            return True
        if now < state.due:
            return True
        # Too little pressure for `interval` ticks: probe down, faster the further stalls are below the target
        # (the full max_probe step once they fall to pressure_ms / coeff_probe).
        error = target // max(state.cumulative, 1)
        factor = -min((error / self.coeff_probe) ** 2 * self.max_probe, self.max_probe)
        before = state.limit
        if not self.adjust(ctx, cg, state, by_path, now, factor):
            return False
        if before > state.limit:
            state.probe_count += 1
            state.probe_bytes += before - state.limit
        return True

    def adjust(self, ctx: TickContext, cg: CgroupStats, state: CgroupState, by_path: dict[str, CgroupStats],
               now: float, factor: float) -> bool:
        bounds = self.bounds(ctx, cg, by_path)
        if bounds is None:
            return False
        low, high = bounds
        # As oomd: the step in floating point, truncated to whole bytes, then bounded (the floor wins when the
        # two cross) and rounded down to 4K.
        limit = int(state.limit + state.limit * factor)
        state.limit = max(low, min(high, limit)) & PAGE_MASK
        state.due = self.due_after(now, self.interval)
        state.cumulative = 0
        self.write(ctx, cg, "memory.high", state.limit, f"senpai adjusts {cg.path} by {factor:+.4f}: memory.high "
                   f"{state.limit} (within {low}..{high})")
        return True

    def tick_immediate_backoff(self, ctx: TickContext, cg: CgroupStats, state: CgroupState,
                               by_path: dict[str, CgroupStats], now: float) -> bool:
        """oomd's immediate_backoff mode: reclaim a little while pressure is low, through memory.reclaim."""
        if now < state.due:
            return True
        mem, io = cg.pressure, cg.io_pressure
        if mem is None or io is None:
            # oomd gives up on a cgroup without io.pressure, and looks again from scratch
            self.explain(cg.path, "immediate_backoff needs the cgroup's io.pressure, and it has none")
            return False
        calm = (max(mem.some_avg10, mem.some_avg60) < self.pressure_pct
                and max(io.some_avg10, io.some_avg60) < self.io_pressure_pct)
        if calm and self.swap_validation:
            calm = self.swap_allows(ctx, cg, by_path)
        if not calm:
            return True  # look again next tick
        bounds = self.bounds(ctx, cg, by_path)
        if bounds is None or cg.usage is None:
            return False
        floor = bounds[0]
        if cg.usage > floor:
            size = int((cg.usage - floor) * self.max_probe) & PAGE_MASK
            if size > 0:  # oomd writes even 0, which the kernel takes as a no-op
                self.write(ctx, cg, "memory.reclaim", size, f"senpai reclaims {size} bytes from {cg.path} "
                           f"(usage {cg.usage}, floor {floor})")
            state.probe_count += 1
            state.probe_bytes += size
            state.due = self.due_after(now, self.interval)
        return True

    def summarize(self, now: float) -> None:
        """oomd's aggregate line: probes made per cgroup, every log_interval ticks."""
        if self.log_interval <= 0:
            return
        tick = self.tick_seconds()
        if self.next_summary is None:
            self.next_summary = now + (self.log_interval - 1.5) * tick  # this run is the first of log_interval
        if now < self.next_summary:
            return
        self.next_summary = now + (self.log_interval - 0.5) * tick
        for state in self.tracked.values():
            log.info("senpai: cgroup %s %d probe attempts (%.3f GiB)", state.path, state.probe_count,
                     state.probe_bytes / GIB)
            state.probe_count = state.probe_bytes = 0

    # ---- bounds -----------------------------------------------------------------------------------------------

    def bounds(self, ctx: TickContext, cg: CgroupStats, by_path: dict[str, CgroupStats]) -> tuple[int, int] | None:
        """(floor, ceiling) of memory.high, or None where the figures are missing.

        Floor (oomd's getLimitMinBytes): limit_min_bytes above what reclaim cannot take, and not below memory.min.
        The snapshot has no memory.min alone: its protection figure (max(memory.min, memory.low), capped at
        usage) stands in, which is never below memory.min capped at usage, and higher where memory.low is set.
        Ceiling (oomd's getLimitMaxBytes): the least of MemTotal, usage + limit_max_bytes and memory.max."""
        reclaimable = self.reclaimable(ctx, cg, by_path)
        if reclaimable is None or cg.usage is None:
            return None
        floor = max(self.limit_min_bytes + cg.usage - reclaimable, cg.protection or 0)
        ceiling = min(ctx.host.mem_total, self.limit_max_bytes + cg.usage)
        if cg.limit is not None:
            ceiling = min(ceiling, cg.limit)
        return floor, ceiling

    def reclaimable(self, ctx: TickContext, cg: CgroupStats, by_path: dict[str, CgroupStats]) -> int | None:
        """oomd's getReclaimableBytes: the file LRUs, plus as much of the anon LRUs as swap can still take.
        memory.stat's `file` counts shmem, which sits on the anon LRUs: file - shmem and anon + shmem stand in
        for oomd's active+inactive file and anon. oomd also requires vm.swappiness > 0, which the snapshot does
        not carry: any swap counts here."""
        if cg.file is None or cg.anon is None:
            return None
        shmem = cg.shmem or 0
        file_lru = max(cg.file - shmem, 0)
        swappable = 0
        if ctx.host.swap_total > 0:
            free = self.effective_swap_free(ctx, cg, by_path)
            if free > 0:
                swappable = min(free, cg.anon + shmem)
        return file_lru + swappable

    def lineage(self, cg: CgroupStats, by_path: dict[str, CgroupStats]) -> list[CgroupStats]:
        """`cg` and those of its ancestors below the root that the snapshot holds."""
        out = [cg]
        path = cg.path
        while True:
            path = path.rsplit("/", 1)[0] or "/"
            if path == "/":
                return out
            if path in by_path:
                out.append(by_path[path])

    def effective_swap_free(self, ctx: TickContext, cg: CgroupStats, by_path: dict[str, CgroupStats]) -> int:
        """The least swap left anywhere up the tree: under each memory.swap.max, and on the host."""
        free = ctx.host.swap_free
        for level in self.lineage(cg, by_path):
            if level.swap_limit is not None and level.swap_usage is not None:
                free = min(free, level.swap_limit - level.swap_usage)
        return free

    def swap_allows(self, ctx: TickContext, cg: CgroupStats, by_path: dict[str, CgroupStats]) -> bool:
        """swap_validation: reclaim only while swap use stays below swap_threshold everywhere up the tree.
        oomd documents this intent, but its code returns the opposite comparison (it would reclaim only once
        swap is past the threshold): pyoomd follows the documented intent."""
        host = ctx.host
        if host.swap_total == 0:
            return True
        levels = self.lineage(cg, by_path)
        if any(level.swap_limit == 0 for level in levels):
            return True  # no swap allowed here: reclaim cannot deplete it
        util = (host.swap_total - host.swap_free) / host.swap_total
        for level in levels:
            if level.swap_limit and level.swap_usage is not None:
                util = max(util, level.swap_usage / level.swap_limit)
        return util < self.swap_threshold

    # ---- commands ---------------------------------------------------------------------------------------------

    def dry_run(self, ctx: TickContext) -> tuple[bool, str]:
        return (True, "plugin argument 'dry'") if self.dry else (ctx.dry_run, ctx.dry_run_source)

    def dry_note(self, ctx: TickContext) -> str:
        dry_run, source = self.dry_run(ctx)
        return f" (dry run, from {source}: nothing written)" if dry_run else ""

    def write(self, ctx: TickContext, cg: CgroupStats, file: WritableFile, value: int, reason: str) -> None:
        dry_run, source = self.dry_run(ctx)
        command = WriteCommand(
            id=uuid.uuid4().hex,
            generation=ctx.generation,
            ruleset=ctx.ruleset,
            group=ctx.group,
            plugin=self.name,
            snapshot_time=ctx.snapshot.time,
            not_after=ctx.now + self.tick_seconds() + DEADLINE_SLACK,
            path=cg.path,
            inode=cg.inode,
            file=file,
            value=str(value),
            reason=reason,
            dry_run=dry_run,
            dry_run_source=source,
        )
        # TickContext.submitted is typed for kill commands; the engine hands every submitted command to the
        # detector, which sends each as it is, and waits only for kills (an action that returns ASYNC_PAUSED).
        ctx.submit(command)  # type: ignore[arg-type]

    # ---- the actuator's second opinion ------------------------------------------------------------------------

    def check_write(self, file: str, value: str, current: int | None) -> str | None:
        """Why the actuator must not write `value` to `file` for this action, or None. Whatever the detector
        decided, memory.high never goes below limit_min_bytes and memory.reclaim never takes usage below it
        (`current`: memory.current as the actuator reads it now)."""
        if file not in self.writes:
            return f"senpai does not write {file}"
        if not _BYTES.fullmatch(value):
            return f"{value!r} is not a byte count"
        amount = int(value)
        if file == "memory.high" and amount < self.limit_min_bytes:
            return f"memory.high {amount} is below limit_min_bytes {self.limit_min_bytes}"
        if file == "memory.reclaim":
            if amount == 0:
                return "nothing to reclaim"
            if current is None:
                return "memory.current could not be read"
            if current - amount < self.limit_min_bytes:
                return (f"reclaiming {amount} of {current} bytes would go below limit_min_bytes "
                        f"{self.limit_min_bytes} (usage fell since the decision)")
        return None

