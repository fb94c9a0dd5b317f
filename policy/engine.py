"""The rule engine, with oomd's semantics.

- A detector group fires when every detector in it says CONTINUE (AND); a ruleset fires when any group fires.
- Every detector of every group runs every tick, fired or not, so their sliding windows stay current.
- Actions run in order while they say CONTINUE; STOP ends the chain; ASYNC_PAUSED runs the same action again
  next tick (a kill action pauses so until the actuator answers). A kill that happened (or would have, in
  dry-run) pauses the ruleset's actions for `post_action_delay`; its detectors keep running.
- A command the actuator does not acknowledge in time is forgotten, and decided again from a later snapshot.
- Drop-in rulesets run before their base (policy/compose.py); a per-cgroup ruleset (`cgroup`, `xattr_filter`)
  runs once for each matching cgroup, each copy with its own state.
- A plugin that raises is logged once, counts as STOP, and after FAILURES_BEFORE_DISABLE ticks in a row with a
  failure its ruleset is disabled and reported; the engine (and the detector process) go on.
- On reload, rulesets whose definition did not change keep their state (sliding windows, pauses, pending
  commands); the history of every cgroup carries over.
- A pause set at run time (D-Bus PauseRuleset) holds a ruleset's actions as post_action_delay does, for every
  copy of it; its detectors keep running.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cgroupfs.stats import CgroupStats
from ipc.messages import CommandResult, KillCommand, RulesetReport, Snapshot
from policy.compose import effective_rulesets, same_meaning
from policy.context import History, TickContext
from policy.model import Policy, Ruleset
from policy.paths import matches_any
from policy.plugins import Needs, Plugin, Ret, build_plugin
from policy.plugins.base import RulesetOptions

log = logging.getLogger("pyoomd.engine")
plugin_log = logging.getLogger("pyoomd.plugins")

ACK_GRACE = 2.0  # seconds beyond a command's own kill timeout before we stop waiting for its answer
FAILURES_BEFORE_DISABLE = 3

# Which log entities the ruleset being run silences (oomd's silence-logs); read by _SilenceFilter.
_silenced: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("silenced", default=frozenset())


class _SilenceFilter(logging.Filter):
    def __init__(self, entity: str) -> None:
        super().__init__()
        self.entity = entity

    def filter(self, record: logging.LogRecord) -> bool:
        return self.entity not in _silenced.get()


log.addFilter(_SilenceFilter("engine"))
plugin_log.addFilter(_SilenceFilter("plugins"))


@dataclass
class Pending:
    command: KillCommand
    action_index: int
    ack_deadline: float


@dataclass
class RulesetState:
    """One running ruleset: a base ruleset, a drop-in copy, or one cgroup's copy of a per-cgroup ruleset."""

    spec: Ruleset
    key: str  # the name, or "name @ /cgroup" for a per-cgroup copy
    ruleset_cgroup: str | None
    groups: list[tuple[str, list[Plugin]]]
    actions: list[Plugin]
    # Its actions read what a tick's snapshot leaves out: they run only on a full one, asked for when it fires.
    needs_full: bool = False
    paused_until: float = 0.0
    pending: Pending | None = None
    resume_at: int | None = None
    last_fired: str | None = None
    last_fired_at: float = 0.0  # wall clock of the last tick it began to fire
    firing: bool = False
    # The last tick's verdicts: for each group, each detector's plugin name and whether it held ("error": raised)
    verdicts: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    failing_ticks: int = 0
    failed_this_tick: bool = False
    disabled: str | None = None  # why, once a plugin kept failing
    failures_logged: set[str] = field(default_factory=set)


@dataclass
class TickOutcome:
    commands: list[KillCommand] = field(default_factory=list)
    fired: list[tuple[str, str]] = field(default_factory=list)  # (ruleset key, group)
    began: list[tuple[str, str]] = field(default_factory=list)  # (ruleset key, group) that did not fire before
    want_full: bool = False  # a ruleset would act, but this snapshot lacks what its actions read
    disabled: list[tuple[str, str]] = field(default_factory=list)  # (ruleset key, reason), newly disabled


def ruleset_options(spec: Ruleset, interval: float) -> RulesetOptions:
    return RulesetOptions(
        name=spec.name, post_action_delay=spec.post_action_delay, interval=interval, cgroup=tuple(spec.cgroup),
        prekill_hook_timeout=spec.prekill_hook_timeout,
    )


def compile_ruleset(spec: Ruleset, interval: float, key: str | None = None, cgroup: str | None = None) -> RulesetState:
    opts = ruleset_options(spec, interval)
    groups = [(g.name, [build_plugin(d, "detector", opts) for d in g.detectors]) for g in spec.detector_groups]
    actions = [build_plugin(a, "action", opts) for a in spec.actions]
    needs_full = any(reads_on_demand(a) and (a.needs().cgroups or a.needs().fields) for a in actions)
    return RulesetState(spec=spec, key=key or spec.name, ruleset_cgroup=cgroup, groups=groups, actions=actions,
                        needs_full=needs_full)


def reads_on_demand(plugin: Plugin) -> bool:
    """An action whose figures are read only when it is about to run: one that says so (the kill actions; not
    senpai, which acts every tick) and whose history, if any, is only rates of counters (two full snapshots a
    moment apart give those; a running average of usage needs every tick's figures)."""
    return plugin.reads_when_acting and (not plugin.needs().history or getattr(plugin, "rates_only", False))


def _merge_needs(rulesets: list[RulesetState]) -> Needs:
    patterns: list[str] = []
    fields: set[str] = set()
    action_patterns: list[str] = []
    action_fields: set[str] = set()
    history = False
    watch: list[tuple[str, float]] = []
    usage: list[tuple[str, float | None, int | None]] = []
    triggers: list = []
    for rs in rulesets:
        # A per-cgroup ruleset's own cgroups are read too (with their xattrs, for xattr_filter).
        patterns.extend(p for p in rs.spec.cgroup if p not in patterns)
        if rs.spec.xattr_filter:
            fields.add("xattrs")
        for plugin in [p for _, ps in rs.groups for p in ps] + rs.actions:
            n = plugin.needs()
            on_demand = plugin in rs.actions and reads_on_demand(plugin)
            into_patterns, into_fields = (action_patterns, action_fields) if on_demand else (patterns, fields)
            into_patterns.extend(p for p in n.cgroups if p not in into_patterns)
            into_fields |= n.fields
            history = history or n.history
            watch.extend(w for w in n.pressure_watch if w not in watch)
            usage.extend(w for w in n.usage_watch if w not in usage)
            triggers.extend(w for w in n.trigger_watch if w not in triggers)
    return Needs(
        cgroups=tuple(patterns), fields=frozenset(fields), history=history, pressure_watch=tuple(watch),
        usage_watch=tuple(usage), trigger_watch=tuple(triggers), action_cgroups=tuple(action_patterns),
        action_fields=frozenset(action_fields),
    )


def policy_needs(policy: Policy) -> Needs:
    """Everything the collector must read for this policy (drop-ins included), merged over every plugin."""
    return _merge_needs([compile_ruleset(r, policy.interval) for r in effective_rulesets(policy)])


def has_xattr(cg: CgroupStats, name: str) -> bool:
    """oomd's xattr_filter: the cgroup carries an xattr of that name, in any namespace (user., trusted.)."""
    return any(x == name or x.endswith("." + name) for x in (cg.xattrs or {}))


class Engine:
    def __init__(
        self,
        policy: Policy,
        generation: int,
        dry_run: bool,
        dry_run_source: str,
        protected: frozenset[str],
        previous: Engine | None = None,
        paused: dict[str, float] | None = None,
    ) -> None:
        self.policy = policy
        self.paused = dict(paused or {})  # base ruleset name -> monotonic end of a pause set at run time
        # Fixed per engine, so that a report of the same pause is the same report from tick to tick.
        self.wall_offset = time.time() - time.monotonic()
        self.generation = generation
        self.dry_run = dry_run
        self.dry_run_source = dry_run_source
        self.protected = protected
        self.specs = effective_rulesets(policy)
        self.history = previous.history if previous is not None else History()
        carried = previous.instances if previous is not None else {}
        self.instances: dict[str, RulesetState] = {}
        for spec in self.specs:
            if spec.cgroup:
                # Per-cgroup copies are made as their cgroups appear; unchanged ones keep their state.
                for key, old in carried.items():
                    if old.ruleset_cgroup is not None and same_meaning(old.spec, spec):
                        old.spec = spec
                        self.instances[key] = old
                continue
            old = carried.get(spec.name)
            if old is not None and same_meaning(old.spec, spec):
                # The new spec (its source positions, its spelling) with the old state; the plugins compiled
                # from the old spec mean the same.
                old.spec = spec
                self.instances[spec.name] = old
            else:
                self.instances[spec.name] = compile_ruleset(spec, policy.interval)

    @property
    def rulesets(self) -> list[RulesetState]:
        return list(self.instances.values())

    def needs(self) -> Needs:
        return _merge_needs([compile_ruleset(s, self.policy.interval) for s in self.specs])

    def abandon(self, command_id: str) -> None:
        """The command never left: forget it so the ruleset decides again on the next snapshot."""
        for rs in self.instances.values():
            if rs.pending is not None and rs.pending.command.id == command_id:
                rs.pending = None

    # ---- one tick ----------------------------------------------------------------------------------------------

    def _running(self, snapshot: Snapshot) -> Iterator[RulesetState]:
        """The instances to run this tick, in policy order; per-cgroup copies follow their cgroups."""
        alive: set[str] = set()
        for spec in self.specs:
            if not spec.cgroup:
                alive.add(spec.name)
                yield self.instances[spec.name]
                continue
            patterns = tuple(spec.cgroup)
            for cg in snapshot.cgroups:
                if not matches_any(patterns, cg.path):
                    continue
                if spec.xattr_filter and not has_xattr(cg, spec.xattr_filter):
                    continue
                key = f"{spec.name} @ {cg.path}"
                alive.add(key)
                rs = self.instances.get(key)
                if rs is None or rs.spec != spec:
                    rs = self.instances[key] = compile_ruleset(spec, self.policy.interval, key, cg.path)
                yield rs
        for key in [k for k in self.instances if k not in alive]:
            rs = self.instances[key]
            if rs.ruleset_cgroup is not None and rs.pending is None:
                del self.instances[key]  # its cgroup is gone (or lost the xattr)

    def tick(self, snapshot: Snapshot, now: float) -> TickOutcome:
        self.history.update(snapshot)
        out = TickOutcome()
        for rs in list(self._running(snapshot)):
            if rs.disabled:
                continue
            token = _silenced.set(frozenset(rs.spec.silence_logs))
            try:
                self._tick_one(rs, snapshot, now, out)
            finally:
                _silenced.reset(token)
        return out

    def _tick_one(self, rs: RulesetState, snapshot: Snapshot, now: float, out: TickOutcome) -> None:
        ctx = TickContext(
            snapshot=snapshot, now=now, history=self.history, protected=self.protected,
            generation=self.generation, dry_run=self.dry_run, dry_run_source=self.dry_run_source,
            ruleset=rs.key, ruleset_cgroup=rs.ruleset_cgroup,
        )
        failed = False
        fired = self._run_detectors(rs, ctx)
        if fired is None and rs.firing:
            log.info("ruleset %r: no longer fires", rs.key)
        if fired is not None and not rs.firing:
            out.began.append((rs.key, fired))
            rs.last_fired_at = time.time()
        rs.firing = fired is not None
        if fired is not None:
            out.fired.append((rs.key, fired))
        if rs.pending is not None:
            if now <= rs.pending.ack_deadline:
                return self._count_failures(rs, out)
            log.warning("ruleset %r: no answer from the actuator for command %s; deciding again",
                        rs.key, rs.pending.command.id)
            rs.pending = None
        if now < rs.paused_until or now < self.paused.get(rs.spec.name, 0.0):
            return self._count_failures(rs, out)
        if rs.resume_at is not None:
            start, rs.resume_at = rs.resume_at, None
            ctx.group = rs.last_fired or ""
        elif fired is not None:
            start = 0
            if rs.last_fired != fired or not rs.firing:
                log.info("ruleset %r fired: detector group %r", rs.key, fired)
            rs.last_fired = fired
            ctx.group = fired
        else:
            return self._count_failures(rs, out)
        if rs.needs_full and not snapshot.full:
            # Its actions rank on figures only a full snapshot reads: ask for one, act on it (at once).
            rs.resume_at = start
            out.want_full = True
            return self._count_failures(rs, out)
        failed = self._run_actions(rs, ctx, start)
        out.commands.extend(ctx.submitted)
        self._count_failures(rs, out, failed)

    def _guarded(self, rs: RulesetState, plugin: Plugin, call: Callable[[], Ret]) -> Ret | None:
        """Run one plugin call; a plugin that raises is logged once and gives None (treated as STOP)."""
        try:
            return call()
        except Exception as e:
            rs.failed_this_tick = True
            what = f"{plugin.name}:{type(e).__name__}"
            if what not in rs.failures_logged:
                rs.failures_logged.add(what)
                log.error("ruleset %r: plugin %s raised %s: %s", rs.key, plugin.name, type(e).__name__, e,
                          exc_info=True)
            return None

    def _run_detectors(self, rs: RulesetState, ctx: TickContext) -> str | None:
        fired: str | None = None
        rs.failed_this_tick = False
        verdicts = []
        for name, detectors in rs.groups:
            # No short-circuit: every detector sees every tick. ASYNC_PAUSED from a detector counts as CONTINUE.
            results = [self._guarded(rs, d, lambda d=d: d.run(ctx)) for d in detectors]
            if fired is None and results and all(r in (Ret.CONTINUE, Ret.ASYNC_PAUSED) for r in results):
                fired = name
            verdicts.append((name, [(d.name, "error" if r is None else "holds" if r is not Ret.STOP else "no")
                                    for d, r in zip(detectors, results, strict=True)]))
        rs.verdicts = verdicts
        return fired

    def _run_actions(self, rs: RulesetState, ctx: TickContext, start: int) -> bool:
        for index in range(start, len(rs.actions)):
            before = len(ctx.submitted)
            ret = self._guarded(rs, rs.actions[index], lambda i=index: rs.actions[i].run(ctx))
            if ret is Ret.CONTINUE:
                continue
            if ret is Ret.ASYNC_PAUSED:
                if len(ctx.submitted) > before:
                    cmd = ctx.submitted[-1]
                    # How long the actuator may take: a kill's timeout, a unit job's timeout.
                    busy = getattr(cmd, "kill_timeout", None) or getattr(cmd, "timeout", 0.0)
                    rs.pending = Pending(cmd, index, cmd.not_after + busy + ACK_GRACE)
                else:
                    rs.resume_at = index  # not done yet: run it again next tick
            elif ret is Ret.STOP:
                # oomd: any action that ends the chain pauses the ruleset's actions; a kill action's own
                # post_action_delay overrides the ruleset's.
                rs.paused_until = ctx.now + getattr(rs.actions[index], "post_action_delay", rs.spec.post_action_delay)
            break
        return rs.failed_this_tick

    def _count_failures(self, rs: RulesetState, out: TickOutcome, failed: bool | None = None) -> None:
        if failed is None:
            failed = rs.failed_this_tick
        rs.failing_ticks = rs.failing_ticks + 1 if failed else 0
        if rs.failing_ticks >= FAILURES_BEFORE_DISABLE:
            culprits = ", ".join(sorted(rs.failures_logged))
            rs.disabled = f"a plugin raised in {rs.failing_ticks} ticks in a row ({culprits})"
            log.error("ruleset %r disabled: %s; the other rulesets go on", rs.key, rs.disabled)
            out.disabled.append((rs.key, rs.disabled))

    def on_result(self, result: CommandResult, now: float) -> bool:
        """Apply the actuator's answer; False when no ruleset waits for it (late or unknown)."""
        for rs in self.instances.values():
            if rs.pending is None or rs.pending.command.id != result.id:
                continue
            index = rs.pending.action_index
            rs.pending = None
            action = rs.actions[index]
            if action.on_result(result.status) is Ret.STOP:
                rs.paused_until = now + getattr(action, "post_action_delay", rs.spec.post_action_delay)
            elif index + 1 < len(rs.actions):
                rs.resume_at = index + 1
            return True
        return False

    def status(self) -> list[tuple[str, bool, float, str | None]]:
        """(ruleset, enabled, paused until (monotonic), last fired group) for each running ruleset."""
        return [(rs.key, rs.disabled is None, self._paused_until(rs), rs.last_fired) for rs in self.instances.values()]

    def _paused_until(self, rs: RulesetState) -> float:
        return max(rs.paused_until, self.paused.get(rs.spec.name, 0.0))

    def reports(self, now: float) -> list[RulesetReport]:
        """Each running ruleset as the D-Bus interface shows it: pauses in wall-clock time, 0 for none."""
        out = []
        for rs in self.instances.values():
            until = self._paused_until(rs)
            out.append(RulesetReport(name=rs.key, enabled=rs.disabled is None,
                                     paused_until=round(until + self.wall_offset, 3) if until > now else 0.0,
                                     last_fired=rs.last_fired_at, last_group=rs.last_fired or ""))
        return out

    def explain(self, snapshot: Snapshot, now: float) -> list[dict]:
        """What each ruleset makes of `snapshot` (the last one it ran on): its detectors' verdicts on it, and
        for each kill action the cgroups it would try now, best first, with the figures that ranked them. Nothing
        runs that has state: detectors are not run again (that would move their sliding windows)."""
        wall = time.time()
        out = []
        for rs in self.instances.values():
            ctx = TickContext(
                snapshot=snapshot, now=now, history=self.history, protected=self.protected,
                generation=self.generation, dry_run=self.dry_run, dry_run_source=self.dry_run_source,
                ruleset=rs.key, ruleset_cgroup=rs.ruleset_cgroup,
            )
            until = self._paused_until(rs)
            actions = []
            for plugin in rs.actions:
                entry: dict = {"action": plugin.name}
                rank = getattr(plugin, "ranked_candidates", None)
                if rank is None:
                    entry["note"] = "not a kill action: nothing to rank"
                else:
                    try:
                        entry["candidates"] = [
                            {"cgroup": cg.path, "why": why, "usage": cg.usage, "pressure_full_avg10":
                             cg.pressure.full_avg10 if cg.pressure is not None else None}
                            for cg, why in rank(ctx)]
                    except Exception as e:  # a plugin that raises here raises in the tick too: say so, go on
                        entry["error"] = f"{type(e).__name__}: {e}"
                actions.append(entry)
            out.append({
                "ruleset": rs.key,
                "enabled": rs.disabled is None,
                "disabled_because": rs.disabled,
                "firing": rs.firing,
                "firing_group": rs.last_fired if rs.firing else None,
                "paused_for": round(until - now, 3) if until > now else 0,
                "waiting_for_actuator": rs.pending is not None,
                "groups": [{"group": name, "holds": bool(v) and all(r == "holds" for _, r in v),
                            "detectors": [{"detector": d, "verdict": r} for d, r in v]}
                           for name, v in rs.verdicts],
                "actions": actions,
                "as_of": snapshot.time,
                "now": wall,
            })
        return out
