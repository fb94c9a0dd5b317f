"""Actions carried out by the service manager: oomd's `systemd_restart`."""

from __future__ import annotations

import uuid

from ipc.messages import UnitCommand
from policy.context import TickContext
from policy.plugins.base import Arg, Plugin, Ret, register

UNIT_TIMEOUT = 5.0  # seconds the actuator waits for the manager's restart job


@register
class SystemdRestart(Plugin):
    name = "systemd_restart"
    kinds = frozenset({"action"})
    doc = ("Restart a systemd service through the service manager (RestartUnit, mode replace), then STOP and "
           "pause the ruleset for `post_action_delay`; CONTINUE when the restart failed, as oomd does. The "
           "manager is the one --systemd-bus names.")
    args = (
        Arg("service", "string", doc="the unit to restart, e.g. chef.service"),
        Arg("post_action_delay", "duration", None, "rest after a restart; default: the ruleset's", unit="s"),
        Arg("dry", "bool", False, "decide and record, but restart nothing"),
        Arg("machine_type", "string", "", "accepted for oomd compatibility; pyoomd talks to one manager"),
    )
    requires = frozenset({"systemd"})

    service: str
    post_action_delay: float | None
    dry: bool

    def setup(self) -> None:
        from policy.plugins.args import ArgError

        if not self.service.strip():
            raise ArgError("service", "argument 'service': empty", at_value=True)
        if self.post_action_delay is None:
            self.post_action_delay = self.ruleset.post_action_delay

    def run(self, ctx: TickContext) -> Ret:
        dry_run, source = (True, "plugin argument 'dry'") if self.dry else (ctx.dry_run, ctx.dry_run_source)
        ctx.submit(UnitCommand(  # type: ignore[arg-type]
            id=uuid.uuid4().hex, generation=ctx.generation, ruleset=ctx.ruleset, group=ctx.group, plugin=self.name,
            snapshot_time=ctx.snapshot.time, not_after=ctx.now + self.ruleset.interval + 0.5,
            operation="restart", unit=self.service, reason=f"{self.name}: restart {self.service}",
            dry_run=dry_run, dry_run_source=source, timeout=UNIT_TIMEOUT,
        ))
        return Ret.ASYNC_PAUSED

    def on_result(self, status: str) -> Ret:
        return Ret.STOP if status in ("restarted", "dry-run") else Ret.CONTINUE


@register
class RestartUnit(SystemdRestart):
    name = "restart_unit"
    doc = ("pyoomd's name for oomd's systemd_restart: restart a unit through the service manager (RestartUnit, "
           "mode replace), then STOP and pause the ruleset for `post_action_delay`.")
