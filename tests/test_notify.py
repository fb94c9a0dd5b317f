"""sd_notify as systemd sees it: READY=1 once protecting, RELOADING=1 with MONOTONIC_USEC around a reload,
STOPPING=1, STATUS=, and WATCHDOG=1 pings that stop while a worker hangs and resume once it is replaced."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from ipc.endpoints import HEARTBEAT_TIMEOUT
from supervisor.notify import Notifier
from tests.daemon import Daemon
from tests.test_supervisor import POLICY


class NotifyListener:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[dict[str, str]] = []  # everything received
        self.unread: list[dict[str, str]] = []  # not yet looked at by wait_for

    def collect(self, timeout: float) -> list[dict[str, str]]:
        """Datagrams arriving within `timeout` seconds."""
        got = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            msg = dict(line.split("=", 1) for line in data.splitlines())
            got.append(msg)
            self.messages.append(msg)
            self.unread.append(msg)
        return got

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            while self.unread:
                msg = self.unread.pop(0)
                if key in msg:
                    return msg
            if time.monotonic() >= deadline:
                break
            self.collect(min(1.0, deadline - time.monotonic()))
        raise AssertionError(f"no {key} within {timeout:.0f}s; got {self.messages}")


def test_notifier_speaks_to_abstract_and_path_sockets(tmp_path):
    listener = NotifyListener(str(tmp_path / "notify"))
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")}).ready("up")
    assert listener.collect(1.0) == [{"READY": "1", "STATUS": "up"}]
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"pyoomd-test-notify-{os.getpid()}"
    abstract.bind("\0" + name)
    Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
    assert abstract.recv(4096).decode().splitlines()[0] == "STOPPING=1"
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert n.send("READY=1") is False  # logged once, never raised


@pytest.mark.real
def test_the_daemon_tells_systemd_what_it_is_doing(tmp_path, cgroups, monkeypatch):
    path = str(tmp_path / "notify")
    listener = NotifyListener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    daemon = Daemon(tmp_path, POLICY).start()
    try:
        ready = listener.wait_for("READY", 30)
        assert "policy generation 1, 3/3 workers running" in ready["STATUS"]
        assert "first snapshot evaluated" in daemon.log  # READY=1 only once a snapshot was evaluated
        listener.wait_for("WATCHDOG", 5)

        daemon.proc.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", 10)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert "policy generation 2" in listener.wait_for("READY", 10)["STATUS"]

        hung = daemon.worker_pids()["detector"]
        os.kill(hung, signal.SIGSTOP)  # our own grandchild, by PID
        time.sleep(4)  # past the 3 s heartbeat staleness
        listener.collect(0.1)
        listener.unread.clear()
        assert "WATCHDOG" not in {k for m in listener.collect(3.0) for k in m}, "fed the watchdog while hung"
        daemon.wait_log(r"worker detector silent for \d+s; killing it", timeout=HEARTBEAT_TIMEOUT + 15)
        listener.wait_for("WATCHDOG", 20)  # replaced: fed again
    finally:
        daemon.stop()
    assert any("STOPPING" in m for m in listener.collect(2.0) + listener.messages)
