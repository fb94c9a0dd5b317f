"""kill_unit and restart_unit decide as their names say (the actuator side is tests/test_kill_via_systemd.py and
tests/test_systemd_restart.py)."""

from __future__ import annotations

from ipc.messages import KillCommand, UnitCommand
from tests.test_engine import cg, engine_for, snap


def policy(action: str) -> str:
    return f"""
rulesets:
  - name: r
    detectors:
      - name: always
        all: [continue: {{}}]
    actions:
      - {action}
"""


def test_kill_unit_picks_the_largest_unit_and_asks_the_manager():
    e = engine_for(policy('kill_unit: {cgroup: "app.slice/*", grace: 2s}'))
    cgroups = [cg("/app.slice/big.service", 500), cg("/app.slice/small.scope", 50), cg("/app.slice/plain", 900)]
    (cmd,) = e.tick(snap(cgroups), 0.0).commands
    assert isinstance(cmd, KillCommand)
    assert [c.path for c in cmd.candidates] == ["/app.slice/big.service", "/app.slice/small.scope"]
    assert (cmd.via, cmd.operation, cmd.grace) == ("systemd", "kill", 2.0)


def test_restart_unit_is_systemd_restart_by_another_name():
    (cmd,) = engine_for(policy('restart_unit: {service: "chef.service"}')).tick(snap([]), 0.0).commands
    assert isinstance(cmd, UnitCommand)
    assert (cmd.operation, cmd.unit, cmd.plugin) == ("restart", "chef.service", "restart_unit")
