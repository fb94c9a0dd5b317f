"""A third-party plugin package (examples/plugins), installed beside pyoomd, used by a real daemon."""

from __future__ import annotations

import signal
from importlib.metadata import entry_points

import pytest

from policy.plugins.registry import lookup
from tests.daemon import Daemon
from tests.realhost import CgroupSandbox, wait_for
from tests.test_e2e_kill import start_workloads


def test_the_example_package_registers_through_its_entry_point():
    names = [ep.name for ep in entry_points(group="pyoomd.detectors")]
    assert "memory_pressure_threshold" in names, "run `make test` (it installs examples/plugins)"
    cls = lookup("memory_pressure_threshold", "detector")
    assert cls.__module__ == "pyoomd_example_plugins.pressure"
    assert [a.name for a in cls.args] == ["cgroup", "ruleset_cgroup", "threshold", "duration", "window"]


@pytest.mark.real
def test_a_daemon_kills_with_the_third_party_detector(cgroups: CgroupSandbox, tmp_path):
    policy = f"""
interval: 0.5
rulesets:
  - name: third party
    detectors:
      - name: example plugin says so
        all:
          - memory_pressure_threshold: {{cgroup: "{cgroups.path}", threshold: 5, window: 10s, duration: 1s}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{cgroups.path}/*"}}
"""
    thrasher, sleeper = start_workloads(cgroups)
    daemon = Daemon(tmp_path, policy).start()
    try:
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        record = wait_for(daemon.actions, 10, "the kill record")[0]
        assert record["group"] == "example plugin says so"
        assert record["target"] == f"{cgroups.path}/thrasher"
        assert sleeper.poll() is None
    finally:
        assert daemon.stop() == 0
