"""The records a collector produces: one `CgroupStats` per cgroup, one `HostStats` per tick.

Every figure means the same on every layout; a figure the host cannot provide is None, never 0.
"""

from __future__ import annotations

import msgspec


class Pressure(msgspec.Struct, frozen=True):
    """PSI of one resource: percentages for the 10/60/300 s averages, total stall time in microseconds."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total: int
    full_avg10: float | None = None
    full_avg60: float | None = None
    full_avg300: float | None = None
    full_total: int | None = None


class CgroupStats(msgspec.Struct, frozen=True):
    path: str  # "/a/b", the same string on every layout
    inode: int  # identity of the directory the stats came from; the actuator re-checks it before acting
    usage: int | None = None  # bytes, hierarchical
    limit: int | None = None  # bytes; None when unlimited
    anon: int | None = None
    file: int | None = None
    shmem: int | None = None
    protection: int = 0  # v2 min(usage, max(memory.min, memory.low)), "max" protecting all; v1 has none
    memory_estimated: bool = False  # figures summed from members' RSS: the path has no memory cgroup
    pressure: Pressure | None = None  # from this cgroup's own PSI file only (or host PSI for "/")
    nr_procs: int | None = None  # processes in the subtree
    populated: bool | None = None


class HostStats(msgspec.Struct, frozen=True):
    mem_total: int
    mem_available: int
    swap_total: int
    swap_free: int
    pressure: Pressure | None = None  # /proc/pressure/memory; None on kernels without PSI
