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

Run as `python -m workers.desktop_notify UID SUMMARY BODY`; it prints one line saying what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import logging
import os
import pwd
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from ipc.build import source_root
from ipc.messages import CommandResult, KillCommand
from workers.privilege import Identity, PrivilegeError, drop_to

log = logging.getLogger("pyoomd.actuator")

SESSION_BUS = "/run/user/{uid}/bus"
NOTIFY_TIMEOUT = 10.0  # seconds a notifier child may take (starting an interpreter under pressure is slow)
CALL_TIMEOUT = 5.0  # the child's own bound on connecting and the Notify call
OWNERS_READ = 64  # processes whose owner is read before a kill: enough to find every user in any real cgroup
URGENCY_CRITICAL = 2


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
            argv = [sys.executable, "-P", "-m", "workers.desktop_notify", str(uid), summary, body]
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


async def _send(bus_path: str, summary: str, body: str) -> int:
    bus = await MessageBus(bus_address=f"unix:path={bus_path}").connect()
    try:
        reply = await bus.call(Message(
            destination="org.freedesktop.Notifications", path="/org/freedesktop/Notifications",
            interface="org.freedesktop.Notifications", member="Notify", signature="susssasa{sv}i",
            body=["pyoomd", 0, "dialog-warning", summary, body, [], {"urgency": Variant("y", URGENCY_CRITICAL)},
                  -1],
        ))
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        detail = reply.body[0] if reply is not None and reply.body else ""
        raise RuntimeError(f"{reply.error_name if reply else 'no reply'}: {detail}")
    return int(reply.body[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.desktop_notify")
    parser.add_argument("uid", type=int)
    parser.add_argument("summary")
    parser.add_argument("body")
    a = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("refused: the actuator runs this as root, to become the user", flush=True)
        return 2
    # Not the actuator's -1000: this child is the kernel's to kill like any other process. Done here rather than
    # in a preexec_fn, so the actuator spawns it without running Python between fork and exec.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")
    bus_path = session_bus(a.uid)  # checked as root, before the drop: the path the actuator judged
    if bus_path is None:
        print(f"no session bus at {SESSION_BUS.format(uid=a.uid)}", flush=True)
        return 1
    try:
        # Looked up here, not in the actuator: a name service (LDAP, sssd) that hangs must hang this child only.
        gid = pwd.getpwuid(a.uid).pw_gid
    except KeyError:
        gid = a.uid  # a uid with no passwd entry: its bus still admits it
    try:
        drop_to(Identity(a.uid, gid), os.getppid(), keep=0)
    except PrivilegeError as e:
        print(f"not sent: {e}", flush=True)
        return 1
    try:
        nid = asyncio.run(asyncio.wait_for(_send(bus_path, a.summary, a.body), CALL_TIMEOUT))
    except TimeoutError:
        print(f"not sent: {bus_path} did not answer within {CALL_TIMEOUT:g}s", flush=True)
        return 1
    except (OSError, RuntimeError, ValueError) as e:
        print(f"not sent over {bus_path}: {e}", flush=True)
        return 1
    print(f"sent over {bus_path} (notification {nid})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
