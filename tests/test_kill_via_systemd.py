"""Kills and stops through a real systemd user manager (`via: systemd|auto|direct`, the stop_unit action).

The CommandExecutor tests build KillCommands as tests/test_actuator.py does and give the executor a SystemdBus on the
fixture's manager; the daemon test runs `pyoomd run --systemd-bus session` against a real page-cache thrasher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from cgroupfs import CgroupFS, detect_layout
from ipc.messages import Candidate, KillCommand, PolicyUpdate
from policy.loader import load_policy_text
from tests.daemon import Daemon
from tests.realhost import THRASHER, wait_for
from tests.systemd_manager import UserManager
from workers.actuator import MECH_KILL_UNIT, MECH_STOP_UNIT, CommandExecutor
from workers.systemd import SystemdBus

pytestmark = pytest.mark.real

# A unit that ignores SIGTERM (the shell does; each `sleep` dies of it, the loop starts another).
STUBBORN = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]


def policy_update(m: UserManager) -> PolicyUpdate:
    policy = load_policy_text(f"""
rulesets:
  - name: rs
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{m.cgroup}/app.slice/pyoomd-*"}}
      - stop_unit: {{cgroup: "{m.cgroup}/app.slice/pyoomd-*"}}
""", "t.yaml")
    return PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default", protected_paths=["/"],
                        daemon_pid=os.getpid(), systemd_bus="session")


def command(fs: CgroupFS, path: str, *, via: str = "systemd", operation: str = "kill", grace: float = 0.0,
            plugin: str = "kill_by_memory_size_or_growth", stop_timeout: float = 5.0,
            dry_run: bool = False) -> KillCommand:
    return KillCommand(id=uuid.uuid4().hex, generation=1, ruleset="rs", group="g", plugin=plugin,
                       snapshot_time=time.time(), not_after=time.monotonic() + 5,
                       candidates=[Candidate(path=path, inode=fs.identity(path) or 0, usage=None, why="test")],
                       mechanism="direct", signal=int(signal.SIGKILL), reason="test", dry_run=dry_run,
                       dry_run_source="test", kill_timeout=5.0 + grace, grace=grace,
                       via=via, operation=operation, stop_timeout=stop_timeout)  # type: ignore[arg-type]


class RestartingBus:
    """The manager's bus, with a restart of the unit between its lookup and the kill: the race
    kill_unit_checked guards against, made certain."""

    def __init__(self, bus: SystemdBus, m: UserManager, unit: str) -> None:
        self._bus, self._m, self._unit = bus, m, unit

    def kill_unit_checked(self, *args, **kwargs):
        self._m.systemctl("restart", self._unit)
        return self._bus.kill_unit_checked(*args, **kwargs)

    def unit_state(self, *args, **kwargs):  # the check before a StopUnit
        self._m.systemctl("restart", self._unit)
        return self._bus.unit_state(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._bus, name)


@pytest.fixture
def manager_bus(systemd_user_manager: UserManager):
    with SystemdBus("session", addresses=[systemd_user_manager.private_address]) as bus:
        yield bus


@pytest.fixture
def stand_in():
    # Stands in for the daemon, whose processes (and their cgroups) the executor refuses: see test_actuator.py.
    proc = subprocess.Popen(["sleep", "1000"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def executor(m: UserManager, stand_in: subprocess.Popen, bus) -> CommandExecutor:
    ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid, kmsg_path=None, bus=bus)
    ex.apply_policy(policy_update(m))
    return ex


def started(m: UserManager, argv: list[str], tag: str) -> tuple[str, str]:
    unit = m.run_unit(argv, tag=tag)
    path = m.unit_cgroup(unit)
    # systemd attaches the process to each hierarchy in turn; the actuator looks in the memory one.
    wait_for(lambda: all(m.pids_in(path, h) for h in ("systemd", "memory", "unified")), 10, f"a process in {unit}")
    return unit, path


def test_kill_unit_through_the_manager(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    assert ex.reach.reachable is True
    unit, path = started(m, ["sleep", "1000"], "killunit")
    bystander, _ = started(m, ["sleep", "1000"], "bystander")
    try:
        pids = m.pids_in(path)
        result = ex.execute(command(ex.fs, path))
        assert result.status == "killed", result.detail
        assert (result.mechanism, result.unit, result.emptied) == (MECH_KILL_UNIT, unit, True)
        assert set(result.pids) == pids and "KillUnit SIGKILL" in result.detail
        assert m.show(unit, "Result") == "signal"  # systemd saw its main process die of a signal
        assert m.show(bystander, "ActiveState") == "active"
    finally:
        m.stop_unit(unit)
        m.stop_unit(bystander)


def test_grace_is_sigterm_then_sigkill_through_the_manager(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    unit, path = started(m, STUBBORN, "grace")
    # The shell has set its trap once it has a `sleep` child; before that a SIGTERM would end it.
    wait_for(lambda: len(m.pids_in(path)) >= 2, 10, f"the shell's sleep in {unit}")
    try:
        start = time.monotonic()
        result = ex.execute(command(ex.fs, path, grace=1.0))
        assert result.status == "killed", result.detail
        assert time.monotonic() - start >= 1.0  # the SIGTERM was ignored: the grace ran out
        assert "KillUnit SIGTERM" in result.detail and "then SIGKILL after 1s of grace" in result.detail
        assert result.mechanism == MECH_KILL_UNIT and result.unit == unit
        assert m.show(unit, "Result") == "signal"
    finally:
        m.stop_unit(unit)


def test_stop_unit_ends_it_through_a_stop_job(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    unit, path = started(m, ["sleep", "1000"], "stop")
    try:
        result = ex.execute(command(ex.fs, path, operation="stop", plugin="stop_unit"))
        assert result.status == "killed", result.detail
        assert (result.mechanism, result.unit, result.emptied) == (MECH_STOP_UNIT, unit, True)
        assert "StopUnit job" in result.detail and " done " in result.detail
        assert m.show(unit, "ActiveState") == "inactive"
        # systemd's verdict (a clean end, not a kill) is read from ExecStopPost in test_unit_under_systemd.py: a
        # stopped transient unit is unloaded at once, and `show -p Result` would give the default.
    finally:
        m.stop_unit(unit)


def test_a_stop_job_that_takes_too_long_is_followed_by_a_direct_kill(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    # ExecStop= that takes 60 s, as a stop script can on a host deep in reclaim.
    unit = m.run_unit(["sleep", "1000"], tag="slowstop", properties={"MemoryMax": "64M", "ExecStop": "/bin/sleep 60"})
    path = m.unit_cgroup(unit)
    wait_for(lambda: m.pids_in(path), 10, f"a process in {unit}")
    try:
        start = time.monotonic()
        result = ex.execute(command(ex.fs, path, operation="stop", plugin="stop_unit", stop_timeout=1.0))
        assert result.status == "killed", result.detail
        assert time.monotonic() - start < 50  # the 60 s ExecStop was not waited for
        assert result.mechanism.startswith(f"{MECH_STOP_UNIT}, then ") and result.emptied is True
        assert "not finished within 1 s" in result.detail and "killed directly" in result.detail
        assert not m.pids_in(path)
    finally:
        m.stop_unit(unit)


def test_auto_with_an_unreachable_manager_kills_directly_and_says_so(systemd_user_manager, stand_in, tmp_path):
    m = systemd_user_manager
    with SystemdBus("session", addresses=[f"unix:path={tmp_path}/no-such-bus"]) as dead:
        ex = executor(m, stand_in, dead)
        assert ex.reach.reachable is False  # known at policy apply, before any kill
        unit, path = started(m, ["sleep", "1000"], "auto")
        try:
            result = ex.execute(command(ex.fs, path, via="auto"))
            assert result.status == "killed", result.detail
            assert "systemd unreachable:" in result.detail and "killed directly" in result.detail
            assert result.unit == "" and result.mechanism in ("cgroup.kill", "direct")  # see CommandExecutor._kill_cgroup
        finally:
            m.stop_unit(unit)


def test_the_probe_finds_a_manager_that_comes_up_and_kills_then_go_through_it(systemd_user_manager, stand_in,
                                                                              tmp_path, caplog):
    """auto decides from the last probe, never by asking at the moment of the kill: a manager that was not there
    at policy apply is found by a later probe from the actuator's timer, and only then do kills use it."""
    m = systemd_user_manager
    socket_path = tmp_path / "manager"  # where the manager will appear: a link to its private socket, later
    with SystemdBus("session", addresses=[f"unix:path={socket_path}"]) as bus:
        caplog.set_level("INFO", logger="pyoomd.actuator")
        ex = executor(m, stand_in, bus)
        ex.probe_interval = 2.0
        assert ex.reach.reachable is False
        first = ex.reach.checked
        ex.maybe_probe(first + 1.0)  # not due yet: nothing asked
        assert ex.reach.checked == first
        ex.maybe_probe(first + 2.0)
        wait_for(lambda: ex.reach.checked > first, 10, "the second probe")
        assert ex.reach.reachable is False
        unreachable = [r for r in caplog.records if "service manager not reachable" in r.getMessage()]
        assert len(unreachable) == 1  # said once, not at every probe

        unit, path = started(m, ["sleep", "1000"], "probe")
        try:
            direct = ex.execute(command(ex.fs, path, via="auto"))
            assert direct.status == "killed" and direct.unit == "", direct.detail
            assert "systemd unreachable" in direct.detail
        finally:
            m.stop_unit(unit)

        socket_path.symlink_to(m.runtime_dir / "systemd" / "private")
        second = ex.reach.checked
        ex.maybe_probe(second + 2.0)
        wait_for(lambda: ex.reach.checked > second, 10, "the third probe")
        assert ex.reach.reachable is True
        assert any("service manager reachable again" in r.getMessage() for r in caplog.records)

        unit, path = started(m, ["sleep", "1000"], "probe")
        try:
            through = ex.execute(command(ex.fs, path, via="auto"))
            assert through.status == "killed", through.detail
            assert (through.mechanism, through.unit) == (MECH_KILL_UNIT, unit)
            assert m.show(unit, "Result") == "signal"
        finally:
            m.stop_unit(unit)


@pytest.mark.parametrize("grace", [0.0, 2.0])
def test_a_unit_its_manager_restarts_is_killed_once_and_its_new_invocation_left_alone(
        systemd_user_manager, manager_bus, stand_in, grace):
    """Restart=always brings the unit back into the same cgroup at once: the kill is done when the invocation that
    was judged is gone, and the new one (not judged) is neither killed nor waited for."""
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    unit = m.run_unit(["sleep", "1000"], tag="restarting",
                      properties={"MemoryMax": "64M", "Restart": "always", "RestartSec": "0"})
    path = m.unit_cgroup(unit)
    try:
        wait_for(lambda: all(m.pids_in(path, h) for h in ("systemd", "memory", "unified")), 10, f"{unit} running")
        before = m.show(unit, "InvocationID")
        pids = m.pids_in(path)
        result = ex.execute(command(ex.fs, path, grace=grace))
        assert result.status == "killed", result.detail
        assert result.unit == unit and set(result.pids) == pids
        # Whether the kill saw the cgroup empty before the restart filled it again is a race; either way the judged
        # processes are gone, and a new invocation seen in their place is named.
        assert not pids & m.pids_in(path)
        after = wait_for(lambda: m.show(unit, "ActiveState") == "active" and m.show(unit, "InvocationID"), 10,
                         "the restarted invocation")
        assert after != before
        assert int(m.show(unit, "NRestarts")) == 1  # one kill, one restart: the new invocation was not killed
    finally:
        m.stop_unit(unit)


def test_direct_never_asks_the_manager(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    unit, path = started(m, ["sleep", "1000"], "direct")
    try:
        result = ex.execute(command(ex.fs, path, via="direct"))
        assert result.status == "killed" and result.mechanism in ("cgroup.kill", "direct") and result.unit == ""
        assert "systemd" not in result.detail
    finally:
        m.stop_unit(unit)


def test_dry_run_through_the_manager_names_the_unit_and_signals_nothing(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    ex = executor(m, stand_in, manager_bus)
    unit, path = started(m, ["sleep", "1000"], "auto-dry")
    try:
        # A dry run through the manager names the unit and signals nothing.
        dry = ex.execute(command(ex.fs, path, via="auto", dry_run=True))
        assert (dry.status, dry.unit, dry.mechanism) == ("dry-run", unit, MECH_KILL_UNIT)
        assert m.show(unit, "ActiveState") == "active"
    finally:
        m.stop_unit(unit)


def test_a_restart_between_lookup_and_kill_is_not_killed(systemd_user_manager, manager_bus, stand_in):
    m = systemd_user_manager
    unit, path = started(m, ["sleep", "1000"], "restarted")
    try:
        before = m.show(unit, "InvocationID")
        ex = executor(m, stand_in, RestartingBus(manager_bus, m, unit))
        result = ex.execute(command(ex.fs, path))
        # The invocation that was judged is gone; the new one was not judged: neither is killed (documented in
        # CommandExecutor._kill_unit), and the next candidate would be tried.
        assert result.status == "no-target", result.detail
        assert "not the invocation that was picked" in result.detail
        after = m.show(unit, "InvocationID")
        assert after and after != before
        assert m.show(unit, "ActiveState") == "active"
        # A stop is checked the same way.
        again = m.show(unit, "InvocationID")
        stop = ex.execute(command(ex.fs, path, operation="stop", plugin="stop_unit"))
        assert stop.status == "no-target" and "not stopped" in stop.detail, stop.detail
        assert m.show(unit, "ActiveState") == "active" and m.show(unit, "InvocationID") != again
    finally:
        m.stop_unit(unit)


def daemon_policy(m: UserManager) -> str:
    return f"""
interval: 0.5
rulesets:
  - name: unit thrash
    post_action_delay: 30
    detectors:
      - name: app.slice under memory pressure
        all:
          - pressure_above: {{cgroup: "{m.cgroup}/app.slice", resource: memory, threshold: 5, duration: 1}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{m.cgroup}/app.slice/pyoomd-*", via: systemd}}
"""


def test_a_daemon_kills_a_thrashing_unit_through_the_manager(systemd_user_manager, tmp_path, monkeypatch):
    m = systemd_user_manager
    data = Path(f"/tmp/{m.name}-thrash-{os.getpid()}.dat")
    thrasher, thrasher_path = started(m, [sys.executable, "-c", THRASHER, str(data)], "thrasher")
    idle, _ = started(m, ["sleep", "1000"], "idle")
    try:
        for key in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS"):
            monkeypatch.setenv(key, m.env[key])
        daemon = Daemon(tmp_path, daemon_policy(m), "--systemd-bus", "session").start()
        try:
            record = wait_for(daemon.actions, 90, "the kill record")[0]
            assert record["result"] == "killed", record
            assert (record["target"], record["unit"], record["mechanism"]) == (thrasher_path, thrasher, MECH_KILL_UNIT)
            assert record["emptied"] is True
            assert m.show(thrasher, "Result") == "signal"
            assert m.show(idle, "ActiveState") == "active"
        finally:
            assert daemon.stop() == 0
        assert m.show(idle, "ActiveState") == "active"
    finally:
        m.stop_unit(thrasher)
        m.stop_unit(idle)
        data.unlink(missing_ok=True)
