"""The sd_notify protocol, written out: a datagram of KEY=VALUE lines to $NOTIFY_SOCKET.

A few lines instead of a library because the failure modes matter here: a package that drops errors silently
would hide a daemon that never told systemd it was ready. Errors are logged once; the daemon goes on either way.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("pyoomd.supervisor")

# Handed to the supervisor only: a worker that wrote to it would speak for the whole service.
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # "@name" is an abstract socket; anything else a path.
        self.address = ("\0" + address[1:]) if address.startswith("@") else address
        self.watchdog_usec = 0
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            self.watchdog_usec = int(usec)
        self._sock: socket.socket | None = None
        self._failed = False
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            if not self._failed:
                self._failed = True
                log.error("cannot notify the service manager at %s: %s", self.address.replace("\0", "@"), e)
            return False

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # systemd 253's notify-reload wants MONOTONIC_USEC in the same datagram as RELOADING=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the policy")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")
