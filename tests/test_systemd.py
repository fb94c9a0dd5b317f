"""workers.systemd against a real systemd user manager (tests/systemd_manager.py), through both its private socket
(peer to peer) and the session bus (a dbus-daemon the manager started): the unit behind a cgroup, kills, stop and
restart jobs observed through JobRemoved, the invocation check, and deadlines when nothing or nobody answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.realhost import wait_for
from tests.systemd_manager import UserManager
from workers.systemd import SystemdBus
from workers.units import candidate_addresses, unit_name_from_cgroup

real = pytest.mark.real
SLEEP = ["sleep", "1000"]


@pytest.fixture(params=["private", "bus"])
def sdbus(request: pytest.FixtureRequest, systemd_user_manager: UserManager) -> Iterator[SystemdBus]:
    """A client of the manager through its private socket, or through the session bus."""
    m = systemd_user_manager
    address = m.private_address if request.param == "private" else m.bus_address
    with SystemdBus("session", addresses=[address]) as bus:
        yield bus


@pytest.fixture
def units(systemd_user_manager: UserManager) -> Iterator[Callable[..., str]]:
    """Start transient units with unique names; each is stopped at the test's end."""
    started: list[str] = []

    def start(argv: list[str] = SLEEP, **kw: object) -> str:
        unit = systemd_user_manager.run_unit(argv, **kw)  # type: ignore[arg-type]
        started.append(unit)
        return unit

    yield start
    for unit in started:
        systemd_user_manager.stop_unit(unit)


def bus_label(name: str) -> str:
    """sd-bus's object path label: [A-Za-z0-9] kept, every other byte as _xx."""
    return "".join(c if c.isascii() and c.isalnum() else f"_{ord(c):02x}" for c in name)


def main_pid(m: UserManager, unit: str) -> int:
    return int(m.show(unit, "MainPID"))


# ---- without a manager ----


def test_unit_name_from_cgroup() -> None:
    assert unit_name_from_cgroup("/system.slice/foo.service") == "foo.service"
    assert unit_name_from_cgroup("/user.slice/user-1000.slice/session-3.scope/") == "session-3.scope"
    assert unit_name_from_cgroup("/system.slice/_cpu.service") == "cpu.service"  # systemd's cgroup_escape
    assert unit_name_from_cgroup("/system.slice/foo.service/payload") is None
    assert unit_name_from_cgroup("/user.slice/user-1000.slice/user@1000.service/app.slice") is None
    assert unit_name_from_cgroup("/") is None


def test_candidate_addresses(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "DBUS_SESSION_BUS_ADDRESS": "unix:path=/x/bus"}
    assert candidate_addresses("session", environ=env) == ["unix:path=/x/bus"]
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd" / "private").touch()
    assert candidate_addresses("session", environ=env) == [f"unix:path={tmp_path}/systemd/private", "unix:path=/x/bus"]
    assert candidate_addresses("session", environ={"XDG_RUNTIME_DIR": "/r"}) == ["unix:path=/r/bus"]
    # Not root: the system manager's private socket refuses others, so only the bus is tried.
    assert candidate_addresses("system", euid=1000, environ={}) == ["unix:path=/run/dbus/system_bus_socket"]
    assert candidate_addresses("unix:path=/a;unix:path=/b") == ["unix:path=/a;unix:path=/b"]


def test_unreachable_address_is_an_error_result_at_once(tmp_path: Path) -> None:
    not_a_socket = tmp_path / "file"
    not_a_socket.touch()
    for address in ("unix:path=/nonexistent/pyoomd/bus", f"unix:path={not_a_socket}", "nonsense:x=y"):
        with SystemdBus(address, timeout=2.0) as bus:
            for result in (bus.probe(), bus.unit_for_cgroup("/a.slice/b.service"), bus.unit_state("b.service"),
                           bus.kill_unit("b.service"), bus.kill_unit_checked("b.service", "/b", "00"),
                           bus.stop_unit("b.service"), bus.restart_unit("b.service")):
                assert not result.ok and result.kind == "unreachable", result
                assert address.split(":", 1)[1].split("=", 1)[1] in result.error


def test_a_peer_that_never_answers_costs_the_deadline_only(tmp_path: Path) -> None:
    # Accepts connections and reads nothing, like a stalled dbus-daemon: the handshake itself never completes.
    path = tmp_path / "stalled"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    held: list[socket.socket] = []
    acceptor = threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True)
    acceptor.start()
    try:
        with SystemdBus(f"unix:path={path}", timeout=0.3, job_timeout=0.3) as bus:
            for call in (bus.probe, lambda: bus.stop_unit("x.service")):
                start = time.monotonic()
                result = call()
                assert not result.ok and result.kind == "deadline", result
                # It waited for the deadline, and not for ever (a generous bound, not a speed).
                assert 0.29 < time.monotonic() - start < 10
    finally:
        server.close()
        for conn in held:
            conn.close()


# ---- against the real manager ----


@real
def test_probe(sdbus: SystemdBus, systemd_user_manager: UserManager) -> None:
    result = sdbus.probe()
    assert result.ok, result
    systemctl_version = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout.split()[1]
    assert result.value.version.split(".")[0].split("-")[0] == systemctl_version
    assert result.value.peer_to_peer == sdbus.addresses[0].endswith("/systemd/private")
    assert result.value.address == sdbus.addresses[0]


@real
def test_session_prefers_the_private_socket(systemd_user_manager: UserManager) -> None:
    m = systemd_user_manager
    addresses = candidate_addresses("session", environ=m.env)
    assert addresses == [m.private_address, m.bus_address]
    with SystemdBus("session", addresses=addresses) as bus:
        assert bus.probe().value.peer_to_peer


@real
def test_private_socket_connects_every_time(systemd_user_manager: UserManager) -> None:
    # systemd 252's sd-bus leaves a Hello that arrived in one read with BEGIN unprocessed; dbus-fast alone hung on
    # most connects here. Fresh connections, each answered well within the deadline.
    elapsed = []
    for _ in range(20):
        with SystemdBus("session", addresses=[systemd_user_manager.private_address], timeout=1.0) as bus:
            result = bus.probe()
            assert result.ok, result
            elapsed.append(result.elapsed)
    assert max(elapsed) < 0.2, elapsed


@real
def test_unit_for_cgroup_maps_a_units_own_cgroup(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                                 units: Callable[..., str]) -> None:
    m = systemd_user_manager
    unit = units()
    path = m.unit_cgroup(unit)
    # systemd's layout on this hybrid host: the same path in every hierarchy it uses, the limit in v1 memory.
    for h in ("systemd", "memory", "pids", "unified"):
        assert m.cgroup_dir(h, path).is_dir(), h
    assert (m.cgroup_dir("memory", path) / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)

    result = sdbus.unit_for_cgroup(path)
    assert result.ok, result
    info = result.value
    assert info.name == unit
    assert info.object_path == "/org/freedesktop/systemd1/unit/" + bus_label(unit)
    assert info.control_group == path == m.show(unit, "ControlGroup")
    assert info.invocation_id == m.show(unit, "InvocationID") and len(info.invocation_id) == 32
    assert sdbus.unit_for_cgroup(path + "/").value == info  # a trailing slash is the same cgroup


@real
def test_unit_for_cgroup_is_none_for_what_is_not_a_unit(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                                        units: Callable[..., str]) -> None:
    m = systemd_user_manager
    path = m.unit_cgroup(units())
    for other in (
        path + "/payload",  # inside the unit: GetUnitByControlGroup answers with the enclosing unit
        f"{m.cgroup}/app.slice",  # a slice
        f"{m.cgroup}/app.slice/pyoomd-never-started.service",  # a unit's name, no such unit
        "/process_api/elsewhere.service",  # outside this manager's tree
    ):
        result = sdbus.unit_for_cgroup(other)
        assert result.ok and result.value is None, (other, result)


@real
@pytest.mark.parametrize("members", [True, False], ids=["by-pid", "by-name"])
def test_unit_for_cgroup_without_get_unit_by_control_group(systemd_user_manager: UserManager,
                                                           units: Callable[..., str], members: bool) -> None:
    # Managers older than GetUnitByControlGroup: a member's GetUnitByPID, else GetUnit by the path's last name.
    m = systemd_user_manager
    unit = units()
    path = m.unit_cgroup(unit)
    pids = [main_pid(m, unit)] if members else []
    with SystemdBus("session", addresses=[m.private_address], avoid={"GetUnitByControlGroup"}) as bus:
        result = bus.unit_for_cgroup(path, pids=pids)
        assert result.ok and result.value.name == unit and result.value.control_group == path, result
        assert bus.unit_for_cgroup(path + "/payload", pids=pids).value is None


@real
def test_kill_unit_sigkills_the_units_processes(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                                units: Callable[..., str]) -> None:
    m = systemd_user_manager
    unit = units(["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    path = m.unit_cgroup(unit)
    wait_for(lambda: len(m.pids_in(path)) == 3, 5, "the unit's three processes")
    result = sdbus.kill_unit(unit, "all", signal.SIGKILL)
    assert result.ok, result
    wait_for(lambda: not m.pids_in(path, "unified") and not m.pids_in(path), 5, "the unit's cgroup to empty")
    assert m.show(unit, "Result") == "signal"


@real
def test_stop_unit_waits_for_its_job(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                     units: Callable[..., str]) -> None:
    m = systemd_user_manager
    unit = units()
    path = m.unit_cgroup(unit)
    result = sdbus.stop_unit(unit)
    assert result.ok, result
    job = result.value
    assert job.result == "done" and job.unit == unit and job.job_id > 0
    assert job.job == f"/org/freedesktop/systemd1/job/{job.job_id}"
    assert not m.pids_in(path)  # JobRemoved("done") comes once the unit is down
    # Stopped, the transient unit is gone: the next stop is the manager's error, as a result.
    again = sdbus.stop_unit(unit)
    assert not again.ok and again.kind == "dbus" and again.dbus_error == "org.freedesktop.systemd1.NoSuchUnit"


@real
def test_stop_unit_past_the_deadline_names_the_job(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                                   units: Callable[..., str]) -> None:
    # sleep ignores SIGWINCH, so the stop job runs until TimeoutStopSec; we stop waiting long before.
    unit = units(properties={"KillSignal": "SIGWINCH", "TimeoutStopSec": "60"})
    start = time.monotonic()
    result = sdbus.stop_unit(unit, timeout=0.5)
    assert not result.ok and result.kind == "deadline", result
    assert time.monotonic() - start < 10  # gave up at its deadline instead of waiting for the job
    assert result.value.job.startswith("/org/freedesktop/systemd1/job/") and result.value.result == ""
    assert systemd_user_manager.show(unit, "ActiveState") == "deactivating"
    assert sdbus.kill_unit(unit).ok  # SIGKILL ends the stop job


@real
def test_restart_unit_is_a_new_invocation(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                          units: Callable[..., str]) -> None:
    unit = units()
    before = sdbus.unit_state(unit).value
    assert (before.active_state, before.sub_state) == ("active", "running")
    result = sdbus.restart_unit(unit)
    assert result.ok and result.value.result == "done", result
    after = sdbus.unit_state(unit).value
    assert (after.active_state, after.sub_state) == ("active", "running")
    assert after.control_group == before.control_group
    assert after.invocation_id != before.invocation_id and after.invocation_id


@real
def test_restart_unit_reports_a_failed_job(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                           units: Callable[..., str], tmp_path: Path) -> None:
    flag = tmp_path / "may-start"
    flag.touch()
    unit = units(["test", "-e", str(flag)], properties={"Type": "oneshot", "RemainAfterExit": "yes"})
    assert systemd_user_manager.show(unit, "ActiveState") == "active"
    flag.unlink()
    result = sdbus.restart_unit(unit)
    assert not result.ok and result.kind == "job" and result.value.result == "failed", result


@real
def test_kill_unit_checked_refuses_a_new_invocation(sdbus: SystemdBus, systemd_user_manager: UserManager,
                                                    units: Callable[..., str]) -> None:
    m = systemd_user_manager
    unit = units()
    path = m.unit_cgroup(unit)
    picked = sdbus.unit_for_cgroup(path).value
    assert sdbus.restart_unit(unit).ok

    refused = sdbus.kill_unit_checked(unit, picked.control_group, picked.invocation_id)
    assert not refused.ok and refused.kind == "refused" and "invocation" in refused.error, refused
    assert refused.value.invocation_id != picked.invocation_id
    assert m.pids_in(path), "nothing was killed"

    other_cgroup = sdbus.kill_unit_checked(unit, path + "/payload", refused.value.invocation_id)
    assert not other_cgroup.ok and other_cgroup.kind == "refused" and "cgroup" in other_cgroup.error

    current = sdbus.kill_unit_checked(unit, path, refused.value.invocation_id)
    assert current.ok, current
    wait_for(lambda: not m.pids_in(path), 5, "the unit's cgroup to empty")


@real
def test_a_stalled_dbus_daemon_costs_the_deadline_and_the_private_socket_still_answers(
        systemd_user_manager: UserManager, units: Callable[..., str]) -> None:
    m = systemd_user_manager
    unit = units()
    with SystemdBus("session", addresses=[m.bus_address], timeout=0.5) as via_bus, \
            SystemdBus("session", addresses=[m.private_address], timeout=0.5) as private:
        assert via_bus.probe().ok  # connected (and dbus.service activated) before the stall
        daemon = main_pid(m, "dbus.service")
        assert daemon > 0 and m.cgroup in Path(f"/proc/{daemon}/cgroup").read_text()  # our manager's dbus-daemon
        os.kill(daemon, signal.SIGSTOP)
        try:
            start = time.monotonic()
            stalled = via_bus.kill_unit(unit)
            assert not stalled.ok and stalled.kind == "deadline", stalled
            assert time.monotonic() - start < 10  # the stalled bus cost its deadline, not a hang
            result = private.stop_unit(unit)
            assert result.ok and result.value.result == "done", result
        finally:
            os.kill(daemon, signal.SIGCONT)
        assert via_bus.probe().ok  # the same connection serves again once the daemon runs
