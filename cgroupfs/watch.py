"""Which kernel events to wait on for the cgroups a policy watches, and their counts.

For each watched cgroup pyoomd waits on the best signal the path has on this host: a PSI trigger on its own
`memory.pressure` (v2, or the verified cgroup2 twin on a hybrid host; `/proc/pressure/memory` for the root), else
the v1 stand-in, vmpressure events of its memory cgroup. The counts are cumulative and ride in every snapshot,
so a conflated channel that drops a snapshot can never drop an event: the next snapshot carries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cgroupfs.events import EventSource, open_psi_trigger, open_vmpressure
from cgroupfs.tree import CgroupFS

log = logging.getLogger("pyoomd.cgroupfs")

WINDOW_US = 500_000  # asked for first; hosts without CAP_SYS_RESOURCE get the nearest 2 s multiple
VMPRESSURE_LEVEL = "medium"  # reclaim is struggling: the level oomd-like daemons care about on v1


@dataclass
class EventCounts:
    pressure_events: int = 0
    vmpressure_events: int = 0
    last_event: float | None = None
    mechanism: str = ""  # "psi" or "vmpressure"


@dataclass
class _Watched:
    source: EventSource
    mechanism: str
    stall_pct: float


@dataclass
class EventWatch:
    fs: CgroupFS
    watched: dict[str, _Watched] = field(default_factory=dict)
    counts: dict[str, EventCounts] = field(default_factory=dict)
    _noted: set[str] = field(default_factory=set)
    _failed: set[str] = field(default_factory=set)

    def sync(self, wanted: dict[str, float]) -> tuple[list[EventSource], list[int]]:
        """Watch exactly `wanted` (path -> stall threshold in percent of the window). Returns the sources
        added and the descriptors removed (already closed), for the caller's poll loop."""
        added: list[EventSource] = []
        removed: list[int] = []
        for path in list(self.watched):
            w = self.watched[path]
            if path not in wanted or w.source.dead or w.stall_pct != wanted[path]:
                removed.append(w.source.fileno())
                w.source.close()
                del self.watched[path]
        for path in list(self.counts):
            if path not in wanted:
                del self.counts[path]
        for path, pct in wanted.items():
            if path in self.watched:
                continue
            opened = self._open(path, pct)
            if opened is not None:
                self.watched[path] = opened
                self.counts.setdefault(path, EventCounts()).mechanism = opened.mechanism
                added.append(opened.source)
        return added, removed

    def _open(self, path: str, pct: float) -> _Watched | None:
        psi_file = self.fs.pressure_file(path)
        try:
            if psi_file is not None:
                stall = max(1, int(WINDOW_US * min(max(pct, 0.1), 100.0) / 100))
                source: EventSource = open_psi_trigger(psi_file, "some", stall, WINDOW_US)
                mechanism = "psi"
            else:
                memory_dir = self.fs.v1_memory_dir(path)
                if memory_dir is None:
                    return None  # nothing to wait on: the tick will do
                source = open_vmpressure(memory_dir, VMPRESSURE_LEVEL, "hierarchy")
                mechanism = "vmpressure"
        except FileNotFoundError:
            return None  # gone since it was resolved
        except OSError as e:
            if path not in self._failed:
                self._failed.add(path)
                log.warning("cannot wait on events of %s (%s); it is read every tick instead", path, e)
            return None
        if source.note and source.note not in self._noted:
            self._noted.add(source.note)
            log.info("%s: %s", source.describe(), source.note)
        self._failed.discard(path)
        return _Watched(source, mechanism, pct)

    def sources(self) -> list[EventSource]:
        return [w.source for w in self.watched.values()]

    def on_ready(self, fd: int, revents: int) -> int:
        """Count what a ready descriptor reports; returns the number of events (0: nothing, or it died)."""
        for path, w in self.watched.items():
            if w.source.fileno() != fd:
                continue
            n = w.source.consume(revents)
            if n:
                c = self.counts[path]
                if w.mechanism == "psi":
                    c.pressure_events += n
                else:
                    c.vmpressure_events += n
                c.last_event = w.source.last_event
            return n
        return 0

    def is_dead(self, fd: int) -> bool:
        return any(w.source.dead for w in self.watched.values() if not w.source.closed and w.source.fileno() == fd)

    def close(self) -> None:
        for w in self.watched.values():
            w.source.close()
        self.watched.clear()
