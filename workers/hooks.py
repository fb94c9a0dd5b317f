"""The kill actions' hooks, run by the actuator: a prekill hook just before the kill, waited for at most its
timeout (a hook never holds a kill up longer); a postkill hook after it, never waited for.

A hook is a command of the policy's, run with the victim in its environment. It is run only if its executable
is root's and nobody else may write it (the supervisor refused a policy naming any other; this checks again, at
the moment it would run). Its OOM score is reset to 0, so that it does not inherit the daemon's -1000: a hook
that leaks memory is the kernel's to kill, not a new untouchable. Finished hooks are reaped from the timer.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from ipc.messages import KillCommand
from supervisor.policyfiles import untrusted


def _reset_oom_score() -> None:
    # Raising the score needs no privilege; the hook must not keep the -1000 the actuator has.
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("0")


class Hooks:
    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def environment(self, cmd: KillCommand, path: str, pids: list[int], unit: str = "",
                    result: str = "") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env.update(PYOOMD_RULESET=cmd.ruleset, PYOOMD_GROUP=cmd.group, PYOOMD_ACTION=cmd.plugin,
                   PYOOMD_CGROUP=path, PYOOMD_PIDS=" ".join(map(str, pids)), PYOOMD_UNIT=unit,
                   PYOOMD_REASON=cmd.reason, PYOOMD_COMMAND_ID=cmd.id)
        if result:
            env["PYOOMD_RESULT"] = result
        return env

    def _start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen | str:
        why = untrusted(Path(argv[0]))
        if why is not None:
            return f"not run: {argv[0]} is {why}"
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    preexec_fn=_reset_oom_score, start_new_session=True, close_fds=True, cwd="/")
        except OSError as e:
            return f"could not start: {e.strerror}"
        self.running.append(proc)
        return proc

    def prekill(self, cmd: KillCommand, path: str, pids: list[int]) -> str:
        """Run the prekill hook and wait for it, at most its timeout; what to say in the record ("" for none)."""
        if not cmd.prekill_hook:
            return ""
        started = time.monotonic()
        proc = self._start(cmd.prekill_hook, self.environment(cmd, path, pids))
        if isinstance(proc, str):
            return f"prekill hook {proc}"
        try:
            status = proc.wait(cmd.prekill_timeout)
        except subprocess.TimeoutExpired:
            return (f"prekill hook still running after {cmd.prekill_timeout:g}s: the kill went ahead (the hook runs "
                    "on)")
        return f"prekill hook exit status {status} after {time.monotonic() - started:.2f}s"

    def postkill(self, cmd: KillCommand, path: str, pids: list[int], unit: str, result: str) -> str:
        if not cmd.postkill_hook:
            return ""
        proc = self._start(cmd.postkill_hook, self.environment(cmd, path, pids, unit, result))
        return f"postkill hook {proc}" if isinstance(proc, str) else "postkill hook started"

    def reap(self) -> None:
        self.running = [p for p in self.running if p.poll() is None]
