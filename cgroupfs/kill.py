"""Signal every process of a cgroup through pidfds, so a recycled PID is never hit.

For each member: open a pidfd first, then confirm through /proc that the process is still in the cgroup,
then signal through the pidfd. If the PID was reused between listing and opening, the confirmation fails
(the new process lives elsewhere); if it is reused after opening, the pidfd still names the old process and
the signal goes nowhere. Only the actuator imports this module.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable

import msgspec

from cgroupfs.tree import CgroupFS

PF_KTHREAD = 0x00200000


class KillReport(msgspec.Struct):
    signalled: list[int] = msgspec.field(default_factory=list)
    skipped: dict[int, str] = msgspec.field(default_factory=dict)  # pid -> why it was left alone
    remaining: list[int] = msgspec.field(default_factory=list)  # still present when the deadline passed
    rounds: int = 0


def is_kernel_thread(pid: int, proc: str = "/proc") -> bool:
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return bool(int(fields[6]) & PF_KTHREAD)


def signal_cgroup(
    fs: CgroupFS,
    path: str,
    sig: int,
    deadline: float,
    refuse_pid: Callable[[int], str | None],
    dry_run: bool = False,
) -> KillReport:
    """Signal the members of `path` until it is empty or `deadline` (monotonic) passes.

    `refuse_pid(pid)` returns a reason to leave a process alone (PID 1, the daemon itself), or None.
    In dry-run, members are listed and checked, nothing is signalled, and one round is made.
    """
    report = KillReport()
    pidfds: dict[int, int] = {}
    try:
        while True:
            report.rounds += 1
            members = fs.members(path)
            todo = [p for p in sorted(members) if p not in pidfds and p not in report.skipped]
            for pid in todo:
                reason = refuse_pid(pid)
                if reason is None and is_kernel_thread(pid, str(fs.proc)):
                    reason = "kernel thread"
                if reason is not None:
                    report.skipped[pid] = reason
                    continue
                if dry_run:
                    report.signalled.append(pid)
                    continue
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                if not fs.pid_in(pid, path):
                    os.close(fd)  # reused or moved away since we listed it
                    continue
                pidfds[pid] = fd
                try:
                    signal.pidfd_send_signal(fd, sig)
                    report.signalled.append(pid)
                except ProcessLookupError:
                    pass
            if dry_run:
                return report
            alive = [p for p in members if p not in report.skipped]
            if not alive:
                return report
            now = time.monotonic()
            if now >= deadline:
                report.remaining = sorted(alive)
                return report
            # Wait for any signalled process to exit (its pidfd turns readable), then look again:
            # new members may have been forked meanwhile.
            live_fds = [fd for pid, fd in pidfds.items() if pid in members]
            timeout = min(deadline - now, 0.1)
            if live_fds:
                select.select(live_fds, [], [], timeout)
            else:
                time.sleep(min(timeout, 0.02))  # members we could not open yet; nothing to wait on
    finally:
        for fd in pidfds.values():
            os.close(fd)
