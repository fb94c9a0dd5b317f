"""What every worker shares: the hello, the policy hand-over, heartbeats, stopping, and one poll loop.

A worker is a fresh interpreter exec'd by the supervisor. It dies with the supervisor (PR_SET_PDEATHSIG), so
a supervisor killed outright leaves no orphan behind.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import zmq

from ipc.build import build_id
from ipc.codec import Channel
from ipc.endpoints import HEARTBEAT_INTERVAL, Endpoints, control_client
from ipc.messages import (
    ControlMessage,
    Heartbeat,
    Hello,
    Message,
    PeerRestarted,
    PolicyAck,
    PolicyUpdate,
    Refused,
    Stop,
    Welcome,
    WorkerName,
)
from ipc.signalqueue import SignalQueue
from ipc.zap import ZapHandler
from policy.plugins.registry import load_entry_points
from supervisor.logsetup import setup_logging
from supervisor.selfprotect import protect_self
from workers.privilege import Identity, PrivilegeError, drop_to

EXIT_REFUSED = 78  # EX_CONFIG: the supervisor will not run this worker; restarting it cannot help
HELLO_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != expected_parent:  # the parent died before prctl took effect
        sys.exit(1)


@dataclass(frozen=True)
class WorkerArgs:
    """What the supervisor tells a worker on its command line."""

    runtime_dir: Path
    state_dir: Path
    supervisor_pid: int
    broker_fd: int | None = None  # the collector's end of its socketpair to the supervisor's broker


class Worker:
    name: ClassVar[WorkerName]

    def __init__(self, args: WorkerArgs) -> None:
        self.log = logging.getLogger(f"pyoomd.{self.name}")
        self.state_dir = args.state_dir
        self.endpoints = Endpoints(args.runtime_dir)
        self.zmq = zmq.Context()
        # Before any socket binds: it admits only the supervisor and its children.
        self.zap = ZapHandler(self.zmq, args.supervisor_pid)
        self.control = control_client(self.zmq, self.endpoints, self.name)
        self.control_channel = Channel(f"{self.name}/control", ControlMessage)
        self.signals = SignalQueue([signal.SIGTERM])
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C goes to the supervisor, which stops us
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.signals.fileno(), zmq.POLLIN)
        self.poller.register(self.zap.socket, zmq.POLLIN)
        self.handlers: dict[zmq.Socket, Callable[[], None]] = {}
        self.fd_handlers: dict[int, Callable[[int, int], None]] = {}
        self.update: PolicyUpdate | None = None
        self.stopping = False
        self._next_heartbeat = 0.0

    # ---- for subclasses ----------------------------------------------------------------------------------------

    def add_socket(self, sock: zmq.Socket, on_readable: Callable[[], None]) -> None:
        """Call `on_readable` when a socket has input."""
        self.poller.register(sock, zmq.POLLIN)
        self.handlers[sock] = on_readable

    def add_fd(self, fd: int, zmq_events: int, on_ready: Callable[[int, int], None]) -> None:
        """Call `on_ready(fd, revents)` when a plain descriptor reports any of `zmq_events` (zmq.POLL* bits)."""
        self.poller.register(fd, zmq_events)
        self.fd_handlers[fd] = on_ready

    def remove_fd(self, fd: int) -> None:
        if self.fd_handlers.pop(fd, None) is not None:
            self.poller.unregister(fd)

    def apply_policy(self, update: PolicyUpdate) -> None:
        """Take a new policy; raise to refuse it (the error goes back to the supervisor)."""

    def on_timer(self, now: float) -> float | None:
        """Do timed work; return the next monotonic time this wants to run, or None."""
        return None

    def on_peer_restarted(self, worker: str) -> None:
        """A peer process was replaced; renew what connects to it."""

    def dropped_frames(self) -> int:
        return self.control_channel.dropped

    def on_control_message(self, msg: Message) -> bool:
        """A control message only some workers take (the detector's queries); True when handled."""
        return False

    # ---- protocol ----------------------------------------------------------------------------------------------

    def send_control(self, message: Message) -> None:
        try:
            self.control.send(self.control_channel.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            self.log.warning("control channel full; dropped a %s message", type(message).__name__)

    def handshake(self) -> None:
        self.send_control(Hello(worker=self.name, pid=os.getpid(), build=build_id()))
        deadline = time.monotonic() + HELLO_TIMEOUT
        while time.monotonic() < deadline:
            if not self.control.poll(int((deadline - time.monotonic()) * 1000) + 1):
                continue
            msg = self.control_channel.decode(self.control.recv())
            if isinstance(msg, Welcome):
                return
            if isinstance(msg, Refused):
                self.log.error("refused by the supervisor: %s", msg.reason)
                sys.exit(EXIT_REFUSED)
        self.log.error("no answer from the supervisor at %s within %.0f s", self.endpoints.control, HELLO_TIMEOUT)
        sys.exit(1)

    def _on_control(self) -> None:
        while True:
            try:
                frame = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = self.control_channel.decode(frame)
            if isinstance(msg, PolicyUpdate):
                try:
                    self.apply_policy(msg)
                except Exception as e:  # a policy this worker cannot run must not kill it
                    self.log.exception("cannot apply policy generation %d", msg.generation)
                    self.send_control(PolicyAck(generation=msg.generation, error=f"{type(e).__name__}: {e}"))
                    continue
                self.update = msg
                self.log.info("applied policy generation %d", msg.generation)
                self.send_control(PolicyAck(generation=msg.generation))
            elif isinstance(msg, Stop):
                self.stopping = True
            elif isinstance(msg, PeerRestarted):
                self.on_peer_restarted(msg.worker)
            elif msg is not None and not self.on_control_message(msg):
                self.log.warning("unexpected %s on the control channel; ignored", type(msg).__name__)

    def run(self) -> int:
        self.handshake()
        next_timer: float | None = None
        while not self.stopping:
            now = time.monotonic()
            if now >= self._next_heartbeat:
                self.send_control(Heartbeat(worker=self.name, dropped_frames=self.dropped_frames()))
                self._next_heartbeat = now + HEARTBEAT_INTERVAL
            wake = self._next_heartbeat if next_timer is None else min(next_timer, self._next_heartbeat)
            events = dict(self.poller.poll(max(0, int((wake - now) * 1000)) + 1))
            if self.signals.fileno() in events and self.signals.drain():
                self.stopping = True
                break
            if self.zap.socket in events:
                self.zap.handle()
            if self.control in events:
                self._on_control()
            for sock, handler in self.handlers.items():
                if sock in events:
                    handler()
            for fd, on_ready in list(self.fd_handlers.items()):
                if fd in events:
                    on_ready(fd, events[fd])
            if self.update is not None:
                next_timer = self.on_timer(time.monotonic())
        self.zmq.destroy(linger=0)
        return 0


def run_worker(worker_cls: type[Worker], args: WorkerArgs, drop: Identity | None) -> int:
    """Become the worker, whether exec'd (main) or forked by the fork server: die with the supervisor, lock
    memory, drop privileges, run. Returns the exit status."""
    die_with_parent(args.supervisor_pid)
    setup_logging(worker_cls.name)
    log = logging.getLogger(f"pyoomd.{worker_cls.name}")
    protect_self(log, oom_score=False)  # locks memory while that still needs no capability but CAP_IPC_LOCK
    if drop is not None:
        # Everything is imported (the plugins too: the interpreter and other packages may live where the
        # unprivileged user cannot read, as under /root here); no thread exists yet (the zmq context comes after),
        # so the drop covers the whole process; nothing untrusted has been read.
        load_entry_points()
        try:
            drop_to(drop, args.supervisor_pid)
        except PrivilegeError as e:
            log.critical("cannot drop privileges to %s: %s; not running as root instead", drop, e)
            return 1
        log.info("running as %s with CAP_IPC_LOCK alone", drop)
    return worker_cls(args).run()


def main(worker_cls: type[Worker]) -> None:
    parser = argparse.ArgumentParser(prog=f"pyoomd-{worker_cls.name}")
    parser.add_argument("--runtime-dir", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    parser.add_argument("--drop-to", type=Identity.parse, help="UID:GID to become before reading anything")
    parser.add_argument("--broker-fd", type=int, help="the socket to the supervisor's broker (collector)")
    args = parser.parse_args()
    sys.exit(run_worker(worker_cls, WorkerArgs(runtime_dir=args.runtime_dir, state_dir=args.state_dir,
                                               supervisor_pid=args.supervisor_pid, broker_fd=args.broker_fd),
                        args.drop_to))
