"""Layout detection from /proc/self/mountinfo: which hierarchies exist, where, and which kind of host this is."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

LayoutKind = Literal["v1", "hybrid", "v2"]

# Every controller a v1 hierarchy can carry; anything else in the super options is a mount flag.
V1_CONTROLLERS = frozenset(
    {
        "cpuset", "cpu", "cpuacct", "blkio", "memory", "devices", "freezer", "net_cls", "perf_event",
        "net_prio", "hugetlb", "pids", "rdma", "misc", "debug",
    }
)


class LayoutError(Exception):
    """The host's cgroup mounts cannot serve pyoomd; the message says what to enable."""


class Hierarchy(msgspec.Struct, frozen=True):
    """One mounted cgroup hierarchy."""

    version: Literal[1, 2]
    controllers: tuple[str, ...]  # v1: e.g. ("cpu", "cpuacct") or ("name=systemd",); v2: ()
    mount_point: str
    root: str  # the cgroup the mount shows at mount_point ("/" unless bind-mounted or namespaced)

    def dir_of(self, path: str) -> Path:
        """The directory of cgroup `path` (normalised, absolute within the hierarchy) in this mount."""
        return Path(self.mount_point + ("" if path == "/" else path))


class Layout(msgspec.Struct, frozen=True):
    kind: LayoutKind
    hierarchies: tuple[Hierarchy, ...]

    def v1(self, controller: str) -> Hierarchy | None:
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        return None

    @property
    def unified(self) -> Hierarchy | None:
        for h in self.hierarchies:
            if h.version == 2:
                return h
        return None

    @property
    def memory(self) -> Hierarchy | None:
        """The hierarchy that holds memory accounting: the v1 memory controller, else cgroup2."""
        return self.v1("memory") or (self.unified if self.kind == "v2" else None)

    def controller_map(self) -> dict[str, str]:
        """Controller name to mount point (cgroup2 as "unified")."""
        out: dict[str, str] = {}
        for h in self.hierarchies:
            if h.version == 2:
                out["unified"] = h.mount_point
            for c in h.controllers:
                out[c] = h.mount_point
        return out

    def describe(self) -> str:
        parts = [f"{name}={mp}" for name, mp in sorted(self.controller_map().items())]
        return f"cgroup layout {self.kind}: " + " ".join(parts)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal: \040 \011 \012 \134
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Hierarchy]:
    """Every cgroup and cgroup2 mount, first mount of each hierarchy wins (later ones are bind mounts)."""
    found: list[Hierarchy] = []
    seen: set[tuple[int, tuple[str, ...]]] = set()
    for line in text.splitlines():
        if " - " not in line:
            continue
        pre, post = line.split(" - ", 1)
        pre_f, post_f = pre.split(), post.split()
        if len(pre_f) < 5 or len(post_f) < 3:
            continue
        fstype, super_opts = post_f[0], post_f[2]
        root, mount_point = _unescape(pre_f[3]), _unescape(pre_f[4])
        if fstype == "cgroup2":
            key: tuple[int, tuple[str, ...]] = (2, ())
            hier = Hierarchy(version=2, controllers=(), mount_point=mount_point, root=root)
        elif fstype == "cgroup":
            opts = super_opts.split(",")
            ctrls = tuple(sorted(o for o in opts if o in V1_CONTROLLERS or o.startswith("name=")))
            if not ctrls:
                continue
            key = (1, ctrls)
            hier = Hierarchy(version=1, controllers=ctrls, mount_point=mount_point, root=root)
        else:
            continue
        if key in seen:
            continue
        seen.add(key)
        found.append(hier)
    return found


def layout_from_mountinfo(text: str) -> Layout:
    hierarchies = parse_mountinfo(text)
    has_v2 = any(h.version == 2 for h in hierarchies)
    has_v1_controllers = any(
        h.version == 1 and any(not c.startswith("name=") for c in h.controllers) for h in hierarchies
    )
    if has_v2 and has_v1_controllers:
        kind: LayoutKind = "hybrid"
    elif has_v2:
        kind = "v2"
    elif has_v1_controllers:
        kind = "v1"
    else:
        raise LayoutError(
            "no cgroup hierarchy is mounted: mount cgroup2 at /sys/fs/cgroup, or the v1 memory controller"
        )
    layout = Layout(kind=kind, hierarchies=tuple(hierarchies))
    if layout.memory is None:
        raise LayoutError(
            f"{kind} layout without a memory controller: mount the v1 memory controller "
            "(boot with cgroup_enable=memory if the kernel disables it)"
        )
    return layout


def detect_layout(mountinfo: str | Path = "/proc/self/mountinfo") -> Layout:
    return layout_from_mountinfo(Path(mountinfo).read_text())
