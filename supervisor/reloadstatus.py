"""The outcome of the daemon's last policy load, kept in `<state-dir>/reload.json`, and `pyoomd reload`, which
signals the daemon and waits there for the outcome of its own request.

systemd's ExecReload must fail when the new policy is refused, and a SIGHUP carries no answer back. So the daemon
rewrites this file (atomically, by rename) after every reload with a sequence number that only grows; the client
notes the number, sends SIGHUP through a pidfd and waits with inotify for a larger one. Any reload that starts
after the client read the number reads the policy file as the operator left it, so the first larger number is
the answer. The file also names the daemon's PID and its start time, so that a stale file never makes the client
signal a process that merely reuses a dead daemon's PID (SIGHUP ends most programs).
"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

import msgspec

from cgroupfs.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, Watch

FILE_NAME = "reload.json"
DEFAULT_TIMEOUT = 30.0  # a reload is a file read and a hand-over to three workers: seconds even on a thrashing host


class ReloadStatus(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pid: int  # the supervisor's
    start_time: int  # of that PID, in clock ticks since boot (/proc/PID/stat field 22)
    sequence: int  # 0 when the daemon started, one more for each reload it has carried out since
    generation: int  # the policy generation in force after it
    ok: bool
    errors: list[str]  # FILE:LINE:COL: message, for a refused policy
    at: float  # wall clock


class ReloadError(Exception):
    """`pyoomd reload` could not get an answer; the message says why."""


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    return int(stat[stat.rindex(")") + 2:].split()[19])


def write_status(state_dir: Path, status: ReloadStatus) -> None:
    tmp = state_dir / f".{FILE_NAME}.tmp"
    tmp.write_bytes(msgspec.json.encode(status))
    tmp.replace(state_dir / FILE_NAME)


def read_status(state_dir: Path) -> ReloadStatus | None:
    try:
        return msgspec.json.decode((state_dir / FILE_NAME).read_bytes(), type=ReloadStatus)
    except FileNotFoundError:
        return None
    except msgspec.DecodeError as e:
        raise ReloadError(f"{state_dir / FILE_NAME}: {e}") from None


def request_reload(state_dir: Path, pid: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> ReloadStatus:
    """SIGHUP the daemon whose state directory this is (or PID `pid`, systemd's $MAINPID) and return the outcome
    of the reload that follows. Raises ReloadError when there is no such daemon or no answer in time."""
    path = state_dir / FILE_NAME
    before = read_status(state_dir)
    if before is None:
        raise ReloadError(f"{path} does not exist: no pyoomd daemon has started with state directory {state_dir}")
    pid = before.pid if pid is None else pid
    if before.pid != pid:
        raise ReloadError(f"{path} was written by PID {before.pid}, not {pid}: is pyoomd still starting?")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ReloadError(f"pyoomd (PID {pid}, from {path}) is not running") from None
    try:
        # With the pidfd open the PID cannot pass to another process; the start time says it is still the one
        # that wrote the file.
        if process_start_time(pid) != before.start_time:
            raise ReloadError(f"PID {pid} is no longer the pyoomd that wrote {path}: is pyoomd running?")
        with Watch(state_dir, IN_MOVED_TO | IN_CLOSE_WRITE) as watch:
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
            deadline = time.monotonic() + timeout
            poller = select.poll()
            poller.register(watch.fd, select.POLLIN)
            poller.register(pidfd, select.POLLIN)
            while True:
                now = read_status(state_dir)
                if now is not None and now.pid == pid and now.sequence > before.sequence:
                    return now
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReloadError(f"pyoomd (PID {pid}) did not answer the reload within {timeout:g} s")
                for fd, _ in poller.poll(left * 1000):
                    if fd == pidfd:
                        raise ReloadError(f"pyoomd (PID {pid}) exited before it answered the reload")
                watch.drain()
    finally:
        os.close(pidfd)
