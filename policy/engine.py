"""The rule engine, with oomd's semantics.

- A detector group fires when every detector in it says CONTINUE (AND); a ruleset fires when any group fires.
- Every detector of every group runs every tick, fired or not, so their held-for timers stay current.
- Actions run in order while they say CONTINUE; STOP ends the chain; ASYNC_PAUSED waits for the actuator's
  answer. A kill that happened (or would have, in dry-run) pauses the ruleset for `post_action_delay`.
- A command the actuator does not acknowledge in time is forgotten, and decided again from a later snapshot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ipc.messages import CommandResult, KillCommand, Snapshot
from policy.context import History, TickContext
from policy.model import Policy, Ruleset
from policy.plugins import Needs, Plugin, Ret, build_plugin
from policy.plugins.base import RulesetOptions

log = logging.getLogger("pyoomd.engine")

ACK_GRACE = 2.0  # seconds beyond a command's own kill timeout before we stop waiting for its answer


@dataclass
class Pending:
    command: KillCommand
    action_index: int
    ack_deadline: float


@dataclass
class RulesetState:
    spec: Ruleset
    groups: list[tuple[str, list[Plugin]]]
    actions: list[Plugin]
    paused_until: float = 0.0
    pending: Pending | None = None
    resume_at: int | None = None
    last_fired: str | None = None


@dataclass
class TickOutcome:
    commands: list[KillCommand] = field(default_factory=list)
    fired: list[tuple[str, str]] = field(default_factory=list)  # (ruleset, group)


def compile_ruleset(spec: Ruleset, interval: float) -> RulesetState:
    opts = RulesetOptions(name=spec.name, post_action_delay=spec.post_action_delay, interval=interval)
    groups = [(g.name, [build_plugin(d, "detector", opts) for d in g.detectors]) for g in spec.detector_groups]
    actions = [build_plugin(a, "action", opts) for a in spec.actions]
    return RulesetState(spec=spec, groups=groups, actions=actions)


def _merge_needs(rulesets: list[RulesetState]) -> Needs:
    patterns: list[str] = []
    fields: set[str] = set()
    history = False
    watch: list[tuple[str, float]] = []
    usage: list[tuple[str, float | None, int | None]] = []
    triggers: list = []
    for rs in rulesets:
        for plugin in [p for _, ps in rs.groups for p in ps] + rs.actions:
            n = plugin.needs()
            patterns.extend(p for p in n.cgroups if p not in patterns)
            fields |= n.fields
            history = history or n.history
            watch.extend(w for w in n.pressure_watch if w not in watch)
            usage.extend(w for w in n.usage_watch if w not in usage)
            triggers.extend(w for w in n.trigger_watch if w not in triggers)
    return Needs(
        cgroups=tuple(patterns), fields=frozenset(fields), history=history, pressure_watch=tuple(watch),
        usage_watch=tuple(usage), trigger_watch=tuple(triggers),
    )


def policy_needs(policy: Policy) -> Needs:
    """Everything the collector must read for this policy, merged over every plugin."""
    return _merge_needs([compile_ruleset(r, policy.interval) for r in policy.rulesets])


class Engine:
    def __init__(
        self,
        policy: Policy,
        generation: int,
        dry_run: bool,
        dry_run_source: str,
        protected: frozenset[str],
    ) -> None:
        self.policy = policy
        self.generation = generation
        self.dry_run = dry_run
        self.dry_run_source = dry_run_source
        self.protected = protected
        self.rulesets = [compile_ruleset(r, policy.interval) for r in policy.rulesets]
        self.history = History()

    def abandon(self, command_id: str) -> None:
        """The command never left: forget it so the ruleset decides again on the next snapshot."""
        for rs in self.rulesets:
            if rs.pending is not None and rs.pending.command.id == command_id:
                rs.pending = None

    def tick(self, snapshot: Snapshot, now: float) -> TickOutcome:
        self.history.update(snapshot)
        out = TickOutcome()
        for rs in self.rulesets:
            ctx = TickContext(
                snapshot=snapshot,
                now=now,
                history=self.history,
                protected=self.protected,
                generation=self.generation,
                dry_run=self.dry_run,
                dry_run_source=self.dry_run_source,
                ruleset=rs.spec.name,
            )
            fired = self._run_detectors(rs, ctx)
            if fired is not None:
                out.fired.append((rs.spec.name, fired))
            if rs.pending is not None:
                if now <= rs.pending.ack_deadline:
                    continue
                log.warning(
                    "ruleset %r: no answer from the actuator for command %s; deciding again",
                    rs.spec.name, rs.pending.command.id,
                )
                rs.pending = None
            if now < rs.paused_until:
                continue
            if rs.resume_at is not None:
                start, rs.resume_at = rs.resume_at, None
                ctx.group = rs.last_fired or ""
            elif fired is not None:
                start = 0
                rs.last_fired = fired
                ctx.group = fired
            else:
                continue
            self._run_actions(rs, ctx, start, now)
            out.commands.extend(ctx.submitted)
        return out

    @staticmethod
    def _run_detectors(rs: RulesetState, ctx: TickContext) -> str | None:
        fired: str | None = None
        for name, detectors in rs.groups:
            results = [d.run(ctx) for d in detectors]  # no short-circuit: every detector sees every tick
            if fired is None and results and all(r is Ret.CONTINUE for r in results):
                fired = name
        return fired

    @staticmethod
    def _run_actions(rs: RulesetState, ctx: TickContext, start: int, now: float) -> None:
        for index in range(start, len(rs.actions)):
            before = len(ctx.submitted)
            ret = rs.actions[index].run(ctx)
            if ret is Ret.CONTINUE:
                continue
            if ret is Ret.ASYNC_PAUSED and len(ctx.submitted) > before:
                cmd = ctx.submitted[-1]
                rs.pending = Pending(cmd, index, cmd.not_after + cmd.kill_timeout + ACK_GRACE)
            break

    def on_result(self, result: CommandResult, now: float) -> bool:
        """Apply the actuator's answer; False when no ruleset waits for it (late or unknown)."""
        for rs in self.rulesets:
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
