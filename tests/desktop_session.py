"""A user's desktop session for notification tests: a virtual screen (Xvfb), the user's own session bus
(dbus-daemon --session, run as the user) and a real notification server on it (dunst), all started by the test
and ended by PID.

The session bus lives where logind puts it, `<run>/UID/bus`, with `<run>` a directory of the test's; the
daemon under test sees it as /run/user/UID/bus through a bind mount in a mount namespace of its own
(`daemon_wrapper`), or through the unit's own bind mount, so the host's /run/user is never touched. The user is
`nobody` unless a test says otherwise (root, for a daemon run as a unit of the test's manager, whose workloads are
root's), with no process of anyone else's touched: every process of the session is the test's own child.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.realhost import wait_for

USER = 65534  # nobody: the test's own processes run as it, nobody else's are touched
TOOLS = ("Xvfb", "dbus-daemon", "dunst", "dunstctl", "unshare")


def require_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    problems = [f"missing {', '.join(missing)} (make test installs dunst and xvfb)"] if missing else []
    if os.geteuid() != 0:
        problems.append("not root")
    if not Path("/run/user").is_dir():
        problems.append("no /run/user to bind the test's session bus over")
    if problems:
        message = "desktop notification test cannot run: " + ", ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _become(uid: int):
    def become() -> None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    return become


@dataclass
class DesktopSession:
    root: Path  # 0755, root's: holds `run/` (the stand-in for /run/user) and the user's home
    display: str = ""
    procs: list[subprocess.Popen] = field(default_factory=list)
    uid: int = USER

    @property
    def run_user(self) -> Path:
        return self.root / "run"

    @property
    def bus(self) -> Path:
        return self.run_user / str(self.uid) / "bus"

    def env(self) -> dict[str, str]:
        home = self.root / "home"
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_CONFIG_HOME": str(home),
                "XDG_RUNTIME_DIR": str(self.bus.parent), "DISPLAY": self.display,
                "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.bus}"}

    def _start(self, argv: list[str], as_user: bool = True, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=self.env(), preexec_fn=_become(self.uid) if as_user else None,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def start(self) -> DesktopSession:
        (self.root / "home").mkdir()
        os.chown(self.root / "home", self.uid, self.uid)
        self.bus.parent.mkdir(parents=True)
        self.run_user.chmod(0o755)
        os.chown(self.bus.parent, self.uid, self.uid)
        self.bus.parent.chmod(0o700)  # as logind makes /run/user/UID
        # Xvfb picks a free display and says which on the pipe; run as root, as an X server is.
        r, w = os.pipe()
        self._start(["Xvfb", "-displayfd", str(w), "-ac", "-nolisten", "tcp"], as_user=False, pass_fds=(w,))
        os.close(w)
        with os.fdopen(r) as f:
            number = f.readline().strip()
        assert number.isdigit(), "Xvfb did not start"
        self.display = f":{number}"
        self._start(["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address=unix:path={self.bus}"])
        wait_for(self.bus.exists, 20, "the session bus socket")
        self._start(["dunst"])
        wait_for(lambda: self.dunstctl("count").returncode == 0, 20, "dunst on the session bus")
        return self

    def dunstctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dunstctl", *args], env=self.env(), preexec_fn=_become(self.uid), capture_output=True,
                              text=True, timeout=20)

    def notifications(self) -> list[dict[str, str]]:
        """Every notification the server got: those on screen are closed first, which files them in history."""
        self.dunstctl("close-all")
        out = self.dunstctl("history")
        assert out.returncode == 0, out.stderr
        entries = json.loads(out.stdout)["data"][0]
        return [{k: v["data"] for k, v in e.items()} for e in entries]

    def daemon_wrapper(self) -> list[str]:
        """A command prefix: the rest runs in a private mount namespace where /run/user is this session's."""
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /run/user && exec "$@"', str(self.run_user)]

    def stop(self) -> None:
        for proc in reversed(self.procs):  # our own children, unreaped, so the PIDs are ours
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def desktop_session(uid: int = USER) -> Iterator[DesktopSession]:
    require_tools()
    session = DesktopSession(Path(tempfile.mkdtemp(prefix="pyoomd-desktop-", dir="/tmp")), uid=uid)
    session.root.chmod(0o755)
    try:
        yield session.start()
    finally:
        session.stop()


@pytest.fixture
def desktop() -> Iterator[DesktopSession]:
    """The desktop session of `nobody`."""
    with desktop_session() as session:
        yield session
