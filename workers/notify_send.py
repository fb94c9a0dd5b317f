"""The notifier child of workers/desktop_notify.py: one org.freedesktop.Notifications message on one user's
session bus, sent as that user.

Exec'd fresh as root by the actuator after a kill. Everything is imported first (the interpreter may live where
the user cannot read); then it resets its OOM score, drops to the user with no capability, no supplementary group
and no_new_privs, and only then connects. It prints one line saying what happened.

Run as `python -m workers.notify_send UID SUMMARY BODY`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import sys

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from workers.desktop_notify import SESSION_BUS, session_bus
from workers.privilege import Identity, PrivilegeError, drop_to

CALL_TIMEOUT = 5.0  # the child's own bound on connecting and the Notify call
URGENCY_CRITICAL = 2


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
    parser = argparse.ArgumentParser(prog="python -m workers.notify_send")
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
