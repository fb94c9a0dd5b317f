"""Layout detection from /proc/self/mountinfo: which hierarchies exist, where, and which kind of host this is."""

from __future__ import annotations

import os
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
    # Controllers cgroup2 offers at its root (cgroup.controllers); None when not read (fixtures, tests).
    unified_controllers: tuple[str, ...] | None = None
    cgroup_namespace: bool = False  # this process sees a cgroup namespace, not the host's tree

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
        v1 = self.v1("memory")
        if v1 is not None:
            return v1
        # Pure v2, or a hybrid host booted with cgroup_no_v1=memory: memory is accounted in cgroup2.
        unified = self.unified
        if unified is not None and (self.kind == "v2" or "memory" in (self.unified_controllers or ())):
            return unified
        return None

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
        """The one line `pyoomd run` logs at start-up."""
        parts = [f"{name}={mp}" for name, mp in sorted(self.controller_map().items())]
        notes = []
        if self.memory is not None:
            notes.append(f"memory accounted in {'cgroup2' if self.memory.version == 2 else 'v1'}")
        if self.cgroup_namespace:
            notes.append("inside a cgroup namespace")
        nested = sorted({h.root for h in self.hierarchies if h.root != "/"})
        if nested:
            notes.append("container view of " + ", ".join(nested))
        return f"cgroup layout {self.kind}: " + " ".join(parts) + (f" ({'; '.join(notes)})" if notes else "")


_OCTAL = frozenset("01234567")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal: \040 \011 \012 \134
    out, i = [], 0
    while i < len(field):
        # Octal digits only: isdigit() also takes 8, 9 and other scripts' digits, which int(..., 8) refuses.
        if field[i] == "\\" and i + 4 <= len(field) and all(c in _OCTAL for c in field[i + 1 : i + 4]):
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


def layout_from_mountinfo(
    text: str,
    unified_controllers: tuple[str, ...] | None = None,
    proc_cgroups: str | None = None,
    cgroup_namespace: bool = False,
) -> Layout:
    """The layout a mountinfo describes. `unified_controllers` (cgroup2's root cgroup.controllers) and
    `proc_cgroups` (/proc/cgroups) sharpen the answer and the error, when the caller has them."""
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
    layout = Layout(
        kind=kind,
        hierarchies=tuple(hierarchies),
        unified_controllers=unified_controllers,
        cgroup_namespace=cgroup_namespace,
    )
    if layout.memory is None or (
        kind == "v2" and unified_controllers is not None and "memory" not in unified_controllers
    ):
        raise LayoutError(_no_memory_reason(kind, proc_cgroups)
        )
    return layout


def _no_memory_reason(kind: str, proc_cgroups: str | None) -> str:
    enabled = None
    for line in (proc_cgroups or "").splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0] == "memory":
            enabled = fields[3] == "1"
    if enabled is False:
        return (
            f"{kind} layout, and the kernel has the memory controller disabled: boot with cgroup_enable=memory "
            "(and without cgroup_disable=memory)"
        )
    if kind == "v2":
        return "cgroup2 offers no memory controller at its root: check cgroup.controllers and cgroup_no_v1="
    return (
        f"{kind} layout without a mounted memory controller: mount it "
        "(mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory) or boot with the unified hierarchy"
    )


def _same_namespace(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_ino == os.stat(b).st_ino
    except OSError:
        return True  # cannot tell (no permission to PID 1's ns link): assume the host's view


def detect_layout(mountinfo: str | Path = "/proc/self/mountinfo", proc: str | Path = "/proc") -> Layout:
    """This host's layout, checked usable: every hierarchy pyoomd reads must be readable."""
    proc = Path(proc)
    text = Path(mountinfo).read_text()
    unified = next((h for h in parse_mountinfo(text) if h.version == 2), None)
    controllers: tuple[str, ...] | None = None
    if unified is not None:
        try:
            controllers = tuple((Path(unified.mount_point) / "cgroup.controllers").read_text().split())
        except OSError:
            controllers = None
    try:
        proc_cgroups: str | None = (proc / "cgroups").read_text()
    except OSError:
        proc_cgroups = None
    namespaced = not _same_namespace(proc / "self" / "ns" / "cgroup", proc / "1" / "ns" / "cgroup")
    layout = layout_from_mountinfo(text, controllers, proc_cgroups, namespaced)
    for h in (layout.memory, layout.unified):
        if h is None:
            continue
        try:
            os.listdir(h.mount_point)
            (Path(h.mount_point) / "cgroup.procs").read_bytes()
        except OSError as e:
            raise LayoutError(f"cannot read the cgroup hierarchy at {h.mount_point}: {e.strerror}") from None
    return layout
