"""Kill every process of a cgroup with the strongest mechanism the cgroup has on this host.

Mechanisms, strongest first (`KillReport.mechanism` names the one used):

- "cgroup.kill" (cgroup2, Linux 5.14+): one write SIGKILLs the whole subtree inside the kernel, forks in flight
  included, so nothing can escape. Used for SIGKILL when the path has a verified cgroup2 twin.
- "freeze+signal (v2)": cgroup.freeze (5.2+) stops every task, so the member list cannot change under us while
  we signal them one by one; then thaw. Used for other signals (SIGTERM) and on kernels without cgroup.kill.
  A SIGKILLed task leaves a v2-frozen cgroup at once; other signals are acted on after the thaw.
- "freezer+signal (v1)": the same with the v1 freezer controller (a v1-only path: docker's and kubelet's
  cgroupfs trees). Frozen v1 tasks do not act even on SIGKILL until thawed, so none can exit (and have its PID
  reused) while we signal.
- "signal loop": list the members, signal them, look again until the cgroup is empty or the deadline passes.
  A process that forks faster than the loop lists can stay ahead of it until the deadline.

A cgroup holding any process `refuse_pid` refuses (PID 1, the daemon itself) or a kernel thread is neither
killed through cgroup.kill nor frozen (that would kill or freeze the refused one too): it gets the signal loop,
which leaves the refused processes alone.

Identity: each process is signalled through a pidfd, opened first and then checked (through /proc, while the
pidfd is held) to still be in the target. A PID reused before the open shows up elsewhere and is skipped; one
reused after the open does not matter, as the pidfd still names the old process. Kernels before 5.3 have no
pidfd_open: there, plain kill(2) is used only while the cgroup is frozen (a frozen task cannot exit, bar a SIGKILL
from someone else on cgroup2, so its PID cannot be reused), and the signal loop says in its notes that a PID can
be reused between the check and the kill.

Every freeze is announced first by an intent record in `intent_dir` and undone in a `finally`; an actuator
killed while a cgroup is frozen thaws it on its next start through `recover_intents`. Only the actuator imports
this module.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import platform
import select
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

from cgroupfs.parse import parse_flat_keyed, parse_pids
from cgroupfs.tree import CgroupFS

log = logging.getLogger(__name__)

PF_KTHREAD = 0x00200000

MECH_KILL = "cgroup.kill"
MECH_FREEZE_V2 = "freeze+signal (v2)"
MECH_FREEZER_V1 = "freezer+signal (v1)"
MECH_LOOP = "signal loop"
MECH_NONE = "none"

CGROUP_KILL = "cgroup.kill"  # a module constant so that tests can play a kernel before 5.14
FREEZE_TIMEOUT = 2.0  # tasks stuck in reclaim or on I/O can hold a freeze off for long; then we signal unfrozen
WAKE_INTERVAL = 0.25  # longest wait before listing members again: a process can be moved in without any event
TWIN_TRIES = 3  # a busy cgroup forks between the reads of its two directories; look again before giving up

# Control file -> (freeze value, thaw value).
_FREEZE_FILES = {"freezer.state": ("FROZEN", "THAWED"), "cgroup.freeze": ("1", "0")}
_INTENT_PREFIX = "freeze-"

# process_mrelease(2) (5.15+): reap a SIGKILLed process's memory at once, even while it is stuck on its way out.
_MRELEASE_NR = {"x86_64": 448, "aarch64": 448}.get(platform.machine())
_have_mrelease: bool | None = None if _MRELEASE_NR is not None else False
_have_pidfd: bool | None = None  # None until the first pidfd_open tells us
_libc_handle: ctypes.CDLL | None = None


class KillReport(msgspec.Struct):
    signalled: list[int] = msgspec.field(default_factory=list)  # every pid signalled (or, in dry-run, to be)
    skipped: dict[int, str] = msgspec.field(default_factory=dict)  # pid -> why it was left alone
    remaining: list[int] = msgspec.field(default_factory=list)  # still present when the deadline passed
    rounds: int = 0  # member listings made
    mechanism: str = MECH_NONE  # how the (last) signal was delivered; see the module docstring
    emptied: bool = False  # the cgroup held no process at all when we returned
    notes: list[str] = msgspec.field(default_factory=list)  # fallbacks taken, races left open: for the operator
    escalated: list[int] = msgspec.field(default_factory=list)  # with grace: pids still there for the SIGKILL


def is_kernel_thread(pid: int, proc: str = "/proc") -> bool:
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    try:
        return bool(int(stat.rsplit(")", 1)[1].split()[6]) & PF_KTHREAD)
    except (IndexError, ValueError):
        return False  # a process caught exiting leaves a truncated stat; a kernel thread never does


# ---- kernel interfaces ---------------------------------------------------------------------------------------


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for `pid`, or None on a kernel without pidfd_open. ProcessLookupError if it is gone."""
    global _have_pidfd
    if _have_pidfd is False:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            _have_pidfd = False
            return None
        raise
    _have_pidfd = True
    return fd


def _libc() -> ctypes.CDLL:
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
        _libc_handle.syscall.restype = ctypes.c_long
    return _libc_handle


def mrelease(pidfd: int) -> str | None:
    """process_mrelease(pidfd, 0); None, or a note when it failed for an unexpected reason."""
    global _have_mrelease
    if _have_mrelease is False:
        return None
    if _libc().syscall(ctypes.c_long(_MRELEASE_NR), ctypes.c_int(pidfd), ctypes.c_uint(0)) == 0:
        _have_mrelease = True
        return None
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        _have_mrelease = False  # kernel before 5.15: the victim frees its memory as it exits
        return None
    _have_mrelease = True
    # EINVAL: not dying (yet, or it never got the SIGKILL); ESRCH: already gone. EAGAIN/EINTR: the reaper
    # could not take the mm now; the exit frees it anyway.
    if err in (errno.EINVAL, errno.ESRCH, errno.EAGAIN, errno.EINTR):
        return None
    return f"process_mrelease: {os.strerror(err)}"


def _write_control(path: Path, value: str) -> None:
    """Every write this module makes to a cgroup file goes through here (tests watch it in dry-run)."""
    with open(path, "w") as f:
        f.write(value)


def _procs_under(d: Path) -> set[int]:
    """Every process in the subtree of directory `d` of any hierarchy, read afresh."""
    pids: set[int] = set()
    for root, _dirs, _files in os.walk(d):
        try:
            with open(Path(root) / "cgroup.procs") as f:
                pids.update(parse_pids(f.read()))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV):
                raise
    return pids


class _Events:
    """A cgroup2 directory's cgroup.events: read it, and sleep until it changes (POLLPRI)."""

    def __init__(self, d: Path) -> None:
        self.fd = os.open(d / "cgroup.events", os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> dict[str, int]:
        # Reading re-arms the notification: poll reports POLLPRI again only after the next change.
        try:
            return parse_flat_keyed(os.pread(self.fd, 4096, 0).decode())
        except OSError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                # The cgroup was removed (systemd removes a unit's cgroup once it is empty): nothing is in it.
                return {"populated": 0, "frozen": 0}
            raise

    def close(self) -> None:
        os.close(self.fd)


# ---- intent records ------------------------------------------------------------------------------------------


def _write_intent(intent_dir: Path, control: Path, cgroup: str) -> Path:
    """Record, before freezing, which file to write to thaw again, for `recover_intents` after a crash."""
    intent_dir.mkdir(parents=True, exist_ok=True)
    record = {"control": str(control), "cgroup": cgroup, "pid": os.getpid(), "time": time.time()}
    final = intent_dir / f"{_INTENT_PREFIX}{uuid.uuid4().hex}.json"
    tmp = final.with_suffix(".tmp")
    # Written aside and renamed so a crash never leaves half a record. No fsync: a freeze does not outlive a
    # reboot, only an actuator crash, and the page cache survives that.
    tmp.write_text(json.dumps(record))
    os.replace(tmp, final)
    return final


def recover_intents(intent_dir: str | Path) -> list[str]:
    """Thaw every cgroup that a leftover intent record names (an actuator died while it was frozen), and delete
    the records. Returns the control files written. Call it once at start-up, before any kill."""
    d = Path(intent_dir)
    thawed: list[str] = []
    try:
        entries = sorted(d.iterdir())
    except FileNotFoundError:
        return thawed
    for rec_path in entries:
        if not rec_path.name.startswith(_INTENT_PREFIX):
            continue
        if rec_path.suffix == ".tmp":  # died while writing it: it had not frozen anything yet
            rec_path.unlink(missing_ok=True)
            continue
        try:
            control = Path(json.loads(rec_path.read_text())["control"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("intent record %s unreadable (%s): removed without thawing anything", rec_path, e)
            rec_path.unlink(missing_ok=True)
            continue
        # Only ever write a thaw value, and only to a freeze file inside a cgroup directory: the record names a
        # path, and a record is not trusted to name anything else.
        if control.name not in _FREEZE_FILES or not (control.parent / "cgroup.procs").exists():
            if control.parent.exists():
                log.warning("intent record %s names %s, not a cgroup freeze file: removed", rec_path, control)
            rec_path.unlink(missing_ok=True)  # or the cgroup is gone, and with it the freeze
            continue
        try:
            _write_control(control, _FREEZE_FILES[control.name][1])
        except FileNotFoundError:
            pass  # removed meanwhile: nothing left frozen
        except OSError as e:
            log.warning("cannot thaw %s from intent record %s: %s (record kept)", control, rec_path, e)
            continue
        else:
            thawed.append(str(control))
        rec_path.unlink(missing_ok=True)
    return thawed


# ---- the kill ------------------------------------------------------------------------------------------------


class _Kill:
    """One kill of one cgroup: the pidfds it holds, the report it fills."""

    def __init__(
        self,
        fs: CgroupFS,
        path: str,
        refuse_pid: Callable[[int], str | None],
        deadline: float,
        intent_dir: Path | None,
        reap_memory: bool = True,
    ) -> None:
        self.fs = fs
        self.reap_memory = reap_memory
        self.path = path
        self.refuse_pid = refuse_pid
        self.deadline = deadline
        self.intent_dir = intent_dir
        self.report = KillReport()
        self.fds: dict[int, int] = {}  # pid -> pidfd, for processes not yet seen to exit
        self.handled: set[int] = set()  # pids signalled (or found gone) in the current phase
        self.sent: list[int] = []  # pids signalled in the current phase
        self.unified: Path | None = None  # the verified cgroup2 twin, once looked up
        self._noted: set[str] = set()

    def note(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            self.report.notes.append(text)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # ---- members -----------------------------------------------------------------------------------------

    def refusal(self, pid: int) -> str | None:
        reason = self.refuse_pid(pid)
        if reason is None and is_kernel_thread(pid, str(self.fs.proc)):
            reason = "kernel thread"
        return reason

    def check(self, pids: set[int]) -> list[int]:
        """Record the refused among `pids` in the report; return the others, sorted."""
        ok: list[int] = []
        for pid in sorted(pids):
            if pid in self.report.skipped:
                continue
            reason = self.refusal(pid)
            if reason is None:
                ok.append(pid)
            else:
                self.report.skipped[pid] = reason
        return ok

    def members(self) -> set[int]:
        self.report.rounds += 1
        return self.fs.members(self.path)

    def twin(self, which: str) -> Path | None:
        h = self.fs.layout.unified if which == "unified" else self.fs.layout.v1(which)
        for _ in range(TWIN_TRIES):
            d = self.fs.twin(self.path, which)
            if d is not None:
                return d
            if h is None or not h.dir_of(self.path).is_dir():
                return None
        self.note(f"the {which} directory of {self.path} holds other processes than the path: not used")
        return None

    def choose(self, sig: int) -> tuple[str, Path | None]:
        """The strongest mechanism for `sig` on this path, and the directory it works on."""
        self.unified = self.twin("unified")
        if self.unified is not None:
            if sig == signal.SIGKILL and (self.unified / CGROUP_KILL).exists():
                return MECH_KILL, self.unified
            if (self.unified / "cgroup.freeze").exists():
                return MECH_FREEZE_V2, self.unified
        freezer = self.twin("freezer")
        if freezer is not None and (freezer / "freezer.state").exists():
            return MECH_FREEZER_V1, freezer
        return MECH_LOOP, None

    # ---- signalling one process --------------------------------------------------------------------------

    def pidfd(self, pid: int) -> int | None:
        """The held pidfd of `pid`, opened if needed; None without pidfd support. ProcessLookupError if gone."""
        fd = self.fds.get(pid)
        if fd is None:
            fd = _open_pidfd(pid)
            if fd is not None:
                self.fds[pid] = fd
        return fd

    def drop(self, pid: int) -> None:
        fd = self.fds.pop(pid, None)
        if fd is not None:
            os.close(fd)

    def signal_one(self, pid: int, sig: int, frozen: bool) -> int | None:
        """Signal `pid` if it is still the target's; return its pidfd when SIGKILLed through one (to release
        its memory), else None."""
        self.handled.add(pid)
        try:
            fd = self.pidfd(pid)
        except ProcessLookupError:
            return None
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                self.handled.discard(pid)  # try again in a later round, once exited ones are closed
                self.note(f"out of file descriptors for pidfds ({e.strerror}): signalling in rounds")
                return None
            raise
        # Checked while the pidfd is held: a reused PID shows its new process, which lives elsewhere.
        if not self.fs.pid_in(pid, self.path):
            self.drop(pid)
            return None
        try:
            if fd is not None:
                signal.pidfd_send_signal(fd, sig)
            else:
                if not frozen:
                    self.note("no pidfd_open (kernel before 5.3) and no freezer: kill(2) by PID, a PID reused "
                              "between the check and the kill would be hit")
                os.kill(pid, sig)
        except ProcessLookupError:
            self.drop(pid)
            return None
        self.signalled(pid)
        return fd if sig == signal.SIGKILL else None

    def signalled(self, pid: int) -> None:
        if pid not in self.sent:
            self.sent.append(pid)
        if pid not in self.report.signalled:
            self.report.signalled.append(pid)

    def release(self, fds: list[int]) -> None:
        if not self.reap_memory:
            return
        for fd in fds:
            problem = mrelease(fd)
            if problem:
                self.note(problem)

    # ---- mechanisms --------------------------------------------------------------------------------------

    def cgroup_kill(self, d: Path, pids: list[int]) -> bool:
        """SIGKILL the subtree through cgroup.kill; False if the kernel refused it (then try another way)."""
        present: list[int] = []
        for pid in pids:
            # Held across the kill: to release the victims' memory, and to know which of the listed were
            # still there (one that exited meanwhile was not killed by us).
            try:
                fd = self.pidfd(pid)
            except ProcessLookupError:
                continue
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                fd = None  # the kill does not need it; only its memory is released later, by the exit
            if fd is None or self.fs.pid_in(pid, self.path):
                present.append(pid)
            else:
                self.drop(pid)
        try:
            _write_control(d / CGROUP_KILL, "1")
        except FileNotFoundError:
            return True  # the cgroup was removed, which the kernel allows only once it is empty
        except OSError as e:
            # EOPNOTSUPP: a threaded cgroup. Nothing was killed.
            self.note(f"{CGROUP_KILL} refused ({e.strerror})")
            return False
        self.handled.update(pids)
        for pid in present:
            self.signalled(pid)
        self.release([self.fds[p] for p in present if p in self.fds])
        return True

    def frozen_signal(self, mechanism: str, d: Path, sig: int) -> bool:
        """Freeze `d`, signal every member, thaw. False (thawed, nothing signalled) if it could not be done
        safely: then the caller falls back to the signal loop."""
        v1 = mechanism == MECH_FREEZER_V1
        control = d / ("freezer.state" if v1 else "cgroup.freeze")
        freeze, thaw = _FREEZE_FILES[control.name]
        intent: Path | None = None
        if self.intent_dir is not None:
            try:
                intent = _write_intent(self.intent_dir, control, self.path)
            except OSError as e:
                self.note(f"cannot write the intent record in {self.intent_dir} ({e.strerror}): not frozen")
                return False
        else:
            self.note(f"no intent_dir: had this process died while {control} was frozen, nothing would thaw it")
        was = _read_text(control)
        if was is not None and was.strip() == freeze:
            self.note(f"{control} was already frozen before the kill; it is left thawed")
        to_release: list[int] = []
        try:
            try:
                _write_control(control, freeze)
            except OSError as e:
                self.note(f"cannot freeze {control} ({e.strerror}): signalled one by one")
                return False
            until = time.monotonic() + min(FREEZE_TIMEOUT, max(self.deadline - time.monotonic(), 0.1))
            if not _wait_frozen(control, until):
                self.note(f"{control} did not freeze within {FREEZE_TIMEOUT:g}s (tasks in uninterruptible "
                          f"sleep?): thawed, signalled one by one")
                return False
            # Frozen: no fork, no exit (v1), so this list is final and no listed PID can be reused.
            frozen = _procs_under(d)
            self.report.rounds += 1
            if frozen != self.fs.members(self.path):
                self.note(f"{d} no longer holds the same processes as {self.path}: thawed, signalled one by one")
                return False
            ok = self.check(frozen)
            if len(ok) != len(frozen):
                self.note("a refused process joined before the freeze took hold: thawed, signalled one by one")
                return False
            for pid in ok:
                fd = self.signal_one(pid, sig, frozen=True)
                if fd is not None:
                    to_release.append(fd)
        finally:
            self.thaw(control, thaw, intent)
        self.release(to_release)  # after the thaw: thawing first keeps the cgroup frozen for the least time
        return True

    def thaw(self, control: Path, thaw: str, intent: Path | None) -> None:
        try:
            _write_control(control, thaw)
        except FileNotFoundError:
            pass  # the cgroup is gone: nothing is frozen
        except OSError as e:
            # Keep the intent record: recover_intents retries at the next start.
            self.note(f"cannot thaw {control}: {e.strerror}")
            log.error("cannot thaw %s: %s", control, e)
            return
        else:
            if control.name == "freezer.state":
                # Frozen v1 tasks do not die until thawed: say so if a freeze of someone else's, on an ancestor
                # or a descendant, outlives ours.
                still = [
                    str(Path(root))
                    for root, _dirs, _files in os.walk(control.parent)
                    if (_read_text(Path(root) / "freezer.state") or "THAWED").strip() != "THAWED"
                ]
                if still:
                    self.note(f"still frozen after the thaw (by an ancestor, or a freeze of their own): "
                              f"{', '.join(still)}; their tasks die only once thawed")
        if intent is not None:
            intent.unlink(missing_ok=True)

    def deliver(self, sig: int) -> None:
        """Send `sig` once to every member, with the strongest mechanism the members allow."""
        self.handled = set()
        self.sent = []
        self.report.remaining = []
        members = self.members()
        ok = self.check(members)
        if not members:
            self.report.emptied = True
            return
        if len(ok) != len(members):
            refused = ", ".join(f"{p} ({r})" for p, r in sorted(self.report.skipped.items()))
            self.note(f"refused members {refused}: no {CGROUP_KILL} and no freeze, each other process signalled")
            self.report.mechanism = MECH_LOOP
        else:
            mechanism, d = self.choose(sig)
            if mechanism == MECH_KILL and d is not None:
                if self.cgroup_kill(d, ok):
                    self.report.mechanism = mechanism
                    return
                mechanism = MECH_FREEZE_V2 if (d / "cgroup.freeze").exists() else MECH_LOOP
            if mechanism in (MECH_FREEZE_V2, MECH_FREEZER_V1) and d is not None:
                if self.frozen_signal(mechanism, d, sig):
                    self.report.mechanism = mechanism
                    return
                mechanism = MECH_LOOP
            self.report.mechanism = mechanism
        to_release = [fd for pid in ok if (fd := self.signal_one(pid, sig, frozen=False)) is not None]
        self.release(to_release)

    def wait_empty(self, until: float, sweep_sig: int | None) -> bool:
        """Wait until the cgroup holds no process but refused ones, or `until` passes. With `sweep_sig`, each
        process that shows up meanwhile (moved in, or forked past a signal loop) gets it too."""
        events = _open_events(self.unified)
        try:
            while True:
                members = self.members()
                alive = {p for p in members if p not in self.report.skipped}
                if not alive:
                    self.report.remaining = []
                    return True
                if sweep_sig is not None:
                    newcomers = {p for p in alive if p not in self.handled}
                    fds = [fd for p in self.check(newcomers) if (fd := self.signal_one(p, sweep_sig, False))]
                    self.release(fds)
                now = time.monotonic()
                if now >= until:
                    self.report.remaining = sorted(alive)
                    return False
                self.sleep(events, alive, min(until - now, WAKE_INTERVAL))
        finally:
            if events is not None:
                events.close()

    def sleep(self, events: _Events | None, alive: set[int], timeout: float) -> None:
        """Sleep until a member exits (its pidfd turns readable), the cgroup2 twin's cgroup.events changes, or
        `timeout` passes."""
        poller = select.poll()
        watched = {fd: pid for pid, fd in self.fds.items() if pid in alive}
        for fd in watched:
            poller.register(fd, select.POLLIN)
        if events is not None:
            poller.register(events.fd, select.POLLPRI)
        if not watched and events is None:
            # Nothing to wait on (no pidfds on this kernel, or none opened yet): a short sleep, then look again.
            time.sleep(min(timeout, 0.02))
            return
        for fd, _mask in poller.poll(timeout * 1000):
            if events is not None and fd == events.fd:
                events.read()
            elif fd in watched:
                # Exited: close it (a readable pidfd would wake every poll at once), and forget the PID so that
                # a process reusing it, should one land in the cgroup, is treated as new.
                pid = watched[fd]
                self.drop(pid)
                self.handled.discard(pid)


def _open_events(d: Path | None) -> _Events | None:
    if d is None:
        return None
    try:
        return _Events(d)
    except OSError:
        return None  # the cgroup is gone meanwhile: listing members tells the rest


def _read_text(p: Path) -> str | None:
    try:
        with open(p) as f:
            return f.read()
    except OSError:
        return None


def _wait_frozen(control: Path, until: float) -> bool:
    """Wait until the freeze written to `control` has taken hold of every task, or `until` passes."""
    if control.name == "cgroup.freeze":
        events = _Events(control.parent)
        try:
            poller = select.poll()
            poller.register(events.fd, select.POLLPRI)
            while events.read().get("frozen") != 1:
                remaining = until - time.monotonic()
                if remaining <= 0:
                    return False
                poller.poll(remaining * 1000)
            return True
        finally:
            events.close()
    # v1 has no notification: freezer.state reads FREEZING until the last task is frozen.
    pause = 0.001
    while (_read_text(control) or "").strip() != "FROZEN":
        remaining = until - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.05)
    return True


def kill_cgroup(
    fs: CgroupFS,
    path: str,
    *,
    sig: int,
    deadline: float,
    refuse_pid: Callable[[int], str | None],
    dry_run: bool = False,
    grace: float = 0.0,
    intent_dir: str | Path | None = None,
    reap_memory: bool = True,
) -> KillReport:
    """Signal every process of `path` with the strongest mechanism it has, and wait until it is empty or
    `deadline` (monotonic) passes; processes that show up meanwhile get the signal too.

    `refuse_pid(pid)` returns a reason to leave a process alone (PID 1, the daemon itself), or None; a cgroup
    holding one is signalled process by process. With `grace` > 0, every member gets SIGTERM first and whatever
    is left after `grace` seconds gets SIGKILL (`sig` is then not used). `intent_dir` holds the records that let
    `recover_intents` thaw a cgroup left frozen by a crash. In dry-run, members are listed and checked, and the
    report names the pids and the mechanism; nothing is signalled, frozen or written.
    """
    kill = _Kill(fs, path, refuse_pid, deadline, Path(intent_dir) if intent_dir is not None else None, reap_memory)
    report = kill.report
    try:
        if dry_run:
            return _dry_run(kill, sig, grace)
        if grace > 0:
            kill.deliver(signal.SIGTERM)
            term_mechanism = report.mechanism
            # Processes started by the members' own shutdown are part of it: no SIGTERM for them.
            if report.emptied or kill.wait_empty(min(time.monotonic() + grace, deadline), None):
                report.emptied = not fs.members(path)
                return report
            kill.deliver(signal.SIGKILL)
            report.notes.insert(0, f"SIGTERM via {term_mechanism}, then SIGKILL after {grace:g}s of grace")
            sweep_sig = signal.SIGKILL
        else:
            kill.deliver(sig)
            sweep_sig = sig
        if not report.emptied:
            kill.wait_empty(deadline, sweep_sig)
        if grace > 0:
            report.escalated = list(kill.sent)
        report.emptied = not fs.members(path)
        return report
    finally:
        kill.close()


def _dry_run(kill: _Kill, sig: int, grace: float) -> KillReport:
    report = kill.report
    members = kill.members()
    report.signalled = kill.check(members)
    report.emptied = not members
    if not members:
        return report
    if report.skipped:
        report.mechanism = MECH_LOOP
    elif grace > 0:
        term, _ = kill.choose(signal.SIGTERM)
        report.mechanism, _ = kill.choose(signal.SIGKILL)
        report.notes.append(f"would send SIGTERM via {term}, then SIGKILL via {report.mechanism} after {grace:g}s")
    else:
        report.mechanism, _ = kill.choose(sig)
    report.notes.append("dry-run: nothing signalled, frozen or written")
    return report


def signal_cgroup(
    fs: CgroupFS,
    path: str,
    sig: int,
    deadline: float,
    refuse_pid: Callable[[int], str | None],
    dry_run: bool = False,
) -> KillReport:
    """The actuator's entry point: `kill_cgroup` without grace and without intent records."""
    return kill_cgroup(fs, path, sig=sig, deadline=deadline, refuse_pid=refuse_pid, dry_run=dry_run)
