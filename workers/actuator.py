"""The actuator: the only process that signals anything. It trusts no command blindly.

Before acting it checks, for each ranked candidate in turn, that the command is current (same policy
generation, not past its deadline), that the cgroup still exists as the same directory (inode), that it lies
under the cgroups the ruleset's action names, and that it is not protected. It acts on the first candidate
that passes, or on nothing.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import zmq

from cgroupfs import CgroupFS, detect_layout
from cgroupfs.kill import KillReport, kill_cgroup, recover_intents
from ipc.codec import Channel
from ipc.endpoints import command_server
from ipc.messages import ActionRecord, CommandMessage, CommandResult, CommandStatus, KillCommand, PolicyUpdate
from policy.paths import is_protected, matches_any
from policy.plugins import build_plugin
from policy.plugins.base import RulesetOptions
from workers.base import Worker, main


class CommandExecutor:
    """Checks and carries out kill commands; the actuator's whole judgement, apart from its sockets."""

    def __init__(self, fs: CgroupFS, daemon_pid: int, intent_dir: Path | None = None) -> None:
        self.fs = fs
        self.daemon_pid = daemon_pid
        self.intent_dir = intent_dir  # records of freezes in progress, to thaw after a crash
        self.update: PolicyUpdate | None = None
        self.targets: dict[tuple[str, str], tuple[str, ...]] = {}  # (ruleset, plugin) -> cgroup patterns
        self.protected: frozenset[str] = frozenset()

    def apply_policy(self, update: PolicyUpdate) -> None:
        targets: dict[tuple[str, str], tuple[str, ...]] = {}
        for rs in update.policy.rulesets:
            opts = RulesetOptions(rs.name, rs.post_action_delay, update.policy.interval)
            for spec in rs.actions:
                plugin = build_plugin(spec, "action", opts)
                patterns = plugin.watched_patterns()
                if patterns:
                    targets[(rs.name, spec.name)] = targets.get((rs.name, spec.name), ()) + tuple(patterns)
        # Our own view of what must never be touched, beside what the supervisor sent.
        own = self.fs.own_paths(os.getpid()) | self.fs.own_paths(self.daemon_pid)
        self.targets = targets
        self.protected = frozenset(update.protected_paths) | own
        self.update = update

    def daemon_pids(self) -> set[int]:
        try:
            sup = psutil.Process(self.daemon_pid)
            return {self.daemon_pid, os.getpid(), *(c.pid for c in sup.children(recursive=True))}
        except psutil.Error:
            return {self.daemon_pid, os.getpid()}

    @staticmethod
    def _result(cmd: KillCommand, status: CommandStatus, target: str | None = None,
                pids: list[int] | None = None, detail: str = "", report: KillReport | None = None) -> CommandResult:
        return CommandResult(
            id=cmd.id, status=status, target=target, pids=pids or [], detail=detail,
            mechanism=report.mechanism if report else "", emptied=report.emptied if report else None,
        )

    def execute(self, cmd: KillCommand) -> CommandResult:
        if self.update is None or cmd.generation != self.update.generation:
            running = self.update.generation if self.update else "none"
            return self._result(cmd, "refused", detail=f"policy generation {cmd.generation}, running {running}")
        if time.monotonic() > cmd.not_after:
            return self._result(cmd, "expired", detail="past its deadline; it will be decided again")
        patterns = self.targets.get((cmd.ruleset, cmd.plugin))
        if not patterns:
            return self._result(cmd, "refused", detail=f"ruleset {cmd.ruleset!r} has no action {cmd.plugin!r}")
        daemon_pids = self.daemon_pids()

        def refuse_pid(pid: int) -> str | None:
            if pid == 1:
                return "PID 1"
            if pid in daemon_pids:
                return "pyoomd itself"
            return None

        skipped: list[str] = []
        for cand in cmd.candidates:
            why_not = self.disqualify(cand.path, cand.inode, patterns, daemon_pids)
            if why_not:
                skipped.append(f"{cand.path}: {why_not}")
                continue
            report = kill_cgroup(
                self.fs, cand.path, sig=cmd.signal, deadline=time.monotonic() + cmd.kill_timeout,
                refuse_pid=refuse_pid, dry_run=cmd.dry_run, grace=cmd.grace, intent_dir=self.intent_dir,
            )
            if not report.signalled:
                skipped.append(f"{cand.path}: no process to signal")
                continue
            notes = [*skipped, *report.notes]
            if report.skipped:
                notes.append(f"left alone: {report.skipped}")
            if cmd.dry_run:
                return self._result(cmd, "dry-run", cand.path, report.signalled, "; ".join(notes), report)
            if report.remaining:
                notes.append(f"still present after {cmd.kill_timeout:g}s: {report.remaining}")
                return self._result(cmd, "failed", cand.path, report.signalled, "; ".join(notes), report)
            return self._result(cmd, "killed", cand.path, report.signalled, "; ".join(notes), report)
        return self._result(cmd, "no-target", detail="; ".join(skipped))

    def disqualify(self, path: str, inode: int, patterns: tuple[str, ...], daemon_pids: set[int]) -> str | None:
        """Why `path` may not be acted on now, or None."""
        if not matches_any(patterns, path):
            return "not under the cgroups this action may act on"
        if is_protected(path, self.protected):
            return "protected (root, init.scope, or pyoomd's own cgroup)"
        current = self.fs.identity(path)
        if current is None:
            return "gone"
        if current != inode:
            return "replaced by another cgroup of the same name"
        if daemon_pids & self.fs.members(path):
            return "holds pyoomd's own processes"
        return None


class Actuator(Worker):
    name = "actuator"

    def __init__(self, runtime_dir: Path, state_dir: Path) -> None:
        super().__init__(runtime_dir, state_dir)
        intent_dir = state_dir / "freeze-intents"
        intent_dir.mkdir(parents=True, exist_ok=True)
        # A previous actuator may have died with a cgroup frozen: thaw it before anything else.
        for thawed in recover_intents(intent_dir):
            self.log.warning("thawed %s, left frozen by an actuator that died mid-kill", thawed)
        self.executor = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=os.getppid(), intent_dir=intent_dir)
        self.commands = command_server(self.zmq, self.endpoints)
        self.command_channel = Channel("actuator/commands", CommandMessage)
        self.add_socket(self.commands, self._on_command)

    def dropped_frames(self) -> int:
        return super().dropped_frames() + self.command_channel.dropped

    def apply_policy(self, update: PolicyUpdate) -> None:
        self.executor.apply_policy(update)

    def _on_command(self) -> None:
        while True:
            try:
                identity, frame = self.commands.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                self.command_channel.dropped += 1  # wrong number of frames
                continue
            msg = self.command_channel.decode(frame)
            if not isinstance(msg, KillCommand):
                continue
            started = time.monotonic()
            result = self.executor.execute(msg)
            duration = time.monotonic() - started
            self.commands.send_multipart([identity, self.command_channel.encode(result)])
            self.send_control(
                ActionRecord(
                    time=time.time(),
                    command_id=msg.id,
                    ruleset=msg.ruleset,
                    group=msg.group,
                    plugin=msg.plugin,
                    target=result.target,
                    pids=result.pids,
                    signal=signal.Signals(msg.signal).name,
                    dry_run=msg.dry_run,
                    dry_run_source=msg.dry_run_source,
                    result=result.status,
                    duration=round(duration, 6),
                    reason=msg.reason,
                    detail=result.detail,
                    mechanism=result.mechanism,
                    emptied=result.emptied,
                )
            )


if __name__ == "__main__":
    main(Actuator)
