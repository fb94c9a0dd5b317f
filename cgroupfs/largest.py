"""Killing only the largest process of a cgroup (`target: largest_process`), through a pidfd.

oomd and systemd-oomd kill a whole cgroup; operators with one runaway process in a big unit keep asking for
this instead. The same identity rules as cgroupfs.kill hold: the pick is re-checked while a pidfd is held.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
from collections.abc import Callable
from pathlib import Path

from cgroupfs.kill import KillReport, is_kernel_thread, mrelease
from cgroupfs.tree import CgroupFS

MECH_LARGEST = "pidfd signal (largest process)"
PICK_TRIES = 5  # the largest process may exit or move between the pick and the signal: pick again, this often
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _read_proc(proc: Path, pid: int, name: str) -> str | None:
    try:
        with open(proc / str(pid) / name) as f:
            return f.read()
    except OSError:
        return None


def largest_process(
    fs: CgroupFS, path: str, refuse_pid: Callable[[int], str | None], skipped: dict[int, str]
) -> tuple[int, int] | None:
    """(pid, RSS in bytes) of the process of `path`'s subtree with the largest resident set, leaving out the
    refused (recorded in `skipped`), kernel threads and processes already exiting; None when there is none."""
    best: tuple[int, int] | None = None
    for pid in sorted(fs.members(path)):
        reason = refuse_pid(pid) or ("kernel thread" if is_kernel_thread(pid, str(fs.proc)) else None)
        if reason:
            skipped[pid] = reason
            continue
        statm, stat = _read_proc(fs.proc, pid, "statm"), _read_proc(fs.proc, pid, "stat")
        if statm is None or stat is None:
            continue  # gone meanwhile
        state = stat.rsplit(")", 1)[1].split()[0]  # the command name may hold spaces and parentheses
        if state in ("Z", "X"):
            continue  # exiting already: its parent reaps it, a signal frees nothing
        rss = int(statm.split()[1]) * _PAGE_SIZE
        if best is None or rss > best[1]:
            best = (pid, rss)
    return best


def _send(fd: int | None, pid: int, sig: int) -> None:
    """Through the pidfd (it names the process we checked, even if its PID was reused since); kill(2) only on
    kernels before 5.3. ProcessLookupError if it has exited."""
    if fd is not None:
        signal.pidfd_send_signal(fd, sig)
    else:
        os.kill(pid, sig)


def _wait_exit(fd: int | None, pid: int, proc: Path, until: float) -> bool:
    """Wait until the process has exited (its pidfd turns readable) or `until` (monotonic) passes."""
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            remaining = until - time.monotonic()
            if poller.poll(max(remaining, 0) * 1000):
                return True
            if remaining <= 0:
                return False
    while True:  # no pidfd: look at /proc (a zombie has exited; only its parent's wait is left)
        stat = _read_proc(proc, pid, "stat")
        if stat is None or stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(0.02)


def kill_largest_process(
    fs: CgroupFS,
    path: str,
    *,
    sig: int,
    deadline: float,
    refuse_pid: Callable[[int], str | None],
    dry_run: bool = False,
    grace: float = 0.0,
    reap_memory: bool = True,
) -> KillReport:
    """Signal only the process of `path`'s subtree with the largest RSS, and wait until it has exited or
    `deadline` (monotonic) passes. The pick is re-checked through a pidfd held while checking that the process is
    still in the subtree; one that exits or moves meanwhile makes way for the next pick. With `grace` > 0 it gets
    SIGTERM and, if still there after `grace` seconds, SIGKILL. In dry-run, the report names the process only.
    The rest of the cgroup is left alone, so `emptied` is usually False."""
    report = KillReport(mechanism=MECH_LARGEST)
    for _ in range(PICK_TRIES):
        report.rounds += 1
        best = largest_process(fs, path, refuse_pid, report.skipped)
        if best is None:
            report.emptied = not fs.members(path)
            return report
        pid, rss = best
        comm = (_read_proc(fs.proc, pid, "comm") or "?").strip()
        picked = f"the largest process of {path}: {pid} ({comm}, {rss >> 20} MB RSS)"
        if dry_run:
            report.signalled = [pid]
            report.notes.append(f"dry-run: would signal {picked}")
            return report
        try:
            fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            fd = None
            report.notes.append("no pidfd_open (kernel before 5.3): kill(2) by PID, a PID reused between the check "
                                "and the kill would be hit")
        try:
            if not fs.pid_in(pid, path):
                continue  # moved out, or the PID now names another process
            first = signal.SIGTERM if grace > 0 else sig
            try:
                _send(fd, pid, first)
            except ProcessLookupError:
                continue
            report.signalled = [pid]
            report.notes.append(f"signalled {picked}")
            final = first
            if grace > 0 and not _wait_exit(fd, pid, fs.proc, min(time.monotonic() + grace, deadline)):
                try:
                    _send(fd, pid, signal.SIGKILL)
                    final = signal.SIGKILL
                    report.escalated = [pid]
                    report.notes.append(f"SIGTERM, then SIGKILL after {grace:g}s of grace")
                except ProcessLookupError:
                    pass
            if final == signal.SIGKILL and reap_memory and fd is not None:
                problem = mrelease(fd)  # free its memory now, even while it is stuck on its way out
                if problem:
                    report.notes.append(problem)
            report.remaining = [] if _wait_exit(fd, pid, fs.proc, deadline) else [pid]
            report.emptied = not fs.members(path)
            return report
        finally:
            if fd is not None:
                os.close(fd)
    report.notes.append(f"the largest process of {path} exited or moved before each of {PICK_TRIES} picks")
    return report
