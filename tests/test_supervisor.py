"""The supervisor as a user meets it: processes, restarts, giving up, refusing a foreign build, stopping cleanly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import msgspec
import psutil
import pytest
import zmq

from tests.daemon import REPO, Daemon
from tests.realhost import require_real_host, wait_for

POLICY = """
interval: 0.5
rulesets:
  - name: idle
    detectors:
      - name: never
        all:
          - pressure_above: {cgroup: "pyoomd-test-does-not-exist", resource: memory, threshold: 99, duration: 60}
    actions:
      - kill_by_memory_size_or_growth: {cgroup: "pyoomd-test-does-not-exist/*"}
"""


@pytest.fixture
def daemon(tmp_path):
    require_real_host()
    d = Daemon(tmp_path, POLICY)
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.stop()


def test_four_processes_layout_logged_and_clean_stop(daemon):
    daemon.start()
    daemon.wait_log(r"first snapshot evaluated")
    assert "cgroup layout hybrid: " in daemon.log
    assert "memory=/sys/fs/cgroup/memory" in daemon.log and "unified=/sys/fs/cgroup/unified" in daemon.log
    pids = daemon.worker_pids()
    assert sorted(pids) == ["actuator", "collector", "detector"]
    assert daemon.stop() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids.values())
    assert daemon.sockets_left == [], "sockets left in the runtime directory"


def test_supervisor_killed_outright_takes_its_workers_with_it(daemon):
    daemon.start()
    daemon.wait_log(r"first snapshot evaluated")
    pids = daemon.worker_pids()
    daemon.proc.send_signal(signal.SIGKILL)  # our own child
    daemon.proc.wait()

    def all_gone():
        return not any(os.path.exists(f"/proc/{p}") for p in pids.values())
    wait_for(all_gone, 10, "workers to die with their supervisor")


def test_a_worker_that_keeps_crashing_is_fatal_and_the_daemon_exits(daemon):
    daemon.start()
    seen: set[int] = set()

    def new_running_collector() -> int | None:
        running = re.findall(r"worker collector \(pid (\d+)\): STARTING -> RUNNING", daemon.log)
        fresh = [int(p) for p in running if int(p) not in seen]
        return fresh[0] if fresh else None

    for _ in range(5):
        pid = wait_for(new_running_collector, 20, "a collector to reach RUNNING")
        seen.add(pid)
        os.kill(pid, signal.SIGKILL)  # our own grandchild, by PID
        wait_for(lambda p=pid: f"pid {p} killed by SIGKILL" in daemon.log, 10, "the crash to be seen")
    daemon.proc.wait(timeout=20)
    assert daemon.proc.returncode == 1
    assert "worker collector cannot run" in daemon.log
    assert "crashed 5 times within a minute" in daemon.log
    assert "-> FATAL" in daemon.log


def test_worker_from_another_install_is_refused_once_not_restarted(daemon):
    # Where the unprivileged workers can read it, as an install in /opt would be (pytest's directories are 0700).
    other = Path(tempfile.mkdtemp(prefix="pyoomd-other-install-", dir="/tmp"))
    other.chmod(0o755)
    for pkg in ("supervisor", "workers", "ipc", "cgroupfs", "policy"):
        shutil.copytree(REPO / pkg, other / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "workers" / "collector.py", "a") as f:
        f.write("\n# a later release\n")
    daemon.argv += ["--worker-pythonpath", str(other)]
    daemon.start()
    try:
        daemon.proc.wait(timeout=30)
    finally:
        shutil.rmtree(other, ignore_errors=True)
    assert daemon.proc.returncode == 1
    log = daemon.log
    assert log.count("STOPPED -> STARTING") == 3 and "BACKOFF" not in log, log
    assert "but the supervisor is build" in log and "reinstall pyoomd" in log
    assert "-> FATAL" in log


def test_a_process_that_is_not_a_worker_cannot_reach_the_sockets(daemon):
    """ZAP admits only the supervisor's own children: this test process, though root and able to open the socket
    file, gets no frame through, and the refusal is logged once. (Frames that do arrive malformed, from a buggy
    worker, are dropped and counted: tests/test_ipc.py.)"""
    daemon.start()
    daemon.wait_log(r"first snapshot evaluated")
    detector = daemon.worker_pids()["detector"]
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.connect(f"ipc://{daemon.runtime_dir}/ipc/snapshots.sock")
        for frame in (b"\xc1not msgpack", msgspec.msgpack.encode({"kind": "snapshot", "seq": "x"})):
            push.send(frame)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, b"collector")
        dealer.connect(f"ipc://{daemon.runtime_dir}/ipc/control.sock")
        dealer.send(b"\xc1")
        time.sleep(1.5)
    finally:
        ctx.destroy(linger=0)
    daemon.wait_log(rf"refused a connection from PID {os.getpid()}: not pyoomd's supervisor nor one of its workers")
    assert "dropped a malformed frame" not in daemon.log
    assert daemon.worker_pids()["detector"] == detector
    assert "BACKOFF" not in daemon.log


def test_actuator_thaws_a_cgroup_a_crashed_actuator_left_frozen(daemon, cgroups):
    from cgroupfs.kill import _write_intent

    cgroups.mkdir("frozen")
    victim = cgroups.sleeper("frozen")
    control = Path(f"/sys/fs/cgroup/unified{cgroups.path}/frozen/cgroup.freeze")
    intents = daemon.state_dir / "freeze-intents"
    intents.mkdir(parents=True)
    _write_intent(intents, control, f"{cgroups.path}/frozen")  # what an actuator writes before freezing
    control.write_text("1")  # ... and then it died
    wait_for(lambda: "frozen 1" in (control.parent / "cgroup.events").read_text(), 10, "the freeze")
    daemon.start()
    daemon.wait_log(rf"thawed {control}")
    assert control.read_text().strip() == "0"
    assert not list(intents.iterdir())
    assert victim.poll() is None


def test_workers_are_forked_from_one_image_and_exec_d_once_the_fork_server_is_gone(daemon):
    daemon.start()
    daemon.wait_log(r"first snapshot evaluated")
    supervisor = psutil.Process(daemon.proc.pid)
    children = {" ".join(c.cmdline()).split()[3]: c for c in supervisor.children()}
    assert set(children) == {"workers.forkserver", "workers.collector", "workers.detector", "workers.actuator"}
    for name in ("collector", "detector", "actuator"):
        worker = children[f"workers.{name}"]
        assert worker.ppid() == daemon.proc.pid and "(forked)" in " ".join(worker.cmdline())
    # Forked from one image: most of a worker's memory is shared with its siblings.
    smaps = Path(f"/proc/{children['workers.detector'].pid}/smaps_rollup").read_text()
    fields = {line.split()[0]: int(line.split()[1]) for line in smaps.splitlines()[1:]}
    assert fields["Shared_Dirty:"] + fields["Shared_Clean:"] > fields["Private_Dirty:"], fields

    server = children["workers.forkserver"]
    os.kill(server.pid, signal.SIGKILL)  # our own grandchild, by PID
    daemon.wait_log(r"the fork server exited \(status -9\); workers are exec'd from now on")
    old = daemon.worker_pids()["detector"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: daemon.worker_pids().get("detector") not in (None, old), 30, "a new detector")
    new = psutil.Process(daemon.worker_pids()["detector"])
    assert new.cmdline()[1:4] == ["-P", "-m", "workers.detector"]  # exec'd
    daemon.wait_log(rf"worker detector \(pid {new.pid}\): STARTING -> RUNNING")
    assert daemon.stop() == 0


def test_without_a_bus_no_process_carries_the_dbus_client_or_openssl(tmp_path):
    # Nothing would use dbus-fast, asyncio's ssl or OpenSSL, and megabytes of each would sit in every forked
    # process for nothing.
    require_real_host()
    daemon = Daemon(tmp_path, POLICY, "--bus", "none", "--systemd-bus", "none").start()
    try:
        daemon.wait_log(r"first snapshot evaluated")
        processes = [psutil.Process(daemon.proc.pid), *psutil.Process(daemon.proc.pid).children()]
        assert len(processes) == 5
        for p in processes:
            mapped = {Path(m.path).name for m in p.memory_maps() if m.path.startswith("/")}
            unwanted = {name for name in mapped if name.startswith(("libcrypto", "libssl", "_ssl", "_hashlib"))
                        or "dbus_fast" in name or name.startswith("_asyncio")}
            assert not unwanted, f"{p.name()} {p.pid}: {sorted(unwanted)}"
    finally:
        assert daemon.stop() == 0


def test_buses_are_expected_only_where_one_can_be_found(tmp_path, monkeypatch):
    from supervisor.cli import _bus_expected

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/system_bus_socket")
    assert not _bus_expected("none")
    assert _bus_expected(f"unix:path={tmp_path}/explicit") is False  # a path address counts only where it is
    assert _bus_expected("tcp:host=localhost,port=1")  # any other address: trusted as given
    expected_system = Path("/run/systemd/private").exists() and os.geteuid() == 0
    assert _bus_expected("system") is expected_system
    (tmp_path / "system_bus_socket").touch()
    assert _bus_expected("system")
