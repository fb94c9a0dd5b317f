"""oomd's systemd_restart through a real daemon and a real systemd user manager (--systemd-bus session)."""

from __future__ import annotations

import os

import pytest

from tests.daemon import Daemon
from tests.realhost import wait_for
from tests.systemd_manager import UserManager
from workers.systemd import SystemdBus

pytestmark = pytest.mark.real


def policy(unit_cgroup: str, unit: str, extra: str = "") -> str:
    return f"""
interval: 0.5
rulesets:
  - name: restart it
    post_action_delay: 300
    detectors:
      - name: the unit is there
        all:
          - exists: {{cgroup: "{unit_cgroup}"}}
    actions:
      - systemd_restart: {{service: "{unit}"{extra}}}
"""


def test_a_daemon_restarts_a_unit_through_the_service_manager(systemd_user_manager: UserManager, tmp_path,
                                                             monkeypatch):
    m = systemd_user_manager
    unit = m.run_unit(["sleep", "1000"], tag="restart")
    try:
        before = m.show(unit, "InvocationID")
        for key, value in m.env.items():
            if key in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"):
                monkeypatch.setenv(key, value)
        daemon = Daemon(tmp_path, policy(m.unit_cgroup(unit), unit), "--systemd-bus", "session").start()
        try:
            record = wait_for(daemon.actions, 60, "the restart record")[0]
            assert (record["plugin"], record["target"], record["result"]) == ("systemd_restart", unit, "restarted")
            assert record["mechanism"] == "systemd"
            after = m.show(unit, "InvocationID")
            assert after and after != before  # a new invocation of the same unit
            assert m.show(unit, "ActiveState") == "active"
        finally:
            assert daemon.stop() == 0
        assert len(daemon.actions()) == 1  # post_action_delay held it off
    finally:
        m.stop_unit(unit)


def test_dry_run_restarts_nothing(systemd_user_manager: UserManager, tmp_path, monkeypatch):
    m = systemd_user_manager
    unit = m.run_unit(["sleep", "1000"], tag="dryrestart")
    try:
        before = m.show(unit, "InvocationID")
        monkeypatch.setenv("XDG_RUNTIME_DIR", m.env["XDG_RUNTIME_DIR"])
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", m.env["DBUS_SESSION_BUS_ADDRESS"])
        daemon = Daemon(tmp_path, policy(m.unit_cgroup(unit), unit, ", dry: true"), "--systemd-bus", "session")
        daemon.start()
        try:
            record = wait_for(daemon.actions, 60, "the dry-run record")[0]
            assert record["result"] == "dry-run" and record["dry_run"] is True
        finally:
            assert daemon.stop() == 0
        assert m.show(unit, "InvocationID") == before
    finally:
        m.stop_unit(unit)


def test_the_unit_bus_is_reachable_from_the_test(systemd_user_manager: UserManager):
    env = systemd_user_manager.env
    old = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")}
    os.environ.update({k: env[k] for k in old})
    try:
        with SystemdBus("session") as bus:
            assert bus.probe().ok
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_actuator_restarts_only_what_the_policy_names():
    import time
    import uuid

    from ipc.messages import PolicyUpdate, UnitCommand
    from policy.loader import load_policy_text
    from workers.actuator import UnitExecutor

    ex = UnitExecutor()
    ex.apply_policy(PolicyUpdate(generation=3, policy=load_policy_text(policy("/a.service", "a.service"), "p.yaml"),
                                 dry_run=False, dry_run_source="default", protected_paths=["/"], daemon_pid=1,
                                 systemd_bus="none"))

    def cmd(unit: str, generation: int = 3, not_after: float | None = None) -> UnitCommand:
        return UnitCommand(id=uuid.uuid4().hex, generation=generation, ruleset="restart it", group="g",
                           plugin="systemd_restart", snapshot_time=0.0,
                           not_after=time.monotonic() + 5 if not_after is None else not_after,
                           operation="restart", unit=unit, reason="t", dry_run=False, dry_run_source="default")

    assert ex.execute(cmd("sshd.service")).status == "refused"
    assert ex.execute(cmd("a.service", generation=2)).status == "refused"
    assert ex.execute(cmd("a.service", not_after=time.monotonic() - 1)).status == "expired"
    failed = ex.execute(cmd("a.service"))
    assert failed.status == "failed" and "--systemd-bus none" in failed.detail
