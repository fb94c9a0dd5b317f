"""`pyoomd top`: a live view of what the running daemon watches, refreshed in place.

Each frame asks the daemon over D-Bus for its snapshot (GetSnapshot), its explanation (Explain) and its
properties, and shows the watched cgroups by pressure (with memory growth since the last frame) and, for every
ruleset, how close it is to firing: which of its detector groups hold, and what it would kill now.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from supervisor.client import DaemonClient
from supervisor.views import mib, pct, table, when

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: each frame replaces the last


def frame(props: dict[str, Any], snapshot: dict, explanation: dict, previous: dict | None, rows: int = 20) -> str:
    usage_before = {cg["path"]: cg.get("usage") for cg in previous["cgroups"]} if previous else {}
    elapsed = snapshot["time"] - previous["time"] if previous else 0
    lines = [
        f"pyoomd {props['Version']} - {props['Layout']} host - {when(snapshot['time'])} - policy generation "
        f"{props['PolicyGeneration']} - dry-run {'on' if props['DryRun'] else 'off'} - actions taken "
        f"{props['ActionsTaken']}",
        "",
    ]
    cgroups = sorted(snapshot["cgroups"], key=lambda cg: -(((cg.get("pressure") or {}).get("full_avg10")) or 0))
    shown = []
    for cg in cgroups[:rows]:
        p = cg.get("pressure") or {}
        usage, before = cg.get("usage"), usage_before.get(cg["path"])
        growth = None
        if usage is not None and before is not None and elapsed > 0:
            growth = f"{(usage - before) / elapsed / (1 << 20):+.1f}M/s"
        shown.append((cg["path"], cg.get("nr_procs"), mib(usage), growth, pct(p.get("some_avg10")),
                      pct(p.get("full_avg10"))))
    lines.append(table(("CGROUP", "PROCS", "MEMORY", "GROWTH", "SOME10", "FULL10"), shown)
                 if shown else "no watched cgroup exists now")
    if len(cgroups) > rows:
        lines.append(f"... and {len(cgroups) - rows} more")
    lines.append("")
    for rs in explanation["rulesets"]:
        groups = rs["groups"]
        holding = [f"{g['group']}: {sum(d['verdict'] == 'holds' for d in g['detectors'])}/{len(g['detectors'])} "
                   "hold" for g in groups]
        state = "FIRING" if rs["firing"] else "quiet"
        if not rs["enabled"]:
            state = "DISABLED"
        elif rs["paused_for"]:
            state += f", resting {rs['paused_for']:.0f}s"
        lines.append(f"{rs['ruleset']} [{state}]  " + "; ".join(holding))
        for a in rs["actions"]:
            if a.get("candidates"):
                top = a["candidates"][0]
                lines.append(f"    {a['action']} would pick {top['cgroup']}: {top['why']}")
    return "\n".join(lines)


def run(bus: str, interval: float, once: bool, rows: int) -> int:
    client = DaemonClient(bus)
    previous: dict | None = None
    while True:
        props = client.properties()
        snapshot = json.loads(client.call("GetSnapshot"))
        explanation = json.loads(client.call("Explain"))
        text = frame(props, snapshot, explanation, previous, rows)
        if once or not sys.stdout.isatty():
            print(text, flush=True)
        else:
            sys.stdout.write(CLEAR + text + "\n")
            sys.stdout.flush()
        if once:
            return 0
        previous = snapshot
        time.sleep(interval)
