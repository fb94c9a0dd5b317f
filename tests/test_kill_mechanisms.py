"""Every kill mechanism against real cgroups of this hybrid host: cgroup.kill, the cgroup2 freeze, the v1 freezer
and the signal loop; refused processes, grace, dry-run, no pidfds, and a freezer that is always thawed.

Hybrid paths live in memory + unified (the `cgroups` sandbox). v1-only paths live in memory + freezer and not
in unified, as docker's and kubelet's cgroupfs trees do; this file makes and removes those itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cgroupfs import CgroupFS, detect_layout, kill
from cgroupfs.kill import KillReport, kill_cgroup, recover_intents, signal_cgroup
from tests.realhost import CGROUP_ROOT, CgroupSandbox, wait_for

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
MEMORY, UNIFIED, FREEZER = (CGROUP_ROOT / h for h in ("memory", "unified", "freezer"))

# Forks a child every 10 ms, 150 times; every child forks a grandchild at once, so forks come from many processes
# while the kill runs. Each process records "pid starttime" (starttime tells a reused PID from ours).
FORKER = r"""
import os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
def record():
    with open("/proc/self/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    os.write(out, f"{os.getpid()} {start}\n".encode())
record()
for _ in range(int(sys.argv[2])):
    if os.fork() == 0:
        record()
        if os.fork() == 0:
            record()
        time.sleep(1000)
        os._exit(0)
    time.sleep(0.01)
time.sleep(1000)
"""

TRAPS_SIGTERM = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nwhile True: time.sleep(1)"
IGNORES_SIGTERM = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(1)"

# An actuator that dies (SIGKILL, from its own hand) while the cgroup is frozen: refuse_pid's second look at a
# pid comes once the freeze has taken hold.
CRASH_WHILE_FROZEN = r"""
import os, signal, sys, time
from cgroupfs import CgroupFS, detect_layout
from cgroupfs.kill import kill_cgroup
seen = set()
def refuse(pid):
    if pid in seen:
        os.kill(os.getpid(), signal.SIGKILL)
    seen.add(pid)
    return None
kill_cgroup(CgroupFS(detect_layout()), sys.argv[1], sig=int(sys.argv[2]), deadline=time.monotonic() + 30,
            refuse_pid=refuse, intent_dir=sys.argv[3])
"""


def never(_pid: int) -> str | None:
    return None


def _walk_dirs(top: Path) -> list[Path]:
    return [Path(root) for root, _dirs, _files in os.walk(top)] if top.is_dir() else []


def _procs(top: Path) -> set[int]:
    pids: set[int] = set()
    for d in _walk_dirs(top):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return pids


@dataclass
class Host:
    """The `cgroups` sandbox plus v1-only paths (memory + freezer), and a cleanup that thaws and empties every
    tree of this test before any directory is removed."""

    cg: CgroupSandbox
    fs: CgroupFS
    procs: list[subprocess.Popen] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)  # made here; the sandbox removes its own

    def hybrid(self, rel: str) -> str:
        self.cg.mkdir(rel)
        return f"{self.cg.path}/{rel}"

    def v1only(self, rel: str) -> str:
        for h in (MEMORY, FREEZER):
            for d in (h / self.cg.name, h / self.cg.name / rel):
                if not d.is_dir():
                    d.mkdir()
                    self.dirs.append(d)
        return f"{self.cg.path}/{rel}"

    def spawn(self, path: str, argv: list[str]) -> subprocess.Popen:
        """Start argv in `path` in every hierarchy the path exists in (moved before exec)."""
        dirs = [d for h in (MEMORY, UNIFIED, FREEZER) if (d := h / path.lstrip("/")).is_dir()]

        def move() -> None:
            for d in dirs:
                (d / "cgroup.procs").write_text(str(os.getpid()))

        proc = subprocess.Popen(argv, preexec_fn=move, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def python(self, path: str, code: str, *args: str) -> subprocess.Popen:
        return self.spawn(path, [sys.executable, "-c", code, *args])

    def members_when(self, path: str, count: int) -> set[int]:
        def enough() -> set[int] | None:
            members = self.fs.members(path)
            return members if len(members) >= count else None

        return wait_for(enough, 30, f"{count} processes in {path}", interval=0.02)

    def _ours(self, pid: int) -> bool:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        return any((line.split(":", 2)[-1] + "/").startswith(f"/{self.cg.name}/") for line in text.splitlines())

    def cleanup(self) -> None:
        tops = [h / self.cg.name for h in (MEMORY, UNIFIED, FREEZER)]
        # Thaw first: a frozen v1 task does not die, and rmdir refuses a cgroup it is in.
        for d in _walk_dirs(FREEZER / self.cg.name):
            with contextlib.suppress(OSError):
                (d / "freezer.state").write_text("THAWED")
        for d in _walk_dirs(UNIFIED / self.cg.name):
            with contextlib.suppress(OSError):
                (d / "cgroup.freeze").write_text("0")
        # Every process in this test's trees is ours: started here or forked by what was started here.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                (UNIFIED / self.cg.name / "cgroup.kill").write_text("1")
            left = set().union(*(_procs(t) for t in tops))
            if not left:
                break
            for pid in left:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    if self._ours(pid):  # checked while the pidfd is held: not a reused PID
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                finally:
                    os.close(fd)
            time.sleep(0.05)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # our own child, unreaped, so the PID is still ours
            proc.wait()
        for d in sorted(self.dirs, key=lambda p: len(p.parts), reverse=True):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


@pytest.fixture
def host(cgroups: CgroupSandbox) -> Iterator[Host]:
    h = Host(cgroups, CgroupFS(detect_layout()))
    try:
        yield h
    finally:
        h.cleanup()


def kill_now(host: Host, path: str, refuse: Callable[[int], str | None] = never, **kw) -> KillReport:
    kw.setdefault("sig", signal.SIGKILL)
    return kill_cgroup(host.fs, path, deadline=time.monotonic() + 30, refuse_pid=refuse, **kw)


def alive(pid: int, start: str) -> bool:
    """Is the process recorded as (pid, starttime) still running? A reused PID has another start time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] not in ("Z", "X")


def freezer_state(path: str) -> str:
    return (FREEZER / path.lstrip("/") / "freezer.state").read_text().strip()


def v2_freeze(path: str) -> str:
    return (UNIFIED / path.lstrip("/") / "cgroup.freeze").read_text().strip()


def v2_events(path: str) -> dict[str, str]:
    text = (UNIFIED / path.lstrip("/") / "cgroup.events").read_text()
    return dict(line.split() for line in text.splitlines())


def sigterm_disposition(pid: int, line: str) -> bool:
    """Is SIGTERM in the `line` mask (SigCgt: caught, SigIgn: ignored) of /proc/pid/status?"""
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        if entry.startswith(line + ":"):
            return bool(int(entry.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def records(d: Path) -> list[Path]:
    return sorted(d.iterdir()) if d.exists() else []


# ---- cgroup.kill -----------------------------------------------------------------------------------------------


def test_cgroup_kill_empties_a_hybrid_cgroup(host, monkeypatch):
    path = host.hybrid("victim")
    shell = host.spawn(path, ["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
    sleeper = host.spawn(path, ["sleep", "1000"])
    members = host.members_when(path, 4)
    released: list[int] = []
    real_mrelease = kill.mrelease
    monkeypatch.setattr(kill, "mrelease", lambda fd: released.append(fd) or real_mrelease(fd))
    report = kill_now(host, path)
    assert len(released) == len(members)  # process_mrelease on every victim, through its pidfd
    assert report.mechanism == "cgroup.kill"
    assert report.emptied and report.remaining == [] and report.skipped == {}
    assert sorted(report.signalled) == sorted(members)
    assert shell.wait(timeout=10) == -signal.SIGKILL
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert host.fs.members(path) == set()
    assert v2_freeze(path) == "0"


def test_signal_cgroup_is_the_same_kill_without_keywords(host):
    path = host.hybrid("victim")
    sleeper = host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 1)
    report = signal_cgroup(host.fs, path, signal.SIGKILL, time.monotonic() + 30, never)
    assert report.mechanism == "cgroup.kill" and report.signalled == [sleeper.pid] and report.emptied
    assert sleeper.wait(timeout=10) == -signal.SIGKILL


# ---- a forking workload: nothing escapes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "mechanism"),
    [("hybrid", "cgroup.kill"), ("hybrid, no cgroup.kill", "freeze+signal (v2)"), ("v1", "freezer+signal (v1)")],
)
def test_fork_loop_is_killed_with_nothing_escaped(host, tmp_path, monkeypatch, layout, mechanism):
    if layout.endswith("no cgroup.kill"):
        monkeypatch.setattr(kill, "CGROUP_KILL", "cgroup.kill-not-on-this-kernel")  # a 5.2-5.13 kernel
    path = host.v1only("forker") if layout == "v1" else host.hybrid("forker")
    log, intents = tmp_path / "pids", tmp_path / "intents"
    host.python(path, FORKER, str(log), "150")
    host.members_when(path, 40)  # forking goes on for a second more: the kill lands in the middle of it
    report = kill_now(host, path, intent_dir=intents)
    assert report.mechanism == mechanism, report.notes
    assert report.emptied and report.remaining == []
    assert host.fs.members(path) == set()
    seen = [(int(pid), start) for pid, start in (line.split() for line in log.read_text().splitlines())]
    assert len(seen) >= 40
    # Dead, or on its way: a process leaves cgroup.procs a moment before it is a zombie.
    wait_for(lambda: not [p for p, s in seen if alive(p, s)], 10, "every process the fork loop made to die")
    assert records(intents) == []
    if layout == "v1":
        assert freezer_state(path) == "THAWED"
    else:
        assert v2_freeze(path) == "0"


# ---- refused processes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hybrid", "v1"])
def test_a_refused_member_forces_the_per_pid_route(host, tmp_path, monkeypatch, layout):
    path = host.v1only("victim") if layout == "v1" else host.hybrid("victim")
    spared, doomed = host.spawn(path, ["sleep", "1000"]), host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 2)
    writes: list[tuple[Path, str]] = []
    monkeypatch.setattr(kill, "_write_control", lambda p, v: writes.append((p, v)))
    report = kill_now(host, path, lambda pid: "stand-in for PID 1" if pid == spared.pid else None,
                      intent_dir=tmp_path / "intents")
    assert report.mechanism == "signal loop"
    assert writes == []  # no cgroup.kill, no freeze: either would have hit the refused process too
    assert report.signalled == [doomed.pid]
    assert report.skipped == {spared.pid: "stand-in for PID 1"}
    assert report.remaining == [] and not report.emptied  # the spared one is still there, on purpose
    assert any("refused" in n for n in report.notes)
    assert doomed.wait(timeout=10) == -signal.SIGKILL
    assert spared.poll() is None


# ---- the freezer is always thawed ------------------------------------------------------------------------------


def test_v1_freezer_kill_thaws_and_drops_its_intent_record(host, tmp_path):
    path = host.v1only("victim")
    procs = [host.spawn(path, ["sleep", "1000"]) for _ in range(3)]
    members = host.members_when(path, 3)
    report = kill_now(host, path, intent_dir=tmp_path / "intents")
    assert report.mechanism == "freezer+signal (v1)"
    assert sorted(report.signalled) == sorted(members) and report.emptied
    assert all(p.wait(timeout=10) == -signal.SIGKILL for p in procs)
    assert freezer_state(path) == "THAWED"
    assert records(tmp_path / "intents") == []


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_freezer_is_thawed_when_the_kill_fails_midway(host, tmp_path, layout):
    # v2: cgroup.kill cannot send SIGTERM, so SIGTERM takes the cgroup2 freeze.
    path = host.v1only("victim") if layout == "v1" else host.hybrid("victim")
    sig = signal.SIGKILL if layout == "v1" else signal.SIGTERM
    proc = host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 1)
    looks: Counter[int] = Counter()
    state_when_raised: list[str] = []

    def refuse(pid: int) -> str | None:
        looks[pid] += 1
        if looks[pid] > 1:  # the second look comes once frozen
            state_when_raised.append(freezer_state(path) if layout == "v1" else v2_events(path)["frozen"])
            raise RuntimeError("refuse_pid broke mid-kill")
        return None

    with pytest.raises(RuntimeError, match="mid-kill"):
        kill_now(host, path, refuse, sig=sig, intent_dir=tmp_path / "intents")
    assert state_when_raised == (["FROZEN"] if layout == "v1" else ["1"])
    if layout == "v1":
        assert freezer_state(path) == "THAWED"
    else:
        assert v2_freeze(path) == "0" and v2_events(path)["frozen"] == "0"
    assert records(tmp_path / "intents") == []
    assert proc.poll() is None  # the exception came before any signal


def test_freeze_that_does_not_take_hold_is_undone_and_the_loop_takes_over(host, tmp_path, monkeypatch):
    path = host.v1only("victim")
    proc = host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 1)
    # Tasks in uninterruptible sleep keep a v1 cgroup FREEZING for as long as they sleep; play that.
    monkeypatch.setattr(kill, "_wait_frozen", lambda control, until: False)
    report = kill_now(host, path, intent_dir=tmp_path / "intents")
    assert report.mechanism == "signal loop"
    assert any("did not freeze" in n for n in report.notes)
    assert freezer_state(path) == "THAWED"
    assert records(tmp_path / "intents") == []
    assert proc.wait(timeout=10) == -signal.SIGKILL and report.emptied


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_recover_intents_thaws_what_a_crashed_actuator_left_frozen(host, tmp_path, layout):
    path = host.v1only("victim") if layout == "v1" else host.hybrid("victim")
    sig = signal.SIGKILL if layout == "v1" else signal.SIGTERM
    proc = host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 1)
    intents = tmp_path / "intents"
    crashed = subprocess.run([sys.executable, "-c", CRASH_WHILE_FROZEN, path, str(int(sig)), str(intents)],
                             cwd=REPO, timeout=120, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    control = FREEZER / path.lstrip("/") / "freezer.state" if layout == "v1" else UNIFIED / path.lstrip("/") / "cgroup.freeze"
    assert control.read_text().strip() == ("FROZEN" if layout == "v1" else "1")  # left frozen by the crash
    [record] = records(intents)
    assert json.loads(record.read_text())["control"] == str(control)
    assert recover_intents(intents) == [str(control)]
    assert control.read_text().strip() == ("THAWED" if layout == "v1" else "0")
    assert records(intents) == []
    assert proc.poll() is None  # it crashed before signalling anything
    assert recover_intents(intents) == []


def test_recover_intents_writes_nothing_but_a_cgroup_freeze_file(tmp_path):
    intents = tmp_path / "intents"
    intents.mkdir()
    decoy = tmp_path / "freezer.state"  # the right name, but not in a cgroup directory
    decoy.write_text("keep me")
    (intents / "freeze-decoy.json").write_text(json.dumps({"control": str(decoy)}))
    (intents / "freeze-garbled.json").write_text("{not json")
    (intents / "freeze-halfway.tmp").write_text("")
    gone = CGROUP_ROOT / "freezer" / f"pyoomd-test-{os.getpid()}-gone" / "freezer.state"
    (intents / "freeze-gone.json").write_text(json.dumps({"control": str(gone)}))
    assert recover_intents(intents) == []
    assert decoy.read_text() == "keep me"
    assert records(intents) == []
    assert recover_intents(tmp_path / "never-made") == []


# ---- grace: SIGTERM first --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "term", "final"), [
    ("hybrid", "freeze+signal (v2)", "cgroup.kill"),
    ("v1", "freezer+signal (v1)", "freezer+signal (v1)"),
])
def test_grace_gives_sigterm_first_and_sigkill_only_to_what_stays(host, tmp_path, layout, term, final):
    path = host.v1only("victim") if layout == "v1" else host.hybrid("victim")
    polite = host.python(path, TRAPS_SIGTERM)
    stubborn = host.python(path, IGNORES_SIGTERM)
    wait_for(lambda: sigterm_disposition(polite.pid, "SigCgt") and sigterm_disposition(stubborn.pid, "SigIgn"),
             30, "both to set up their SIGTERM handling")
    report = kill_now(host, path, grace=3.0, intent_dir=tmp_path / "intents")
    assert polite.wait(timeout=10) == 0  # left on SIGTERM, by itself: never SIGKILLed
    assert stubborn.wait(timeout=10) == -signal.SIGKILL
    assert sorted(report.signalled) == sorted([polite.pid, stubborn.pid])
    assert report.escalated == [stubborn.pid]
    assert report.mechanism == final
    assert report.notes[0].startswith(f"SIGTERM via {term}")
    assert report.emptied and report.remaining == []
    assert records(tmp_path / "intents") == []


def test_grace_with_everyone_leaving_on_sigterm_sends_no_sigkill(host):
    path = host.hybrid("victim")
    polite = host.python(path, TRAPS_SIGTERM)
    wait_for(lambda: sigterm_disposition(polite.pid, "SigCgt"), 30, "the SIGTERM handler")
    report = kill_now(host, path, grace=30.0)
    assert polite.wait(timeout=10) == 0
    assert report.escalated == [] and report.emptied
    assert report.mechanism == "freeze+signal (v2)"


# ---- dry-run ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("layout", "mechanism"), [("hybrid", "cgroup.kill"), ("v1", "freezer+signal (v1)")])
def test_dry_run_freezes_and_signals_nothing(host, tmp_path, monkeypatch, layout, mechanism):
    path = host.v1only("victim") if layout == "v1" else host.hybrid("victim")
    proc = host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 1)
    writes: list[tuple[Path, str]] = []
    sent: list[tuple[int, int]] = []
    with monkeypatch.context() as m:
        m.setattr(kill, "_write_control", lambda p, v: writes.append((p, v)))
        m.setattr(signal, "pidfd_send_signal", lambda fd, sig, *a: sent.append((fd, sig)))
        m.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
        report = kill_now(host, path, dry_run=True, intent_dir=tmp_path / "intents")
    assert report.signalled == [proc.pid]
    assert report.mechanism == mechanism
    assert writes == [] and sent == []
    assert not (tmp_path / "intents").exists()
    assert not report.emptied
    assert proc.poll() is None
    assert (freezer_state(path) == "THAWED") if layout == "v1" else (v2_freeze(path) == "0")


def test_dry_run_with_a_refused_member_names_the_per_pid_route(host):
    path = host.hybrid("victim")
    spared, other = host.spawn(path, ["sleep", "1000"]), host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 2)
    report = kill_now(host, path, lambda pid: "PID 1" if pid == spared.pid else None, dry_run=True)
    assert report.mechanism == "signal loop"
    assert report.signalled == [other.pid] and report.skipped == {spared.pid: "PID 1"}
    assert spared.poll() is None and other.poll() is None


# ---- kernels without pidfd_open --------------------------------------------------------------------------------


def _no_pidfd_open(pid: int, flags: int = 0) -> int:
    raise OSError(errno.ENOSYS, "pidfd_open: function not implemented")


def test_without_pidfds_frozen_cgroups_are_killed_by_pid_without_a_race(host, tmp_path, monkeypatch):
    path = host.v1only("victim")
    proc = host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 1)
    with monkeypatch.context() as m:
        m.setattr(kill, "_have_pidfd", None)
        m.setattr(os, "pidfd_open", _no_pidfd_open)
        report = kill_now(host, path, intent_dir=tmp_path / "intents")
        assert kill._have_pidfd is False  # detected once, then not tried again
    assert report.mechanism == "freezer+signal (v1)"
    assert report.signalled == [proc.pid] and report.emptied
    assert not any("reused" in n for n in report.notes)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert freezer_state(path) == "THAWED"


def test_without_pidfds_or_freeze_the_loop_names_its_race(host, monkeypatch):
    path = host.hybrid("victim")
    spared, doomed = host.spawn(path, ["sleep", "1000"]), host.spawn(path, ["sleep", "1000"])
    host.members_when(path, 2)
    with monkeypatch.context() as m:
        m.setattr(kill, "_have_pidfd", None)
        m.setattr(os, "pidfd_open", _no_pidfd_open)
        report = kill_now(host, path, lambda pid: "PID 1" if pid == spared.pid else None)
    assert report.mechanism == "signal loop"
    assert any("reused" in n for n in report.notes)
    assert doomed.wait(timeout=10) == -signal.SIGKILL
    assert spared.poll() is None
