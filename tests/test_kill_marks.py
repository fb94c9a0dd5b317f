"""The actuator's kill variants and the traces a kill leaves, against real cgroups of this host: `signal`,
`target: largest_process` through a pidfd, oomd's xattrs on the killed cgroup and its kill line in /dev/kmsg,
and nothing of that in dry-run."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgroupfs import CgroupFS, detect_layout
from cgroupfs.largest import MECH_LARGEST
from cgroupfs.marks import kill_line, mark_kill, write_kmsg
from ipc.messages import Candidate, KillCommand, PolicyUpdate
from policy.loader import load_policy_text
from tests.realhost import CGROUP_ROOT, CgroupSandbox, wait_for
from workers.actuator import CommandExecutor

pytestmark = pytest.mark.real

PLUGIN = "kill_by_memory_size_or_growth"
# A process holding `MB` of touched anonymous memory (b"x" * n writes every page, unlike bytes(n)).
HOG = "import sys, time; b = b'x' * (int(sys.argv[1]) << 20); time.sleep(1000)"
SIGTERM_IGNORER = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"


def policy_update(parent: str, args: str = "") -> PolicyUpdate:
    policy = load_policy_text(f"""
rulesets:
  - name: rs
    detectors:
      - name: g
        all: [continue: {{}}]
    actions:
      - {PLUGIN}: {{cgroup: "{parent}/victim*"{args}}}
""", "t.yaml")
    return PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default",
                        protected_paths=["/"], daemon_pid=os.getpid())


def command(fs: CgroupFS, path: str, *, dry_run: bool = False, sig: int = signal.SIGKILL, grace: float = 0.0,
            target: str = "cgroup", pressure: list[float] | None = None) -> KillCommand:
    cand = Candidate(path=path, inode=fs.identity(path) or 0, usage=123 * (1 << 20), why="test", pressure=pressure)
    return KillCommand(id=uuid.uuid4().hex, generation=1, ruleset="rs", group="g", plugin=PLUGIN,
                       snapshot_time=time.time(), not_after=time.monotonic() + 5, candidates=[cand],
                       mechanism="direct", signal=int(sig), reason="test", dry_run=dry_run, dry_run_source="test",
                       kill_timeout=5.0 + grace, grace=grace, target=target)  # type: ignore[arg-type]


@pytest.fixture
def executor(cgroups: CgroupSandbox) -> Iterator[CommandExecutor]:
    # A sleeper of our own, outside the test cgroups, stands in for the daemon (see tests/test_actuator.py).
    stand_in = subprocess.Popen(["sleep", "1000"])
    try:
        ex = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=stand_in.pid)
        ex.apply_policy(policy_update(cgroups.path))
        yield ex
    finally:
        stand_in.kill()
        stand_in.wait()


class Kmsg:
    """The kernel log from the moment it is opened: records written later, read without blocking."""

    def __init__(self) -> None:
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten before we read it: go on with the next one
                    continue
                raise
            # "prio,seq,time,flags;message\n" followed by continuation lines
            out.append(record.decode(errors="replace").split(";", 1)[1].split("\n", 1)[0])

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def kmsg() -> Iterator[Kmsg]:
    k = Kmsg()
    try:
        yield k
    finally:
        k.close()


def dirs_of(cgroups: CgroupSandbox, rel: str) -> list[Path]:
    return [CGROUP_ROOT / h / cgroups.name / rel for h in ("memory", "unified")]


def xattrs(d: Path) -> dict[str, str]:
    return {n: os.getxattr(d, n).decode() for n in os.listxattr(d) if "oomd" in n}


def rss_mb(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20


def ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (signal.SIGTERM - 1)))


def test_largest_process_only_the_biggest_dies(cgroups, executor):
    cgroups.mkdir("victim")
    big = cgroups.spawn("victim", [sys.executable, "-c", HOG, "150"])
    small = cgroups.spawn("victim", [sys.executable, "-c", HOG, "20"])
    wait_for(lambda: rss_mb(big.pid) > 140 and rss_mb(small.pid) > 15, 20, "both hogs to fill their memory")
    path = f"{cgroups.path}/victim"
    result = executor.execute(command(executor.fs, path, target="largest_process"))
    assert result.status == "killed", result.detail
    assert result.pids == [big.pid] and result.target == path
    assert result.mechanism == MECH_LARGEST
    assert f"{big.pid} (python" in result.detail
    assert big.wait(timeout=5) == -signal.SIGKILL
    time.sleep(0.3)
    assert small.poll() is None, "the smaller process was touched"
    assert result.emptied is False
    for d in dirs_of(cgroups, "victim"):
        assert xattrs(d)["trusted.oomd_kill"] == "1"  # one process killed


def test_largest_process_dry_run_names_it_and_touches_nothing(cgroups, executor, kmsg):
    cgroups.mkdir("victim")
    big = cgroups.spawn("victim", [sys.executable, "-c", HOG, "100"])
    small = cgroups.sleeper("victim")
    wait_for(lambda: rss_mb(big.pid) > 90, 20, "the hog to fill its memory")
    path = f"{cgroups.path}/victim"
    result = executor.execute(command(executor.fs, path, target="largest_process", dry_run=True))
    assert result.status == "dry-run" and result.pids == [big.pid]
    assert "would signal" in result.detail
    time.sleep(0.3)
    assert big.poll() is None and small.poll() is None
    assert all(xattrs(d) == {} for d in dirs_of(cgroups, "victim"))
    assert not [m for m in kmsg.messages() if path.strip("/") in m]


def test_largest_process_with_grace_gets_sigterm_then_sigkill(cgroups, executor):
    cgroups.mkdir("victim")
    stubborn = cgroups.spawn("victim", [sys.executable, "-c", SIGTERM_IGNORER])
    cgroups.sleeper("victim")
    wait_for(lambda: ignores_sigterm(stubborn.pid), 10, "the process to ignore SIGTERM")
    result = executor.execute(command(executor.fs, f"{cgroups.path}/victim", target="largest_process", grace=0.5))
    assert result.status == "killed" and result.pids == [stubborn.pid]
    assert "SIGTERM, then SIGKILL after 0.5s of grace" in result.detail
    assert stubborn.wait(timeout=5) == -signal.SIGKILL


def test_signal_argument_reaches_every_process_of_the_cgroup(cgroups, executor):
    cgroups.mkdir("victim")
    procs = [cgroups.sleeper("victim"), cgroups.sleeper("victim")]
    wait_for(lambda: len(executor.fs.members(f"{cgroups.path}/victim")) == 2, 5, "both sleepers")
    result = executor.execute(command(executor.fs, f"{cgroups.path}/victim", sig=signal.SIGTERM))
    assert result.status == "killed", result.detail
    assert [p.wait(timeout=5) for p in procs] == [-signal.SIGTERM, -signal.SIGTERM]


def test_kill_leaves_oomds_xattrs_and_kill_line(cgroups, executor, kmsg):
    cgroups.mkdir("victim")
    procs = [cgroups.sleeper("victim") for _ in range(3)]
    path = f"{cgroups.path}/victim"
    wait_for(lambda: len(executor.fs.members(path)) == 3, 5, "three sleepers")
    cmd = command(executor.fs, path, pressure=[12.345, 6.5, 1.0])
    result = executor.execute(cmd)
    assert result.status == "killed" and "marks:" not in result.detail, result.detail
    assert all(p.wait(timeout=5) == -signal.SIGKILL for p in procs)
    for d in dirs_of(cgroups, "victim"):  # the memory directory and its cgroup2 twin
        assert xattrs(d) == {
            "trusted.oomd_ooms": "1", "trusted.oomd_kill": "3", "trusted.oomd_kill_uuid": cmd.id,
            "user.oomd_ooms": "1", "user.oomd_kill": "3", "user.oomd_kill_uuid": cmd.id,
        }
    # The collector's own reading of the cgroup sees them too.
    assert executor.fs.xattrs(path)["trusted.oomd_kill_uuid"] == cmd.id
    expected = (f"oomd kill: 12.35 6.50 1.00 {path.strip('/')} {123 << 20} ruleset:[rs] detectorgroup:[g] "
                f"killer:{PLUGIN} v2")
    assert expected in kmsg.messages()

    # A second kill of the same cgroup adds to the counts and replaces the uuid.
    cgroups.sleeper("victim")
    wait_for(lambda: executor.fs.members(path), 5, "a new sleeper")
    again = command(executor.fs, path)
    assert executor.execute(again).status == "killed"
    marks = xattrs(dirs_of(cgroups, "victim")[0])
    assert (marks["trusted.oomd_ooms"], marks["trusted.oomd_kill"], marks["user.oomd_kill"]) == ("2", "4", "4")
    assert marks["trusted.oomd_kill_uuid"] == again.id
    assert f"oomd kill: 0.00 0.00 0.00 {path.strip('/')}" in "\n".join(kmsg.messages())  # no PSI given: zeros


def test_dry_run_writes_no_xattr_and_no_kill_line(cgroups, executor, kmsg):
    cgroups.mkdir("victim")
    proc = cgroups.sleeper("victim")
    path = f"{cgroups.path}/victim"
    wait_for(lambda: executor.fs.members(path), 5, "the sleeper")
    result = executor.execute(command(executor.fs, path, dry_run=True))
    assert result.status == "dry-run" and result.pids == [proc.pid]
    assert all(xattrs(d) == {} for d in dirs_of(cgroups, "victim"))
    assert not [m for m in kmsg.messages() if path.strip("/") in m]
    assert proc.poll() is None


def test_marks_never_raise(cgroups, tmp_path):
    gone = CGROUP_ROOT / "unified" / cgroups.name / "never-created"
    assert mark_kill([gone], "id", 1) == [f"cannot mark {gone}: it is gone"]
    problem = write_kmsg("x", path=tmp_path / "no" / "kmsg")
    assert problem is not None and "cannot open" in problem
    # A value that is no integer (someone else's) starts the count over, as in oomd.
    cgroups.mkdir("victim")
    d = dirs_of(cgroups, "victim")[1]
    os.setxattr(d, "trusted.oomd_ooms", b"junk")
    assert mark_kill([d, d], "id", 2) == []  # the same directory twice is marked once
    assert xattrs(d)["trusted.oomd_ooms"] == "1"


def test_actuator_accepts_descendants_of_a_recursive_action_only(cgroups, executor):
    cgroups.mkdir("victim")
    cgroups.mkdir("victim/app")
    cgroups.mkdir("victim/app/leaf")
    proc = cgroups.sleeper("victim/app/leaf")
    leaf = f"{cgroups.path}/victim/app/leaf"
    wait_for(lambda: executor.fs.members(leaf), 5, "the sleeper")
    refused = executor.execute(command(executor.fs, leaf))
    assert refused.status == "no-target" and "not under the cgroups" in refused.detail
    executor.apply_policy(policy_update(cgroups.path, ", recursive: true"))
    result = executor.execute(command(executor.fs, leaf))
    assert result.status == "killed" and result.target == leaf
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_kill_line_format():
    assert kill_line("/system.slice/foo.service", 1 << 30, [1.234, 0.5, 0.0], "r", "g", "kill_by_pressure") == (
        "1.23 0.50 0.00 system.slice/foo.service 1073741824 ruleset:[r] detectorgroup:[g] killer:kill_by_pressure v2")
    assert kill_line("/", None, None, "r", "g", "k").startswith("0.00 0.00 0.00  0 ")


def test_cgroup_directories_take_trusted_and_user_xattrs_here(cgroups):
    """What the marks rely on: as root, both namespaces on v1 and cgroup2 directories of this kernel."""
    for d in dirs_of(cgroups, ""):
        for name in ("trusted.pyoomd_probe", "user.pyoomd_probe"):
            os.setxattr(d, name, b"1")
            assert os.getxattr(d, name) == b"1"
            with contextlib.suppress(OSError):
                os.removexattr(d, name)
