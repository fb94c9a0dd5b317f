"""Where every socket lives, who binds it and who connects, and the options each side sets.

    control   supervisor ROUTER (bind)  <-> each worker DEALER (connect, identity = worker name)
              hello, policy hand-over, heartbeats, action records, stop
    snapshots collector PUSH (connect)  ->  detector PULL (bind); CONFLATE on both ends: only the newest counts
    commands  detector DEALER (connect) <-> actuator ROUTER (bind); never conflated, every command is acked

The receiving side binds, so a restarted sender simply reconnects. Endpoints are ipc:// paths in the runtime
directory; nothing listens on TCP.
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


@dataclass(frozen=True)
class Endpoints:
    runtime_dir: Path

    @property
    def control(self) -> str:
        return f"ipc://{self.runtime_dir}/control.sock"

    @property
    def snapshots(self) -> str:
        return f"ipc://{self.runtime_dir}/snapshots.sock"

    @property
    def commands(self) -> str:
        return f"ipc://{self.runtime_dir}/commands.sock"

    def prepare(self) -> None:
        """Create the runtime directory owner-only (the workers run as the same user for now)."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)


def _common(sock: zmq.Socket) -> zmq.Socket:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    return sock


def control_server(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker takes over its identity at once
    sock.bind(ep.control)
    return sock


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
    sock.bind(ep.snapshots)
    return sock


def command_client(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.DEALER))
    # Queue only on a live connection: a command must never wait for an actuator that is not there and
    # be delivered later; it is decided again from a fresh snapshot instead.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.connect(ep.commands)
    return sock


def command_server(ctx: zmq.Context, ep: Endpoints) -> zmq.Socket:
    sock = _common(ctx.socket(zmq.ROUTER))
    sock.bind(ep.commands)
    return sock
