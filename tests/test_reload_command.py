"""`pyoomd reload`, systemd's ExecReload: it signals the running daemon, waits for the outcome of that reload and
fails on a refused policy; it never signals a process that is not the daemon that wrote the state directory."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from supervisor.reloadstatus import FILE_NAME, ReloadStatus, process_start_time, write_status
from tests.daemon import REPO, Daemon
from tests.realhost import require_real_host
from tests.test_supervisor import POLICY


def pyoomd_reload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", "reload", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.real
def test_reload_waits_for_the_outcome_and_fails_on_a_broken_policy(tmp_path):
    require_real_host()
    daemon = Daemon(tmp_path, POLICY).start()
    try:
        daemon.wait_log(r"first snapshot evaluated")
        state = str(daemon.state_dir)

        daemon.config.write_text(POLICY.replace("threshold: 99", "threshold: 98"))
        done = pyoomd_reload("--state-dir", state)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "policy reloaded: generation 2 in force"
        assert "loaded as generation 2" in daemon.log  # it answered after the reload, not before

        broken = POLICY.replace("threshold: 99", "threshold: lots")
        daemon.config.write_text(broken)
        line_no, line = next((i, ln) for i, ln in enumerate(broken.splitlines(), 1) if "lots" in ln)
        refused = pyoomd_reload("--state-dir", state, "--pid", str(daemon.proc.pid))
        assert refused.returncode == 1
        first, last = refused.stderr.strip().splitlines()[0], refused.stderr.strip().splitlines()[-1]
        assert first.startswith(f"{daemon.config}:{line_no}:{line.index('lots') + 1}: ")
        assert last == "pyoomd reload: policy refused; generation 2 stays in force"
        assert daemon.proc.poll() is None

        other = pyoomd_reload("--state-dir", state, "--pid", "1")
        assert other.returncode == 2
        assert f"{FILE_NAME} was written by PID {daemon.proc.pid}, not 1" in other.stderr
    finally:
        assert daemon.stop() == 0
    gone = pyoomd_reload("--state-dir", state)
    assert gone.returncode == 2
    assert f"pyoomd (PID {daemon.proc.pid}, from" in gone.stderr and "is not running" in gone.stderr


def test_a_stale_state_file_never_gets_another_process_signalled(tmp_path):
    """A dead daemon's PID reused by an unrelated process: the start time tells them apart, nothing is signalled."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        start = process_start_time(bystander.pid)
        assert start is not None
        write_status(tmp_path, ReloadStatus(pid=bystander.pid, start_time=start - 1, sequence=0, generation=1,
                                            ok=True, errors=[], at=0.0))
        stale = pyoomd_reload("--state-dir", str(tmp_path), "--timeout", "2")
        assert stale.returncode == 2
        assert f"PID {bystander.pid} is no longer the pyoomd that wrote" in stale.stderr
        assert bystander.poll() is None  # SIGHUP would have ended it
    finally:
        bystander.kill()
        bystander.wait()


def test_no_daemon_and_a_garbled_file_are_clear_errors(tmp_path):
    missing = pyoomd_reload("--state-dir", str(tmp_path))
    assert missing.returncode == 2
    assert "does not exist: no pyoomd daemon has started with state directory" in missing.stderr
    (tmp_path / FILE_NAME).write_text('{"pid": "x"}')
    garbled = pyoomd_reload("--state-dir", str(tmp_path))
    assert garbled.returncode == 2
    assert f"{tmp_path / FILE_NAME}: Expected `int`, got `str` - at `$.pid`" in garbled.stderr


def test_the_status_file_is_exactly_what_the_client_reads(tmp_path):
    status = ReloadStatus(pid=7, start_time=8, sequence=3, generation=4, ok=False, errors=["p.yaml:1:2: bad"], at=1.5)
    write_status(tmp_path, status)
    assert msgspec.json.decode((tmp_path / FILE_NAME).read_bytes(), type=ReloadStatus) == status
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed into place
