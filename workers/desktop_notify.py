"""Desktop notifications after a kill (the kill actions' `notify: true`), as earlyoom's -n and nohang's GUI
notifications give them: an org.freedesktop.Notifications message on the session bus of each user whose
processes were killed.

The kill never waits for one. The actuator notes the owners of the victim's processes just before the kill (they
cannot be read once the processes are gone), and after it starts one short-lived child per user and moves on;
its timer reaps the children and ends any that outlive NOTIFY_TIMEOUT.

A user's session bus admits only that user (dbus-daemon refuses root there), and what answers on it is the user's
own program: so the child talks to it as that user and nothing more. It is exec'd fresh as root, imports what it
needs (the interpreter may live where the user cannot read), then drops to the user with no capability, no
supplementary group and no_new_privs, and only then connects. The bus is the one at /run/user/UID/bus (logind's
runtime directory, where dbus's user session and dbus-broker put it), and only when that socket is the user's.

The child is workers/notify_send.py, exec'd as `python -m workers.notify_send UID SUMMARY BODY`: this module is
the actuator's side, and spares the actuator the D-Bus client and asyncio that only the child needs.
"""

from __future__ import annotations

import html
import logging
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

from ipc.build import source_root
from ipc.messages import CommandResult, KillCommand

log = logging.getLogger("pyoomd.actuator")

SESSION_BUS = "/run/user/{uid}/bus"
NOTIFY_TIMEOUT = 10.0  # seconds a notifier child may take (starting an interpreter under pressure is slow)
OWNERS_READ = 64  # processes whose owner is read before a kill: enough to find every user in any real cgroup


def owners(pids: set[int] | list[int]) -> set[int]:
    """The real uids of (up to OWNERS_READ of) these processes; those already gone are passed over."""
    uids: set[int] = set()
    for pid in sorted(pids)[:OWNERS_READ]:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        uids.add(int(line.split()[1]))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return uids


def session_bus(uid: int) -> str | None:
    """The user's session bus socket, when there is one and it is the user's own."""
    path = SESSION_BUS.format(uid=uid)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return path if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid else None


def message(cmd: KillCommand, result: CommandResult) -> tuple[str, str]:
    """The notification's summary and body. The body is escaped: servers may read it as markup."""
    what = result.unit or (result.target or "").rstrip("/").rsplit("/", 1)[-1] or "a cgroup"
    verb = "stopped" if cmd.operation == "stop" else "killed"
    summary = f"pyoomd {verb} {what} to relieve memory pressure"
    count = len(result.pids)
    body = (f"{count} process{'es' if count != 1 else ''} in {result.target} ended.\n"
            f"{cmd.reason} (ruleset {cmd.ruleset})")
    return summary, html.escape(body, quote=False)


@dataclass
class _Child:
    proc: subprocess.Popen
    uid: int
    deadline: float


class DesktopNotifier:
    """The actuator's side: start a child per user after a kill, never wait for it; reap from the timer."""

    def __init__(self) -> None:
        self.running: list[_Child] = []

    def notify(self, cmd: KillCommand, result: CommandResult, uids: set[int]) -> str:
        """Start the notifications; what to say in the action record ("" when nobody is to be told)."""
        summary, body = message(cmd, result)
        sent, without = [], []
        for uid in sorted(uids):
            if session_bus(uid) is None:
                without.append(str(uid))
                continue
            argv = [sys.executable, "-P", "-m", "workers.notify_send", str(uid), summary, body]
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, cwd="/",
                                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                             "PYTHONPATH": str(source_root())})
            except OSError as e:
                without.append(f"{uid} (could not start the notifier: {e.strerror})")
                continue
            self.running.append(_Child(proc, uid, time.monotonic() + NOTIFY_TIMEOUT))
            sent.append(str(uid))
        notes = []
        if sent:
            notes.append(f"desktop notification to uid {', '.join(sent)}")
        if without:
            notes.append(f"no session bus for uid {', '.join(without)}")
        return "; ".join(notes)

    def reap(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        left = []
        for child in self.running:
            status = child.proc.poll()
            if status is None and now < child.deadline:
                left.append(child)
                continue
            if status is None:
                child.proc.kill()  # our own unreaped child: its PID cannot have been reused
                child.proc.wait()
                log.warning("desktop notification to uid %d: no answer within %gs, given up", child.uid,
                            NOTIFY_TIMEOUT)
            else:
                said = child.proc.stdout.read().decode(errors="replace").strip() if child.proc.stdout else ""
                (log.info if status == 0 else log.warning)("desktop notification to uid %d: %s", child.uid,
                                                          said or f"exit status {status}")
            if child.proc.stdout:
                child.proc.stdout.close()
        self.running = left

    def close(self) -> None:
        for child in self.running:
            child.proc.kill()
            child.proc.wait()
        self.running = []
