"""units/pyoomd.service run by a real systemd manager: active only through READY=1, status text, reload, stop;
and the whole of issue 5: as a unit of the manager that runs the workloads, it kills one through KillUnit, stops
another through a stop job, spares the idle one, tells the victims' owner by desktop notification (a real dunst on
a session bus the unit sees at /run/user/0/bus), reloads, and stops feeding the watchdog while a worker hangs.

The test's manager is a user manager (TESTBED.md) whose runtime directory, with its notify socket, lives under
/tmp; the unit is adapted only where that and this checkout require: the paths, PrivateTmp=no (so the notify
socket stays reachable) and ProtectHome=read-only (the interpreter lives under /root/.pyenv). Every other
hardening option is kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from supervisor.arbiter import WATCHDOG_STALE
from tests.daemon import Daemon
from tests.desktop_session import desktop_session
from tests.realhost import THRASHER, wait_for
from tests.systemd_manager import UserManager
from tests.test_supervisor import POLICY

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
NAME = "pyoomd-under-test.service"


def adapted_unit(work: Path, extra: str = "", run_user: Path | None = None) -> str:
    unit = (REPO / "units" / "pyoomd.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    exec_reload = next(line for line in unit.splitlines() if line.startswith("ExecReload="))
    replaced = unit.replace(exec_start, f"ExecStart={REPO}/.venv/bin/pyoomd run --config {work}/policy.yaml "
                                        f"--runtime-dir {work}/run --state-dir {work}/state {extra}".rstrip()
                                        + (" $PYOOMD_OPTIONS" if "$PYOOMD_OPTIONS" in exec_start else ""))
    replaced = replaced.replace(exec_reload, f"ExecReload={REPO}/.venv/bin/pyoomd reload --state-dir {work}/state "
                                             "--pid $MAINPID")
    replaced = replaced.replace("PrivateTmp=yes", "PrivateTmp=no").replace("ProtectHome=tmpfs", "ProtectHome=read-only")
    replaced = replaced.replace("ReadWritePaths=/sys/fs/cgroup", f"ReadWritePaths=/sys/fs/cgroup {work}")
    if run_user is not None:  # a desktop session of the test's, shown to the unit as /run/user
        replaced = replaced.replace("BindReadOnlyPaths=-/run/user", f"BindReadOnlyPaths=-{run_user}:/run/user")
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
    # No journal under the test's manager: pyoomd's log goes to a file, and into the report of a failed test.
    (units / f"{NAME}.d").mkdir(exist_ok=True)
    (units / f"{NAME}.d" / "log.conf").write_text(f"[Service]\nStandardOutput=append:{work}/log\n"
                                                   f"StandardError=append:{work}/log\n")
    m.systemctl("daemon-reload")
    try:
        yield m, work
    finally:
        m.systemctl("stop", NAME, check=False)
        log = work / "log"
        if log.exists():
            print(f"---- {log}\n{log.read_text(errors='replace')[-20000:]}")
        shutil.rmtree(units / f"{NAME}.d", ignore_errors=True)
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


# ---- the whole of it: pyoomd as a unit of the manager that also runs the workloads -------------------------------

SLICE = "pyoomdtest"  # no dash: systemd reads dashes in slice names as nesting


def scenario_policy(m: UserManager, kill_unit: str, stop_unit: str, notify: bool = False) -> str:
    base = f"{m.cgroup}/{SLICE}.slice"
    also = ", notify: true" if notify else ""
    return f"""
interval: 0.5
rulesets:
  - name: kill through systemd
    post_action_delay: 600
    detectors:
      - name: the killable thrasher under pressure
        all:
          - pressure_above: {{cgroup: "{base}/{kill_unit}", resource: memory, threshold: 5, duration: 1}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{base}/pyoomd-a-*", via: systemd{also}}}
  - name: stop through systemd
    post_action_delay: 600
    detectors:
      - name: the stoppable thrasher under pressure
        all:
          - pressure_above: {{cgroup: "{base}/{stop_unit}", resource: memory, threshold: 5, duration: 1}}
    actions:
      - stop_unit: {{cgroup: "{base}/pyoomd-b-*"{also}}}
"""


@pytest.fixture
def workloads(systemd_user_manager: UserManager):
    """Two page-cache thrashers and an idle sleeper, each a transient unit with MemoryMax=64M in the test slice.
    ExecStopPost writes down systemd's own verdict ($SERVICE_RESULT, the unit's Result), which outlives the unit
    (a stopped transient unit is unloaded at once, and `show` would then give defaults)."""
    m = systemd_user_manager
    verdicts = Path(f"/tmp/{m.name}-verdicts-{os.getpid()}")
    verdicts.mkdir()
    # A script, not a `sh -c` line: systemd-run passes `$` on to the unit differently from one command to another.
    record = verdicts / "record"
    record.write_text('#!/bin/sh\necho "$SERVICE_RESULT $EXIT_STATUS" > "$1"\n')
    record.chmod(0o755)
    data: list[Path] = []

    def start(tag: str, argv: list[str]) -> str:
        props = {"MemoryMax": "64M", "ExecStopPost": f"{record} {verdicts}/{tag}"}
        unit = m.run_unit(argv, tag=tag, properties=props, slice_=SLICE)
        path = f"{m.cgroup}/{SLICE}.slice/{unit}"
        wait_for(lambda: all(m.pids_in(path, h) for h in ("systemd", "memory", "unified")), 10, f"{unit} running")
        return unit

    def thrasher(tag: str) -> str:
        data.append(Path(f"/tmp/{m.name}-{tag}-{os.getpid()}.dat"))
        return start(tag, [sys.executable, "-c", THRASHER, str(data[-1])])

    units = {"a": thrasher("a-thrash"), "b": thrasher("b-thrash"), "idle": start("a-idle", ["sleep", "1000"])}
    try:
        yield m, units, verdicts
    finally:
        for unit in units.values():
            m.stop_unit(unit)
        for f in data:
            f.unlink(missing_ok=True)
        shutil.rmtree(verdicts, ignore_errors=True)


def watchdog_pings(m: UserManager) -> int:
    """When systemd last heard WATCHDOG=1 from the unit (monotonic µs)."""
    return int(m.show(NAME, "WatchdogTimestampMonotonic") or 0)


@pytest.fixture
def root_desktop():
    """A desktop session of root's, whose session bus the unit sees at /run/user/0/bus: the manager's units,
    the thrashers among them, are root's."""
    with desktop_session(0) as session:
        yield session


def test_as_a_unit_it_kills_one_unit_stops_another_spares_the_idle_one_and_reloads(service, workloads,
                                                                                    root_desktop):
    m, work = service
    _, units, verdicts = workloads
    (work / "policy.yaml").write_text(scenario_policy(m, units["a"], units["b"], notify=True))
    units_dir = m.runtime_dir / "systemd" / "user"
    (units_dir / NAME).write_text(adapted_unit(work, "--systemd-bus session", run_user=root_desktop.run_user))
    # The shipped textfile drop-in, pointed at the test's directory: its PYOOMD_OPTIONS reach ExecStart.
    textfiles = work / "node-exporter"
    (units_dir / f"{NAME}.d" / "metrics-textfile.conf").write_text(
        (REPO / "units" / "optional" / "metrics-textfile.conf").read_text()
        .replace("/var/lib/prometheus/node-exporter", str(textfiles)))
    m.systemctl("daemon-reload")
    started = m.systemctl("start", NAME, check=False)
    assert started.returncode == 0, started.stderr
    assert m.show(NAME, "ActiveState") == "active"

    records = wait_for(lambda: [r for r in actions(work) if r["result"] == "killed"] if
                       len([r for r in actions(work) if r["result"] == "killed"]) >= 2 else None,
                       120, "a kill and a stop in actions.jsonl")
    by_unit = {r["unit"]: r for r in records}
    killed, stopped = by_unit[units["a"]], by_unit[units["b"]]
    assert (killed["ruleset"], killed["mechanism"], killed["emptied"]) == ("kill through systemd",
                                                                          "systemd KillUnit", True)
    assert killed["target"].endswith("/" + units["a"])
    assert "KillUnit SIGKILL" in killed["detail"]
    assert (stopped["ruleset"], stopped["plugin"], stopped["emptied"]) == ("stop through systemd", "stop_unit", True)
    assert stopped["mechanism"] == "systemd StopUnit"  # the stop job ended it: no direct kill after it
    assert re.search(r"StopUnit job \d+ done", stopped["detail"])
    # systemd's own verdicts tell the two apart: a kill is a failure by signal, a stop a clean end.
    assert m.show(units["a"], "Result") == "signal"
    wait_for(lambda: (verdicts / "b-thrash").exists(), 10, "the stopped unit's ExecStopPost")
    assert (verdicts / "a-thrash").read_text().split() == ["signal", "KILL"]
    assert (verdicts / "b-thrash").read_text().split() == ["success", "TERM"]
    assert m.show(units["idle"], "ActiveState") == "active"
    assert all(units["idle"] not in (r["unit"], r["target"]) for r in actions(work))
    # Each victim's owner was told, on their session bus, from inside the hardened unit.
    assert all("desktop notification to uid 0" in r["detail"] for r in (killed, stopped))
    wait_for(lambda: (work / "log").read_text().count("desktop notification to uid 0: sent over") >= 2, 30,
             "both notifications sent")
    summaries = {n["summary"] for n in root_desktop.notifications()}
    assert summaries == {f"pyoomd killed {units['a']} to relieve memory pressure",
                         f"pyoomd stopped {units['b']} to relieve memory pressure"}
    # The metrics, where node_exporter's own user can read them, with both ends counted.
    textfile = textfiles / "pyoomd.prom"
    wait_for(lambda: textfile.exists() and len(re.findall(r'pyoomd_actions_total\{[^}]*result="killed"[^}]*\} 1\.0',
                                                          textfile.read_text())) == 2, 40,
             "both kills in the metrics textfile")
    assert textfile.stat().st_mode & 0o777 == 0o644
    status = m.show(NAME, "StatusText")
    assert status.startswith("hybrid, 2 rulesets, policy generation 1, 3/3 workers running; last action ")
    assert "stop_unit" in status or "kill_by_memory_size_or_growth" in status

    # A policy edit, applied with systemctl reload; a broken one fails the reload and changes nothing.
    (work / "policy.yaml").write_text(scenario_policy(m, units["a"], units["b"]).replace("duration: 1", "duration: 2"))
    assert m.systemctl("reload", NAME, check=False).returncode == 0
    assert "policy generation 2" in m.show(NAME, "StatusText")
    (work / "policy.yaml").write_text("rulesets: [")
    assert m.systemctl("reload", NAME, check=False).returncode != 0
    assert m.show(NAME, "ActiveState") == "active"
    assert "reload failed, generation 2 still in force" in m.show(NAME, "StatusText")

    # A hung detector loop: the watchdog pings stop (systemd's own record of them stands still) until the
    # supervisor has replaced the detector, then they come again.
    main_pid = int(m.show(NAME, "MainPID"))
    detector = next(c for c in psutil.Process(main_pid).children() if "workers.detector" in " ".join(c.cmdline()))
    wait_for(lambda: watchdog_pings(m), 30, "a first watchdog ping")
    detector.suspend()  # SIGSTOP to a process of our own manager's unit, by PID
    time.sleep(WATCHDOG_STALE + 0.5)  # its last heartbeat is stale now
    hung_since = watchdog_pings(m)
    readings = []  # pings read while the detector was certainly still hung (stopped, not yet killed)
    while True:
        reading = watchdog_pings(m)
        try:
            if detector.status() != psutil.STATUS_STOPPED:
                break
        except psutil.NoSuchProcess:
            break
        readings.append(reading)
        time.sleep(0.2)
    # The hang lasted until the supervisor killed the detector (HEARTBEAT_TIMEOUT): longer than the 15 s between
    # pings, so a ping fed while hung would show here.
    assert readings and set(readings) == {hung_since}, "the watchdog was fed while the detector hung"
    wait_for(lambda: watchdog_pings(m) > hung_since, 30, "pings after the replacement")
    assert not psutil.pid_exists(detector.pid) or detector.status() == psutil.STATUS_ZOMBIE
    assert m.show(NAME, "ActiveState") == "active" and int(m.show(NAME, "MainPID")) == main_pid


def test_without_a_manager_on_the_bus_the_same_policy_kills_directly_and_says_so(workloads, tmp_path):
    """The workloads are units, but the bus pyoomd is given has no service manager on it (a dbus-daemon of our
    own): every kill is direct, and each record says why."""
    m, units, verdicts = workloads
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    dbus = subprocess.run(["dbus-daemon", "--session", f"--address=unix:path={bus_dir}/socket", "--fork",
                           "--print-pid", "--nopidfile"], capture_output=True, text=True, timeout=10, check=True)
    dbus_pid = int(dbus.stdout.split()[0])
    try:
        daemon = Daemon(tmp_path, scenario_policy(m, units["a"], units["b"]), "--systemd-bus",
                        f"unix:path={bus_dir}/socket").start()
        try:
            records = wait_for(lambda: (lambda k: k if len(k) >= 2 else None)(
                [r for r in daemon.actions() if r["result"] == "killed"]), 120, "two direct kills")
            for r in records:
                assert r["unit"] == "" and r["mechanism"] == "cgroup.kill", r
                assert "systemd unreachable" in r["detail"] and "killed directly" in r["detail"], r["detail"]
            assert {r["plugin"] for r in records} == {"kill_by_memory_size_or_growth", "stop_unit"}
            assert daemon.log.count("service manager not reachable") == 1
        finally:
            assert daemon.stop() == 0
        wait_for(lambda: (verdicts / "b-thrash").exists(), 10, "systemd's verdict on the directly killed unit")
        assert (verdicts / "a-thrash").read_text().split() == ["signal", "KILL"]
        assert (verdicts / "b-thrash").read_text().split() == ["signal", "KILL"]  # no stop job: a kill
        assert m.show(units["idle"], "ActiveState") == "active"
    finally:
        os.kill(dbus_pid, signal.SIGTERM)  # the dbus-daemon this test started, by PID


def actions(work: Path) -> list[dict]:
    path = work / "state" / "actions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
