"""Which policy files a root daemon reads, the last good policy a broken start falls back to, and the warning when
another OOM daemon runs beside pyoomd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from supervisor.peers import other_oom_daemons
from supervisor.policyfiles import PolicySource, untrusted
from tests.daemon import Daemon
from tests.realhost import require_real_host, wait_for
from tests.test_supervisor import POLICY


def test_only_root_owned_files_nobody_else_can_write_are_trusted(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    policy.chmod(0o644)
    assert untrusted(policy) is None
    policy.chmod(0o664)
    assert untrusted(policy) == "writable by its group (mode 664)"
    policy.chmod(0o646)
    assert untrusted(policy) == "writable by others (mode 646)"
    policy.chmod(0o644)
    os.chown(policy, 65534, -1)
    assert untrusted(policy) == "owned by uid 65534, not root"
    os.chown(policy, 0, -1)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    shutil.copy(policy, open_dir / "p.yaml")
    open_dir.chmod(0o777)
    assert untrusted(open_dir / "p.yaml") == f"its directory {open_dir} is writable by others (mode 777)"
    open_dir.chmod(0o1777)  # sticky, as /tmp: nobody can replace root's file
    assert untrusted(open_dir / "p.yaml") is None
    (tmp_path / "link.yaml").symlink_to(open_dir / "p.yaml")
    open_dir.chmod(0o777)
    assert "is writable by others" in untrusted(tmp_path / "link.yaml")  # the file a link leads to is judged


@pytest.mark.real
def test_a_root_daemon_refuses_a_policy_others_may_write_and_a_drop_in_too(tmp_path):
    require_real_host()
    daemon = Daemon(tmp_path, POLICY)
    daemon.config.chmod(0o666)
    daemon.start()
    assert daemon.proc.wait(timeout=30) == 1
    assert f"cannot start: {daemon.config}:1:1: refused: writable by others (mode 666)" in daemon.log

    (tmp_path / "second").mkdir()
    daemon = Daemon(tmp_path / "second", POLICY)
    drop_ins = tmp_path / "second" / "drop-in.d"
    drop_ins.mkdir()
    (drop_ins / "x.yaml").write_text("rulesets: []\n")
    (drop_ins / "x.yaml").chmod(0o646)
    daemon.argv += ["--drop-in-dir", str(drop_ins)]
    daemon.start()
    try:
        daemon.wait_log(rf"drop-in refused: {drop_ins}/x.yaml:1:1: refused: writable by others")
        daemon.wait_log("first snapshot evaluated")
    finally:
        assert daemon.stop() == 0


@pytest.mark.real
def test_a_broken_policy_at_start_runs_the_last_one_that_loaded(tmp_path):
    require_real_host()
    daemon = Daemon(tmp_path, POLICY).start()
    daemon.wait_log("first snapshot evaluated")
    assert daemon.stop() == 0
    daemon.config.write_text(POLICY.replace("threshold: 99", "threshold: lots"))
    daemon.start()
    try:
        daemon.wait_log("first snapshot evaluated")
        log = daemon.log
        assert "policy refused: " in log and "expected a number, got 'lots'" in log
        assert f"running the last policy that loaded instead ({daemon.state_dir}/last-good-policy.yaml, from " \
               f"{daemon.config}" in log
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
    (daemon.state_dir / "last-good-policy.yaml").unlink()
    daemon.start()
    assert daemon.proc.wait(timeout=30) == 1  # nothing to fall back on: it says why and stops
    assert "cannot start: " in daemon.log


def test_the_last_good_copy_keeps_the_format(tmp_path):
    oomd = tmp_path / "oomd.json"
    oomd.write_text((Path(__file__).parent / "fixtures" / "oomd" / "desktop.json").read_text())
    state = tmp_path / "state"
    loaded = PolicySource(oomd, state).load()
    kept = PolicySource(oomd, state).last_good()
    assert kept is not None and kept.copy.name == "last-good-policy.json"
    assert msgspec.structs.replace(kept.policy, source=loaded.source) == loaded  # read back as oomd JSON


@pytest.mark.real
def test_another_oom_daemon_is_noticed(tmp_path):
    """A stand-in named as earlyoom's executable: what pyoomd looks at is the process name, as /proc shows it."""
    require_real_host()
    stand_in = tmp_path / "earlyoom"
    shutil.copy("/bin/sleep", stand_in)
    proc = subprocess.Popen([str(stand_in), "60"])
    try:
        wait_for(lambda: (proc.pid, "earlyoom") in other_oom_daemons(), 10, "the stand-in among the OOM daemons")
        daemon = Daemon(tmp_path, POLICY).start()
        try:
            daemon.wait_log(rf"another OOM daemon runs: earlyoom \(PID {proc.pid}\)")
        finally:
            assert daemon.stop() == 0
    finally:
        proc.kill()
        proc.wait()
