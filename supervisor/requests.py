"""Requests from the D-Bus thread to the supervisor's loop, which alone owns the daemon's state.

The D-Bus service runs in a thread of its own (its client library is asynchronous, the loop is a zmq poll). It
never touches the supervisor's state: it puts a Request here, the eventfd wakes the loop's poll, the loop carries
it out and completes the request's future, which the D-Bus side awaits with a deadline.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
from dataclasses import dataclass, field
from typing import Any, Literal

from supervisor.access import Caller

RequestKind = Literal["reload", "set-dry-run", "pause", "snapshot", "explain"]


@dataclass
class Request:
    kind: RequestKind
    caller: Caller
    args: tuple[Any, ...] = ()
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class RequestQueue:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def put(self, request: Request) -> concurrent.futures.Future:
        """From any thread."""
        self._queue.put(request)
        os.eventfd_write(self._fd, 1)
        return request.future

    def drain(self) -> list[Request]:
        """From the loop, when fileno() is readable."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        for request in self.drain():
            request.future.cancel()
        os.close(self._fd)
