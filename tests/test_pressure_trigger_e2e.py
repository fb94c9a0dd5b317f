"""pressure_trigger on the real host: the kernel's PSI trigger on the thrasher's parent fires, the collector
sends a snapshot at once, and the daemon kills the thrasher."""

from __future__ import annotations

import signal

import pytest

from tests.daemon import Daemon
from tests.realhost import CgroupSandbox, wait_for
from tests.test_e2e_kill import start_workloads

pytestmark = pytest.mark.real


def test_a_kernel_trigger_event_makes_the_daemon_act(cgroups: CgroupSandbox, tmp_path):
    policy = f"""
interval: 5s   # slow ticks: the trigger's event, not the tick, brings the snapshot that decides
rulesets:
  - name: trigger
    detectors:
      - name: stalls on memory
        all:
          - pressure_trigger: {{cgroup: "{cgroups.path}", resource: memory, type: some, stall: 200ms, window: 2s}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{cgroups.path}/*"}}
"""
    daemon = Daemon(tmp_path, policy).start()
    try:
        daemon.wait_log(r"first snapshot evaluated")
        thrasher, sleeper = start_workloads(cgroups)
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        record = wait_for(daemon.actions, 10, "the kill record")[0]
        assert record["group"] == "stalls on memory"
        assert record["target"] == f"{cgroups.path}/thrasher"
        assert sleeper.poll() is None
    finally:
        assert daemon.stop() == 0
