"""Signals as events in a poll loop: the handler only records the signal; the loop does the work.

The wake-up fd is a socketpair registered with zmq.Poller, so a process blocked in poll wakes at once.
"""

from __future__ import annotations

import signal
import socket
from collections import deque


class SignalQueue:
    def __init__(self, signals: list[int]) -> None:
        self._rx, self._tx = socket.socketpair()
        self._rx.setblocking(False)
        self._tx.setblocking(False)
        self._pending: deque[int] = deque()
        signal.set_wakeup_fd(self._tx.fileno(), warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def fileno(self) -> int:
        return self._rx.fileno()

    def drain(self) -> list[int]:
        try:
            while self._rx.recv(4096):
                pass
        except BlockingIOError:
            pass
        out = list(self._pending)
        self._pending.clear()
        return out
