"""What the `pyoomd` commands print: the daemon's status, a snapshot as a table, an explanation, all from the
same JSON and properties the D-Bus interface gives (so a script reading the interface sees what a human does)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def when(usec: int | float) -> str:
    """A D-Bus time (microseconds since the epoch) or a wall-clock time in seconds, as local time; '-' for 0."""
    if not usec:
        return "-"
    seconds = usec / 1e6 if usec > 1e11 else usec
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def mib(value: int | None) -> str | None:
    return None if value is None else f"{value / (1 << 20):.1f}M"


def pct(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


def render_status(props: dict[str, Any], records: list[dict]) -> str:
    ok, errors = props["LastReloadResult"]
    lines = [
        f"pyoomd {props['Version']} on a {props['Layout']} host",
        f"policy:   {props['PolicyPath']}, generation {props['PolicyGeneration']}, loaded "
        f"{when(props['PolicyLoadedAt'])}",
        f"reload:   {'ok' if ok else 'refused, the policy before it stays in force:'}",
        *(f"          {e}" for e in errors),
        f"dry-run:  {'on' if props['DryRun'] else 'off'} ({props['DryRunSource']})",
        "",
        table(("WORKER", "PID", "STATE", "RESTARTS", "LAST HEARTBEAT"),
              [(n, pid or None, state, restarts, when(beat)) for n, pid, state, restarts, beat in props["Workers"]]),
        "",
        table(("RULESET", "ENABLED", "PAUSED UNTIL", "LAST FIRED"),
              [(n, "yes" if enabled else "no (disabled)", when(paused), when(fired))
               for n, enabled, paused, fired in props["Rulesets"]]),
        "",
        f"actions taken since start: {props['ActionsTaken']}",
    ]
    if records:
        lines += ["", table(("TIME", "RULESET", "ACTION", "TARGET", "UNIT", "RESULT", "DRY-RUN"),
                            [(when(r["time"]), r["ruleset"], r["plugin"], r.get("target"), r.get("unit") or None,
                              r["result"], "yes" if r["dry_run"] else "no") for r in records])]
    return "\n".join(lines)


def render_snapshot(snapshot: dict) -> str:
    host = snapshot["host"]
    psi = host.get("pressure") or {}
    lines = [
        f"snapshot {snapshot['seq']} at {when(snapshot['time'])} (policy generation {snapshot['generation']})",
        f"host: {mib(host['mem_available'])} of {mib(host['mem_total'])} available, swap {mib(host['swap_free'])} "
        f"free of {mib(host['swap_total'])}, memory pressure some {pct(psi.get('some_avg10'))} "
        f"full {pct(psi.get('full_avg10'))} (avg10, %)",
        "",
    ]
    rows = []
    for cg in snapshot["cgroups"]:
        p = cg.get("pressure") or {}
        usage = mib(cg.get("usage"))
        if usage is not None and cg.get("memory_estimated"):
            usage += " (est.)"
        rows.append((cg["path"], cg.get("nr_procs"), usage, mib(cg.get("limit")), mib(cg.get("file")),
                     pct(p.get("some_avg10")), pct(p.get("full_avg10")), cg.get("oom_kills")))
    lines.append(table(("CGROUP", "PROCS", "MEMORY", "LIMIT", "FILE", "SOME10", "FULL10", "OOM KILLS"), rows)
                 if rows else "no cgroup matches the policy's patterns")
    lines.append("")
    lines.append("'-': this host or kernel has no such figure for that cgroup (never a made-up 0); "
                 "pressure is the cgroup's own PSI")
    return "\n".join(lines)


def render_explain(explanation: dict) -> str:
    lines = [f"policy generation {explanation['generation']}, dry-run {'on' if explanation['dry_run'] else 'off'}"]
    for rs in explanation["rulesets"]:
        state = "disabled: " + rs["disabled_because"] if not rs["enabled"] else (
            f"fires (group {rs['firing_group']!r})" if rs["firing"] else "does not fire")
        if rs["paused_for"]:
            state += f"; actions paused for {rs['paused_for']:.0f}s more"
        if rs["waiting_for_actuator"]:
            state += "; waiting for the actuator"
        lines += ["", f"ruleset {rs['ruleset']!r}: {state} (as of {when(rs['as_of'])})"]
        for g in rs["groups"]:
            lines.append(f"  group {g['group']!r}: {'holds' if g['holds'] else 'does not hold'}")
            for d in g["detectors"]:
                lines.append(f"    {d['detector']}: {d['verdict']}")
        for a in rs["actions"]:
            if "candidates" not in a:
                lines.append(f"  action {a['action']}: {a.get('note') or a.get('error')}")
                continue
            if not a["candidates"]:
                lines.append(f"  action {a['action']}: no candidate now")
                continue
            lines.append(f"  action {a['action']} would pick, in this order:")
            for i, c in enumerate(a["candidates"], 1):
                lines.append(f"    {i}. {c['cgroup']}: {c['why']}")
    return "\n".join(lines)
