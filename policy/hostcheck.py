"""`pyoomd check --host`: how a valid policy meets this host, right now.

The policy alone is judged by the loader. Here: which cgroups each plugin's patterns match on this host at this
moment, patterns that match nothing, plugins whose `requires` this cgroup layout cannot serve, and facts about
single cgroups where they are cheap to learn (a pressure plugin's cgroup with no PSI of its own). These are
warnings and notes, not errors: cgroups come and go, and a policy may be written for other hosts too.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cgroupfs import CgroupFS, Layout
from policy.loader import Spots
from policy.model import PluginSpec, Policy
from policy.paths import join_cgroup
from policy.plugins import build_plugin
from policy.plugins.base import Plugin, PluginKind, RulesetOptions

# What a plugin's `requires` may name, and what it means here.
CAPABILITIES = {
    "v1": "the v1 memory controller (its usage figures and vmpressure/threshold events)",
    "v2": "memory accounted in cgroup2 (memory.current, memory.stat of cgroup2)",
    "psi": "pressure stall information for the whole host (/proc/pressure/memory)",
    "per-cgroup psi": "memory.pressure of each cgroup (cgroup2 with PSI)",
    "systemd": "systemd as the init system (/run/systemd/system)",
    "io.stat": "the cgroup2 io controller (io.stat of each cgroup)",
}
LISTED = 5  # matches named per pattern; the rest are counted
WATCHED = ("cgroup", "ruleset_cgroup")  # the arguments whose matches a plugin reads (others only select)


@dataclass(frozen=True)
class HostCapabilities:
    layout: Layout
    missing: dict[str, str]  # capability this host lacks -> why

    @property
    def present(self) -> list[str]:
        return [c for c in CAPABILITIES if c not in self.missing]


def host_capabilities(layout: Layout, proc: Path = Path("/proc"), run: Path = Path("/run")) -> HostCapabilities:
    """Which of CAPABILITIES the layout and the kernel offer, each missing one with the reason."""
    missing: dict[str, str] = {}
    memory = layout.memory
    unified = layout.unified
    if layout.v1("memory") is None:
        missing["v1"] = f"no v1 memory controller is mounted (a {layout.kind} host)"
    if memory is None or memory.version != 2:
        missing["v2"] = "memory is accounted in the v1 memory controller" if memory else "no memory accounting"
    psi = (proc / "pressure" / "memory").exists()
    if not psi:
        missing["psi"] = f"no {proc}/pressure/memory: the kernel has no PSI (CONFIG_PSI, or booted with psi=0)"
    if not psi:
        missing["per-cgroup psi"] = "the kernel has no PSI"
    elif unified is None:
        missing["per-cgroup psi"] = "no cgroup2 mount: PSI exists only for the whole host"
    if not (run / "systemd" / "system").exists():
        missing["systemd"] = f"no {run}/systemd/system: systemd is not the init system here"
    controllers = layout.unified_controllers
    # Unread controllers (None) only happen for layouts not detected from a live host; a v2 host has io there.
    has_io = unified is not None and ("io" in controllers if controllers is not None else layout.kind == "v2")
    if not has_io:
        missing["io.stat"] = ("no cgroup2 mount" if unified is None
                              else "cgroup2 does not have the io controller (v1 blkio holds it)")
    return HostCapabilities(layout=layout, missing=missing)


@dataclass(frozen=True)
class Finding:
    severity: Literal["warning", "note"]
    spot: tuple[int, int] | None  # 1-based line, column in the policy file
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.spot[0]}:{self.spot[1]}" if self.spot else source
        return f"{where}: {self.severity}: {self.message}"


def _listed(paths: list[str]) -> str:
    more = f" and {len(paths) - LISTED} more" if len(paths) > LISTED else ""
    return ", ".join(paths[:LISTED]) + more


def _plugins(policy: Policy) -> Iterator[tuple[int, tuple[object, ...], PluginSpec, PluginKind]]:
    for ri, rs in enumerate(policy.rulesets):
        for gi, group in enumerate(rs.detector_groups):
            for di, spec in enumerate(group.detectors):
                yield ri, ("detector", ri, gi, di), spec, "detector"
        for ai, spec in enumerate(rs.actions):
            yield ri, ("action", ri, ai), spec, "action"


def _patterns(plugin: Plugin) -> Iterator[tuple[str, str]]:
    """(pattern, the argument it came from) for every cgroup-pattern argument (cgroup, ruleset_cgroup and
    glob lists such as prefer/avoid); ruleset_cgroup joined under the ruleset's own cgroup patterns."""
    for decl in type(plugin).args:
        if decl.kind not in ("cgroups", "globs"):
            continue
        values: tuple[str, ...] = getattr(plugin, decl.name, None) or ()
        if decl.name == "ruleset_cgroup":
            values = tuple(join_cgroup(base, rel) for base in plugin.ruleset.cgroup for rel in values)
        for pattern in values:
            yield pattern, decl.name


def _has_own_psi(fs: CgroupFS, path: str, resource: str) -> bool:
    if resource == "memory":
        return fs.pressure_file(path) is not None
    # Other resources: the cgroup2 directory that holds exactly this cgroup's processes has the file.
    twin = fs.twin(path, "unified")
    return twin is not None and (twin / f"{resource}.pressure").exists()


def check_host(policy: Policy, fs: CgroupFS, caps: HostCapabilities, spots: Spots | None = None) -> list[Finding]:
    """Warnings and notes on how `policy` (valid) meets this host; `spots` from the loader places them."""
    spots = spots or {}
    out: list[Finding] = []
    missing = caps.missing
    for ri, rs in enumerate(policy.rulesets):
        spot = spots.get(("ruleset_cgroup", ri))
        xattr = f" (it runs for those with the xattr '{rs.xattr_filter}')" if rs.xattr_filter else ""
        for pattern in rs.cgroup:
            found = fs.resolve([pattern])
            if found:
                out.append(Finding("note", spot, f"ruleset '{rs.name}': cgroup '{pattern}' matches "
                                   f"{len(found)} cgroup(s) now: {_listed(found)}{xattr}"))
            else:
                out.append(Finding("warning", spot, f"ruleset '{rs.name}': cgroup '{pattern}' matches nothing on "
                                   "this host now: the ruleset does not run"))
    for ri, at, spec, kind in _plugins(policy):
        rs = policy.rulesets[ri]
        opts = RulesetOptions(rs.name, rs.post_action_delay, policy.interval, tuple(rs.cgroup),
                              rs.prekill_hook_timeout)
        plugin = build_plugin(spec, kind, opts)  # the policy is valid: this cannot fail
        where = spots.get(at)
        requires = type(plugin).requires
        for need in sorted(requires):
            if need not in CAPABILITIES:
                out.append(Finding("note", where, f"{spec.name} requires '{need}', which pyoomd check cannot judge"))
            elif need in missing:
                out.append(Finding("warning", where, f"{spec.name} needs {need}, which this host lacks: "
                                   f"{missing[need]}"))
        for pattern, arg in _patterns(plugin):
            arg_spot = spots.get((*at, arg), where)
            found = fs.resolve([pattern])
            if not found:
                out.append(Finding("warning", arg_spot, f"{spec.name} {arg}: '{pattern}' matches nothing on "
                                   "this host now"))
                continue
            out.append(Finding("note", arg_spot, f"{spec.name} {arg}: '{pattern}' matches {len(found)} "
                               f"cgroup(s) now: {_listed(found)}"))
            if arg in WATCHED and "per-cgroup psi" in requires and "per-cgroup psi" not in missing:
                resource = str(getattr(plugin, "resource", "memory"))
                blind = [p for p in found if not _has_own_psi(fs, p, resource)]
                if blind:
                    # On a hybrid host a cgroup has PSI only through a cgroup2 twin holding the same processes.
                    out.append(Finding("warning", arg_spot, f"{spec.name}: no {resource} PSI of their own here "
                                       f"for {_listed(blind)}: it cannot see their pressure"))
    out.sort(key=lambda f: f.spot or (0, 0))  # in file order (stable: a spot's findings keep their order)
    return out


def describe_host(caps: HostCapabilities) -> list[str]:
    """The lines that open the report: the layout, and what it offers."""
    lines = [caps.layout.describe(), "offers: " + (", ".join(caps.present) or "none of what plugins ask for")]
    lines += [f"lacks {need}: {why}" for need, why in caps.missing.items()]
    return lines
