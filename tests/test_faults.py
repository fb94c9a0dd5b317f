"""Faults injected into a kill, each with a bounded wait, a fallback and a record: a victim that cannot die (in
uninterruptible sleep), a cgroup gone between the decision and the kill, a service manager that never answers."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from cgroupfs import CgroupFS, detect_layout
from ipc.messages import Candidate, KillCommand, PolicyUpdate
from policy.loader import load_policy_text
from tests.realhost import CGROUP_ROOT, wait_for
from workers.actuator import CommandExecutor
from workers.systemd import SystemdBus

pytestmark = pytest.mark.real


def update(parent: str, daemon_pid: int) -> PolicyUpdate:
    policy = load_policy_text(f"""
rulesets:
  - name: rs
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*"}}
""", "t.yaml")
    return PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default", protected_paths=["/"],
                        daemon_pid=daemon_pid)


def kill(fs: CgroupFS, paths: list[str], *, timeout: float = 5.0, via: str = "direct") -> KillCommand:
    return KillCommand(id=uuid.uuid4().hex, generation=1, ruleset="rs", group="g",
                       plugin="kill_by_memory_size_or_growth", snapshot_time=time.time(),
                       not_after=time.monotonic() + 5,
                       candidates=[Candidate(path=p, inode=fs.identity(p) or 0, usage=None, why="test") for p in paths],
                       mechanism="direct", signal=int(signal.SIGKILL), reason="test", dry_run=False,
                       dry_run_source="test", kill_timeout=timeout, via=via)  # type: ignore[arg-type]


@pytest.fixture
def executor(cgroups):
    stand_in = subprocess.Popen(["sleep", "1000"])  # stands in for the daemon (see tests/test_actuator.py)
    try:
        ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid, kmsg_path=None)
        ex.apply_policy(update(cgroups.path, stand_in.pid))
        yield ex
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_victim_that_cannot_die_costs_the_kill_timeout_and_is_recorded(cgroups, executor):
    """A process frozen by the v1 freezer sleeps uninterruptibly (D): SIGKILL stays pending until it thaws. The
    freezer cgroup is one of the test's own, not the victim's twin, so pyoomd has no reason to thaw it."""
    cgroups.mkdir("victim")
    frozen = CGROUP_ROOT / "freezer" / f"{cgroups.name}-dstate"
    frozen.mkdir()
    victim = cgroups.spawn("victim", ["sleep", "1000"])
    try:
        (frozen / "cgroup.procs").write_text(str(victim.pid))
        (frozen / "freezer.state").write_text("FROZEN")
        wait_for(lambda: (frozen / "freezer.state").read_text().strip() == "FROZEN", 10, "the freeze")
        wait_for(lambda: Path(f"/proc/{victim.pid}/stat").read_text().split(") ")[1][0] == "D", 10, "state D")
        started = time.monotonic()
        result = executor.execute(kill(executor.fs, [f"{cgroups.path}/victim"], timeout=2.0))
        waited = time.monotonic() - started
        assert result.status == "failed" and result.emptied is False
        assert f"still present after 2s: [{victim.pid}]" in result.detail
        assert waited < 30  # bounded by the kill timeout (a generous bound, not a speed)
        assert victim.poll() is None
        (frozen / "freezer.state").write_text("THAWED")
        assert victim.wait(timeout=10) == -signal.SIGKILL  # the signal was sent: it lands once it can
    finally:
        (frozen / "freezer.state").write_text("THAWED")
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        for _ in range(50):
            try:
                frozen.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def test_a_cgroup_gone_since_the_decision_is_passed_over_for_the_next(cgroups, executor):
    cgroups.mkdir("first")
    cgroups.mkdir("second")
    first = cgroups.sleeper("first")
    second = cgroups.sleeper("second")
    cmd = kill(executor.fs, [f"{cgroups.path}/first", f"{cgroups.path}/second"])
    first.kill()
    first.wait()
    for h in ("memory", "unified"):
        wait_for(lambda h=h: not (CGROUP_ROOT / h / cgroups.name / "first" / "cgroup.procs").read_text().strip(),
                 10, "the first cgroup empty")
        (CGROUP_ROOT / h / cgroups.name / "first").rmdir()
    result = executor.execute(cmd)
    assert result.status == "killed" and result.target == f"{cgroups.path}/second"
    assert f"{cgroups.path}/first: gone" in result.detail
    assert second.wait(timeout=5) == -signal.SIGKILL


def test_a_service_manager_that_never_answers_costs_a_deadline_and_the_kill_goes_direct(cgroups, tmp_path):
    """A socket that accepts and never answers, as a stalled dbus-daemon does. The probe at policy apply meets
    its deadline; the kill itself never waits on the bus, goes direct and says why."""
    path = tmp_path / "stalled"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    stand_in = subprocess.Popen(["sleep", "1000"])
    try:
        with SystemdBus("session", addresses=[f"unix:path={path}"]) as bus:
            ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid, kmsg_path=None, bus=bus)
            ex.apply_policy(update(cgroups.path, stand_in.pid))
            assert ex.reach.reachable is False and "within" in ex.reach.error
            cgroups.mkdir("x.service")  # a name the manager would own, were it there
            victim = cgroups.sleeper("x.service")
            started = time.monotonic()
            result = ex.execute(kill(ex.fs, [f"{cgroups.path}/x.service"], via="auto"))
            assert time.monotonic() - started < 5  # no bus call on the kill path (a generous bound)
            assert result.status == "killed" and result.unit == ""
            assert "systemd unreachable" in result.detail and "killed directly" in result.detail
            assert victim.wait(timeout=5) == -signal.SIGKILL
    finally:
        stand_in.kill()
        stand_in.wait()
        server.close()
        for conn in held:
            conn.close()
