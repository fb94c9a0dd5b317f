"""Prekill and postkill hooks: run with the victim in their environment, a prekill hook never holding the kill
up beyond its timeout, each hook's OOM score reset, and only executables root owns and nobody else can write."""

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
from policy.loader import PolicyInvalid, load_policy_text
from supervisor.policyfiles import PolicySource
from workers.actuator import CommandExecutor

HOOK = """#!/bin/sh
env | grep '^PYOOMD_' | sort > "$0.env"
cat /proc/self/oom_score_adj > "$0.oom"
[ -n "$PYOOMD_RESULT" ] || sleep 60
"""


def hook(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_text(HOOK)
    path.chmod(0o755)
    return path


def policy_text(parent: str, pre: Path, post: Path, timeout: str = "1s") -> str:
    return f"""
rulesets:
  - name: rs
    prekill_hook_timeout: {timeout}
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*", prekill_hook: "{pre} --before", postkill_hook: "{post}"}}
"""


@pytest.mark.real
def test_hooks_run_around_a_real_kill_and_a_slow_prekill_hook_never_holds_it_up(cgroups, tmp_path):
    pre, post = hook(tmp_path, "pre"), hook(tmp_path, "post")
    stand_in = subprocess.Popen(["sleep", "1000"])
    try:
        ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid, kmsg_path=None)
        policy = load_policy_text(policy_text(cgroups.path, pre, post), "t.yaml")
        ex.apply_policy(PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default",
                                     protected_paths=["/"], daemon_pid=stand_in.pid))
        from policy.engine import Engine

        cgroups.mkdir("victim")
        victim = cgroups.sleeper("victim")
        cmd = KillCommand(id=uuid.uuid4().hex, generation=1, ruleset="rs", group="g",
                          plugin="kill_by_memory_size_or_growth", snapshot_time=time.time(),
                          not_after=time.monotonic() + 5,
                          candidates=[Candidate(path=f"{cgroups.path}/victim",
                                                inode=ex.fs.identity(f"{cgroups.path}/victim") or 0, usage=None,
                                                why="test")],
                          mechanism="direct", signal=int(signal.SIGKILL), reason="the test's reason", dry_run=False,
                          dry_run_source="default", kill_timeout=5.0,
                          **Engine(policy, 1, False, "default", frozenset()).instances["rs"].actions[0]
                          .hook_options())
        assert cmd.prekill_hook == [str(pre), "--before"] and cmd.prekill_timeout == 1.0
        started = time.monotonic()
        result = ex.execute(cmd)
        assert result.status == "killed" and victim.wait(timeout=5) == -signal.SIGKILL
        assert time.monotonic() - started < 20  # bounded by the 1 s timeout (a generous bound, not a speed)
        assert "prekill hook still running after 1s: the kill went ahead" in result.detail
        assert "postkill hook started" in result.detail
        env = dict(line.split("=", 1) for line in Path(f"{pre}.env").read_text().splitlines())
        assert env["PYOOMD_CGROUP"] == f"{cgroups.path}/victim" and env["PYOOMD_PIDS"] == str(victim.pid)
        assert env["PYOOMD_RULESET"] == "rs" and env["PYOOMD_REASON"] == "the test's reason"
        for _ in range(100):
            if Path(f"{post}.env").exists():
                break
            time.sleep(0.05)
        post_env = dict(line.split("=", 1) for line in Path(f"{post}.env").read_text().splitlines())
        assert post_env["PYOOMD_RESULT"] == "killed"
        for proc in ex.hooks.running:  # the prekill hook still sleeps: our own child, by PID
            proc.kill()
            proc.wait()
    finally:
        stand_in.kill()
        stand_in.wait()


def test_a_hook_does_not_inherit_the_daemons_oom_score(tmp_path):
    """Run in a process of its own whose score is raised, as the daemon's is set apart (-1000 where allowed)."""
    script = tmp_path / "score"
    script.write_text('#!/bin/sh\ncat /proc/self/oom_score_adj > "$0.oom"\nsleep 2\n')  # ends by itself
    script.chmod(0o755)
    code = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
open("/proc/self/oom_score_adj", "w").write("300")
from ipc.messages import KillCommand
from workers.hooks import Hooks
cmd = KillCommand(id="x", generation=1, ruleset="r", group="g", plugin="p", snapshot_time=0, not_after=0,
                  candidates=[], mechanism="direct", signal=9, reason="", dry_run=False, dry_run_source="",
                  kill_timeout=1, prekill_hook=[{str(script)!r}], prekill_timeout=0.5)
print(Hooks().prekill(cmd, "/x", [1]))
"""
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         timeout=30)
    assert "prekill hook still running" in out.stdout
    for _ in range(100):
        if Path(f"{script}.oom").exists():
            break
        time.sleep(0.05)
    assert Path(f"{script}.oom").read_text().strip() == "0"


def test_hooks_must_be_roots_alone_and_named_by_absolute_path(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the check applies to a root daemon")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    bad = hook(open_dir, "hook")
    text = policy_text("/p", bad, hook(tmp_path, "post"))
    (tmp_path / "policy.yaml").write_text(text)
    with pytest.raises(PolicyInvalid) as e:
        PolicySource(tmp_path / "policy.yaml", tmp_path / "state").load()
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "prekill_hook:" in ln)
    (err,) = e.value.errors
    assert (err.line, err.message.split(": refused")[0]) == (line, "kill_by_memory_size_or_growth: argument "
                                                                   "'prekill_hook'")
    assert f"{bad} is its directory {open_dir} is writable by others" in err.message
    with pytest.raises(PolicyInvalid, match="give the command's absolute path, not 'notify-send'"):
        load_policy_text(policy_text("/p", Path("notify-send"), Path("/bin/true")), "t.yaml")
