"""The records a collector produces: one `CgroupStats` per cgroup, one `HostStats` per tick.

Every figure means the same on every layout; a figure the host cannot provide is None, never 0.
"""

from __future__ import annotations

import msgspec


class Pressure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """PSI of one resource: percentages for the 10/60/300 s averages, total stall time in microseconds."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total: int
    full_avg10: float | None = None
    full_avg60: float | None = None
    full_avg300: float | None = None
    full_total: int | None = None


class CgroupStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One cgroup at one moment. Every figure is for the whole subtree. None: not read, or not available on
    this layout or kernel (never a made-up 0). Counters (pgscan, refaults, ...) are cumulative."""

    path: str  # "/a/b", the same string on every layout
    inode: int  # identity of the directory the stats came from; the actuator re-checks it before acting
    # "memory"
    usage: int | None = None  # bytes
    limit: int | None = None  # bytes; None when unlimited
    anon: int | None = None
    file: int | None = None
    shmem: int | None = None
    protection: int | None = None  # v2 min(usage, max(memory.min, memory.low)), "max" protecting all; v1 none
    memory_estimated: bool = False  # usage summed from members' RSS: the path has no memory cgroup here
    # "swap"
    swap_usage: int | None = None  # v2 memory.swap.current; v1 memsw minus usage (with swap accounting)
    swap_limit: int | None = None
    # "reclaim"
    pgscan: int | None = None  # v2 only
    workingset_refault: int | None = None  # anon + file where split (5.9+)
    pgmajfault: int | None = None
    # "oom"
    failcnt: int | None = None  # v1: times usage hit the limit
    oom_kills: int | None = None  # kernel OOM kills in the subtree (v1 4.13+, v2)
    # "tree": what kill actions need (a candidate holds processes) and nr_dying_descendants
    nr_procs: int | None = None  # processes in the subtree
    populated: bool | None = None
    nr_dying_descendants: int | None = None  # v2 only
    # "pressure"
    pressure: Pressure | None = None  # from this cgroup's own PSI file only (host PSI stands for "/" alone)
    # "io"
    io_pressure: Pressure | None = None  # io.pressure, with the same rules as memory pressure
    io_bytes: int | None = None  # cumulative bytes read, written, discarded (v2 io.stat; v1 blkio throttle)
    io_ops: int | None = None  # cumulative operations
    # "xattrs": the cgroup's extended attributes (oomd_prefer, oomd_avoid, user.oomd_omit, xattr_filter names)
    xattrs: dict[str, str] | None = None
    # PSI triggers a plugin asked for by key (cgroupfs.watch.trigger_key): cumulative firings, last firing time
    triggers: dict[str, int] | None = None
    trigger_last: dict[str, float] | None = None
    # events, for cgroups a pressure plugin watches: cumulative since the collector began watching
    pressure_events: int | None = None  # PSI trigger firings on the cgroup's own PSI file
    vmpressure_events: int | None = None  # v1 stand-in where there is no per-cgroup PSI: vmpressure "medium"
    threshold_events: int | None = None  # v1 memory.usage_in_bytes threshold crossings (memory_above)
    last_event: float | None = None  # wall-clock time of the newest of these


class HostStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mem_total: int
    mem_available: int
    swap_total: int
    swap_free: int
    pressure: Pressure | None = None  # /proc/pressure/memory; None on kernels without PSI
