"""The ZAP handler every process that binds a socket runs: only the supervisor and its own children may connect.

With ZAP_DOMAIN set on a bound socket, libzmq asks inproc://zeromq.zap.01 about every new connection before any
message passes, and for ipc:// it puts the peer's kernel credentials in the request's address
("localhost:UID:GID:PID", from SO_PEERCRED). The handler answers 200 for the supervisor itself or a process whose
parent is the supervisor, 400 for anyone else, so a local process that got past the directory permissions still
cannot speak pyoomd's protocol. It is a plain zmq socket in the process's own poll loop: no thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq

ZAP_ENDPOINT = "inproc://zeromq.zap.01"

log = logging.getLogger("pyoomd.ipc")


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def peer_pid(address: bytes) -> int | None:
    """The PID libzmq appends to an ipc peer's address, or None (not ipc, or built without SO_PEERCRED)."""
    parts = address.decode(errors="replace").split(":")
    if len(parts) < 4 or not parts[-1].isdigit():
        return None
    return int(parts[-1])


class ZapHandler:
    def __init__(self, ctx: zmq.Context, supervisor_pid: int) -> None:
        self.supervisor_pid = supervisor_pid
        self.socket = ctx.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)
        self.refused = 0
        self._logged: set[int] = set()

    def admits(self, pid: int | None) -> bool:
        return pid is not None and (pid == self.supervisor_pid or parent_of(pid) == self.supervisor_pid)

    def handle(self) -> None:
        """Answer every pending request (call when the socket is readable)."""
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 6:
                self.socket.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"malformed",
                                            b"", b""])
                continue
            version, request_id, _domain, address = frames[:4]
            pid = peer_pid(address)
            if self.admits(pid):
                self.socket.send_multipart([version, request_id, b"200", b"OK", b"", b""])
                continue
            self.refused += 1
            if pid not in self._logged and len(self._logged) < 100:  # once per intruder, bounded
                self._logged.add(pid or 0)
                log.warning("refused a connection from %s: not pyoomd's supervisor nor one of its workers",
                            f"PID {pid}" if pid else f"peer {address!r}")
            self.socket.send_multipart([version, request_id, b"400", b"not a pyoomd process", b"", b""])

    def close(self) -> None:
        self.socket.close(linger=0)
