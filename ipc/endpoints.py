"""Where every socket lives, who binds it and who connects, and the options each side sets.

    control   supervisor ROUTER (bind)  <-> each worker DEALER (connect, identity = worker name)
              hello, policy hand-over, heartbeats, action records, stop
    snapshots collector PUSH (connect)  ->  detector PULL (bind); CONFLATE on both ends: only the newest counts
    commands  detector DEALER (connect) <-> actuator ROUTER (bind); never conflated, every command is acked

The receiving side binds, so a restarted sender simply reconnects. Endpoints are ipc:// paths in the `ipc`
subdirectory of the runtime directory; nothing listens on TCP, no socket is abstract. Who may connect:

- the runtime directory is 0710 root:GROUP and its `ipc` subdirectory 0770 root:GROUP, where GROUP is the
  unprivileged workers' group (a process needs search permission on every directory above a socket); each socket
  is given the directory's group and mode 0660 right after it is bound (no setgid directory: the unit's
  RestrictSUIDSGID= forbids making one);
- every bound socket runs ZAP (ipc/zap.py): a connection is admitted only from the supervisor or one of its own
  children, by the peer credentials the kernel gives for the connection.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq

# A snapshot of a few thousand cgroups is well under this; anything larger is a bug or an attack.
MAX_FRAME_BYTES = 16 << 20
HEARTBEAT_INTERVAL = 1.0  # seconds between a worker's heartbeats
HEARTBEAT_TIMEOUT = 20.0  # a worker silent this long is hung: the supervisor kills and restarts it


SOCKETS = ("control.sock", "snapshots.sock", "commands.sock")
ZAP_DOMAIN = b"pyoomd"


@dataclass(frozen=True)
class Endpoints:
    runtime_dir: Path

    @property
    def socket_dir(self) -> Path:
        return self.runtime_dir / "ipc"

    @property
    def control(self) -> str:
        return f"ipc://{self.socket_dir}/control.sock"

    @property
    def snapshots(self) -> str:
        return f"ipc://{self.socket_dir}/snapshots.sock"

    @property
    def commands(self) -> str:
        return f"ipc://{self.socket_dir}/commands.sock"

    def prepare(self, group: int | None = None) -> None:
        """Create the directories (by the supervisor, as root): reachable by `group` (the unprivileged workers'),
        or by the owner alone when there is none."""
        for directory, shared in ((self.runtime_dir, 0o710), (self.socket_dir, 0o770)):
            directory.mkdir(parents=True, exist_ok=True)
            if group is None:
                os.chmod(directory, 0o700)
            else:
                os.chown(directory, 0, group)
                os.chmod(directory, shared)

    def unreachable_by(self, uid: int, gid: int) -> Path | None:
        """The first directory above the sockets that `uid`/`gid` may not search, or None when all are."""
        for directory in [*reversed(self.socket_dir.parents), self.socket_dir]:
            try:
                st = directory.stat()
            except FileNotFoundError:
                return None  # created by prepare(), with the right modes
            if st.st_uid == uid:
                ok = st.st_mode & 0o100
            elif st.st_gid == gid:
                ok = st.st_mode & 0o010
            else:
                ok = st.st_mode & 0o001
            if not ok and directory not in (self.runtime_dir, self.socket_dir):
                return directory
        return None

    def remove_sockets(self) -> None:
        for name in SOCKETS:
            (self.socket_dir / name).unlink(missing_ok=True)


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    return sock


def _bind(sock: zmq.Socket, endpoint: str) -> zmq.Socket:
    """Bind with ZAP on (ipc/zap.py decides who may connect) and the socket file open to the group alone."""
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
    sock.bind(endpoint)
    # The unit's UMask=0077 would leave the socket to its owner; connecting needs write permission on it.
    path = endpoint.removeprefix("ipc://")
    os.chown(path, -1, os.stat(os.path.dirname(path)).st_gid)
    os.chmod(path, 0o660)
    return sock


def control_server(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes over its identity at once
    return _bind(sock, ep.control)


def control_client(ctx: zmq.Context, ep: Endpoints, worker: str) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.DEALER))
    sock.setsockopt(zmq.IDENTITY, worker.encode())
    sock.connect(ep.control)
    return sock


def snapshot_sender(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.PUSH))
    sock.setsockopt(zmq.CONFLATE, 1)
    sock.connect(ep.snapshots)
    return sock


def snapshot_receiver(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.PULL))
    sock.setsockopt(zmq.CONFLATE, 1)
    return _bind(sock, ep.snapshots)


def command_client(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.DEALER))
    # Queue only on a live connection: a command must never wait for an actuator that is not there and
    # be delivered later; it is decided again from a fresh snapshot instead.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(ep.commands)
    return sock


def command_server(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    return _bind(_common(ctx.socket(zmq.ROUTER)), ep.commands)
