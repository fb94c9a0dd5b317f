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

import collections
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

import psutil
import zmq
from msgspec.structs import replace as msgspec_replace

from cgroupfs import CgroupFS, CgroupStats, detect_layout
from cgroupfs.kill import KillReport, is_kernel_thread, kill_cgroup, recover_intents
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
from workers.base import Worker, WorkerArgs, main
from workers.desktop_notify import DesktopNotifier, owners
from workers.hooks import Hooks
from workers.units import ErrorKind, UnitInfo, unit_name_from_cgroup

if TYPE_CHECKING:
    from workers.systemd import SystemdBus

log = logging.getLogger("pyoomd.actuator")

# Whatever a command or a plugin says, these are the only files a WriteCommand can reach.
WRITABLE_FILES: frozenset[str] = frozenset(get_args(WritableFile))
# A write below memory.current makes the kernel reclaim in the writer, here: it holds up every command behind it.
SLOW_WRITE = 1.0  # seconds
# How fresh the cached "is the manager reachable" must be. A kill never probes first: it reads the cache, so a stalled
# bus costs the kill nothing; the probe runs at policy apply and from the actuator's timer.
PROBE_INTERVAL = 30.0
PROBE_TIMEOUT = 1.0  # a manager answers in milliseconds; a stalled dbus-daemon must not hold the loop long
# A failure of these kinds says the manager cannot be reached: kills go direct until the next probe says otherwise.
_UNREACHABLE: frozenset[ErrorKind] = frozenset({"unreachable", "deadline"})
MECH_KILL_UNIT = "systemd KillUnit"
MECH_STOP_UNIT = "systemd StopUnit"
REMEMBERED_COMMANDS = 1024  # answered commands kept by id, so that one delivered twice is carried out once


@dataclass
class Reachability:
    """The manager's state at its last probe, kept for the kill path (which must never wait on a probe)."""

    reachable: bool | None = None  # None: never probed yet
    error: str = ""
    checked: float = 0.0  # monotonic time of the last probe (or of the last failure seen on a kill)


@dataclass
class _Outcome:
    """What a kill through the manager did. `fallback`: it did not, for this reason; kill directly."""

    result: CommandResult | None = None
    fallback: str = ""
    skip: str = ""  # the candidate is no longer the one judged: try the next one, kill nothing here


class CommandExecutor:
    """Checks and carries out kill and write commands; the actuator's whole judgement, apart from its sockets."""

    def __init__(self, fs: CgroupFS, daemon_pid: int, intent_dir: Path | None = None,
                 kmsg_path: str | None = KMSG_PATH, bus: SystemdBus | None = None) -> None:
        self.fs = fs
        # The service manager kills with `via: systemd|auto` go through; the Actuator shares UnitExecutor's, so
        # that one connection serves restarts and kills alike. None: every kill is direct.
        self.bus = bus
        self.reach = Reachability()
        self.probe_interval = PROBE_INTERVAL
        self._probing: threading.Thread | None = None
        self.daemon_pid = daemon_pid
        self.intent_dir = intent_dir  # records of freezes in progress, to thaw after a crash
        self.kmsg_path = kmsg_path  # where oomd's kill line goes; None: nowhere
        self.update: PolicyUpdate | None = None
        self.targets: dict[tuple[str, str], tuple[str, ...]] = {}  # (ruleset, plugin) -> cgroup patterns
        # (ruleset, plugin) -> each such action that declares files it may write, with its own patterns
        self.writers: dict[tuple[str, str], list[tuple[tuple[str, ...], Plugin]]] = {}
        self.protected: frozenset[str] = frozenset()
        # (ruleset, plugin) -> the policy's kill actions, whose own omit rules (patterns, xattrs) are checked here
        self.kill_actions: dict[tuple[str, str], list[Plugin]] = {}
        self.answered: collections.OrderedDict[str, CommandResult] = collections.OrderedDict()
        # cgroup path -> when it was killed (monotonic), for the actions' kill storm limit (max_kills/kill_window)
        self.kills: dict[str, collections.deque[float]] = {}
        self.hooks = Hooks()
        self.notifier = DesktopNotifier()
        # command id -> the uids owning the victim's processes, read just before its kill (for `notify`)
        self.owners: dict[str, set[int]] = {}

    def apply_policy(self, update: PolicyUpdate) -> None:
        targets: dict[tuple[str, str], tuple[str, ...]] = {}
        writers: dict[tuple[str, str], list[tuple[tuple[str, ...], Plugin]]] = {}
        kill_actions: dict[tuple[str, str], list[Plugin]] = {}
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
                    if hasattr(plugin, "omitted"):
                        kill_actions.setdefault((rs.name, spec.name), []).append(plugin)
        # Our own view of what must never be touched, beside what the supervisor sent.
        own = self.fs.own_paths(os.getpid()) | self.fs.own_paths(self.daemon_pid)
        self.targets = targets
        self.writers = writers
        self.kill_actions = kill_actions
        self.protected = frozenset(update.protected_paths) | own
        self.update = update
        if self.bus is not None:
            self.probe()  # at policy apply, so that the first kill already knows whether the manager answers

    # ---- the service manager's reachability ------------------------------------------------------------------

    def use_bus(self, bus: SystemdBus | None) -> None:
        if bus is not self.bus:
            self._probing = None  # a probe still running is about the old bus and will not touch the new state
            self.bus = bus
            self.reach = Reachability()

    def probe(self) -> None:
        """Probe the manager now, in the caller's thread (bounded by PROBE_TIMEOUT), and cache the answer."""
        bus = self.bus
        if bus is None:
            return
        r = bus.probe(timeout=PROBE_TIMEOUT)
        if bus is not self.bus:  # a policy swapped the bus meanwhile: this answer is about the old one
            return
        was = self.reach.reachable
        self.reach = Reachability(reachable=r.ok, error=r.error, checked=time.monotonic())
        # Said once when it changes, not at every probe: a host without systemd would hear it twice a minute.
        if not r.ok and was is not False:
            log.warning("service manager not reachable (kills go direct until it is): %s", r.error)
        elif r.ok and was is False:
            log.info("service manager reachable again at %s (systemd %s): kills go through it",
                     r.value.address if r.value else bus.address, r.value.version if r.value else "?")

    def maybe_probe(self, now: float) -> float | None:
        """From the actuator's timer: probe in a thread of its own when the last answer is older than
        probe_interval, so that a stalled bus never holds up a command. Returns when to look again."""
        if self.bus is None:
            return None
        due = self.reach.checked + self.probe_interval
        if now >= due and (self._probing is None or not self._probing.is_alive()):
            self._probing = threading.Thread(target=self.probe, name="pyoomd-systemd-probe", daemon=True)
            self._probing.start()
            due = now + self.probe_interval
        return max(due, now + 1.0)

    def _unreachable(self, error: str) -> None:
        self.reach = Reachability(reachable=False, error=error, checked=time.monotonic())

    def daemon_pids(self) -> set[int]:
        try:
            sup = psutil.Process(self.daemon_pid)
            return {self.daemon_pid, os.getpid(), *(c.pid for c in sup.children(recursive=True))}
        except psutil.Error:
            return {self.daemon_pid, os.getpid()}

    @staticmethod
    def _result(cmd: KillCommand, status: CommandStatus, target: str | None = None,
                pids: list[int] | None = None, detail: str = "", report: KillReport | None = None,
                mechanism: str | None = None, unit: str = "") -> CommandResult:
        return CommandResult(
            id=cmd.id, status=status, target=target, pids=pids or [], detail=detail,
            mechanism=mechanism if mechanism is not None else report.mechanism if report else "",
            emptied=report.emptied if report else None, unit=unit,
        )

    def execute(self, cmd: KillCommand) -> CommandResult:
        """Carry out a kill command once: the same command (by id) again gets the first answer, and nothing is
        signalled a second time."""
        earlier = self.answered.get(cmd.id)
        if earlier is not None:
            log.warning("command %s came again; answered as before (%s), not carried out twice", cmd.id,
                        earlier.status)
            return earlier
        result = self._execute(cmd)
        users = self.owners.pop(cmd.id, set())
        if result.status == "killed" and result.target:
            self.count_kill(result.target)
        if result.status in ("killed", "failed") and result.target and cmd.postkill_hook:
            note = self.hooks.postkill(cmd, result.target, result.pids, result.unit, result.status)
            result = msgspec_replace(result, detail="; ".join(x for x in (result.detail, note) if x))
        if result.status == "killed" and cmd.notify:
            # After the kill and its record's facts, never before: the child is started and left to run.
            note = self.notifier.notify(cmd, result, users)
            result = msgspec_replace(result, detail="; ".join(x for x in (result.detail, note) if x))
        self.answered[cmd.id] = result
        while len(self.answered) > REMEMBERED_COMMANDS:
            self.answered.popitem(last=False)
        return result

    def _execute(self, cmd: KillCommand) -> CommandResult:
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
            if is_kernel_thread(pid):
                return "a kernel thread"
            return None

        key = (cmd.ruleset.split(" @ ", 1)[0], cmd.plugin)
        skipped: list[str] = []
        for cand in cmd.candidates:
            why_not = (self.disqualify(cand.path, cand.inode, patterns, daemon_pids) or self.omitted(key, cand.path)
                       or self.storm(key, cand.path))
            if why_not:
                skipped.append(f"{cand.path}: {why_not}")
                continue
            via_notes: list[str] = []
            if cmd.prekill_hook and not cmd.dry_run:
                # Just before the kill, the cgroup judged and still the one: the hook's wait is bounded.
                hook_note = self.hooks.prekill(cmd, cand.path, sorted(self.fs.members(cand.path)))
                if hook_note:
                    skipped.append(hook_note)
            if cmd.notify and not cmd.dry_run:
                # Whose processes these are can only be read while they live.
                self.owners[cmd.id] = owners(self.fs.members(cand.path))
            if cmd.via != "direct" and (cmd.target == "cgroup" or cmd.operation == "stop"):
                outcome = self._through_manager(cmd, cand, refuse_pid, skipped)
                if outcome.result is not None:
                    return outcome.result
                if outcome.skip:
                    skipped.append(f"{cand.path}: {outcome.skip}")
                    continue
                if outcome.fallback:
                    via_notes.append(outcome.fallback)
            deadline = time.monotonic() + cmd.kill_timeout
            if cmd.target == "largest_process":
                report = kill_largest_process(
                    self.fs, cand.path, sig=cmd.signal, deadline=deadline, refuse_pid=refuse_pid,
                    dry_run=cmd.dry_run, grace=cmd.grace, reap_memory=cmd.reap_memory,
                )
            else:
                report = kill_cgroup(self.fs,
                    cand.path, sig=cmd.signal, deadline=deadline,
                    refuse_pid=refuse_pid, dry_run=cmd.dry_run, grace=cmd.grace, intent_dir=self.intent_dir,
                    reap_memory=cmd.reap_memory,
                )
            if not report.signalled:
                skipped.append(f"{cand.path}: no process to signal")
                continue
            notes = [*skipped, *via_notes, *report.notes]
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

    # ---- kills and stops through the service manager -----------------------------------------------------------

    def _unit_of(self, cmd: KillCommand, cand: Candidate) -> tuple[UnitInfo | None, str]:
        """The unit whose own cgroup the candidate is, when this kill should go through the manager; else None
        and what to say about the direct kill instead ("" when there is nothing worth saying)."""
        explicit = cmd.via == "systemd" or cmd.operation == "stop"
        if unit_name_from_cgroup(cand.path) is None:
            # A slice, a sub-cgroup inside a unit, a plain cgroup: the manager cannot kill just that.
            return None, "not a unit's own cgroup: killed directly" if explicit else ""
        if self.bus is None:
            return None, "no service manager (--systemd-bus none): killed directly" if explicit else ""
        if not self.reach.reachable:
            # The cached answer decides: the kill itself never waits on a bus that did not answer its probe.
            why = self.reach.error or "not probed yet"
            return None, f"systemd unreachable: {why}; killed directly"
        found = self.bus.unit_for_cgroup(cand.path, pids=sorted(self.fs.members(cand.path))[:3],
                                         timeout=PROBE_TIMEOUT)
        if not found.ok:
            if found.kind in _UNREACHABLE:
                self._unreachable(found.error)
            return None, f"systemd unreachable: {found.error}; killed directly"
        if found.value is None:
            return None, "not a unit's own cgroup (the manager says): killed directly" if explicit else ""
        return found.value, ""

    def _through_manager(self, cmd: KillCommand, cand: Candidate, refuse_pid, skipped: list[str]) -> _Outcome:
        unit, why = self._unit_of(cmd, cand)
        if unit is None:
            return _Outcome(fallback=why)
        members = sorted(self.fs.members(cand.path))
        refused = [pid for pid in members if refuse_pid(pid)]
        if refused:
            # The manager would signal them too: only the direct kill can leave them alone.
            return _Outcome(fallback=f"{unit.name} holds {refused}, which pyoomd never signals: killed directly")
        if not members:
            return _Outcome(skip="no process to signal")
        mechanism = MECH_STOP_UNIT if cmd.operation == "stop" else MECH_KILL_UNIT
        if cmd.dry_run:
            what = "stop" if cmd.operation == "stop" else "kill"
            notes = [*skipped, f"dry-run: would {what} {unit.name} (invocation {unit.invocation_id}) through the "
                     "service manager; nothing signalled"]
            return _Outcome(result=self._result(cmd, "dry-run", cand.path, members, "; ".join(notes),
                                                mechanism=mechanism, unit=unit.name))
        if cmd.operation == "stop":
            return self._stop_unit(cmd, cand, unit, members, refuse_pid, skipped)
        return self._kill_unit(cmd, cand, unit, members, refuse_pid, skipped)

    def _kill_unit(self, cmd: KillCommand, cand: Candidate, unit: UnitInfo, members: list[int], refuse_pid,
                   skipped: list[str]) -> _Outcome:
        """KillUnit(all): SIGTERM then SIGKILL after the grace, or the one signal; done when the invocation that was
        judged is gone (see _wait_unit_gone)."""
        deadline = time.monotonic() + cmd.kill_timeout
        first = signal.SIGTERM if cmd.grace > 0 else cmd.signal
        sent = self.bus.kill_unit_checked(unit.name, unit.control_group, unit.invocation_id,  # type: ignore[union-attr]
                                          signal=first, timeout=PROBE_TIMEOUT)
        notes = list(skipped)
        if not sent.ok:
            if sent.kind == "refused":
                # Restarted (or stopped and started) since it was looked up: the invocation that was judged is
                # gone and the new one was not judged. Neither is killed; the next candidate is tried.
                return _Outcome(skip=f"{unit.name} is not the invocation that was picked ({sent.error}): not killed")
            if sent.kind in _UNREACHABLE:
                self._unreachable(sent.error)
            return _Outcome(fallback=f"systemd unreachable: KillUnit {unit.name}: {sent.error}; killed directly")
        notes.append(f"{unit.name}: KillUnit {signal.Signals(first).name} (invocation {unit.invocation_id})")
        gone = cmd.grace > 0 and self._wait_unit_gone(cand.path, unit, members,
                                                      min(time.monotonic() + cmd.grace, deadline), notes)
        if cmd.grace > 0 and not gone:
            # Checked again: a unit its manager restarted after the SIGTERM is a new invocation, not ours.
            again = self.bus.kill_unit_checked(unit.name, unit.control_group, unit.invocation_id,  # type: ignore[union-attr]
                                               signal=signal.SIGKILL, timeout=PROBE_TIMEOUT)
            if again.ok:
                notes.append(f"SIGTERM through the manager, then SIGKILL after {cmd.grace:g}s of grace")
            elif again.kind == "refused":
                notes.append(f"SIGKILL not sent: {again.error}")
            else:
                if again.kind in _UNREACHABLE:
                    self._unreachable(again.error)
                report = kill_cgroup(self.fs, cand.path, sig=signal.SIGKILL, deadline=deadline,
                                     refuse_pid=refuse_pid, intent_dir=self.intent_dir, reap_memory=cmd.reap_memory)
                notes.append(f"systemd unreachable for the SIGKILL: {again.error}; killed directly "
                             f"({report.mechanism})")
        gone = gone or self._wait_unit_gone(cand.path, unit, members, deadline, notes)
        notes.extend(self.mark(cmd, cand, len(members)))
        status: CommandStatus = "killed" if gone else "failed"
        if not gone:
            notes.append(f"still present after {cmd.kill_timeout:g}s: {sorted(self.fs.members(cand.path))}")
        result = self._result(cmd, status, cand.path, members, "; ".join(notes), mechanism=MECH_KILL_UNIT,
                              unit=unit.name)
        return _Outcome(result=msgspec_replace(result, emptied=not self.fs.members(cand.path)))

    def _wait_unit_gone(self, path: str, unit: UnitInfo, members: list[int], until: float, notes: list[str]) -> bool:
        """Wait until the invocation that was judged is gone: its cgroup empty, or none of its processes left and
        the manager running a new invocation there (Restart=, which the manager applies as it should: the new
        one was not judged and is not ours to kill). A new invocation is noted once."""
        judged = set(members)
        while True:
            now = self.fs.members(path)
            if not now:
                return True
            if not judged & now and self.bus is not None:
                state = self.bus.unit_state(unit.name, timeout=PROBE_TIMEOUT)
                if state.ok and state.value is not None and state.value.invocation_id not in ("",
                                                                                         unit.invocation_id):
                    notes.append(f"{unit.name} started again by its manager as invocation "
                                 f"{state.value.invocation_id} ({sorted(now)}): left alone")
                    return True
            if time.monotonic() >= until:
                return False
            time.sleep(0.02)

    def _stop_unit(self, cmd: KillCommand, cand: Candidate, unit: UnitInfo, members: list[int], refuse_pid,
                   skipped: list[str]) -> _Outcome:
        """StopUnit(replace), the job awaited up to stop_timeout; then a direct kill of whatever is left."""
        bus = self.bus
        assert bus is not None
        # Same check as kill_unit_checked: a restarted unit is a new invocation, not the one judged.
        state = bus.unit_state(unit.name, timeout=PROBE_TIMEOUT)
        if not state.ok or state.value is None:
            if state.kind in _UNREACHABLE:
                self._unreachable(state.error)
            return _Outcome(fallback=f"systemd unreachable: {state.error}; killed directly")
        if (state.value.control_group, state.value.invocation_id) != (unit.control_group, unit.invocation_id):
            return _Outcome(skip=f"{unit.name} is not the invocation that was picked (now "
                            f"{state.value.invocation_id or 'none'}): not stopped")
        stopped = bus.stop_unit(unit.name, "replace", timeout=cmd.stop_timeout)
        notes = list(skipped)
        mechanism = MECH_STOP_UNIT
        if stopped.ok and stopped.value is not None:
            notes.append(f"{unit.name}: StopUnit job {stopped.value.job_id} {stopped.value.result} "
                         f"in {stopped.elapsed:.3f}s")
        else:
            if stopped.kind in _UNREACHABLE and stopped.kind != "deadline":
                self._unreachable(stopped.error)  # a slow stop job says nothing about the bus itself
            notes.append(f"{unit.name}: StopUnit: {stopped.error}")
        report: KillReport | None = None
        if self.fs.members(cand.path):
            report = kill_cgroup(self.fs, cand.path, sig=signal.SIGKILL, deadline=time.monotonic() + cmd.kill_timeout,
                                 refuse_pid=refuse_pid, intent_dir=self.intent_dir, reap_memory=cmd.reap_memory)
            mechanism = f"{MECH_STOP_UNIT}, then {report.mechanism}"
            notes.append(f"still running after the stop job: killed directly {report.signalled}")
            notes.extend(report.notes)
        emptied = not self.fs.members(cand.path)
        notes.extend(self.mark(cmd, cand, len(members)))
        if not emptied:
            notes.append(f"still present: {sorted(self.fs.members(cand.path))}")
        result = self._result(cmd, "killed" if emptied else "failed", cand.path, members, "; ".join(notes),
                              mechanism=mechanism, unit=unit.name)
        return _Outcome(result=msgspec_replace(result, emptied=emptied))

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

    def storm(self, key: tuple[str, str], path: str) -> str | None:
        """The kill storm limit: a cgroup killed `max_kills` times within `kill_window` is refused until the oldest
        of those kills leaves the window (the action's own arguments; the strictest, if it appears twice)."""
        limits = [(p.max_kills, p.kill_window) for p in self.kill_actions.get(key, [])  # type: ignore[attr-defined]
                  if getattr(p, "max_kills", 0)]
        if not limits:
            return None
        times = self.kills.get(path)
        if not times:
            return None
        now = time.monotonic()
        for count, window in limits:
            recent = [t for t in times if now - t < window]
            if len(recent) >= count:
                why = (f"killed {len(recent)} times in the last {window:g}s (max_kills {count}): refused until "
                       f"{window - (now - recent[0]):.0f}s from now")
                log.warning("kill storm limit: %s %s", path, why)
                return why
        return None

    def count_kill(self, path: str) -> None:
        times = self.kills.setdefault(path, collections.deque(maxlen=64))
        times.append(time.monotonic())
        if len(self.kills) > 10_000:  # cgroups come and go: forget the oldest
            self.kills.pop(next(iter(self.kills)))

    def omitted(self, key: tuple[str, str], path: str) -> str | None:
        """The action's own omit rules, checked again here on what the cgroup carries now (its xattrs as root reads
        them, the policy's `omit` patterns): a detector that ignored them is not obeyed."""
        plugins = self.kill_actions.get(key, [])
        if not plugins:
            return None
        now = CgroupStats(path=path, inode=0, xattrs=self.fs.xattrs(path))
        for plugin in plugins:
            why = plugin.omitted(now)  # type: ignore[attr-defined]
            if why:
                return f"omitted ({why})"
        return None

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

    def __init__(self, args: WorkerArgs) -> None:
        super().__init__(args)
        intent_dir = args.state_dir / "freeze-intents"
        intent_dir.mkdir(parents=True, exist_ok=True)
        # A previous actuator may have died with a cgroup frozen: thaw it before anything else.
        for thawed in recover_intents(intent_dir):
            self.log.warning("thawed %s, left frozen by an actuator that died mid-kill", thawed)
        self.executor = CommandExecutor(CgroupFS(detect_layout()), daemon_pid=os.getppid(), intent_dir=intent_dir)
        self.units = UnitExecutor()
        self._warm_up()
        self.commands = command_server(self.zmq, self.endpoints)
        self.command_channel = Channel("actuator/commands", CommandMessage)
        self.add_socket(self.commands, self._on_command)

    def dropped_frames(self) -> int:
        return super().dropped_frames() + self.command_channel.dropped

    def apply_policy(self, update: PolicyUpdate) -> None:
        # One connection to the manager for restarts and kills alike: UnitExecutor makes it from the policy's
        # systemd_bus, and the kill executor (which probes it at apply) uses the same.
        self.units.apply_policy(update)
        self.executor.use_bus(self.units.bus)
        self.executor.apply_policy(update)

    def on_timer(self, now: float) -> float | None:
        self.executor.hooks.reap()
        self.executor.notifier.reap(now)
        return self.executor.maybe_probe(now)

    def _warm_up(self) -> None:
        """Run the kill path once as a dry run on our own cgroup, so its code is paged in (and locked) before the
        moment it is needed; nothing is signalled, frozen or written."""
        own = self.executor.fs.cgroups_of_pid(os.getpid())
        path = normalize(own.get("memory") or own.get("") or "/")
        try:
            report = kill_cgroup(self.executor.fs, path, sig=signal.SIGKILL, deadline=time.monotonic() + 1.0,
                                 refuse_pid=lambda pid: "warm-up", dry_run=True)
            self.log.info("kill path warmed up (dry run on %s: %s)", path, report.mechanism)
        except OSError as e:
            self.log.warning("kill path warm-up failed: %s", e)

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
            duplicate = msg.id in self.executor.answered
            result = self.executor.execute(msg)
            duration = time.monotonic() - started
            self.commands.send_multipart([identity, self.command_channel.encode(result)])
            if duplicate:
                continue  # answered again, recorded once
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
                    unit=result.unit,
                )
            )



def _systemd_bus(bus: str) -> SystemdBus:
    # dbus-fast and asyncio only in an actuator that has a service manager to talk to (several MiB otherwise).
    from workers.systemd import SystemdBus

    return SystemdBus(bus)


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
                if spec.name in ("systemd_restart", "restart_unit"):
                    services.add((rs.name, str(spec.args.get("service", ""))))
        if self.bus is None or self.update is None or self.update.systemd_bus != update.systemd_bus:
            if self.bus is not None:
                self.bus.close()
            self.bus = None if update.systemd_bus == "none" else _systemd_bus(update.systemd_bus)
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
            return result("refused", f"ruleset {cmd.ruleset!r} names no restart of {cmd.unit!r}")
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
