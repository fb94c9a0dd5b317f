"""units/pyoomd.service run by a real systemd manager: active only through READY=1, status text, reload, stop.

The test's manager is a user manager (TESTBED.md) whose runtime directory, with its notify socket, lives under
/tmp; the unit is adapted only where that and this checkout require: the paths, PrivateTmp=no (so the notify
socket stays reachable) and ProtectHome=read-only (the interpreter lives under /root/.pyenv). Every other
hardening option is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.realhost import wait_for
from tests.systemd_manager import UserManager
from tests.test_supervisor import POLICY

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
NAME = "pyoomd-under-test.service"


def adapted_unit(work: Path, extra: str = "") -> str:
    unit = (REPO / "units" / "pyoomd.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    exec_reload = next(line for line in unit.splitlines() if line.startswith("ExecReload="))
    replaced = unit.replace(exec_start, f"ExecStart={REPO}/.venv/bin/pyoomd run --config {work}/policy.yaml "
                                        f"--runtime-dir {work}/run --state-dir {work}/state {extra}".rstrip())
    replaced = replaced.replace(exec_reload, f"ExecReload={REPO}/.venv/bin/pyoomd reload --state-dir {work}/state "
                                             "--pid $MAINPID")
    replaced = replaced.replace("PrivateTmp=yes", "PrivateTmp=no").replace("ProtectHome=yes", "ProtectHome=read-only")
    replaced = replaced.replace("ReadWritePaths=/sys/fs/cgroup", f"ReadWritePaths=/sys/fs/cgroup {work}")
    assert replaced.count("\n") == unit.count("\n")
    return replaced


@pytest.fixture
def service(systemd_user_manager: UserManager):
    m = systemd_user_manager
    work = Path(f"/var/lib/pyoomd-unit-test-{os.getpid()}")
    work.mkdir(parents=True)
    (work / "policy.yaml").write_text(POLICY)
    units = m.runtime_dir / "systemd" / "user"
    units.mkdir(parents=True, exist_ok=True)
    (units / NAME).write_text(adapted_unit(work))
    m.systemctl("daemon-reload")
    try:
        yield m, work
    finally:
        m.systemctl("stop", NAME, check=False)
        (units / NAME).unlink(missing_ok=True)
        m.systemctl("daemon-reload", check=False)
        shutil.rmtree(work, ignore_errors=True)


def test_the_manager_sees_it_ready_reloading_and_stopped(service):
    m, work = service
    started = m.systemctl("start", NAME, check=False)  # returns only once READY=1 came (Type=notify)
    assert started.returncode == 0, started.stderr
    assert m.show(NAME, "ActiveState") == "active"
    assert "3/3 workers running" in m.show(NAME, "StatusText")
    main_pid = int(m.show(NAME, "MainPID"))
    assert main_pid > 0

    (work / "policy.yaml").write_text(POLICY.replace("threshold: 99", "threshold: 98"))
    reloaded = m.systemctl("reload", NAME, check=False)  # returns once `pyoomd reload` has the outcome
    assert reloaded.returncode == 0, reloaded.stderr
    assert "policy generation 2" in m.show(NAME, "StatusText")

    (work / "policy.yaml").write_text(POLICY.replace("threshold: 99", "threshold: lots"))
    refused = m.systemctl("reload", NAME, check=False)
    assert refused.returncode != 0  # systemctl reload fails on a refused policy ...
    assert "reload failed, generation 2 still in force" in m.show(NAME, "StatusText")
    assert "policy.yaml:" in m.show(NAME, "StatusText")
    assert m.show(NAME, "ActiveState") == "active"  # ... and the old policy runs on
    assert int(m.show(NAME, "MainPID")) == main_pid

    assert m.systemctl("stop", NAME, check=False).returncode == 0
    assert m.show(NAME, "ActiveState") == "inactive"
    cgroup = m.cgroup_dir("systemd", m.unit_cgroup(NAME))
    wait_for(lambda: not cgroup.exists() or not (cgroup / "cgroup.procs").read_text().strip(), 10, "no process left")
