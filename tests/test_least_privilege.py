"""Least privilege, as it runs: the collector and detector as the pyoomd user with CAP_IPC_LOCK alone, the sockets
reachable by that user and nobody else, and what only root may open or read brokered by the supervisor."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cgroupfs import CgroupFS, detect_layout
from ipc import fdchannel
from ipc.fdchannel import FdChannel
from ipc.messages import BrokerAnswer, OpenSource, ReadXattrs, SourceOpened, XattrValues
from supervisor.broker import SourceBroker
from tests.daemon import Daemon
from tests.realhost import require_real_host, wait_for
from tests.test_supervisor import POLICY

CAP_IPC_LOCK = 1 << 14


def status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


@pytest.mark.real
def test_collector_and_detector_run_unprivileged_and_the_actuator_does_not(tmp_path):
    require_real_host()
    user = pwd.getpwnam("pyoomd")
    daemon = Daemon(tmp_path, POLICY).start()
    try:
        daemon.wait_log("first snapshot evaluated")
        pids = daemon.worker_pids()
        for name in ("collector", "detector"):
            s = status(pids[name])
            assert s["Uid"].split() == [str(user.pw_uid)] * 4, (name, s["Uid"])
            assert s["Gid"].split() == [str(user.pw_gid)] * 4 and s["Groups"].strip() == ""
            for field in ("CapEff", "CapPrm", "CapBnd"):
                assert int(s[field], 16) == CAP_IPC_LOCK, (name, field, s[field])
            assert int(s["CapAmb"], 16) == 0 and s["NoNewPrivs"].strip() == "1"
            # Memory stays locked: VmLck covers what the process has touched since mlockall.
            assert int(s["VmLck"].split()[0]) > 0, (name, s["VmLck"])
        actuator = status(pids["actuator"])
        assert actuator["Uid"].split()[0] == "0" and int(actuator["CapEff"], 16) & (1 << 5)  # CAP_KILL

        group = grp.getgrnam("pyoomd").gr_gid
        top, ipc = daemon.runtime_dir, daemon.runtime_dir / "ipc"
        assert (stat.S_IMODE(top.stat().st_mode), top.stat().st_uid, top.stat().st_gid) == (0o710, 0, group)
        assert (stat.S_IMODE(ipc.stat().st_mode), ipc.stat().st_gid) == (0o770, group)
        for sock in ("control.sock", "snapshots.sock", "commands.sock"):
            st = (ipc / sock).stat()
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == group, sock
        assert not list(top.glob("*.sock"))  # nothing abstract, nothing beside the ipc directory

        # nobody, another local user, cannot even reach the socket files.
        probe = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                                "-c", f"import os; os.stat({str(ipc / 'control.sock')!r})"],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr
    finally:
        assert daemon.stop() == 0


@pytest.mark.real
def test_the_runtime_directory_must_be_reachable_by_the_workers_user(tmp_path):
    """pytest's own directories are 0700: a runtime directory there is refused at once, with the reason."""
    require_real_host()
    hidden = tmp_path / "run"
    daemon = Daemon(tmp_path, POLICY)
    daemon.argv[daemon.argv.index("--runtime-dir") + 1] = str(hidden)
    daemon.start()
    assert daemon.proc.wait(timeout=30) == 1
    assert f"the runtime directory {hidden} is out of reach of user pyoomd" in daemon.log


class Collector:
    """The collector's end of a broker socketpair, as workers/brokered.py speaks it."""

    def __init__(self) -> None:
        ours, theirs = fdchannel.pair()
        self.broker = SourceBroker(CgroupFS(detect_layout()), ours)
        self.channel = FdChannel(theirs, "test", BrokerAnswer)

    def ask(self, request: OpenSource | ReadXattrs) -> tuple[SourceOpened | XattrValues, list[int]]:
        self.channel.send(request)
        assert self.broker.on_readable()
        answer, fds = self.channel.recv()
        assert answer is not None and answer.id == request.id
        return answer, fds

    def close(self) -> None:
        self.channel.close()
        assert not self.broker.on_readable()  # the collector's end closed: the broker says so
        self.broker.close()


@pytest.mark.real
def test_the_broker_opens_only_pressure_and_event_files_of_cgroups(cgroups):
    c = Collector()
    try:
        for path in ("/etc/passwd", "/proc/self/status", "/sys/fs/cgroup/unified/cgroup.procs",
                     f"/sys/fs/cgroup/unified{cgroups.path}/../../../etc/shadow"):
            answer, fds = c.ask(OpenSource(id=1, mechanism="psi", path=path, stall_kind="some", stall_us=100000,
                                           window_us=2000000))
            assert answer.error.startswith("refused: not a cgroup2 or /proc/pressure PSI file") and fds == []
        answer, fds = c.ask(OpenSource(id=2, mechanism="vmpressure", path="/sys/fs/cgroup/unified", level="medium",
                                       mode="hierarchy"))
        assert answer.error == "refused: not a directory of the v1 memory hierarchy" and fds == []
        assert c.broker.refused == 5

        pressure = f"/sys/fs/cgroup/unified{cgroups.path}/memory.pressure"
        answer, fds = c.ask(OpenSource(id=3, mechanism="psi", path=pressure, stall_kind="some", stall_us=100000,
                                       window_us=2000000))
        assert answer.error == "" and answer.source_kind == "psi" and len(fds) == 1
        assert os.readlink(f"/proc/self/fd/{fds[0]}") == pressure  # a descriptor of that very file
        for fd in fds:
            os.close(fd)
        answer, fds = c.ask(OpenSource(id=4, mechanism="vmpressure", path=f"/sys/fs/cgroup/memory{cgroups.path}",
                                       level="medium", mode="hierarchy"))
        assert answer.error == "" and answer.source_kind == "eventfd" and len(fds) == 2
        for fd in fds:
            os.close(fd)
        answer, fds = c.ask(OpenSource(id=5, mechanism="psi", path=pressure, stall_kind="sometimes",
                                       stall_us=1, window_us=2000000))
        assert "kind 'sometimes'" in answer.error and fds == []  # checked by cgroupfs.events, not refused
    finally:
        c.close()


@pytest.mark.real
def test_the_broker_gives_trusted_xattrs_only(cgroups):
    d = f"/sys/fs/cgroup/memory{cgroups.path}"
    os.setxattr(d, "trusted.oomd_avoid", b"1")
    os.setxattr(d, "user.oomd_omit", b"1")
    c = Collector()
    try:
        answer, _ = c.ask(ReadXattrs(id=1, paths=[cgroups.path, "/../etc", f"{cgroups.path}/gone"]))
        assert answer.values == {cgroups.path: {"trusted.oomd_avoid": "1"}}
    finally:
        c.close()


@pytest.mark.real
def test_an_unprivileged_collector_still_sees_trusted_xattrs(cgroups, tmp_path):
    """trusted.oomd_avoid is invisible to the pyoomd user; through the broker the ranking still honours it."""
    cgroups.mkdir("a")
    cgroups.mkdir("b")
    cgroups.spawn("a", ["sleep", "1000"])
    cgroups.spawn("b", ["sleep", "1000"])
    os.setxattr(f"/sys/fs/cgroup/memory{cgroups.path}/a", "trusted.oomd_avoid", b"1")
    as_user = subprocess.run(["setpriv", "--reuid=pyoomd", "--regid=pyoomd", "--clear-groups", sys.executable, "-c",
                              f"import os; print(os.listxattr('/sys/fs/cgroup/memory{cgroups.path}/a'))"],
                             capture_output=True, text=True)
    assert "trusted.oomd_avoid" not in as_user.stdout  # what the collector cannot see by itself
    policy = f"""
interval: 0.5
rulesets:
  - name: rank
    detectors:
      - name: never
        all: [pressure_above: {{cgroup: "{cgroups.path}", resource: memory, threshold: 99, duration: 60}}]
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{cgroups.path}/*", debug: true}}
"""
    from tests.private_bus import private_bus

    with private_bus() as bus:
        daemon = Daemon(tmp_path, policy, "--bus", bus.address).start()
        try:
            daemon.wait_log("first snapshot evaluated")

            def ranking() -> list[tuple[str, str]] | None:
                out = bus.busctl("--json=short", "call", "io.github.pyoomd1", "/io/github/pyoomd1",
                                 "io.github.pyoomd1.Manager", "Explain")
                if out.returncode != 0:
                    return None
                import json

                explained = json.loads(json.loads(out.stdout)["data"][0])
                candidates = explained["rulesets"][0]["actions"][0].get("candidates") or []
                return [(x["cgroup"], x["why"]) for x in candidates] if len(candidates) == 2 else None

            ranked = wait_for(ranking, 30, "both cgroups ranked")
            assert [path for path, _ in ranked] == [f"{cgroups.path}/b", f"{cgroups.path}/a"]
            assert "avoided (xattr trusted.oomd_avoid)" in ranked[1][1]
        finally:
            assert daemon.stop() == 0


def test_a_broker_that_does_not_answer_costs_a_source_not_the_collector():
    from workers.brokered import Broker, BrokerUnavailable

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        broker = Broker(os.dup(theirs.fileno()))
        with pytest.raises(BrokerUnavailable, match="did not answer within"):
            broker.psi_trigger(Path("/proc/pressure/memory"), "some", 100000, 2000000)
        assert broker.trusted_xattrs(["/a"]) == {}
    finally:
        ours.close()
        theirs.close()
