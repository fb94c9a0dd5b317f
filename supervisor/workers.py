"""The supervisor's table of worker processes and their states, after supervisord's.

    STARTING --hello ok--> RUNNING --exit--> BACKOFF --delay (none the first time)--> STARTING
        |                                       |
        +--refused (other build)--> FATAL <-----+-- too many crashes in a row
    any --stop--> STOPPING --exit--> STOPPED
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ipc.fdchannel import FdChannel
from ipc.messages import ForkServerAnswer, ForkServerReady, Spawn, Spawned
from supervisor.notify import NOTIFY_ENV
from workers.privilege import Identity

log = logging.getLogger("pyoomd.supervisor")

# Policy reaches the actuator first, so it never receives a command decided under a policy it lacks.
WORKER_ORDER = ("actuator", "detector", "collector")
# These parse what the host and the policy give them and never need to act: they run as the unprivileged user.
UNPRIVILEGED = ("collector", "detector")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
CRASH_WINDOW = 60.0
CRASHES_BEFORE_FATAL = 5


FORKSERVER_TIMEOUT = 10.0  # for its hello, and for each worker it forks (a fork takes milliseconds)


class ForkServerError(Exception):
    """The fork server did not fork the worker; the message says why. The worker is exec'd instead."""


class ForkServer:
    """The supervisor's handle on workers/forkserver.py's server: a child of its own, reached over a socketpair."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.channel = FdChannel(sock, "supervisor/forkserver", ForkServerAnswer)
        self.build = ""

    def _answer(self) -> ForkServerAnswer:
        self.channel.sock.settimeout(FORKSERVER_TIMEOUT)
        try:
            answer, fds = self.channel.recv()
        except (TimeoutError, EOFError, OSError) as e:
            raise ForkServerError(f"the fork server (pid {self.pid}) did not answer: {e or 'timeout'}") from None
        for fd in fds:
            os.close(fd)
        if answer is None:
            raise ForkServerError("the fork server sent a malformed answer")
        return answer

    def wait_ready(self) -> str:
        answer = self._answer()
        if not isinstance(answer, ForkServerReady):
            raise ForkServerError(f"the fork server said {type(answer).__name__} first")
        self.build = answer.build
        return answer.build

    def spawn(self, request: Spawn, fds: list[int]) -> int:
        try:
            self.channel.send(request, fds)
        except OSError as e:
            raise ForkServerError(f"cannot reach the fork server (pid {self.pid}): {e.strerror}") from None
        answer = self._answer()
        if not isinstance(answer, Spawned) or answer.worker != request.worker:
            raise ForkServerError(f"the fork server answered {answer!r} to a spawn of {request.worker}")
        if answer.error:
            raise ForkServerError(answer.error)
        return answer.pid

    def reap(self) -> int:
        """After it exited (its pidfd readable): collect it; its exit status."""
        _, status = os.waitpid(self.pid, 0)
        self.close()
        return os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Closing our end ends the server (it reads end of file)."""
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.channel.close()


def worker_identity(user: str | None) -> Identity | None:
    """The uid and gid the unprivileged workers become, or None when they stay as they are: pyoomd not started as
    root, no user configured, or a user that does not exist (said loudly: the separation is then lost)."""
    if os.geteuid() != 0 or not user or user == "root":
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.critical("user %r does not exist (make install creates it): the collector and detector run as root, so "
                     "a bug in parsing or in the policy engine is not kept from signalling processes", user)
        return None
    if entry.pw_uid == 0:
        return None
    return Identity(entry.pw_uid, entry.pw_gid)


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


@dataclass
class WorkerSlot:
    name: str
    state: WorkerState = WorkerState.STOPPED
    proc: subprocess.Popen | None = None  # exec'd workers; forked ones have only a PID
    forked_pid: int | None = None
    pidfd: int | None = None
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float = 0.0
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    dropped_frames: int = 0  # malformed frames the worker has dropped, from its heartbeats
    sent_generation: int = 0
    acked_generation: int = 0
    fatal_reason: str = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else self.forked_pid

    def set_state(self, new: WorkerState, why: str = "") -> None:
        if new is self.state:
            return
        log.info(
            "worker %s%s: %s -> %s%s",
            self.name, f" (pid {self.pid})" if self.pid else "", self.state.value, new.value,
            f": {why}" if why else "",
        )
        self.state = new

    def spawn(self, runtime_dir: Path, state_dir: Path, pythonpath: str, drop_to: Identity | None = None,
              broker_fd: int | None = None, forkserver: ForkServer | None = None) -> None:
        """Start the worker: forked by the fork server when there is one, else exec'd."""
        self.proc, self.forked_pid = None, None
        if forkserver is not None:
            try:
                pid = forkserver.spawn(Spawn(worker=self.name, runtime_dir=str(runtime_dir),  # type: ignore[arg-type]
                                             state_dir=str(state_dir), drop_to=str(drop_to) if drop_to else "",
                                             with_broker=broker_fd is not None),
                                       [broker_fd] if broker_fd is not None else [])
                self.forked_pid = pid
                self.pidfd = os.pidfd_open(pid)
            except (ForkServerError, ProcessLookupError) as e:
                log.warning("worker %s: %s; exec'ing it instead", self.name, e)
                self.forked_pid = None
            else:
                self._started()
                return
        env = {k: v for k, v in os.environ.items() if k not in NOTIFY_ENV}
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        # -P and cwd "/": a worker imports pyoomd from PYTHONPATH (or the install), never from whatever
        # directory the daemon happened to be started in.
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", f"workers.{self.name}", "--runtime-dir", str(runtime_dir),
             "--state-dir", str(state_dir), "--supervisor-pid", str(os.getpid()),
             *(["--drop-to", str(drop_to)] if drop_to else []),
             *(["--broker-fd", str(broker_fd)] if broker_fd is not None else [])],
            cwd="/",
            env=env,
            stdin=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=(broker_fd,) if broker_fd is not None else (),
        )
        self.pidfd = os.pidfd_open(self.proc.pid)
        self._started()

    def _started(self) -> None:
        self.started_at = self.last_heartbeat = time.monotonic()
        self.sent_generation = self.acked_generation = 0
        self.set_state(WorkerState.STARTING)

    def signal(self, sig: int) -> None:
        """Signal this worker through its pidfd: never a recycled PID."""
        if self.pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, sig)

    def reap(self) -> int:
        """Collect the exited process; returns its exit status (negative: killed by that signal)."""
        assert self.pidfd is not None
        if self.proc is not None:
            status = self.proc.wait()
        else:
            assert self.forked_pid is not None
            status = os.waitstatus_to_exitcode(os.waitpid(self.forked_pid, 0)[1])
        os.close(self.pidfd)
        self.pidfd = None
        return status

    def backoff_delay(self, now: float) -> float | None:
        """Record a crash; the delay before the next start, or None when it should give up."""
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
            self.crashes.popleft()
        if len(self.crashes) >= CRASHES_BEFORE_FATAL:
            return None
        # The first crash in a while is restarted at once (a host in trouble needs its OOM daemon now); a second
        # within the window waits BACKOFF_FIRST, doubling from there.
        if len(self.crashes) == 1:
            return 0.0
        return min(BACKOFF_FIRST * 2 ** (len(self.crashes) - 2), BACKOFF_MAX)
