"""A private bus that behaves as a system bus: dbus-daemon with the system bus's default policy (everyone may
connect, nobody may own names or call methods unless a policy file says so) and pyoomd's own policy file from
units/, as /usr/share/dbus-1/system.d/ would give it. Its socket lives in a directory everyone can search, so an
unprivileged client (run as `nobody` with setpriv) reaches it as it would reach the real system bus.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
POLICY_FILE = REPO / "units" / "io.github.pyoomd1.conf"

# The parts of /usr/share/dbus-1/system.conf that decide who may do what; {include} is pyoomd's policy file.
_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  {include}
</busconfig>
"""

# A bus whose policy lets anyone call anything: what is left to refuse a caller is the daemon's own check.
_OPEN_POLICY = """<policy context="default">
    <allow own="io.github.pyoomd1"/>
    <allow send_destination="io.github.pyoomd1"/>
  </policy>"""


@dataclass
class PrivateBus:
    directory: Path
    pid: int

    @property
    def socket(self) -> Path:
        return self.directory / "system_bus_socket"

    @property
    def address(self) -> str:
        return f"unix:path={self.socket}"

    def busctl(self, *args: str, user: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """busctl against this bus, as root or (user="nobody") as an unprivileged user."""
        argv = ["busctl", f"--address={self.address}", *args]
        if user is not None:
            argv = ["setpriv", f"--reuid={user}", f"--regid={_group_of(user)}", "--clear-groups", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _group_of(user: str) -> str:
    import grp
    import pwd

    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name


def _missing() -> list[str]:
    problems = [f"no {tool}" for tool in ("dbus-daemon", "busctl", "setpriv") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        problems.append("not root (the daemon must own its name as root)")
    return problems


@contextlib.contextmanager
def private_bus(open_policy: bool = False) -> Iterator[PrivateBus]:
    problems = _missing()
    if problems:
        message = "private system-like bus cannot start: " + ", ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    directory = Path(tempfile.mkdtemp(prefix="pyoomd-bus-", dir="/tmp"))
    directory.chmod(0o755)  # an unprivileged client needs search permission on every directory above the socket
    include = _OPEN_POLICY if open_policy else f"<include>{POLICY_FILE}</include>"
    config = directory / "bus.conf"
    config.write_text(_CONFIG.format(socket=directory / "system_bus_socket", include=include))
    started = subprocess.run(["dbus-daemon", f"--config-file={config}", "--fork", "--print-pid", "--nopidfile"],
                             capture_output=True, text=True, timeout=10)
    if started.returncode != 0:
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"dbus-daemon did not start: {started.stderr}")
    bus = PrivateBus(directory=directory, pid=int(started.stdout.split()[0]))
    try:
        yield bus
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bus.pid, signal.SIGTERM)  # the dbus-daemon this helper started, by PID
        shutil.rmtree(directory, ignore_errors=True)


class SignalRecorder:
    """A real D-Bus client (dbus-fast, in a thread of its own) that records every signal pyoomd sends."""

    def __init__(self, address: str) -> None:
        import asyncio
        import threading

        from dbus_fast import Message, MessageType
        from dbus_fast.aio import MessageBus

        self.signals: list[tuple[str, str, list]] = []  # (interface, member, body)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        def on_message(msg: Message) -> bool:
            if msg.message_type == MessageType.SIGNAL and msg.path == "/io/github/pyoomd1":
                body = [v.value if hasattr(v, "signature") and hasattr(v, "value") else v for v in msg.body]
                self.signals.append((msg.interface or "", msg.member or "", body))
            return False

        async def connect() -> MessageBus:
            bus = await MessageBus(bus_address=address).connect()
            bus.add_message_handler(on_message)
            reply = await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                                           body=["type='signal',path='/io/github/pyoomd1'"]))
            assert reply.message_type == MessageType.METHOD_RETURN, reply.body
            return bus

        self._bus = asyncio.run_coroutine_threadsafe(connect(), self._loop).result(10)

    def of(self, member: str) -> list[list]:
        return [body for _, m, body in list(self.signals) if m == member]

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._bus.disconnect)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
