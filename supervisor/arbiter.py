"""The supervisor loop, after gunicorn's arbiter: one loop, a signal queue drained in it, a table from signal to
method, and workers reaped through pidfds and restarted with backoff.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from cgroupfs import CgroupFS, Layout
from ipc import dbusapi, fdchannel
from ipc.build import VERSION, build_id, source_root
from ipc.codec import Channel
from ipc.endpoints import HEARTBEAT_TIMEOUT, Endpoints, control_server
from ipc.messages import (
    ActionRecord,
    ControlMessage,
    Heartbeat,
    Hello,
    PeerRestarted,
    PolicyAck,
    PolicyUpdate,
    Query,
    QueryAnswer,
    Refused,
    RulesetDisabled,
    RulesetFired,
    RulesetReport,
    RulesetStates,
    SnapshotEvaluated,
    Stop,
    WantFullSnapshot,
    WatchedFigures,
    Welcome,
)
from ipc.signalqueue import SignalQueue
from ipc.zap import ZapHandler
from policy.compose import effective_rulesets, same_meaning
from policy.loader import PolicyInvalid
from policy.model import Policy
from supervisor.access import AccessPolicy, group_id
from supervisor.actionlog import ActionLog
from supervisor.broker import SourceBroker
from supervisor.daemonstate import DaemonState
from supervisor.dropins import DropInDir
from supervisor.notify import Notifier
from supervisor.peers import other_oom_daemons
from supervisor.policyfiles import PolicySource
from supervisor.reloadstatus import ReloadStatus, process_start_time, write_status
from supervisor.requests import Request, RequestQueue
from supervisor.workers import (
    UNPRIVILEGED,
    WORKER_ORDER,
    ForkServer,
    WorkerSlot,
    WorkerState,
    worker_identity,
)

if TYPE_CHECKING:
    from supervisor.dbus_service import BusService
    from supervisor.metrics import Metrics, MetricsView

log = logging.getLogger("pyoomd.supervisor")

STOP_TIMEOUT = 3.0  # seconds a worker gets to exit after Stop before it is killed
WATCHDOG_STALE = 3.0  # seconds without a heartbeat (sent every 1 s) after which a worker counts as hung
REPEAT_WINDOW = 60.0  # an unchanged non-kill outcome is logged and recorded at most once in this many seconds
QUERY_TIMEOUT = 5.0  # the detector must answer a D-Bus GetSnapshot or Explain within this
PUBLISH_INTERVAL = 1.0  # the D-Bus properties are refreshed at least this often (heartbeats), and on every change


@dataclass(frozen=True)
class Options:
    config: Path
    runtime_dir: Path
    state_dir: Path
    dry_run: bool = False
    interval: float | None = None
    worker_pythonpath: str | None = None  # development: run workers from another source tree
    drop_in_dir: Path | None = None
    systemd_bus: str = "system"
    bus: str = "system"  # where pyoomd's own D-Bus interface is served: system | session | none | ADDRESS
    user: str | None = "pyoomd"  # the collector and detector run as this user (when started as root)
    admin_group: str | None = None  # besides root, this group may call the privileged D-Bus methods
    metrics_textfile: Path | None = None  # node_exporter textfile collector file
    metrics_listen: str | None = None  # ADDRESS:PORT (loopback) to serve /metrics on


def describe_changes(old: Policy, new: Policy) -> str:
    """What a reload changed, in one line: rulesets added, removed, modified, and other settings."""
    before = {r.name: r for r in old.rulesets}
    after = {r.name: r for r in new.rulesets}
    parts = []
    for label, names in (
        ("added", [n for n in after if n not in before]),
        ("removed", [n for n in before if n not in after]),
        ("modified", [n for n in after if n in before and not same_meaning(after[n], before[n])]),
    ):
        if names:
            parts.append(f"{label} " + ", ".join(repr(n) for n in names))
    for setting in ("interval", "dry_run"):
        if getattr(old, setting) != getattr(new, setting):
            parts.append(f"{setting} {getattr(old, setting)} -> {getattr(new, setting)}")
    if [d.source for d in old.drop_ins] != [d.source for d in new.drop_ins] or old.drop_ins != new.drop_ins:
        parts.append(f"drop-ins: {', '.join(d.source for d in new.drop_ins) or 'none'}")
    return "; ".join(parts) or "no change"


class Fatal(Exception):
    """The daemon cannot go on; the message tells the operator why."""


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, options: Options, policy: Policy, layout: Layout, startup_errors: list[str] | None = None,
                 forkserver: ForkServer | None = None) -> None:
        self.options = options
        # Workers are forked by it (sharing its pages) while it lives, exec'd otherwise.
        self.forkserver = forkserver
        self.policy_source = PolicySource(options.config, options.state_dir)
        self.layout = layout
        self.fs = CgroupFS(layout)
        self.build = build_id()
        self.start_time = process_start_time(os.getpid()) or 0
        self.endpoints = Endpoints(options.runtime_dir)
        self.action_log = ActionLog(options.state_dir)
        self.drop_in_dir = DropInDir(options.drop_in_dir) if options.drop_in_dir else None
        self.policy = self._with_drop_ins(self._with_overrides(policy))
        self.generation = 1
        self.worker_user = worker_identity(options.user)
        self.slots = {name: WorkerSlot(name) for name in WORKER_ORDER}
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.evaluated = False
        # None until the first SIGHUP, unless the policy file was refused at start-up (the last good one runs).
        self.last_reload: ReloadStatus | None = None
        self.startup_errors = startup_errors or []
        self.reloads = 0
        self.last_action: ActionRecord | None = None
        self.actions_taken = 0
        self.policy_loaded_at = time.time()
        # Set at run time over D-Bus; both outlive reloads. Dry-run: (value, source); pauses: name -> wall-clock end.
        self.runtime_dry_run: tuple[bool, str] | None = None
        self.runtime_pauses: dict[str, float] = {}
        self.ruleset_reports: list[RulesetReport] = []  # from the detector
        self.requests = RequestQueue()
        self.bus_service: BusService | None = None
        self.broker: SourceBroker | None = None  # the collector's, while it runs unprivileged
        self.fired_counts: dict[str, int] = {}
        self.action_counts: dict[tuple[str, str, str], int] = {}
        self.figures: WatchedFigures | None = None
        self.metrics: Metrics | None = None
        self.next_metrics = 0.0
        self.queries: dict[int, tuple[concurrent.futures.Future, float]] = {}  # query id -> (answer, deadline)
        self.query_ids = itertools.count(1)
        self.state_dirty = True
        self.next_publish = 0.0
        self.request_table = {
            "reload": self.request_reload,
            "set-dry-run": self.request_dry_run,
            "pause": self.request_pause,
            "snapshot": self.request_query,
            "explain": self.request_query,
        }
        self.notifier = Notifier()
        self.next_watchdog = 0.0
        self.disabled_rulesets: dict[str, str] = {}  # ruleset -> why, for status
        self.repeats: dict[tuple, tuple[float, int]] = {}  # non-kill outcome -> (first seen, repeats since)
        self.signal_table = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_term,
            signal.SIGHUP: self.handle_hup,
        }

    # ---- policy --------------------------------------------------------------------------------------------------

    def _with_overrides(self, policy: Policy) -> Policy:
        if self.options.interval is not None:
            policy = msgspec.structs.replace(policy, interval=self.options.interval)
        return policy

    def _with_drop_ins(self, policy: Policy) -> Policy:
        if self.drop_in_dir is None:
            return policy
        drop_ins, errors = self.drop_in_dir.load(policy)
        for err in errors:
            log.error("drop-in refused: %s", err)
        return msgspec.structs.replace(policy, drop_ins=drop_ins)

    def on_drop_in_change(self) -> None:
        assert self.drop_in_dir is not None
        if not self.drop_in_dir.drain():
            return
        new = self._with_drop_ins(msgspec.structs.replace(self.policy, drop_ins=[]))
        if new.drop_ins == self.policy.drop_ins:
            return
        old, self.policy = self.policy, new
        self.generation += 1
        log.info("drop-ins in %s changed; policy generation %d: %s", self.drop_in_dir.path, self.generation,
                 describe_changes(old, new))
        self.distribute()

    def configured_dry_run(self) -> tuple[bool, str]:
        """Dry-run from the command line or the policy: either one turns it on."""
        if self.options.dry_run:
            return True, "command line"
        if self.policy.dry_run:
            return True, "policy"
        return False, "default"

    def dry_run(self) -> tuple[bool, str]:
        """A value set at run time (D-Bus), else the configured one."""
        return self.runtime_dry_run or self.configured_dry_run()

    def active_pauses(self) -> dict[str, float]:
        now = time.time()
        self.runtime_pauses = {name: until for name, until in self.runtime_pauses.items() if until > now}
        return dict(self.runtime_pauses)

    def policy_update(self) -> PolicyUpdate:
        dry, source = self.dry_run()
        return PolicyUpdate(
            generation=self.generation,
            policy=self.policy,
            dry_run=dry,
            dry_run_source=source,
            protected_paths=sorted(self.fs.own_paths(os.getpid())),
            daemon_pid=os.getpid(),
            systemd_bus=self.options.systemd_bus,
            paused=self.active_pauses(),
        )

    def distribute(self) -> None:
        """Send the current policy to each worker that lacks it, in order: a worker gets it only once every
        worker before it in WORKER_ORDER has acknowledged it (or cannot, being FATAL)."""
        update: PolicyUpdate | None = None
        for name in WORKER_ORDER:
            slot = self.slots[name]
            if slot.state is WorkerState.RUNNING and slot.sent_generation < self.generation:
                update = update or self.policy_update()
                self._send(name, update)
                slot.sent_generation = self.generation
            if slot.acked_generation < self.generation:
                return

    # ---- signals -------------------------------------------------------------------------------------------------

    def handle_term(self) -> None:
        if not self.stopping:
            log.info("stopping")
            self.begin_stop()

    def handle_hup(self) -> None:
        self.reload_and_notify()

    def reload_and_notify(self) -> list[str]:
        """A reload as the service manager and D-Bus see it, whatever asked for it (SIGHUP, Reload())."""
        self.notifier.reloading()
        errors = self.reload()
        # READY=1 ends the reload either way: a broken policy leaves the old one running, and the status says so.
        self.notifier.ready(self.status_line())
        if self.bus_service is not None:
            self.bus_service.policy_reloaded(not errors)
        self.state_dirty = True
        return errors

    def status_line(self) -> str:
        dry, _ = self.dry_run()
        running = sum(s.state is WorkerState.RUNNING for s in self.slots.values())
        line = (f"{'dry-run, ' if dry else ''}{self.layout.kind}, {len(self.policy.rulesets)} rulesets, policy "
                f"generation {self.generation}, {running}/{len(self.slots)} workers running")
        if self.last_reload is not None and not self.last_reload.ok:
            what = "reload failed" if self.last_reload.sequence else "policy refused at start, the last good one runs"
            line += f"; {what}, generation {self.generation} still in force: {self.last_reload.errors[0]}"
        last = self.last_action
        if last is not None:
            when = time.strftime("%H:%M:%S", time.localtime(last.time))
            line += f"; last action {when}: {last.plugin} {last.target or '-'} {last.result}"
        return line

    def healthy(self, now: float) -> bool:
        """Every worker running and heard from lately: the watchdog is fed only then."""
        return all(s.state is WorkerState.RUNNING and now - s.last_heartbeat < WATCHDOG_STALE
                   for s in self.slots.values())

    def reload(self) -> list[str]:
        """Load the policy file again; a broken one leaves the running policy in force. The outcome goes to the
        state directory, where `pyoomd reload` (systemd's ExecReload) waits for it."""
        self.reloads += 1
        try:
            policy = self.policy_source.load()
        except PolicyInvalid as e:
            for err in e.errors:
                log.error("reload failed, keeping policy generation %d: %s", self.generation, err)
            self._record_reload([str(err) for err in e.errors])
            return [str(err) for err in e.errors]
        old, self.policy = self.policy, self._with_drop_ins(self._with_overrides(policy))
        self.generation += 1
        self.policy_loaded_at = time.time()
        log.info("policy %s loaded as generation %d: %s", self.options.config, self.generation,
                 describe_changes(old, self.policy))
        self._record_reload([])
        self.distribute()
        return []

    def _record_reload(self, errors: list[str]) -> None:
        status = ReloadStatus(pid=os.getpid(), start_time=self.start_time, sequence=self.reloads,
                              generation=self.generation, ok=not errors, errors=errors, at=time.time())
        if self.reloads or errors:
            self.last_reload = status
        try:
            write_status(self.options.state_dir, status)
        except OSError as e:
            log.error("cannot record the reload's outcome in %s: %s", self.options.state_dir, e)

    # ---- workers -------------------------------------------------------------------------------------------------

    def _send(self, name: str, message: msgspec.Struct) -> None:
        try:
            self.control.send_multipart([name.encode(), self.channel.encode(message)], zmq.NOBLOCK)
        except zmq.ZMQError as e:
            log.warning("could not send %s to %s: %s", type(message).__name__, name, e)

    def _pythonpath(self) -> str:
        return self.options.worker_pythonpath or str(source_root())

    def start_worker(self, slot: WorkerSlot) -> None:
        drop_to = self.worker_user if slot.name in UNPRIVILEGED else None
        theirs = None
        if slot.name == "collector" and drop_to is not None:
            # A fresh socketpair for each collector: only that process holds the other end.
            self.close_broker()
            ours, theirs = fdchannel.pair()
            self.broker = SourceBroker(self.fs, ours)
            self.poller.register(self.broker.fileno(), zmq.POLLIN)
        try:
            slot.spawn(self.options.runtime_dir, self.options.state_dir, self._pythonpath(), drop_to,
                       broker_fd=theirs.fileno() if theirs is not None else None, forkserver=self.forkserver)
        finally:
            if theirs is not None:
                theirs.close()
        self.poller.register(slot.pidfd, zmq.POLLIN)

    def on_forkserver_exit(self) -> None:
        assert self.forkserver is not None
        self.poller.unregister(self.forkserver.pidfd)
        status = self.forkserver.reap()
        if not self.stopping:
            log.warning("the fork server exited (status %d); workers are exec'd from now on (each costs its own "
                        "memory)", status)
        self.forkserver = None

    def close_broker(self) -> None:
        if self.broker is not None:
            self.poller.unregister(self.broker.fileno())
            self.broker.close()
            self.broker = None

    def on_exit(self, slot: WorkerSlot) -> None:
        assert slot.pidfd is not None
        self.poller.unregister(slot.pidfd)
        pid, status = slot.pid, slot.reap()
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        if self.stopping or slot.state is WorkerState.STOPPING:
            slot.set_state(WorkerState.STOPPED, how)
            return
        if slot.state is WorkerState.FATAL:
            return  # refused at hello; already reported
        now = time.monotonic()
        delay = slot.backoff_delay(now)
        if delay is None:
            self.fatal(slot, f"pid {pid} {how}; it crashed {len(slot.crashes)} times within a minute")
            return
        slot.restart_at = now + delay
        slot.restarts += 1
        slot.set_state(WorkerState.BACKOFF, f"pid {pid} {how}; restarting in {delay:.1f}s")

    def fatal(self, slot: WorkerSlot, reason: str) -> None:
        slot.fatal_reason = reason
        slot.set_state(WorkerState.FATAL, reason)
        log.critical("worker %s cannot run: %s; pyoomd stops so that its service manager can act", slot.name, reason)
        self.exit_code = 1
        self.begin_stop()

    def begin_stop(self) -> None:
        self.notifier.stopping()
        self.stopping = True
        self.stop_deadline = time.monotonic() + STOP_TIMEOUT
        for slot in self.slots.values():
            if slot.pidfd is not None:
                if slot.state is not WorkerState.FATAL:
                    slot.set_state(WorkerState.STOPPING)
                self._send(slot.name, Stop())
                slot.signal(signal.SIGTERM)
            elif slot.state is not WorkerState.FATAL:
                slot.set_state(WorkerState.STOPPED)

    # ---- control channel -----------------------------------------------------------------------------------------

    def on_control(self) -> None:
        while True:
            try:
                identity, frame = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                self.channel.dropped += 1
                continue
            slot = self.slots.get(identity.decode(errors="replace"))
            msg = self.channel.decode(frame)
            if slot is None or msg is None:
                continue
            if isinstance(msg, Hello):
                self.on_hello(slot, msg)
            elif isinstance(msg, Heartbeat):
                slot.last_heartbeat = time.monotonic()
                slot.dropped_frames = msg.dropped_frames
            elif isinstance(msg, PolicyAck):
                if msg.error:
                    log.error(
                        "worker %s could not apply policy generation %d: %s", slot.name, msg.generation, msg.error
                    )
                else:
                    slot.acked_generation = max(slot.acked_generation, msg.generation)
                    self.distribute()
            elif isinstance(msg, ActionRecord):
                self.on_action(msg)
            elif isinstance(msg, RulesetDisabled):
                self.disabled_rulesets[msg.ruleset] = msg.reason
                log.critical("ruleset %r disabled by the detector: %s; fix its plugin and reload", msg.ruleset,
                             msg.reason)
            elif isinstance(msg, RulesetStates):
                self.ruleset_reports = msg.rulesets
                self.state_dirty = True
            elif isinstance(msg, WatchedFigures):
                self.figures = msg
            elif isinstance(msg, RulesetFired):
                self.fired_counts[msg.ruleset] = self.fired_counts.get(msg.ruleset, 0) + 1
                if self.bus_service is not None:
                    self.bus_service.ruleset_fired(msg.ruleset, msg.group)
            elif isinstance(msg, QueryAnswer):
                self.on_query_answer(msg)
            elif isinstance(msg, WantFullSnapshot) and slot.name == "detector":
                if self.slots["collector"].state is WorkerState.RUNNING:
                    self._send("collector", msg)
            elif isinstance(msg, SnapshotEvaluated) and not self.evaluated:
                self.evaluated = True
                log.info("first snapshot evaluated; pyoomd is protecting this host")
                self.notifier.ready(self.status_line())

    def on_hello(self, slot: WorkerSlot, hello: Hello) -> None:
        if slot.pid != hello.pid:
            return  # a process we did not start, or a stale one
        if hello.build != self.build:
            reason = (
                f"it runs build {hello.build} but the supervisor is build {self.build} "
                f"(workers load from {self._pythonpath()}): reinstall pyoomd, or restart it after an upgrade"
            )
            self._send(slot.name, Refused(reason=reason))
            self.fatal(slot, reason)
            return
        self._send(slot.name, Welcome(build=self.build))
        slot.last_heartbeat = time.monotonic()
        slot.set_state(WorkerState.RUNNING)
        if slot.restarts:
            for other in self.slots.values():
                if other is not slot and other.state is WorkerState.RUNNING:
                    self._send(other.name, PeerRestarted(worker=slot.name))
        self.distribute()

    def on_action(self, record: ActionRecord) -> None:
        # A ruleset that keeps failing to act (nothing to kill, a refusal) would otherwise log and record the
        # same outcome every tick: repeat it at most once a minute, saying how often it happened meanwhile.
        if record.result not in ("killed", "dry-run", "failed"):
            key = (record.ruleset, record.result, record.target, record.detail)
            now = time.monotonic()
            last = self.repeats.get(key)
            if last is not None and now - last[0] < REPEAT_WINDOW:
                self.repeats[key] = (last[0], last[1] + 1)
                return
            if last is not None and last[1]:
                record = msgspec.structs.replace(record, detail=f"{record.detail} (repeated {last[1]} times "
                                                                f"in the last {REPEAT_WINDOW:.0f}s)".lstrip())
            self.repeats[key] = (now, 0)
        self.last_action = record
        self.actions_taken += 1
        key = (record.ruleset, record.plugin, record.result)
        self.action_counts[key] = self.action_counts.get(key, 0) + 1
        self.state_dirty = True
        if self.bus_service is not None:
            self.bus_service.action_taken(record)
        pids = ",".join(map(str, record.pids)) or "-"
        log.warning(
            "action: ruleset %r group %r %s %s target=%s pids=%s signal=%s via %s result=%s dry_run=%s (%s) in "
            "%.3fs: %s%s",
            record.ruleset, record.group, record.plugin, "would kill" if record.dry_run else "kill",
            record.target, pids, record.signal, record.mechanism or "-", record.result, record.dry_run,
            record.dry_run_source, record.duration, record.reason, f" [{record.detail}]" if record.detail else "",
        )
        try:
            self.action_log.append(record)
        except OSError as e:
            log.error("could not write %s: %s", self.action_log.path, e)

    # ---- requests from the D-Bus interface ----------------------------------------------------------------------

    def on_requests(self) -> None:
        for request in self.requests.drain():
            try:
                result = self.request_table[request.kind](request)
            except dbusapi.ServiceError as e:
                _settle(request.future, error=e)
                continue
            if result is not _LATER:
                _settle(request.future, result)

    def request_reload(self, request: Request) -> tuple[bool, list[str]]:
        log.info("reload asked for over D-Bus by %s", request.caller.describe())
        errors = self.reload_and_notify()
        return not errors, errors

    def request_dry_run(self, request: Request) -> None:
        (wanted,) = request.args
        before = self.dry_run()
        configured = self.configured_dry_run()
        # Setting what the command line and policy say clears the runtime value: they are in charge again.
        self.runtime_dry_run = None if wanted == configured[0] else (wanted, f"runtime (uid {request.caller.uid})")
        after = self.dry_run()
        if after == before:
            return None
        log.warning("dry-run %s (%s), set over D-Bus by %s", "on" if after[0] else "off", after[1],
                    request.caller.describe())
        self._new_generation()
        return None

    def request_pause(self, request: Request) -> None:
        name, seconds = request.args
        names = [r.name for r in effective_rulesets(self.policy)]
        if name not in names:
            raise dbusapi.ServiceError(dbusapi.NO_SUCH_RULESET, f"no ruleset {name!r}; the policy has "
                                       + (", ".join(repr(n) for n in names) or "none"))
        if seconds == 0:
            if self.runtime_pauses.pop(name, None) is None:
                return None
            log.warning("pause of ruleset %r ended over D-Bus by %s", name, request.caller.describe())
        else:
            self.runtime_pauses[name] = time.time() + seconds
            log.warning("ruleset %r paused for %ds over D-Bus by %s", name, seconds, request.caller.describe())
        self._new_generation()
        return None

    def _new_generation(self) -> None:
        """Hand the workers the same policy with new runtime settings (dry-run, pauses)."""
        self.generation += 1
        self.state_dirty = True
        self.distribute()

    def request_query(self, request: Request) -> object:
        slot = self.slots["detector"]
        if slot.state is not WorkerState.RUNNING:
            raise dbusapi.ServiceError(dbusapi.UNAVAILABLE, f"the detector is {slot.state.value}; try again "
                                       "in a moment")
        query_id = next(self.query_ids)
        self.queries[query_id] = (request.future, time.monotonic() + QUERY_TIMEOUT)
        self._send("detector", Query(id=query_id, what=request.kind))  # type: ignore[arg-type]
        return _LATER

    def on_query_answer(self, answer: QueryAnswer) -> None:
        entry = self.queries.pop(answer.id, None)
        if entry is None:
            return  # too late: the caller was told it timed out
        if answer.error:
            _settle(entry[0], error=dbusapi.ServiceError(dbusapi.UNAVAILABLE, answer.error))
        else:
            _settle(entry[0], answer.json)

    def expire_queries(self, now: float) -> None:
        for query_id, (future, deadline) in list(self.queries.items()):
            if now >= deadline:
                del self.queries[query_id]
                _settle(future, error=dbusapi.ServiceError(
                    dbusapi.TIMEOUT, f"the detector did not answer within {QUERY_TIMEOUT:g} s"))

    def daemon_state(self) -> DaemonState:
        dry, source = self.dry_run()
        wall, mono = time.time(), time.monotonic()
        if self.ruleset_reports:
            rulesets = tuple((r.name, r.enabled, r.paused_until, r.last_fired) for r in self.ruleset_reports)
        else:  # before the detector's first report
            rulesets = tuple((r.name, True, self.runtime_pauses.get(r.name, 0.0), 0.0)
                             for r in effective_rulesets(self.policy))
        workers = tuple((s.name, s.pid or 0, s.state.value, s.restarts,
                         wall - (mono - s.last_heartbeat) if s.last_heartbeat else 0.0) for s in self.slots.values())
        reload = self.last_reload
        return DaemonState(
            version=VERSION, layout=self.layout.kind, hierarchies=self.layout.controller_map(),
            policy_path=str(self.options.config), policy_generation=self.generation,
            policy_loaded_at=self.policy_loaded_at, last_reload_ok=reload.ok if reload else True,
            last_reload_errors=tuple(reload.errors) if reload else (), dry_run=dry, dry_run_source=source,
            rulesets=rulesets, workers=workers, actions_taken=self.actions_taken,
        )

    def start_bus_service(self) -> None:
        if self.options.bus == "none":
            log.info("D-Bus interface off (--bus none)")
            return
        from supervisor.dbus_service import BusService  # dbus-fast and asyncio only where the interface is on

        try:
            admin_gid = group_id(self.options.admin_group)
        except KeyError:
            log.error("admin group %r does not exist: only root may call the privileged D-Bus methods",
                      self.options.admin_group)
            admin_gid = None
        self.bus_service = BusService(self.options.bus, self.requests, self.action_log,
                                      AccessPolicy(admin_gid=admin_gid), self.daemon_state())
        self.bus_service.start()

    def metrics_view(self) -> MetricsView:
        from supervisor.metrics import CgroupFigure, MetricsView  # prometheus_client only where metrics are on

        f = self.figures
        fired, actions = self.zero_counts()
        fired.update(self.fired_counts)
        actions.update(self.action_counts)
        return MetricsView(
            version=VERSION, layout=self.layout.kind, policy_generation=self.generation, dry_run=self.dry_run()[0],
            fired=fired, actions=actions,
            workers=tuple((s.name, s.state is WorkerState.RUNNING, s.restarts) for s in self.slots.values()),
            cgroups=tuple(CgroupFigure(c.path, c.some_avg10, c.full_avg10, c.usage) for c in f.cgroups) if f else (),
            read_seconds=f.read_seconds if f else None, evaluate_seconds=f.evaluate_seconds if f else None,
        )

    def zero_counts(self) -> tuple[dict[str, int], dict[tuple[str, str, str], int]]:
        """A 0 for every ruleset's firings and every kill action's kills and failures before any happened: a
        counter that is born at 1 shows Prometheus no increase, and an alert on the first kill would never fire."""
        from policy.plugins import REGISTRY
        from policy.plugins.actions import KillPlugin

        fired: dict[str, int] = {}
        actions: dict[tuple[str, str, str], int] = {}
        for ruleset in effective_rulesets(self.policy):
            fired[ruleset.name] = 0
            for action in ruleset.actions:
                cls = REGISTRY.get(action.name)
                if cls is not None and issubclass(cls, KillPlugin):
                    for result in ("killed", "failed"):
                        actions[(ruleset.name, action.name, result)] = 0
        return fired, actions

    def update_metrics(self, now: float) -> float:
        if self.metrics is None:
            return now + 3600
        if now >= self.next_metrics:
            self.next_metrics = min(self.metrics.update(self.metrics_view(), now), now + PUBLISH_INTERVAL)
        return self.next_metrics

    def publish(self, now: float) -> float:
        if self.bus_service is None:
            return now + 3600
        if self.state_dirty or now >= self.next_publish:
            self.bus_service.publish(self.daemon_state())
            self.state_dirty = False
            self.next_publish = now + PUBLISH_INTERVAL
        return self.next_publish

    # ---- the loop ------------------------------------------------------------------------------------------------

    def timers(self, now: float) -> float:
        """Run what is due; return when to look again."""
        wake = now + 1.0
        for slot in self.slots.values():
            if self.stopping:
                if slot.pidfd is not None and now >= self.stop_deadline:
                    log.warning("worker %s did not stop in %.0fs; killing it", slot.name, STOP_TIMEOUT)
                    slot.signal(signal.SIGKILL)
                continue
            if slot.state is WorkerState.BACKOFF:
                if now >= slot.restart_at:
                    self.start_worker(slot)
                else:
                    wake = min(wake, slot.restart_at)
            elif slot.state in (WorkerState.STARTING, WorkerState.RUNNING) and slot.pidfd is not None:
                silent = now - slot.last_heartbeat
                if silent > HEARTBEAT_TIMEOUT:
                    log.error("worker %s silent for %.0fs; killing it to restart it", slot.name, silent)
                    slot.signal(signal.SIGKILL)
        self.expire_queries(now)
        wake = min(wake, self.publish(now), self.update_metrics(now))
        if self.stopping:
            wake = min(wake, max(self.stop_deadline, now + 0.05))
        elif self.evaluated:
            self.notifier.status(self.status_line())  # sent only when it changed (a worker restarting, a reload)
        if not self.stopping and self.notifier.watchdog_interval and self.evaluated:
            if now >= self.next_watchdog and self.healthy(now):
                self.notifier.watchdog()
                self.next_watchdog = now + self.notifier.watchdog_interval
            wake = min(wake, max(self.next_watchdog, now + 0.2))
        return wake

    def run(self) -> int:
        if self.worker_user is not None:
            blocked = self.endpoints.unreachable_by(self.worker_user.uid, self.worker_user.gid)
            if blocked is not None:
                log.critical("the runtime directory %s is out of reach of user %s: %s may not be searched by it "
                             "(mode %o); put it under /run (the default), or pass --user root",
                             self.options.runtime_dir, self.options.user, blocked, blocked.stat().st_mode & 0o7777)
                return 1
        self.endpoints.prepare(self.worker_user.gid if self.worker_user else None)
        # Sequence 0: the policy loaded at start; `pyoomd reload` waits for a later one.
        self._record_reload(self.startup_errors)
        log.info("%s", self.layout.describe())
        for pid, name in other_oom_daemons():
            log.warning("another OOM daemon runs: %s (PID %d); acting on the same pressure, each may kill a victim "
                        "of its own: keep one of them", name, pid)
        dry, source = self.dry_run()
        log.info(
            "pyoomd %s: policy %s (%d rulesets, interval %.2fs), dry-run %s (%s)",
            self.build, self.options.config, len(self.policy.rulesets), self.policy.interval,
            "on" if dry else "off", source,
        )
        self.zmq = zmq.Context()
        self.zap = ZapHandler(self.zmq, os.getpid())  # before the first bind: it decides who may connect
        self.control = control_server(self.zmq, self.endpoints)
        self.channel = Channel("supervisor/control", ControlMessage)
        self.signals = SignalQueue(list(self.SIGNALS))
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.zap.socket, zmq.POLLIN)
        self.poller.register(self.signals.fileno(), zmq.POLLIN)
        self.poller.register(self.requests.fileno(), zmq.POLLIN)
        if self.forkserver is not None:
            self.poller.register(self.forkserver.pidfd, zmq.POLLIN)
        if self.drop_in_dir is not None:
            self.drop_in_dir.open()
            self.poller.register(self.drop_in_dir.fd, zmq.POLLIN)
            log.info("watching %s for drop-in policy files (%d apply now)", self.drop_in_dir.path,
                     len(self.policy.drop_ins))
        try:
            self.start_bus_service()
            if self.options.metrics_textfile is not None or self.options.metrics_listen is not None:
                from supervisor.metrics import Metrics

                self.metrics = Metrics(self.options.metrics_textfile, self.options.metrics_listen)
                self.metrics.start()
            for name in WORKER_ORDER:
                self.start_worker(self.slots[name])
            while not (self.stopping and all(s.pidfd is None for s in self.slots.values())):
                now = time.monotonic()
                wake = self.timers(now)
                events = dict(self.poller.poll(max(0, int((wake - now) * 1000)) + 1))
                if self.signals.fileno() in events:
                    for signum in self.signals.drain():
                        self.signal_table[signum]()
                if self.zap.socket in events:
                    self.zap.handle()
                if self.control in events:
                    self.on_control()
                if self.requests.fileno() in events:
                    self.on_requests()
                if self.forkserver is not None and self.forkserver.pidfd in events:
                    self.on_forkserver_exit()
                if self.broker is not None and self.broker.fileno() in events and not self.broker.on_readable():
                    self.close_broker()  # the collector exited; its successor gets a pair of its own
                if self.drop_in_dir is not None and self.drop_in_dir.fd in events:
                    self.on_drop_in_change()
                for slot in self.slots.values():
                    if slot.pidfd is not None and slot.pidfd in events:
                        self.on_exit(slot)
        finally:
            for slot in self.slots.values():  # never leave a worker behind, whatever went wrong
                if slot.pidfd is not None:
                    slot.signal(signal.SIGKILL)
                    slot.reap()
            if self.bus_service is not None:
                self.bus_service.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.forkserver is not None:
                self.forkserver.close()  # it reads end of file and exits; PDEATHSIG covers the rest
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.forkserver.pid, 0)
                self.forkserver = None
            self.close_broker()
            self.requests.close()
            self.zmq.destroy(linger=0)
            self.endpoints.remove_sockets()
        log.info("stopped")
        return self.exit_code


_LATER = object()  # a request answered later (by a worker), not by its handler's return value


def _settle(future: concurrent.futures.Future, result: Any = None, error: BaseException | None = None) -> None:
    """Complete a request's future unless its caller gave up on it meanwhile (its deadline cancelled it)."""
    if future.done():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
