"""units/pyoomd.service as systemd judges it: no warning from `systemd-analyze verify`, and an exposure score
of 4.0 or lower from `systemd-analyze security --offline=yes` (oomd.service scores 9.6, earlyoom 8.4)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "units" / "pyoomd.service"


def installed_copy(tmp_path: Path) -> Path:
    """The unit as `make install` lays it out, pointing at this checkout's pyoomd (verify checks ExecStart)."""
    pyoomd = shutil.which("pyoomd") or str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "pyoomd")
    out = tmp_path / "pyoomd.service"
    out.write_text(UNIT.read_text().replace("/opt/pyoomd/bin/pyoomd", pyoomd))
    return out


@pytest.fixture
def analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is not installed (systemd is part of this machine kind)")
        pytest.skip("systemd-analyze is not installed")
    return tool


def test_the_unit_verifies_without_a_warning(analyze, tmp_path):
    result = subprocess.run([analyze, "verify", str(installed_copy(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


@pytest.mark.parametrize("drop_in", sorted(p.name for p in (REPO / "units" / "optional").glob("*.conf")))
def test_each_optional_drop_in_verifies_without_a_warning(analyze, tmp_path, drop_in):
    unit = installed_copy(tmp_path)
    (tmp_path / "pyoomd.service.d").mkdir()
    shutil.copy(REPO / "units" / "optional" / drop_in, tmp_path / "pyoomd.service.d" / drop_in)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def test_the_unit_is_hardened(analyze, tmp_path):
    result = subprocess.run([analyze, "security", "--offline=yes", str(installed_copy(tmp_path))],
                            capture_output=True, text=True)
    m = re.search(r"Overall exposure level for pyoomd.service: (\d+\.\d+)", result.stdout)
    assert m, result.stdout[-500:]
    assert float(m.group(1)) <= 4.0


def test_the_unit_is_a_notify_service_with_a_watchdog_and_no_start_limit():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=60s", "StartLimitIntervalSec=0", "OOMScoreAdjust=-1000",
                 "LimitMEMLOCK=infinity", "Restart=always", "RuntimeDirectory=pyoomd", "StateDirectory=pyoomd"):
        assert line in text, line


def test_make_install_lays_out_venv_unit_and_config(tmp_path):
    result = subprocess.run(["make", "install", f"DESTDIR={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "opt/pyoomd/bin/pyoomd").exists()
    assert (tmp_path / "etc/systemd/system/pyoomd.service").read_text() == UNIT.read_text()
    bus_policy = tmp_path / "usr/share/dbus-1/system.d/io.github.pyoomd1.conf"
    assert bus_policy.read_text() == (REPO / "units" / "io.github.pyoomd1.conf").read_text()
    assert (tmp_path / "etc/pyoomd/config.yaml").exists() and (tmp_path / "etc/pyoomd/drop-in.d").is_dir()
    check = subprocess.run([str(tmp_path / "opt/pyoomd/bin/pyoomd"), "check", str(tmp_path / "etc/pyoomd/config.yaml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("version, expected", [("252", False), ("253", True), ("257", True), ("", False)])
def test_the_notify_reload_drop_in_is_installed_only_on_systemd_253_or_newer(tmp_path, version, expected):
    result = subprocess.run(["make", "--no-print-directory", "install-units", f"DESTDIR={tmp_path}",
                             f"SYSTEMD_VERSION={version}"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    drop_in = tmp_path / "etc/systemd/system/pyoomd.service.d/notify-reload.conf"
    assert drop_in.exists() is expected
    if expected:
        lines = [ln for ln in drop_in.read_text().splitlines() if ln and not ln.startswith("#")]
        # ExecReload= reset: systemd sends the SIGHUP itself, and a second one from pyoomd reload would double it.
        assert lines == ["[Service]", "Type=notify-reload", "ExecReload="]


def test_make_reads_the_version_of_this_hosts_systemd():
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        pytest.skip("no systemctl here")
    first = subprocess.run([systemctl, "--version"], capture_output=True, text=True).stdout.split()[1]
    shown = subprocess.run(["make", "--no-print-directory", "-s", "-f", "-", "show"], cwd=REPO, text=True,
                           capture_output=True, input="include Makefile\nshow:\n\t@echo $(SYSTEMD_VERSION)\n").stdout
    assert shown.strip() == str(int(first.split("~")[0].split(".")[0]))


def test_the_watchdog_outlasts_the_supervisors_own_repair_of_a_hung_worker():
    """Pings stop while a worker hangs and resume once it is replaced; systemd must not restart the whole service
    meanwhile. The longest gap: the half-interval ping that a stale heartbeat just missed, the time to call a worker
    hung, the longest backoff before a crash loop turns fatal, and a generous start for the new worker."""
    from ipc.endpoints import HEARTBEAT_TIMEOUT
    from supervisor.arbiter import WATCHDOG_STALE
    from supervisor.workers import BACKOFF_FIRST, BACKOFF_MAX, CRASHES_BEFORE_FATAL

    watchdog = float(re.search(r"^WatchdogSec=(\d+)s$", UNIT.read_text(), re.M).group(1))
    longest_backoff = min(BACKOFF_FIRST * 2 ** (CRASHES_BEFORE_FATAL - 3), BACKOFF_MAX)
    worker_start = 5.0
    gap = watchdog / 2 - WATCHDOG_STALE + HEARTBEAT_TIMEOUT + longest_backoff + worker_start
    assert gap < watchdog, f"a hung worker's repair can take {gap:g}s without a ping; WatchdogSec={watchdog:g}s"
