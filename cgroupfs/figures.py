"""Turning one hierarchy's memory files into the fields of `CgroupStats`.

Each function returns only the fields its files can give; a field the layout or kernel lacks is left out (so it
stays None in the record), never reported as 0. Field groups are the ones plugins declare in `Needs.fields`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cgroupfs.parse import parse_flat_keyed, parse_limit

# Paths are built as strings on this hot path: a pathlib object costs more to make than the pread itself.
Read = Callable[[str], str]

# The groups a plugin can ask for. "tree" (members, populated, dying descendants) only when asked, as the rest:
# reading a cgroup's members means its cgroup.procs and those of all its descendants.
FIELD_GROUPS = frozenset({"memory", "swap", "reclaim", "oom", "tree", "pressure", "io", "xattrs"})

# What each group reads on each layout, for docs/configuration.md (policy/docgen.py); the functions below and
# cgroupfs/tree.py are what reads them. "twin": the cgroup's cgroup2 directory, used once verified to hold the
# same processes.
FIELD_FILES: dict[str, tuple[str, str, str]] = {  # group -> (v1, hybrid, v2)
    "memory": ("memory.usage_in_bytes, memory.limit_in_bytes, memory.stat", "as v1",
               "memory.current, memory.max, memory.stat, memory.min, memory.low"),
    "swap": ("memory.memsw.usage_in_bytes, memory.memsw.limit_in_bytes (with swap accounting)", "as v1",
             "memory.swap.current, memory.swap.max"),
    "reclaim": ("memory.stat (workingset_refault*, pgmajfault)", "as v1",
                "memory.stat (pgscan, workingset_refault*, pgmajfault); /proc/vmstat for the root"),
    "oom": ("memory.oom_control, memory.failcnt", "as v1", "memory.events"),
    "tree": ("cgroup.procs of the cgroup and its descendants", "as v1, and the twin's cgroup.stat",
             "cgroup.procs of the cgroup and its descendants, cgroup.stat"),
    "pressure": ("none (the root: /proc/pressure/memory)", "the twin's memory.pressure",
                 "memory.pressure"),
    "io": ("blkio.throttle.io_service_bytes_recursive, blkio.throttle.io_serviced_recursive",
           "the twin's io.pressure and io.stat, else as v1", "io.pressure, io.stat"),
    "xattrs": ("the directory's xattrs (trusted.* through the supervisor)", "as v1, and the twin's",
               "the directory's xattrs"),
}


def _optional(read: Read, path: str) -> str | None:
    """The text of a file a kernel may not have (swap accounting off, an older kernel)."""
    try:
        return read(path)
    except FileNotFoundError:
        return None


def _refaults(stat: dict[str, int], prefix: str = "") -> int | None:
    """Refaults, whichever way the kernel counts them: split by anon/file since 5.9, one counter before."""
    split = [stat.get(f"{prefix}workingset_refault_anon"), stat.get(f"{prefix}workingset_refault_file")]
    if any(v is not None for v in split):
        return sum(v or 0 for v in split)
    return stat.get(f"{prefix}workingset_refault")


def v1_memory(read: Read, d: str | Path, fields: frozenset[str]) -> dict[str, Any]:
    """A v1 memory controller directory. memory.stat's total_* lines are hierarchical, as usage is."""
    out: dict[str, Any] = {}
    needs_stat = fields & {"memory", "reclaim", "swap"}
    stat = parse_flat_keyed(read(f"{d}/memory.stat")) if needs_stat else {}

    def total(key: str) -> int | None:
        return stat.get(f"total_{key}", stat.get(key))

    usage = int(read(f"{d}/memory.usage_in_bytes")) if fields & {"memory", "swap"} else None
    if "memory" in fields:
        out.update(
            usage=usage,
            limit=parse_limit(read(f"{d}/memory.limit_in_bytes")),
            anon=total("rss"),
            file=total("cache"),
            shmem=total("shmem"),
        )
    if "swap" in fields:
        # memsw files exist only with swap accounting (swapaccount=1 / CONFIG_MEMCG_SWAP_ENABLED).
        memsw = _optional(read, f"{d}/memory.memsw.usage_in_bytes")
        if memsw is not None and usage is not None:
            out["swap_usage"] = max(int(memsw) - usage, 0)
            memsw_text = _optional(read, f"{d}/memory.memsw.limit_in_bytes")
            memsw_limit = parse_limit(memsw_text) if memsw_text is not None else None
            mem_limit = parse_limit(read(f"{d}/memory.limit_in_bytes"))
            if memsw_limit is not None and mem_limit is not None:
                out["swap_limit"] = max(memsw_limit - mem_limit, 0)
    if "reclaim" in fields:
        out["workingset_refault"] = _refaults(stat, "total_") if "total_rss" in stat else _refaults(stat)
        out["pgmajfault"] = total("pgmajfault")
    if "oom" in fields:
        failcnt = _optional(read, f"{d}/memory.failcnt")
        out["failcnt"] = int(failcnt) if failcnt is not None else None
        oom = _optional(read, f"{d}/memory.oom_control")
        out["oom_kills"] = parse_flat_keyed(oom).get("oom_kill") if oom is not None else None  # since 4.13
    return out


def v2_memory(read: Read, d: str | Path, fields: frozenset[str]) -> dict[str, Any]:
    """A cgroup2 directory with the memory controller enabled (memory.current exists)."""
    out: dict[str, Any] = {}
    stat = parse_flat_keyed(read(f"{d}/memory.stat")) if fields & {"memory", "reclaim"} else {}
    if "memory" in fields:
        usage = int(read(f"{d}/memory.current"))
        # oomd's raw protection: min(usage, max(memory.min, memory.low)); "max" protects all of it.
        protection = 0
        for name in ("memory.min", "memory.low"):
            text = _optional(read, d / name)
            if text is not None:
                value = parse_limit(text)
                protection = max(protection, usage if value is None else value)
        out.update(
            usage=usage,
            limit=parse_limit(read(f"{d}/memory.max")),
            anon=stat.get("anon"),
            file=stat.get("file"),
            shmem=stat.get("shmem"),
            protection=min(protection, usage),
        )
    if "swap" in fields:
        current = _optional(read, f"{d}/memory.swap.current")
        if current is not None:
            out["swap_usage"] = int(current)
            limit = _optional(read, f"{d}/memory.swap.max")
            if limit is not None:
                out["swap_limit"] = parse_limit(limit)
    if "reclaim" in fields:
        out["pgscan"] = stat.get("pgscan")
        out["workingset_refault"] = _refaults(stat)
        out["pgmajfault"] = stat.get("pgmajfault")
    if "oom" in fields:
        events = _optional(read, f"{d}/memory.events")
        if events is not None:
            out["oom_kills"] = parse_flat_keyed(events).get("oom_kill")
    return out


def v2_tree(read: Read, d: str | Path) -> dict[str, Any]:
    """cgroup2 facts about the subtree: dying descendants (cgroups removed but still pinned by memory)."""
    stat = _optional(read, f"{d}/cgroup.stat")
    if stat is None:
        return {}
    return {"nr_dying_descendants": parse_flat_keyed(stat).get("nr_dying_descendants")}


def root_from_meminfo(
    info: dict[str, int], fields: frozenset[str], vmstat: dict[str, int] | None = None
) -> dict[str, Any]:
    """The cgroup2 root has no memory files: /proc/meminfo speaks for it (oomd: MemTotal - MemFree), and
    /proc/vmstat for its reclaim counters."""
    out: dict[str, Any] = {}
    if "reclaim" in fields and vmstat is not None:
        scans = [v for k, v in vmstat.items() if k.startswith("pgscan_")]  # kswapd, direct, khugepaged
        out.update(pgscan=sum(scans) if scans else None, workingset_refault=_refaults(vmstat),
                   pgmajfault=vmstat.get("pgmajfault"))
    if "memory" in fields:
        out.update(
            usage=info.get("MemTotal", 0) - info.get("MemFree", 0),
            anon=info.get("AnonPages"),
            file=info.get("Cached"),
            shmem=info.get("Shmem"),
        )
    if "swap" in fields and "SwapTotal" in info:
        out.update(swap_usage=info["SwapTotal"] - info.get("SwapFree", 0), swap_limit=info["SwapTotal"])
    return out


def v2_io_totals(text: str) -> dict[str, int]:
    """io.stat summed over devices: bytes (read + written + discarded) and operations, both cumulative."""
    total_bytes = total_ios = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key in ("rbytes", "wbytes", "dbytes"):
                total_bytes += int(value)
            elif key in ("rios", "wios", "dios"):
                total_ios += int(value)
    return {"io_bytes": total_bytes, "io_ops": total_ios}


def v1_blkio_total(text: str) -> int | None:
    """blkio.throttle.*_recursive: the kernel's own "Total" line (the sum over devices and operations)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "Total":
            return int(parts[1])
    return None
