"""Drop-in policy files added, changed and removed while a real daemon runs (--drop-in-dir)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.daemon import Daemon
from tests.realhost import CgroupSandbox, wait_for
from tests.test_e2e_kill import start_workloads

pytestmark = pytest.mark.real


def base_policy(parent: str) -> str:
    return f"""
version: 1
interval: 0.5
rulesets:
  - name: thrash
    drop_in: {{actions: true, disable_on_drop_in: true}}
    post_action_delay: 30
    detectors:
      - name: parent under memory pressure
        all:
          - pressure_above: {{cgroup: "{parent}", resource: memory, threshold: 5, duration: 1}}
    actions:
      - continue: {{}}
"""


def drop_in(parent: str) -> str:
    return f"""
rulesets:
  - name: thrash
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*"}}
"""


def test_a_drop_in_added_at_run_time_takes_effect_and_a_broken_one_is_refused(cgroups: CgroupSandbox, tmp_path):
    dropins = tmp_path / "drop-ins"
    dropins.mkdir()
    daemon = Daemon(tmp_path, base_policy(cgroups.path), "--drop-in-dir", str(dropins)).start()
    try:
        daemon.wait_log(r"watching .*drop-ins for drop-in policy files \(0 apply now\)")
        thrasher, sleeper = start_workloads(cgroups)
        # A broken file is refused with its position, and changes nothing.
        (dropins / "broken.yaml").write_text("rulesets:\n  - name: thrash\n    actions: [{kill_by_nothing: {}}]\n")
        daemon.wait_log(r"drop-in refused: .*broken.yaml:3:\d+: kill_by_nothing: unknown action plugin")
        # Written under a dot-name and renamed into place: never read half-written.
        staged = dropins / ".kill.yaml.tmp"
        staged.write_text(drop_in(cgroups.path))
        os.rename(staged, dropins / "kill.yaml")
        daemon.wait_log(r"drop-ins in .* changed; policy generation \d+: .*drop-ins: .*kill.yaml")
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        record = wait_for(daemon.actions, 10, "the kill record")[0]
        assert record["ruleset"].startswith("thrash [drop-in ") and record["ruleset"].endswith("kill.yaml]")
        assert sleeper.poll() is None
        (dropins / "kill.yaml").unlink()
        daemon.wait_log(r"drop-ins in .* changed; policy generation \d+: .*drop-ins: none")
    finally:
        assert daemon.stop() == 0
