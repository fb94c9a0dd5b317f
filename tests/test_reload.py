"""SIGHUP reload as an operator uses it (systemctl reload): a broken policy changes nothing, a good one takes
effect, and the actuator holds a new policy before the detector can decide under it."""

from __future__ import annotations

import re
import signal

import pytest

from tests.daemon import Daemon
from tests.test_e2e_kill import policy_for, start_workloads

pytestmark = pytest.mark.real

IDLE = policy_for("pyoomd-test-nothing-here")


def test_broken_policy_keeps_the_running_one_and_good_one_takes_effect(cgroups, tmp_path):
    daemon = Daemon(tmp_path, IDLE).start()
    try:
        daemon.wait_log(r"first snapshot evaluated")
        thrasher, sleeper = start_workloads(cgroups)

        broken = policy_for(cgroups.path).replace("threshold: 5,", "threshold: high,")
        daemon.config.write_text(broken)
        line_no, line = next((i, ln) for i, ln in enumerate(broken.splitlines(), 1) if "high" in ln)
        daemon.proc.send_signal(signal.SIGHUP)
        m = daemon.wait_log(r"reload failed, keeping policy generation 1: (.*)$")
        assert m.group(1).startswith(f"{daemon.config}:{line_no}:{line.index('high') + 1}:")
        assert "argument 'threshold': expected a number, got 'high'" in m.group(1)
        assert "generation 2" not in daemon.log
        assert thrasher.poll() is None

        # Half-written: an editor saved the first part of the file when the reload came.
        good = policy_for(cgroups.path)
        daemon.config.write_text(good[: good.index("    actions:")] + "    actions:\n      - kill_by_mem")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log(r"reload failed, keeping policy generation 1: .*policy.yaml:11:9: each action is a mapping")
        assert thrasher.poll() is None

        daemon.config.write_text(good)
        daemon.proc.send_signal(signal.SIGHUP)
        m = daemon.wait_log(r"loaded as generation 2: (.*)$")
        assert m.group(1) == "removed 'test thrash'; added 'test thrash'" or "modified 'test thrash'" in m.group(1)
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        assert sleeper.poll() is None
        log = daemon.log
        order = [m.group(1) for m in re.finditer(r"pyoomd\[(\w+):\d+\] INFO applied policy generation 2", log)]
        assert order == ["actuator", "detector", "collector"], order
    finally:
        assert daemon.stop() == 0


def test_each_reload_says_what_changed():
    from policy.loader import load_policy_text
    from supervisor.arbiter import describe_changes

    base = load_policy_text(policy_for("a"), "p.yaml")
    same = load_policy_text(policy_for("a"), "p.yaml")
    edited = load_policy_text(policy_for("a", threshold=50), "p.yaml")
    renamed = load_policy_text(policy_for("a").replace("name: test thrash", "name: other"), "p.yaml")
    faster = load_policy_text(policy_for("a").replace("interval: 0.5", "interval: 0.25"), "p.yaml")
    assert describe_changes(base, same) == "no change"
    assert describe_changes(base, edited) == "modified 'test thrash'"
    assert describe_changes(base, renamed) == "added 'other'; removed 'test thrash'"
    assert describe_changes(base, faster) == "interval 0.5 -> 0.25"
