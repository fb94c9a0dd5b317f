"""Running `pyoomd run` as a user does, in the foreground, with its own runtime and state directories."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from tests.realhost import wait_for

REPO = Path(__file__).resolve().parent.parent


class Daemon:
    def __init__(self, tmp: Path, policy: str, *extra: str) -> None:
        self.tmp = tmp
        self.config = tmp / "policy.yaml"
        self.config.write_text(policy)
        # The unprivileged workers must reach their sockets: not under pytest's 0700 directories, as in /run.
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="pyoomd-run-", dir="/tmp"))
        self.runtime_dir.chmod(0o755)
        self.state_dir = tmp / "state"
        self.stderr_path = tmp / "pyoomd.stderr"
        self.argv = [
            sys.executable, "-m", "supervisor", "run", "--config", str(self.config),
            "--runtime-dir", str(self.runtime_dir), "--state-dir", str(self.state_dir), *extra,
        ]
        self.proc: subprocess.Popen | None = None
        self.sockets_left: list[str] = []

    def start(self, cgroup_dirs: list[Path] | None = None, wrapper: list[str] | None = None) -> Daemon:
        """Start it; with `cgroup_dirs`, inside those cgroups (one per hierarchy), moved there before exec; with
        `wrapper`, through that command prefix, which must exec the rest (the PID stays the supervisor's)."""
        env = dict(os.environ, PYTHONPATH=str(REPO))

        def move() -> None:
            for d in cgroup_dirs or []:
                (d / "cgroup.procs").write_text(str(os.getpid()))

        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen([*(wrapper or []), *self.argv], cwd=REPO, env=env,
                                         stdin=subprocess.DEVNULL, stderr=err, stdout=err,
                                         preexec_fn=move if cgroup_dirs else None)
        return self

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        def found() -> re.Match | None:
            m = re.search(pattern, self.log, re.MULTILINE)
            if m is None and self.proc is not None and self.proc.poll() is not None:
                m = re.search(pattern, self.log, re.MULTILINE)  # written just before it exited
                if m is None:
                    raise AssertionError(f"pyoomd exited ({self.proc.returncode}) before /{pattern}/")
            return m

        try:
            return wait_for(found, timeout, f"/{pattern}/")
        except AssertionError as e:
            raise AssertionError(f"{e} in the log:\n{self.log}") from None

    def worker_pids(self) -> dict[str, int]:
        assert self.proc is not None
        out = {}
        for child in psutil.Process(self.proc.pid).children():
            # A forked worker's title is one string (setproctitle); an exec'd one's, separate arguments.
            try:
                words = " ".join(child.cmdline()).split()
            except psutil.Error:
                continue  # exited a moment ago (a zombie until the supervisor reaps it)
            if "-m" in words:
                name = words[words.index("-m") + 1].removeprefix("workers.")
                if name in ("collector", "detector", "actuator"):
                    out[name] = child.pid
        return out

    def actions(self) -> list[dict]:
        path = self.state_dir / "actions.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status. Asserts no worker outlives the supervisor."""
        assert self.proc is not None
        if self.proc.poll() is None:
            workers = self.worker_pids().values()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"pyoomd did not stop within 15s\n{self.log}") from None
            stray = [pid for pid in workers if psutil.pid_exists(pid) and
                     psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
            assert not stray, f"workers left behind: {stray}"
        self.sockets_left = sorted(str(p) for p in self.runtime_dir.rglob("*.sock"))
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        return self.proc.returncode
