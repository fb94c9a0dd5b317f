"""Which kernel events to wait on for the cgroups a policy watches, and their counts.

Pressure: for each watched cgroup pyoomd waits on the best signal the path has on this host: a PSI trigger on
its own `memory.pressure` (v2, or the verified cgroup2 twin on a hybrid host; `/proc/pressure/memory` for the
root), else the v1 stand-in, vmpressure events of its memory cgroup.
Usage: where a policy asks "is this cgroup above N bytes", a v1 memory cgroup can say so itself, with a
`memory.usage_in_bytes` threshold event (cgroup2 has no such notification; the tick reads it).

Counts are cumulative and ride in every snapshot, so a conflated channel that drops a snapshot can never drop
an event: the next snapshot carries it.

Sources are opened through a SourceOpener: here and now (LocalOpener), or, for an unprivileged collector, by
the supervisor, which hands the descriptors over (workers/collector.py, supervisor/broker.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from cgroupfs.events import EventSource, open_psi_trigger, open_usage_threshold, open_vmpressure
from cgroupfs.tree import CgroupFS

log = logging.getLogger("pyoomd.cgroupfs")

WINDOW_US = 500_000  # asked for first; hosts without CAP_SYS_RESOURCE get the nearest 2 s multiple
VMPRESSURE_LEVEL = "medium"  # reclaim is struggling: the level oomd-like daemons care about on v1

WatchKind = str  # "pressure", "usage", or a trigger key (trigger_key())
Mechanism = Literal["psi", "vmpressure", "usage threshold", "trigger"]


@dataclass(frozen=True)
class TriggerSpec:
    """A PSI trigger exactly as a plugin asked for it (pressure_trigger)."""

    resource: str  # memory | io | cpu
    kind: str  # some | full
    stall_us: int
    window_us: int

    @property
    def key(self) -> str:
        return trigger_key(self.resource, self.kind, self.stall_us, self.window_us)


def trigger_key(resource: str, kind: str, stall_us: int, window_us: int) -> str:
    """How a snapshot names a trigger's counts: the request, not what the kernel accepted after rounding."""
    return f"{resource} {kind} {stall_us}/{window_us}"


class SourceOpener(Protocol):
    """What opens event sources; each method raises OSError (or ValueError) as cgroupfs.events does."""

    def psi_trigger(self, pressure_file: Path, kind: str, stall_us: int, window_us: int) -> EventSource: ...

    def vmpressure(self, memory_dir: Path, level: str, mode: str) -> EventSource: ...

    def usage_threshold(self, memory_dir: Path, threshold: int) -> EventSource: ...


class LocalOpener:
    """Opens sources in this process, with its own privileges."""

    def psi_trigger(self, pressure_file: Path, kind: str, stall_us: int, window_us: int) -> EventSource:
        return open_psi_trigger(pressure_file, kind, stall_us, window_us)

    def vmpressure(self, memory_dir: Path, level: str, mode: str) -> EventSource:
        return open_vmpressure(memory_dir, level, mode)

    def usage_threshold(self, memory_dir: Path, threshold: int) -> EventSource:
        return open_usage_threshold(memory_dir, threshold)


@dataclass
class EventCounts:
    pressure_events: int | None = None  # PSI trigger firings
    vmpressure_events: int | None = None  # v1 vmpressure events, where there is no per-cgroup PSI
    threshold_events: int | None = None  # v1 usage threshold crossings
    last_event: float | None = None
    triggers: dict[str, int] = field(default_factory=dict)  # trigger key -> firings
    trigger_last: dict[str, float] = field(default_factory=dict)


@dataclass
class _Watched:
    source: EventSource
    mechanism: Mechanism
    param: float | TriggerSpec  # stall percent, threshold bytes, or the trigger asked for


@dataclass
class EventWatch:
    fs: CgroupFS
    opener: SourceOpener = field(default_factory=LocalOpener)
    watched: dict[tuple[str, WatchKind], _Watched] = field(default_factory=dict)
    counts: dict[str, EventCounts] = field(default_factory=dict)
    _noted: set[str] = field(default_factory=set)
    _failed: set[tuple[str, WatchKind]] = field(default_factory=set)

    def sync(self, wanted: dict[tuple[str, WatchKind], float | TriggerSpec]) -> tuple[list[EventSource], list[int]]:
        """Watch exactly `wanted`: (path, "pressure") -> stall threshold in percent of the window,
        (path, "usage") -> bytes, (path, trigger key) -> TriggerSpec. Returns the sources added and the
        descriptors removed (already closed)."""
        added: list[EventSource] = []
        removed: list[int] = []
        for key in list(self.watched):
            w = self.watched[key]
            if key not in wanted or w.source.dead or w.param != wanted[key]:
                removed.append(w.source.fileno())
                w.source.close()
                del self.watched[key]
        paths = {path for path, _ in wanted}
        for path in list(self.counts):
            if path not in paths:
                del self.counts[path]
        for key, param in wanted.items():
            if key in self.watched:
                continue
            opened = self._open(key, param)
            if opened is not None:
                self.watched[key] = opened
                counts = self.counts.setdefault(key[0], EventCounts())
                if opened.mechanism == "trigger":
                    counts.triggers.setdefault(key[1], 0)
                elif opened.mechanism == "psi":
                    counts.pressure_events = counts.pressure_events or 0
                elif opened.mechanism == "vmpressure":
                    counts.vmpressure_events = counts.vmpressure_events or 0
                else:
                    counts.threshold_events = counts.threshold_events or 0
                added.append(opened.source)
        return added, removed

    def _open(self, key: tuple[str, WatchKind], param: float | TriggerSpec) -> _Watched | None:
        path, kind = key
        mechanism: Mechanism
        try:
            if isinstance(param, TriggerSpec):
                psi = self.fs.pressure_file(path, param.resource)
                if psi is None:
                    return None  # no PSI of its own here: `pyoomd check --host` says so
                source: EventSource = self.opener.psi_trigger(psi, param.kind, param.stall_us, param.window_us)
                mechanism = "trigger"
            elif kind == "usage":
                memory_dir = self.fs.v1_memory_dir(path)
                if memory_dir is None:
                    return None  # cgroup2 has no usage notification: the tick reads memory.current
                source = self.opener.usage_threshold(memory_dir, max(1, int(param)))
                mechanism = "usage threshold"
            elif (psi_file := self.fs.pressure_file(path)) is not None:
                stall = max(1, int(WINDOW_US * min(max(float(param), 0.1), 100.0) / 100))
                source = self.opener.psi_trigger(psi_file, "some", stall, WINDOW_US)
                mechanism = "psi"
            else:
                memory_dir = self.fs.v1_memory_dir(path)
                if memory_dir is None:
                    return None  # nothing to wait on: the tick will do
                source = self.opener.vmpressure(memory_dir, VMPRESSURE_LEVEL, "hierarchy")
                mechanism = "vmpressure"
        except FileNotFoundError:
            return None  # gone since it was resolved
        except OSError as e:
            if key not in self._failed:
                self._failed.add(key)
                log.warning("cannot wait on %s events of %s (%s); it is read every tick instead", kind, path, e)
            return None
        if source.note and source.note not in self._noted:
            self._noted.add(source.note)
            log.info("%s: %s", source.describe(), source.note)
        self._failed.discard(key)
        return _Watched(source, mechanism, param)

    def sources(self) -> list[EventSource]:
        return [w.source for w in self.watched.values()]

    def mechanism(self, path: str, kind: WatchKind) -> Mechanism | None:
        w = self.watched.get((path, kind))
        return w.mechanism if w else None

    def on_ready(self, fd: int, revents: int) -> int:
        """Count what a ready descriptor reports; returns the number of events (0: nothing, or it died)."""
        for (path, kind), w in self.watched.items():
            if w.source.closed or w.source.fileno() != fd:
                continue
            n = w.source.consume(revents)
            if n:
                c = self.counts[path]
                if w.mechanism == "trigger":
                    c.triggers[kind] = c.triggers.get(kind, 0) + n
                    c.trigger_last[kind] = w.source.last_event or 0.0
                elif w.mechanism == "psi":
                    c.pressure_events = (c.pressure_events or 0) + n
                elif w.mechanism == "vmpressure":
                    c.vmpressure_events = (c.vmpressure_events or 0) + n
                else:
                    c.threshold_events = (c.threshold_events or 0) + n
                c.last_event = w.source.last_event
            return n
        return 0

    def is_dead(self, fd: int) -> bool:
        return any(w.source.dead for w in self.watched.values() if not w.source.closed and w.source.fileno() == fd)

    def close(self) -> None:
        for w in self.watched.values():
            w.source.close()
        self.watched.clear()
