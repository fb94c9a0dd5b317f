"""cgroupfs.events on the real kernel: PSI triggers, vmpressure and usage thresholds on a page-cache thrasher,
cgroup removal, and waiting on descriptors handed to an unprivileged process over SCM_RIGHTS.

Deadlines are generous and only bound the wait: nothing here asserts how fast the kernel is.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cgroupfs.events import (
    EventSource,
    PsiTrigger,
    open_psi_trigger,
    open_usage_threshold,
    open_vmpressure,
    wait_any,
)
from tests.realhost import CGROUP_ROOT, CgroupSandbox, require_real_host, wait_for

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
DEADLINE = 30.0
LIMIT = 64 << 20


def memory_dir(cg: CgroupSandbox, rel: str) -> Path:
    return CGROUP_ROOT / "memory" / cg.name / rel


def unified_dir(cg: CgroupSandbox, rel: str) -> Path:
    return CGROUP_ROOT / "unified" / cg.name / rel


def collect(sources: list[EventSource], until, timeout: float) -> float:
    """Wait on `sources` until `until()` holds or `timeout` passes; return the seconds waited."""
    start = time.monotonic()
    while not until():
        left = timeout - (time.monotonic() - start)
        if left <= 0:
            break
        wait_any(sources, min(left, 1.0))
    return time.monotonic() - start


def rmdir_when_empty(d: Path) -> None:
    # The killed workload leaves its cgroup a moment after it is reaped: rmdir refuses (EBUSY) until then.
    wait_for(lambda: _try_rmdir(d), 10, f"rmdir {d}", interval=0.1)


def _try_rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except OSError:
        return False
    return True


def test_cgroup_psi_triggers_fire_on_thrasher(cgroups):
    cgroups.mkdir("t", memory_limit=LIMIT)
    pressure = unified_dir(cgroups, "t") / "memory.pressure"
    with open_psi_trigger(pressure, "full", 200_000, 2_000_000) as full, \
            open_psi_trigger(pressure, "some", 200_000, 2_000_000) as some:
        assert full.note is None and some.note is None  # 2 s windows are accepted with or without privilege
        assert (full.stall_us, full.window_us) == (200_000, 2_000_000)
        sources = [full, some]
        assert wait_any(sources, 0) == []
        cgroups.thrasher("t")
        collect(sources, lambda: full.count and some.count, DEADLINE)
        assert full.count >= 1, f"no PSI full event within {DEADLINE}s: {pressure.read_text()}"
        assert some.count >= 1, f"no PSI some event within {DEADLINE}s: {pressure.read_text()}"
        assert full.last_event is not None and abs(full.last_event - time.time()) < DEADLINE + 5
        assert not full.dead and not some.dead
        assert "full 200ms/2s" in full.describe()


def test_system_trigger_nul_terminated_and_window_rounded_up():
    require_real_host()
    # /proc/pressure/memory overwrites the last byte of an unterminated write: a 2 s window would read as 200 ms
    # and be refused. Accepted here means the trigger went in NUL-terminated.
    with open_psi_trigger("/proc/pressure/memory", "full", 200_000, 2_000_000) as t:
        assert t.note is None and t.window_us == 2_000_000
        assert not t.dead
    with open_psi_trigger("/proc/pressure/memory", "some", 150_000, 500_000) as t:
        if t.note is None:  # a host with CAP_SYS_RESOURCE takes the 500 ms window as asked
            assert (t.stall_us, t.window_us) == (150_000, 500_000)
        else:
            assert (t.stall_us, t.window_us) == (600_000, 2_000_000)  # same 30 % of the window
            assert "500ms" in t.note and "2s" in t.note and "CAP_SYS_RESOURCE" in t.note and "30%" in t.note
            assert "some 600ms/2s" in t.describe()
    # An odd window rounds up to the next multiple of 2 s, the stall scaled with it.
    with open_psi_trigger("/proc/pressure/memory", "some", 100_000, 3_000_000) as t:
        if t.note is not None:
            assert (t.stall_us, t.window_us) == (133_333, 4_000_000)


def test_idle_cgroup_trigger_stays_quiet(cgroups):
    cgroups.mkdir("idle", memory_limit=LIMIT)
    cgroups.sleeper("idle")
    with open_psi_trigger(unified_dir(cgroups, "idle") / "memory.pressure", "some", 100_000, 2_000_000) as psi, \
            open_vmpressure(memory_dir(cgroups, "idle"), "low") as vm:
        waited = collect([psi, vm], lambda: psi.count or vm.count, 5.0)
        assert waited >= 5.0
        assert (psi.count, vm.count) == (0, 0)
        assert psi.last_event is None and not psi.dead and not vm.dead


def test_vmpressure_events_and_counter_sums(cgroups):
    cgroups.mkdir("t", memory_limit=LIMIT)
    with open_vmpressure(memory_dir(cgroups, "t"), "medium") as vm:
        assert vm.note is None, vm.note  # this kernel knows ",hierarchy"
        assert vm.describe().endswith("medium,hierarchy")
        cgroups.thrasher("t")
        total = 0

        def batched() -> bool:
            # Left unread for a while, the eventfd counter holds several events and one read returns them all.
            nonlocal total
            time.sleep(0.5)
            n = vm.consume()
            total += n
            return n > 1

        wait_for(batched, DEADLINE, "a vmpressure read returning more than one event")
        assert vm.count == total > 1
        assert vm.last_event is not None and not vm.dead


def test_usage_threshold_fires_on_thrasher(cgroups):
    cgroups.mkdir("t", memory_limit=LIMIT)
    with open_usage_threshold(memory_dir(cgroups, "t"), 48 << 20) as th:
        cgroups.thrasher("t")
        collect([th], lambda: th.count, DEADLINE)
        assert th.count >= 1, "usage never crossed 48 MiB under a 64 MiB limit"
        assert int((memory_dir(cgroups, "t") / "memory.usage_in_bytes").read_text()) > 0


def test_removed_cgroup_marks_sources_dead(cgroups):
    cgroups.mkdir("t", memory_limit=LIMIT)
    psi = open_psi_trigger(unified_dir(cgroups, "t") / "memory.pressure", "some", 200_000, 2_000_000)
    vm = open_vmpressure(memory_dir(cgroups, "t"), "low")
    th = open_usage_threshold(memory_dir(cgroups, "t"), 48 << 20)
    sources = [psi, vm, th]
    try:
        proc = cgroups.thrasher("t")
        collect(sources, lambda: vm.count and th.count, DEADLINE)
        assert vm.count and th.count
        proc.kill()  # our own child, by PID, not yet reaped
        proc.wait()
        for s in sources:
            s.consume()  # drain what came before the kill
        before = {s.describe(): s.count for s in sources}
        rmdir_when_empty(memory_dir(cgroups, "t"))
        rmdir_when_empty(unified_dir(cgroups, "t"))
        collect(sources, lambda: all(s.dead for s in sources), DEADLINE)
        assert [s.dead for s in sources] == [True, True, True]
        # The kernel's removal signal on the eventfd is not an event, nor is the PSI fd's POLLERR|POLLPRI.
        assert {s.describe(): s.count for s in sources} == before
        assert wait_any(sources, 0) == []  # dead sources are left out, not polled again
    finally:
        for s in sources:
            s.close()
    assert all(s.closed for s in sources)


def test_bad_arguments_raise_clear_value_errors(tmp_path):
    # Checked before anything is opened: the paths need not exist.
    with pytest.raises(ValueError, match=r"level 'urgent' is not one of low, medium, critical"):
        open_vmpressure(tmp_path, "urgent")
    with pytest.raises(ValueError, match=r"mode 'global'"):
        open_vmpressure(tmp_path, "low", mode="global")
    with pytest.raises(ValueError, match=r"kind 'most'"):
        open_psi_trigger(tmp_path / "memory.pressure", "most", 100_000, 2_000_000)
    with pytest.raises(ValueError, match=r"window 12s outside 500ms..10s"):
        open_psi_trigger(tmp_path / "memory.pressure", "some", 100_000, 12_000_000)
    with pytest.raises(ValueError, match=r"stall 3s"):
        open_psi_trigger(tmp_path / "memory.pressure", "some", 3_000_000, 2_000_000)
    with pytest.raises(ValueError, match=r"positive"):
        open_usage_threshold(tmp_path, 0)


# The receiving side of the hand-off: drops to nobody (no capabilities at all) before it gets the descriptors,
# rebuilds the sources and waits until each fired once.
RECEIVER = r"""
import json, os, socket, sys, time
from cgroupfs.events import adopt, wait_any

sock = socket.socket(fileno=int(sys.argv[1]))
os.setgroups([])
os.setresgid(65534, 65534, 65534)
os.setresuid(65534, 65534, 65534)
capeff = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff:"))
msg, fds, _, _ = socket.recv_fds(sock, 4096, 8)
sources, i = [], 0
for kind, n, description in json.loads(msg):
    sources.append(adopt(kind, fds[i:i + n], description))
    i += n
sock.sendall(b"ready")
deadline = time.monotonic() + float(sys.argv[2])
while not all(s.count for s in sources) and time.monotonic() < deadline:
    wait_any(sources, 1)
print(json.dumps({"uid": os.getuid(), "capeff": capeff,
                  "counts": {s.describe(): s.count for s in sources}, "dead": [s.dead for s in sources]}))
"""


def test_descriptors_handed_to_unprivileged_process_can_be_waited_on(cgroups):
    cgroups.mkdir("t", memory_limit=LIMIT)
    psi = open_psi_trigger(unified_dir(cgroups, "t") / "memory.pressure", "some", 200_000, 2_000_000)
    vm = open_vmpressure(memory_dir(cgroups, "t"), "medium")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    receiver = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(theirs.fileno()), str(DEADLINE)],
        cwd=REPO, pass_fds=[theirs.fileno()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        theirs.close()
        spec = [(s.kind, len(s.fds()), s.describe()) for s in (psi, vm)]
        socket.send_fds(ours, [json.dumps(spec).encode()], psi.fds() + vm.fds())
        # The opener keeps nothing: the trigger and the registration now live on the receiver's descriptors only.
        psi.close()
        vm.close()
        ours.settimeout(DEADLINE)
        assert ours.recv(5) == b"ready", receiver.stderr.read() if receiver.poll() is not None else ""
        cgroups.thrasher("t")
        out, err = receiver.communicate(timeout=DEADLINE + 30)
    finally:
        if receiver.poll() is None:
            receiver.kill()  # our own child, by PID
            receiver.wait()
        ours.close()
    assert receiver.returncode == 0, err
    report = json.loads(out)
    assert report["uid"] == 65534 and int(report["capeff"], 16) == 0
    assert all(n >= 1 for n in report["counts"].values()), report
    assert report["dead"] == [False, False]


def test_closed_source_is_inert():
    require_real_host()
    with open_psi_trigger("/proc/pressure/memory", "full", 2_000_000, 2_000_000) as t:
        assert isinstance(t, PsiTrigger) and t.poll_events == select.POLLPRI
        assert t.consume() == 0 and t.fired == 0 and not t.dead  # a whole window of full stall: never here
    assert t.closed and t.consume() == 0
    t.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        t.fileno()
