"""The actuator's judgement against real cgroups: it acts on the cgroup decided on, or on nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest

from cgroupfs import CgroupFS, detect_layout
from cgroupfs.kill import signal_cgroup
from ipc.messages import Candidate, KillCommand, PolicyUpdate
from policy.loader import load_policy_text
from tests.realhost import CgroupSandbox
from workers.actuator import CommandExecutor

pytestmark = pytest.mark.real


def policy_update(parent: str, generation: int = 1) -> PolicyUpdate:
    policy = load_policy_text(f"""
rulesets:
  - name: rs
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/victim*"}}
""", "t.yaml")
    return PolicyUpdate(generation=generation, policy=policy, dry_run=False, dry_run_source="default",
                        protected_paths=["/"], daemon_pid=os.getpid())


def command(fs: CgroupFS, paths: list[str], *, generation: int = 1, dry_run: bool = False,
            not_after: float | None = None, inode: int | None = None) -> KillCommand:
    cands = [Candidate(path=p, inode=inode if inode is not None else (fs.identity(p) or 0), usage=None, why="test")
             for p in paths]
    return KillCommand(id=uuid.uuid4().hex, generation=generation, ruleset="rs", group="g",
                       plugin="kill_by_memory_size_or_growth", snapshot_time=time.time(),
                       not_after=not_after if not_after is not None else time.monotonic() + 5,
                       candidates=cands, mechanism="direct", signal=int(signal.SIGKILL), reason="test",
                       dry_run=dry_run, dry_run_source="test", kill_timeout=5.0)


@pytest.fixture
def executor(cgroups: CgroupSandbox):
    # The test process is the parent of every workload, so it cannot stand in for the daemon (whose children
    # are protected); a sleeper of our own, outside the test cgroups, does.
    stand_in = subprocess.Popen(["sleep", "1000"])
    try:
        ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid)
        ex.apply_policy(policy_update(cgroups.path))
        yield ex
    finally:
        stand_in.kill()
        stand_in.wait()


def test_kills_every_process_of_the_target_including_forked_ones(cgroups, executor):
    cgroups.mkdir("victim")
    shell = cgroups.spawn("victim", ["sh", "-c", "for i in 1 2 3 4 5; do sleep 1000 & done; wait"])
    fs = executor.fs
    deadline = time.monotonic() + 10
    while len(fs.members(f"{cgroups.path}/victim")) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = fs.members(f"{cgroups.path}/victim")
    assert len(members) == 6
    result = executor.execute(command(fs, [f"{cgroups.path}/victim"]))
    assert result.status == "killed"
    assert sorted(result.pids) == sorted(members)
    assert shell.wait(timeout=5) == -signal.SIGKILL
    assert fs.members(f"{cgroups.path}/victim") == set()


def test_dry_run_signals_nothing_but_lists_the_pids(cgroups, executor):
    cgroups.mkdir("victim")
    proc = cgroups.sleeper("victim")
    time.sleep(0.2)
    result = executor.execute(command(executor.fs, [f"{cgroups.path}/victim"], dry_run=True))
    assert result.status == "dry-run" and result.pids == [proc.pid]
    time.sleep(0.3)
    assert proc.poll() is None


def test_other_generation_and_expired_commands_are_refused(cgroups, executor):
    cgroups.mkdir("victim")
    proc = cgroups.sleeper("victim")
    path = f"{cgroups.path}/victim"
    assert executor.execute(command(executor.fs, [path], generation=7)).status == "refused"
    assert executor.execute(command(executor.fs, [path], not_after=time.monotonic() - 0.1)).status == "expired"
    assert proc.poll() is None


def test_target_outside_the_policy_is_never_touched(cgroups, executor):
    cgroups.mkdir("bystander")
    proc = cgroups.sleeper("bystander")
    result = executor.execute(command(executor.fs, [f"{cgroups.path}/bystander"]))
    assert result.status == "no-target"
    assert "not under the cgroups this action may act on" in result.detail
    assert proc.poll() is None


def test_recreated_cgroup_of_the_same_name_is_not_the_one_decided_on(cgroups, executor):
    path = f"{cgroups.path}/victim"
    cgroups.mkdir("victim")
    old_inode = executor.fs.identity(path)
    for h in ("memory", "unified"):
        os.rmdir(f"/sys/fs/cgroup/{h}{path}")
    cgroups.mkdir("victim")
    newcomer = cgroups.sleeper("victim")
    time.sleep(0.2)
    assert executor.fs.identity(path) != old_inode
    result = executor.execute(command(executor.fs, [path], inode=old_inode))
    assert result.status == "no-target"
    assert "replaced by another cgroup of the same name" in result.detail
    assert newcomer.poll() is None


def test_falls_back_to_the_next_candidate_when_the_first_is_gone(cgroups, executor):
    cgroups.mkdir("victim-a")
    cgroups.mkdir("victim-b")
    proc = cgroups.sleeper("victim-b")
    gone = f"{cgroups.path}/victim-gone"
    result = executor.execute(command(executor.fs, [gone, f"{cgroups.path}/victim-a", f"{cgroups.path}/victim-b"],
                                      inode=None))
    assert result.status == "killed" and result.target == f"{cgroups.path}/victim-b"
    assert f"{gone}: gone" in result.detail and f"{cgroups.path}/victim-a: no process to signal" in result.detail
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_cgroup_holding_the_daemon_is_protected(cgroups):
    cgroups.mkdir("victim")
    daemon_stand_in = cgroups.sleeper("victim")
    time.sleep(0.2)
    ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=daemon_stand_in.pid)
    ex.apply_policy(policy_update(cgroups.path))
    result = ex.execute(command(ex.fs, [f"{cgroups.path}/victim"]))
    assert result.status == "no-target"
    assert "protected" in result.detail
    assert daemon_stand_in.poll() is None


def test_refused_pids_are_left_alone_and_do_not_hold_up_the_kill(cgroups):
    cgroups.mkdir("victim")
    spared, doomed = cgroups.sleeper("victim"), cgroups.sleeper("victim")
    time.sleep(0.2)
    fs = CgroupFS(detect_layout())
    start = time.monotonic()
    report = signal_cgroup(fs, f"{cgroups.path}/victim", signal.SIGKILL, start + 30,
                           lambda pid: "stand-in for PID 1" if pid == spared.pid else None)
    assert report.signalled == [doomed.pid]
    assert report.skipped == {spared.pid: "stand-in for PID 1"}
    assert report.remaining == []
    assert doomed.wait(timeout=5) == -signal.SIGKILL
    assert spared.poll() is None
    assert time.monotonic() - start < 25, "waited for the deadline on a process it must not touch"


def test_a_path_that_climbs_out_with_dotdot_is_refused(cgroups, executor):
    cgroups.mkdir("victim")
    proc = cgroups.sleeper("victim")
    sneaky = f"{cgroups.path}/victim/.."  # "victim*" would match the '..' component in a naive matcher
    result = executor.execute(command(executor.fs, [sneaky], inode=executor.fs.identity(cgroups.path) or 0))
    assert result.status == "no-target" and "normalised" in result.detail
    assert proc.poll() is None


def test_a_command_delivered_twice_is_carried_out_once(cgroups, executor):
    cgroups.mkdir("victim")
    first_victim = cgroups.sleeper("victim")
    cmd = command(executor.fs, [f"{cgroups.path}/victim"])
    first = executor.execute(cmd)
    assert first.status == "killed" and first_victim.wait(timeout=5) == -signal.SIGKILL
    second_victim = cgroups.sleeper("victim")  # the same cgroup (same inode) holds a new process now
    assert executor.execute(cmd) == first  # the first answer, nothing signalled again
    time.sleep(0.3)
    assert second_victim.poll() is None


def test_omit_rules_are_checked_again_in_the_actuator(cgroups):
    """A detector that ignored the action's omit rules is not obeyed: the policy's `omit` patterns and the cgroup's
    omit xattr, read by the actuator itself (as root) at the moment of the kill."""
    stand_in = subprocess.Popen(["sleep", "1000"])
    try:
        ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid)
        policy = load_policy_text(f"""
rulesets:
  - name: rs
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{cgroups.path}/victim*", omit: "{cgroups.path}/victim-kept"}}
""", "t.yaml")
        ex.apply_policy(PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default",
                                     protected_paths=["/"], daemon_pid=stand_in.pid))
        for name in ("victim-kept", "victim-marked", "victim"):
            cgroups.mkdir(name)
        kept, marked, victim = (cgroups.sleeper(n) for n in ("victim-kept", "victim-marked", "victim"))
        os.setxattr(f"/sys/fs/cgroup/memory{cgroups.path}/victim-marked", "user.oomd_omit", b"1")
        result = ex.execute(command(ex.fs, [f"{cgroups.path}/victim-kept", f"{cgroups.path}/victim-marked",
                                            f"{cgroups.path}/victim"]))
        assert result.status == "killed" and result.target == f"{cgroups.path}/victim"
        assert "victim-kept: omitted (policy 'omit')" in result.detail
        assert "victim-marked: omitted (xattr user.oomd_omit)" in result.detail
        assert victim.wait(timeout=5) == -signal.SIGKILL and kept.poll() is None and marked.poll() is None
    finally:
        stand_in.kill()
        stand_in.wait()


def test_kernel_threads_are_recognised():
    from cgroupfs.kill import is_kernel_thread

    assert is_kernel_thread(2)  # kthreadd
    assert not is_kernel_thread(1) and not is_kernel_thread(os.getpid())


def test_a_cgroup_that_keeps_coming_back_is_killed_max_kills_times_then_refused(cgroups):
    """A respawning workload: each kill succeeds until the action's max_kills within kill_window; after that the
    cgroup is passed over (the next candidate is killed instead) and the refusal says why."""
    stand_in = subprocess.Popen(["sleep", "1000"])
    try:
        ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid, kmsg_path=None)
        policy = load_policy_text(f"""
rulesets:
  - name: rs
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{cgroups.path}/victim*", max_kills: 2, kill_window: 60}}
""", "t.yaml")
        ex.apply_policy(PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default",
                                     protected_paths=["/"], daemon_pid=stand_in.pid))
        cgroups.mkdir("victim")
        cgroups.mkdir("victim-other")
        other = cgroups.sleeper("victim-other")
        paths = [f"{cgroups.path}/victim", f"{cgroups.path}/victim-other"]
        for _ in range(2):
            respawned = cgroups.sleeper("victim")
            result = ex.execute(command(ex.fs, paths))
            assert result.status == "killed" and result.target == paths[0], result.detail
            assert respawned.wait(timeout=5) == -signal.SIGKILL
        third = cgroups.sleeper("victim")
        result = ex.execute(command(ex.fs, paths))
        assert result.status == "killed" and result.target == paths[1]
        assert f"{paths[0]}: killed 2 times in the last 60s (max_kills 2): refused" in result.detail
        assert third.poll() is None and other.wait(timeout=5) == -signal.SIGKILL
    finally:
        stand_in.kill()
        stand_in.wait()
