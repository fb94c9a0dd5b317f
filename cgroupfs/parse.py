"""Parsers for the text formats of cgroupfs and procfs files. Pure functions of the file's text."""

from __future__ import annotations

import math
import re

from cgroupfs.stats import Pressure

# Limits at or above 2**62 mean "no limit": v1 prints PAGE_COUNTER_MAX scaled by the page size
# (9223372036854771712 with 4 KiB pages, other values with 64 KiB pages and before 3.19).
UNLIMITED_FLOOR = 1 << 62


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.stat, memory.events, cgroup.events, /proc/vmstat)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_limit(text: str) -> int | None:
    value = text.strip()
    if value == "max":
        return None
    n = int(value)
    return None if n >= UNLIMITED_FLOOR else n


# The kernel's own PSI format, exactly (psi_show): read once per watched cgroup per tick, so it gets a fast path;
# digits only, so every figure is finite and non-negative. Anything else goes the careful way below.
_PSI_EXACT = re.compile(
    r"some avg10=(\d+\.\d+) avg60=(\d+\.\d+) avg300=(\d+\.\d+) total=(\d+)\n"
    r"(?:full avg10=(\d+\.\d+) avg60=(\d+\.\d+) avg300=(\d+\.\d+) total=(\d+)\n)?\Z"
)


def parse_pressure(text: str) -> Pressure:
    """A PSI file: a `some` line and, for memory and io (and cpu since 5.13), a `full` line."""
    m = _PSI_EXACT.match(text)
    if m is not None:
        s10, s60, s300, stotal, f10, f60, f300, ftotal = m.groups()
        if f10 is None:
            return Pressure(some_avg10=float(s10), some_avg60=float(s60), some_avg300=float(s300),
                            some_total=int(stotal))
        return Pressure(some_avg10=float(s10), some_avg60=float(s60), some_avg300=float(s300),
                        some_total=int(stotal), full_avg10=float(f10), full_avg60=float(f60),
                        full_avg300=float(f300), full_total=int(ftotal))
    return _parse_pressure_careful(text)


def _parse_pressure_careful(text: str) -> Pressure:
    lines: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        fields: dict[str, float] = {}
        for kv in parts[1:]:
            key, _, value = kv.partition("=")
            fields[key] = float(value)
        lines[parts[0]] = fields
    if "some" not in lines:
        raise ValueError("no 'some' line in pressure file")
    s10, s60, s300, stotal = _psi_figures("some", lines["some"])
    full = _psi_figures("full", lines["full"]) if "full" in lines else None
    return Pressure(
        some_avg10=s10,
        some_avg60=s60,
        some_avg300=s300,
        some_total=stotal,
        full_avg10=full[0] if full else None,
        full_avg60=full[1] if full else None,
        full_avg300=full[2] if full else None,
        full_total=full[3] if full else None,
    )


def _psi_figures(kind: str, fields: dict[str, float]) -> tuple[float, float, float, int]:
    """One line's averages and total. ValueError (the one error callers expect) when one is missing or not
    finite: a NaN average compares false against every threshold, and an infinite total has no integer."""
    try:
        avg10, avg60, avg300, total = (fields[k] for k in ("avg10", "avg60", "avg300", "total"))
    except KeyError as e:
        raise ValueError(f"no {e.args[0]} in the {kind!r} line of a pressure file") from None
    if not all(math.isfinite(v) for v in (avg10, avg60, avg300, total)):
        raise ValueError(f"a figure of the {kind!r} line of a pressure file is not a finite number")
    return avg10, avg60, avg300, int(total)


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes (the file says kB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        value = int(parts[0])
        if len(parts) > 1 and parts[1] == "kB":
            value *= 1024
        out[key.strip()] = value
    return out


def parse_pids(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/PID/cgroup: hierarchy key ("memory", "name=systemd", "" for cgroup2) to path.

    Co-mounted controllers ("cpu,cpuacct") get an entry for each controller.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            out[""] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out
