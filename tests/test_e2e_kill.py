"""End to end, as a user runs it: a real page-cache thrasher under a 64 MiB v1 limit beside an idle sleeper,
in real cgroups of this hybrid host, and `pyoomd run` with a policy on their parent."""

from __future__ import annotations

import os
import signal

import pytest

from tests.daemon import Daemon
from tests.realhost import CgroupSandbox, wait_for

pytestmark = pytest.mark.real


def policy_for(parent: str, threshold: float = 5, duration: float = 1) -> str:
    return f"""
interval: 0.5
rulesets:
  - name: test thrash
    post_action_delay: 30
    detectors:
      - name: parent under memory pressure
        all:
          - pressure_above: {{cgroup: "{parent}", resource: memory, threshold: {threshold}, duration: {duration}}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*"}}
"""


def start_workloads(cg: CgroupSandbox):
    cg.mkdir("thrasher", memory_limit=64 << 20)
    cg.mkdir("sleeper")
    return cg.thrasher("thrasher"), cg.sleeper("sleeper")


def test_thrasher_is_killed_and_sleeper_is_not(cgroups: CgroupSandbox, tmp_path):
    thrasher, sleeper = start_workloads(cgroups)
    daemon = Daemon(tmp_path, policy_for(cgroups.path)).start()
    try:
        daemon.wait_log(r"cgroup layout hybrid")
        thrasher.wait(timeout=90)  # pyoomd must end it: it never ends by itself
        assert thrasher.returncode == -signal.SIGKILL
        records = wait_for(daemon.actions, 10, "a record in actions.jsonl")
        kill = records[0]
        assert kill["target"] == f"{cgroups.path}/thrasher"
        assert kill["result"] == "killed"
        assert kill["dry_run"] is False
        assert thrasher.pid in kill["pids"]
        assert kill["signal"] == "SIGKILL"
        assert kill["mechanism"] == "cgroup.kill"  # this hybrid host: the verified cgroup2 twin has cgroup.kill
        assert kill["emptied"] is True
        assert kill["ruleset"] == "test thrash"
        assert kill["group"] == "parent under memory pressure"
        assert sleeper.poll() is None, "the sleeper was touched"
        assert all(sleeper.pid not in r["pids"] for r in daemon.actions())
        daemon.wait_log(r"action: ruleset 'test thrash'.*kill target=" + cgroups.path + "/thrasher")
    finally:
        assert daemon.stop() == 0
    assert sleeper.poll() is None


def test_dry_run_kills_nothing_and_says_so(cgroups: CgroupSandbox, tmp_path):
    thrasher, sleeper = start_workloads(cgroups)
    daemon = Daemon(tmp_path, policy_for(cgroups.path), "--dry-run").start()
    try:
        daemon.wait_log(r"dry-run on \(command line\)")
        records = wait_for(daemon.actions, 90, "a dry-run record in actions.jsonl")
        rec = records[0]
        assert rec["dry_run"] is True
        assert rec["dry_run_source"] == "command line"
        assert rec["result"] == "dry-run"
        assert rec["target"] == f"{cgroups.path}/thrasher"
        assert thrasher.pid in rec["pids"]
        assert thrasher.poll() is None and sleeper.poll() is None
    finally:
        assert daemon.stop() == 0
    assert thrasher.poll() is None, "dry-run killed the thrasher"


@pytest.mark.parametrize("victim", ["detector", "collector", "actuator"])
def test_worker_killed_is_restarted_and_daemon_still_kills(cgroups: CgroupSandbox, tmp_path, victim):
    daemon = Daemon(tmp_path, policy_for(cgroups.path)).start()
    try:
        daemon.wait_log(r"worker collector \(pid \d+\): STARTING -> RUNNING")
        daemon.wait_log(r"first snapshot evaluated")
        old = daemon.worker_pids()[victim]
        os.kill(old, signal.SIGKILL)  # our own child, by PID
        daemon.wait_log(rf"worker {victim} \(pid {old}\): RUNNING -> BACKOFF: pid {old} killed by SIGKILL")
        m = daemon.wait_log(rf"worker {victim} \(pid (?!{old}\))(\d+)\): BACKOFF -> STARTING")
        daemon.wait_log(rf"worker {victim} \(pid {m.group(1)}\): STARTING -> RUNNING")
        if victim == "detector":
            daemon.wait_log(r"detector replaced: snapshot socket renewed")
        thrasher, sleeper = start_workloads(cgroups)
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        assert sleeper.poll() is None
        assert wait_for(daemon.actions, 10, "the kill record")[0]["target"] == f"{cgroups.path}/thrasher"
    finally:
        assert daemon.stop() == 0
