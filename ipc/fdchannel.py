"""Typed messages with file descriptors over a Unix socketpair (SOCK_SEQPACKET: one message per datagram, in order,
and the peer's end closing is seen as end of file). Used between the supervisor and the collector only, for what the
unprivileged collector may not open itself (ipc/messages.py: the broker messages)."""

from __future__ import annotations

import socket
from typing import Any

from ipc.codec import Channel

MAX_MESSAGE = 1 << 20  # an xattr answer for a few thousand cgroups; anything larger is a bug
MAX_FDS = 4


def pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the collector's end); the collector's is inheritable, to pass to its exec."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.set_inheritable(True)
    return ours, theirs


class FdChannel:
    def __init__(self, sock: socket.socket, name: str, message_type: Any) -> None:
        self.sock = sock
        self.channel = Channel(name, message_type)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        socket.send_fds(self.sock, [self.channel.encode(message)], fds or [])

    def recv(self) -> tuple[Any | None, list[int]]:
        """One message and its descriptors. (None, []) for a malformed one (dropped and counted; any descriptors
        that came with it are closed). Raises EOFError when the peer has gone."""
        data, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        if not data and not fds:
            raise EOFError("the peer closed its end")
        message = self.channel.decode(data) if not flags & socket.MSG_TRUNC else None
        if message is None:
            for fd in fds:
                socket.close(fd)
            if flags & socket.MSG_TRUNC:
                self.channel.dropped += 1
            return None, []
        return message, fds

    def close(self) -> None:
        self.sock.close()
