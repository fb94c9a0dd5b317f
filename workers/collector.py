"""The collector: every tick, read exactly what the policy needs and push one snapshot to the detector.

It also waits on the kernel's pressure events for the cgroups pressure plugins watch (PSI triggers, or v1
vmpressure where there is no per-cgroup PSI): an event sends a snapshot at once instead of at the next tick.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
import zmq

from cgroupfs import CgroupFS, CgroupStats, detect_layout
from cgroupfs.watch import EventWatch, LocalOpener, SourceOpener, TriggerSpec, WatchKind
from ipc.codec import Channel
from ipc.endpoints import snapshot_sender
from ipc.messages import Message, PolicyUpdate, Snapshot, WantFullSnapshot
from policy.engine import policy_needs
from policy.paths import literal_prefix, matches
from policy.plugins import Needs
from workers.base import Worker, WorkerArgs, main
from workers.brokered import Broker

log = logging.getLogger("pyoomd.collector")

# Past this many cgroups matched by one pressure-watched pattern, the pattern's literal parent is watched instead.
AGGREGATE_ABOVE = 16

# After an event, the next snapshot goes out at once, but no sooner than this after the previous one: v1
# vmpressure fires a hundred times a second on a thrashing cgroup, and each snapshot reads every cgroup.
EVENT_MIN_GAP = 0.2


class Registrar(Protocol):
    """Where event descriptors are waited on: a select.poll object, or the worker's own poll loop."""

    def register(self, fd: int, eventmask: int) -> None: ...

    def unregister(self, fd: int) -> None: ...


class SnapshotTaker:
    """What the collector reads and waits on for one policy; the whole of its work apart from sockets.

    Event descriptors must be polled directly by the one poll that waits, never through a nested epoll: polling
    a PSI trigger clears its event, so an outer poll of an epoll set would swallow it."""

    def __init__(self, fs: CgroupFS, registrar: Registrar, opener: SourceOpener | None = None,
                 trusted_xattrs: Callable[[list[str]], dict[str, dict[str, str]]] | None = None) -> None:
        self.fs = fs
        self.registrar = registrar
        self.needs = Needs()
        self.watch = EventWatch(fs, opener or LocalOpener())
        # Unprivileged, trusted.* xattrs are invisible here: the supervisor reads them (workers/brokered.py).
        self.trusted_xattrs = trusted_xattrs
        self.seq = 0
        self._unreadable_logged: set[tuple[str, str]] = set()
        self._psi_of: dict[str, bool] = {}

    def use(self, needs: Needs) -> None:
        self.needs = needs
        self._psi_of = {}  # what a policy's parents are is decided afresh for each policy

    def on_ready(self, fd: int, revents: int) -> int:
        """Count what one ready descriptor reports (select.POLL* bits); returns how many events fired."""
        fired = self.watch.on_ready(fd, revents)
        if self.watch.is_dead(fd):
            # A removed cgroup's PSI trigger reports POLLERR at every poll: stop waiting on it now, not at the
            # next tick (the tick's sync then closes and forgets it).
            with contextlib.suppress(KeyError, OSError, ValueError):
                self.registrar.unregister(fd)
        return fired

    @property
    def has_on_demand(self) -> bool:
        """Whether a full snapshot reads more than a tick's."""
        return bool(self.needs.action_cgroups or self.needs.action_fields)

    def take(self, generation: int, full: bool = True) -> Snapshot:
        """A tick's snapshot: what the detectors read; `full`: what the actions read too."""
        cgroups = []
        started = time.monotonic()
        full = full or not self.has_on_demand
        with self.fs.tick():
            host = self.fs.read_host()
            paths = self.fs.resolve(self.needs.cgroups)  # globs resolved afresh every tick
            self._sync_watch(paths, host.mem_total)
            if full and self.has_on_demand:
                action_paths = set(self.fs.resolve(self.needs.action_cgroups))
                every = self.needs.fields | self.needs.action_fields
                plan = [(p, every if p in action_paths else self.needs.fields)
                        for p in sorted(set(paths) | action_paths)]
            else:
                plan = [(p, self.needs.fields) for p in paths]
            for path, fields in plan:
                try:
                    stats = self.fs.read_stats(path, fields, host)
                except Exception as e:  # one cgroup that cannot be read must not cost the tick, nor the collector
                    self._unreadable(path, e)
                    continue
                if stats is not None:
                    cgroups.append(self._with_events(stats))
        with_xattrs = [cg.path for cg in cgroups if cg.xattrs is not None]
        if self.trusted_xattrs is not None and with_xattrs:
            trusted = self.trusted_xattrs(with_xattrs)
            cgroups = [msgspec.structs.replace(cg, xattrs={**(cg.xattrs or {}), **trusted[cg.path]})
                       if cg.path in trusted else cg for cg in cgroups]
        self.seq += 1
        return Snapshot(
            seq=self.seq, generation=generation, time=time.time(), monotonic=time.monotonic(), host=host,
            cgroups=cgroups, full=full, took=round(time.monotonic() - started, 6),
        )

    def _has_psi(self, path: str) -> bool:
        """Whether `path` has a PSI file of its own, decided once per policy: finding out verifies its twin, which
        reads the member list of its whole subtree (every cgroup it would stand for)."""
        found = self._psi_of.get(path)
        if found is None:
            found = self._psi_of[path] = self.fs.pressure_file(path) is not None
        return found

    def _unreadable(self, path: str, error: Exception) -> None:
        key = (path, type(error).__name__)
        if key not in self._unreadable_logged and len(self._unreadable_logged) < 1000:
            self._unreadable_logged.add(key)
            log.error("cannot read %s (%s: %s); left out of the snapshots while it lasts", path,
                      type(error).__name__, error, exc_info=True)

    def _sync_watch(self, paths: list[str], mem_total: int) -> None:
        wanted: dict[tuple[str, WatchKind], float | TriggerSpec] = {}
        for pattern, pct in self.needs.pressure_watch:
            matched = [path for path in paths if matches(pattern, path)]
            prefix = literal_prefix(pattern)
            if len(matched) > AGGREGATE_ABOVE and self._has_psi(prefix):
                # Many cgroups under one parent: its own PSI trigger wakes us for any of them (a parent's "some"
                # stall includes every task stalled below it), instead of a descriptor per cgroup to poll.
                matched = [prefix]
            for path in matched:
                key = (path, "pressure")
                wanted[key] = min(pct, wanted.get(key, pct))
        for pattern, spec in self.needs.trigger_watch:
            for path in paths:
                if matches(pattern, path):
                    wanted[(path, spec.key)] = spec
        for pattern, percent, size in self.needs.usage_watch:
            threshold = mem_total * percent / 100 if percent is not None else float(size or 0)
            for path in paths:
                if matches(pattern, path) and threshold > 0:
                    key = (path, "usage")
                    wanted[key] = min(threshold, wanted.get(key, threshold))
        added, removed = self.watch.sync(wanted)
        for fd in removed:
            with contextlib.suppress(KeyError, OSError, ValueError):
                self.registrar.unregister(fd)
        for source in added:
            self.registrar.register(source.fileno(), source.poll_events)

    def _with_events(self, stats: CgroupStats) -> CgroupStats:
        counts = self.watch.counts.get(stats.path)
        if counts is None:
            return stats
        return msgspec.structs.replace(
            stats,
            pressure_events=counts.pressure_events,
            vmpressure_events=counts.vmpressure_events,
            threshold_events=counts.threshold_events,
            last_event=counts.last_event,
            triggers=dict(counts.triggers) if counts.triggers else None,
            trigger_last=dict(counts.trigger_last) if counts.trigger_last else None,
        )

    def close(self) -> None:
        for source in self.watch.sources():
            with contextlib.suppress(KeyError, OSError, ValueError):
                self.registrar.unregister(source.fileno())
        self.watch.close()
        self.fs.close()


# zmq_poll passes POLLPRI through to poll(2) for plain descriptors, under its own bit values.
_TO_ZMQ = {select.POLLIN: zmq.POLLIN, select.POLLPRI: zmq.POLLPRI}
_FROM_ZMQ = {zmq.POLLIN: select.POLLIN, zmq.POLLPRI: select.POLLPRI, zmq.POLLERR: select.POLLERR}


def _convert(mask: int, table: dict[int, int]) -> int:
    return sum(dst for src, dst in table.items() if mask & src)


class Collector(Worker):
    name = "collector"

    def __init__(self, args: WorkerArgs) -> None:
        super().__init__(args)
        # Unprivileged, it asks the supervisor for what only root may open or read; as root it does it itself.
        broker = Broker(args.broker_fd) if args.broker_fd is not None else None
        self.taker = SnapshotTaker(CgroupFS(detect_layout()), self, opener=broker,
                                   trusted_xattrs=broker.trusted_xattrs if broker else None)
        self.snapshots = snapshot_sender(self.zmq, self.endpoints)
        self.snapshot_channel = Channel("collector/snapshots", Snapshot)
        self.next_tick = 0.0
        self.last_sent = 0.0
        self.full_wanted = True  # the first snapshot of each policy is full

    # Registrar: event descriptors go straight into the worker's poll loop.
    def register(self, fd: int, eventmask: int) -> None:
        self.add_fd(fd, _convert(eventmask, _TO_ZMQ), self._on_event)

    def unregister(self, fd: int) -> None:
        self.remove_fd(fd)

    def apply_policy(self, update: PolicyUpdate) -> None:
        self.taker.use(policy_needs(update.policy))
        self.next_tick = 0.0  # the first snapshot of a new policy goes out at once, full
        self.full_wanted = True

    def on_control_message(self, msg: Message) -> bool:
        if not isinstance(msg, WantFullSnapshot):
            return False
        self.full_wanted = True
        self.next_tick = 0.0  # a ruleset waits to act on it: now, not at the next tick
        return True

    def on_timer(self, now: float) -> float:
        assert self.update is not None
        if now >= self.next_tick:
            snapshot = self.taker.take(self.update.generation, full=self.full_wanted)
            self.full_wanted = False
            # No detector connected: drop it. The event counts are cumulative, so whichever snapshot the
            # conflated channel keeps carries every event before it.
            with contextlib.suppress(zmq.Again):
                self.snapshots.send(self.snapshot_channel.encode(snapshot), zmq.NOBLOCK)
            self.last_sent = now
            # Keep a steady cadence; after a stall, start again from now rather than catching up.
            self.next_tick = max(self.next_tick + self.update.policy.interval, now)
        return self.next_tick

    def on_peer_restarted(self, worker: str) -> None:
        if worker == "detector":
            # A conflated PUSH socket can stay silent after its peer is replaced (seen here intermittently
            # with libzmq 4.3.5); a fresh socket connects to the new detector for sure.
            self.snapshots.close(linger=0)
            self.snapshots = snapshot_sender(self.zmq, self.endpoints)
            self.log.info("detector replaced: snapshot socket renewed")
            self.next_tick = 0.0  # the new detector gets a snapshot at once

    def _on_event(self, fd: int, revents: int) -> None:
        if self.taker.on_ready(fd, _convert(revents, _FROM_ZMQ)):
            self.next_tick = min(self.next_tick, self.last_sent + EVENT_MIN_GAP)
            # Pressure: a ruleset may act on this very snapshot, so it carries what actions read.
            self.full_wanted = True


if __name__ == "__main__":
    main(Collector)
