"""The actuator: the only process that signals anything. It trusts no command blindly.

Before acting it checks, for each ranked candidate in turn, that the command is current (same policy
generation, not past its deadline), that the cgroup still exists as the same directory (inode), that it lies
under the cgroups the ruleset's action names, and that it is not protected. It acts on the first candidate
that passes, or on nothing: the whole cgroup, or (target "largest_process") only its largest process by RSS.
After a kill (never in dry-run) it marks the cgroup as oomd does: xattrs and a kmsg line (cgroupfs.marks).

Write commands (senpai's) get the same checks, and write one value into memory.high or memory.reclaim of a
cgroup2 directory with the memory controller, and nothing else (see CommandExecutor.execute_write).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import get_args

import psutil
import zmq

from cgroupfs import CgroupFS, detect_layout
from cgroupfs.kill import KillReport, kill_cgroup, recover_intents
from cgroupfs.largest import kill_largest_process
from cgroupfs.marks import KMSG_PATH, kill_line, mark_kill, write_kmsg
from cgroupfs.tree import CgroupPathError, normalize
from ipc.codec import Channel
from ipc.endpoints import command_server
from ipc.messages import (
    ActionRecord,
    Candidate,
    CommandMessage,
    CommandResult,
    CommandStatus,
    KillCommand,
    PolicyUpdate,
    UnitCommand,
    WritableFile,
    WriteCommand,
)
from policy.compose import effective_rulesets
from policy.engine import ruleset_options
from policy.paths import is_protected, matches_any
from policy.plugins import Plugin, build_plugin
from workers.base import Worker, main
from workers.systemd import SystemdBus

log = logging.getLogger("pyoomd.actuator")

# Whatever a command or a plugin says, these are the only files a WriteCommand can reach.
WRITABLE_FILES: frozenset[str] = frozenset(get_args(WritableFile))
# A write below memory.current makes the kernel reclaim in the writer, here: it holds up every command behind it.
SLOW_WRITE = 1.0  # seconds


class CommandExecutor:
    """Checks and carries out kill and write commands; the actuator's whole judgement, apart from its sockets."""

    def __init__(self, fs: CgroupFS, daemon_pid: int, intent_dir: Path | None = None,
                 kmsg_path: str | None = KMSG_PATH) -> None:
        self.fs = fs
        self.daemon_pid = daemon_pid
        self.intent_dir = intent_dir  # records of freezes in progress, to thaw after a crash
        self.kmsg_path = kmsg_path  # where oomd's kill line goes; None: nowhere
        self.update: PolicyUpdate | None = None
        self.targets: dict[tuple[str, str], tuple[str, ...]] = {}  # (ruleset, plugin) -> cgroup patterns
        # (ruleset, plugin) -> each such action that declares files it may write, with its own patterns
        self.writers: dict[tuple[str, str], list[tuple[tuple[str, ...], Plugin]]] = {}
        self.protected: frozenset[str] = frozenset()

    def apply_policy(self, update: PolicyUpdate) -> None:
        targets: dict[tuple[str, str], tuple[str, ...]] = {}
        writers: dict[tuple[str, str], list[tuple[tuple[str, ...], Plugin]]] = {}
        # The rulesets the engine runs: drop-in copies included, and per-cgroup rulesets with their cgroups
        # (so ruleset_cgroup targets resolve under them).
        for rs in effective_rulesets(update.policy):
            opts = ruleset_options(rs, update.policy.interval)
            for spec in rs.actions:
                plugin = build_plugin(spec, "action", opts)
                patterns = plugin.watched_patterns()
                if patterns:
                    targets[(rs.name, spec.name)] = targets.get((rs.name, spec.name), ()) + tuple(patterns)
                    if getattr(plugin, "writes", None):
                        writers.setdefault((rs.name, spec.name), []).append((tuple(patterns), plugin))
        # Our own view of what must never be touched, beside what the supervisor sent.
        own = self.fs.own_paths(os.getpid()) | self.fs.own_paths(self.daemon_pid)
        self.targets = targets
        self.writers = writers
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
        # A per-cgroup ruleset's copy is named "ruleset @ /cgroup": its targets are the ruleset's.
        patterns = self.targets.get((cmd.ruleset.split(" @ ", 1)[0], cmd.plugin))
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
            deadline = time.monotonic() + cmd.kill_timeout
            if cmd.target == "largest_process":
                report = kill_largest_process(
                    self.fs, cand.path, sig=cmd.signal, deadline=deadline, refuse_pid=refuse_pid,
                    dry_run=cmd.dry_run, grace=cmd.grace, reap_memory=cmd.reap_memory,
                )
            else:
                report = kill_cgroup(
                    self.fs, cand.path, sig=cmd.signal, deadline=deadline,
                    refuse_pid=refuse_pid, dry_run=cmd.dry_run, grace=cmd.grace, intent_dir=self.intent_dir,
                    reap_memory=cmd.reap_memory,
                )
            if not report.signalled:
                skipped.append(f"{cand.path}: no process to signal")
                continue
            notes = [*skipped, *report.notes]
            if not cmd.dry_run:
                notes.extend(self.mark(cmd, cand, len(report.signalled)))
            if report.skipped:
                notes.append(f"left alone: {report.skipped}")
            if cmd.dry_run:
                return self._result(cmd, "dry-run", cand.path, report.signalled, "; ".join(notes), report)
            if report.remaining:
                notes.append(f"still present after {cmd.kill_timeout:g}s: {report.remaining}")
                return self._result(cmd, "failed", cand.path, report.signalled, "; ".join(notes), report)
            return self._result(cmd, "killed", cand.path, report.signalled, "; ".join(notes), report)
        return self._result(cmd, "no-target", detail="; ".join(skipped))

    def mark(self, cmd: KillCommand, cand: Candidate, nr_killed: int) -> list[str]:
        """oomd's traces of a kill: xattrs on the cgroup's primary directory and its cgroup2 directory (where
        there is one), and the kill line in kmsg. Returns what could not be written; a failure stops nothing."""
        dirs: list[Path] = []
        loc = self.fs.locate(cand.path)
        if loc is not None:
            dirs.append(loc[1])
        unified = self.fs.layout.unified
        if unified is not None and unified.dir_of(cand.path).is_dir():
            dirs.append(unified.dir_of(cand.path))
        problems = mark_kill(dirs, cmd.id, nr_killed)
        if self.kmsg_path is not None:
            line = kill_line(cand.path, cand.usage, cand.pressure, cmd.ruleset, cmd.group, cmd.plugin)
            problem = write_kmsg(line, path=self.kmsg_path)
            if problem:
                problems.append(problem)
        return [f"marks: {p}" for p in problems]

    def disqualify(self, path: str, inode: int, patterns: tuple[str, ...], daemon_pids: set[int]) -> str | None:
        """Why `path` may not be acted on now, or None."""
        try:
            if normalize(path) != path:
                return "not a normalised cgroup path"
        except CgroupPathError:
            return "not a normalised cgroup path ('..')"  # a '*' in a pattern would match '..'
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

    # ---- writes -----------------------------------------------------------------------------------------------

    def execute_write(self, cmd: WriteCommand) -> CommandResult:
        """Check a write command as a kill is checked, then write its value; refuse anything else.

        It must be current (generation, deadline), name an allowed file with a byte count, come from an action of
        the ruleset that declares that file, on a cgroup under that action's patterns and not protected, whose
        cgroup2 directory has the memory controller (the file exists) and is still the directory decided on
        (inode). The directory is opened once and the file written through it, so the checks and the write are
        about the same directory; the file is never created, and symlinks are not followed."""

        def result(status: CommandStatus, detail: str) -> CommandResult:
            return CommandResult(id=cmd.id, status=status, target=cmd.path, pids=[], detail=detail,
                                 mechanism=f"write {cmd.file}")

        if self.update is None or cmd.generation != self.update.generation:
            running = self.update.generation if self.update else "none"
            return result("refused", f"policy generation {cmd.generation}, running {running}")
        if time.monotonic() > cmd.not_after:
            return result("expired", "past its deadline; the next decision will write again")
        why = self._refuse_write(cmd)
        if why:
            return result("refused", why)
        unified = self.fs.layout.unified
        if unified is None:
            return result("refused", "no cgroup2 on this host: memory.high and memory.reclaim exist only there")
        try:
            dir_fd = os.open(unified.dir_of(cmd.path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return result("no-target", "gone")
        except OSError as e:
            return result("failed", f"cannot open its cgroup2 directory: {e.strerror}")
        try:
            why = self._refuse_target(cmd, dir_fd)
            if why:
                return result("refused", why)
            if cmd.dry_run or self.update.dry_run:
                return result("dry-run", f"would write {cmd.value} to {cmd.file}")
            started = time.monotonic()
            try:
                # O_TRUNC as a shell's `echo >` does (cgroupfs ignores it; a plain file, as in tests, needs it).
                fd = os.open(cmd.file, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    data = cmd.value.encode()
                    written = os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError as e:
                # memory.reclaim says EAGAIN when the kernel reclaimed less than asked: nothing is wrong.
                return result("failed", f"writing {cmd.value} to {cmd.file}: {e.strerror or e}")
            took = time.monotonic() - started
            if took > SLOW_WRITE:
                log.warning("writing %s to %s of %s took %.1fs (the kernel reclaims in the writer); commands "
                            "waited meanwhile", cmd.value, cmd.file, cmd.path, took)
            if written != len(data):
                return result("failed", f"the kernel took {written} of {len(data)} bytes of {cmd.value!r}")
            return result("written", f"{cmd.file} = {cmd.value} in {took:.3f}s")
        finally:
            os.close(dir_fd)

    def _refuse_write(self, cmd: WriteCommand) -> str | None:
        """What the command itself and the policy say against it, before the filesystem is looked at."""
        if cmd.file not in WRITABLE_FILES:
            return f"{cmd.file!r} is not a file pyoomd writes (only {', '.join(sorted(WRITABLE_FILES))})"
        try:
            if normalize(cmd.path) != cmd.path:
                return f"{cmd.path!r} is not a normalised cgroup path"
        except CgroupPathError as e:
            return str(e)
        key = (cmd.ruleset.split(" @ ", 1)[0], cmd.plugin)
        writers = [(p, plugin) for p, plugin in self.writers.get(key, [])
                   if cmd.file in getattr(plugin, "writes", ())]
        if not writers:
            return f"ruleset {cmd.ruleset!r} has no action {cmd.plugin!r} that writes {cmd.file}"
        if not any(matches_any(patterns, cmd.path) for patterns, _ in writers):
            return "not under the cgroups this action may act on"
        if is_protected(cmd.path, self.protected):
            return "protected (root, init.scope, or pyoomd's own cgroup)"
        return None

    def _refuse_target(self, cmd: WriteCommand, dir_fd: int) -> str | None:
        """What the cgroup2 directory, opened as `dir_fd`, says against the command."""
        try:
            os.stat(cmd.file, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return self._missing_file(cmd, dir_fd)
        if os.fstat(dir_fd).st_ino != cmd.inode:
            return "replaced by another cgroup of the same name"
        current: int | None = None
        try:
            fd = os.open("memory.current", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                current = int(os.read(fd, 64))
            finally:
                os.close(fd)
        except (OSError, ValueError):
            pass
        # The action's own limits, as the policy (not the command) gives them.
        key = (cmd.ruleset.split(" @ ", 1)[0], cmd.plugin)
        whys = []
        for patterns, plugin in self.writers.get(key, []):
            if not matches_any(patterns, cmd.path):
                continue
            check = getattr(plugin, "check_write", None)
            why = check(cmd.file, cmd.value, current) if check is not None else None
            if why is None:
                return None
            whys.append(why)
        return "; ".join(whys) or None

    def _missing_file(self, cmd: WriteCommand, dir_fd: int) -> str:
        try:
            os.stat("memory.current", dir_fd=dir_fd, follow_symlinks=False)
            has_memory = True
        except FileNotFoundError:
            has_memory = False
        if has_memory:
            return f"no {cmd.file} here (memory.reclaim came with kernel 5.19)"
        memory = self.fs.layout.memory
        if memory is not None and memory.version == 1:
            return (f"no {cmd.file}: its cgroup2 directory has no memory controller, as memory is accounted in the "
                    "v1 memory controller on this host (which has no memory.high)")
        return f"no {cmd.file}: its cgroup2 directory has no memory controller (not enabled by its parent)"


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
        self.units = UnitExecutor()
        self.commands = command_server(self.zmq, self.endpoints)
        self.command_channel = Channel("actuator/commands", CommandMessage)
        self.add_socket(self.commands, self._on_command)

    def dropped_frames(self) -> int:
        return super().dropped_frames() + self.command_channel.dropped

    def apply_policy(self, update: PolicyUpdate) -> None:
        self.executor.apply_policy(update)
        self.units.apply_policy(update)

    def _on_unit_command(self, identity: bytes, cmd: UnitCommand) -> None:
        started = time.monotonic()
        result = self.units.execute(cmd)
        self.commands.send_multipart([identity, self.command_channel.encode(result)])
        self.send_control(ActionRecord(
            time=time.time(), command_id=cmd.id, ruleset=cmd.ruleset, group=cmd.group, plugin=cmd.plugin,
            target=cmd.unit, pids=[], signal="-", dry_run=cmd.dry_run, dry_run_source=cmd.dry_run_source,
            result=result.status, duration=round(time.monotonic() - started, 6), reason=cmd.reason,
            detail=result.detail, mechanism="systemd",
        ))

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
            if isinstance(msg, WriteCommand):
                # Fire and forget: answered (the detector only logs a failure), not recorded as an action.
                self.commands.send_multipart([identity, self.command_channel.encode(self.executor.execute_write(msg))])
                continue
            if isinstance(msg, UnitCommand):
                self._on_unit_command(identity, msg)
                continue
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



class UnitExecutor:
    """Checks and carries out unit commands through the service manager (oomd's systemd_restart)."""

    def __init__(self) -> None:
        self.update: PolicyUpdate | None = None
        self.bus: SystemdBus | None = None
        self.services: set[tuple[str, str]] = set()  # (ruleset, unit) the policy names

    def apply_policy(self, update: PolicyUpdate) -> None:
        services = set()
        for rs in effective_rulesets(update.policy):
            for spec in rs.actions:
                if spec.name == "systemd_restart":
                    services.add((rs.name, str(spec.args.get("service", ""))))
        if self.bus is None or self.update is None or self.update.systemd_bus != update.systemd_bus:
            if self.bus is not None:
                self.bus.close()
            self.bus = None if update.systemd_bus == "none" else SystemdBus(update.systemd_bus)
        self.services = services
        self.update = update

    def execute(self, cmd: UnitCommand) -> CommandResult:
        def result(status: CommandStatus, detail: str) -> CommandResult:
            return CommandResult(id=cmd.id, status=status, target=cmd.unit, pids=[], detail=detail,
                                 mechanism="systemd")

        if self.update is None or cmd.generation != self.update.generation:
            return result("refused", f"policy generation {cmd.generation} is not the one running")
        if time.monotonic() > cmd.not_after:
            return result("expired", "past its deadline; it will be decided again")
        if (cmd.ruleset.split(" @ ", 1)[0], cmd.unit) not in self.services:
            return result("refused", f"ruleset {cmd.ruleset!r} names no systemd_restart of {cmd.unit!r}")
        if cmd.dry_run:
            return result("dry-run", f"would restart {cmd.unit}")
        if self.bus is None:
            return result("failed", "no service manager (--systemd-bus none)")
        outcome = self.bus.restart_unit(cmd.unit, timeout=cmd.timeout)
        if not outcome.ok or outcome.value is None:
            return result("failed", f"RestartUnit {cmd.unit}: {outcome.error}")
        if outcome.value.result != "done":
            return result("failed", f"RestartUnit {cmd.unit}: job {outcome.value.result or 'not finished'}")
        return result("restarted", f"job {outcome.value.job_id} done in {outcome.elapsed:.3f}s")


if __name__ == "__main__":
    main(Actuator)
