"""Fixture trees: cgroup hierarchies and a fake /proc under pytest's tmp_path, built from real kernel samples.

The samples are a verbatim copy of the project's shared kernel samples, kept in `tests/fixtures/kernel-samples`
so that the repository tests on its own (`$PYOOMD_FIXTURES` points elsewhere); its `SOURCES.md` gives the
provenance of every file. Nothing here writes into that folder: each sample file is copied into a fresh
directory that plays the part of a cgroup directory.

What the trees add to the samples, and only this:
- the directory structure (each sample is put at the path it had on its host, read from the paired
  `/proc/PID/cgroup` sample where there is one), and the mount points of the layout, relocated under tmp_path;
- `cgroup.procs` where a sample has none, filled with PIDs taken from the samples (a test states which);
- `/proc/PID/statm` and `/proc/PID/stat`: the fixtures have no samples of these, so they are copied from the
  live kernel running the test (`/proc/self/...`, `/proc/2/stat`), which is real kernel text; tests parse the
  copies for their expectations instead of assuming numbers.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cgroupfs.layout import Hierarchy, Layout, layout_from_mountinfo
from cgroupfs.tree import CgroupFS


def fixtures_dir() -> Path:
    env = os.environ.get("PYOOMD_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parent / "fixtures" / "kernel-samples"


FIXTURES = fixtures_dir()


def sample(rel: str) -> Path:
    p = FIXTURES / rel
    if not p.exists():
        raise FileNotFoundError(f"kernel sample {p} is missing (tests/fixtures/kernel-samples, or $PYOOMD_FIXTURES)")
    return p


def sample_text(rel: str) -> str:
    return sample(rel).read_text()


def sample_int(rel: str) -> int:
    return int(sample_text(rel))


def sample_lines(rel: str) -> list[str]:
    return sample_text(rel).splitlines()


def sample_keyed(rel: str) -> dict[str, int]:
    """A `key value` sample (memory.stat and the like), parsed here independently of cgroupfs.parse."""
    return {k: int(v) for k, v in (line.split() for line in sample_lines(rel))}


def sample_pids(rel: str) -> set[int]:
    return {int(x) for x in sample_text(rel).split()}


def proc_cgroup_path(rel: str, key: str) -> str:
    """The path of hierarchy `key` ("memory", "" for cgroup2) in a /proc/PID/cgroup sample."""
    for line in sample_lines(rel):
        _, ctrls, path = line.split(":", 2)
        if key in ctrls.split(",") or (key == "" and ctrls == ""):
            return path
    raise KeyError(f"{rel} has no {key!r} line")


# ---- where the samples sat on their hosts --------------------------------------------------------------------

# Ubuntu 18.04 (4.15): the v1 memory sample, its hybrid `unified` twin and /proc/3757/cgroup are one capture.
UBUNTU_SERVICE_PID = 3757
UBUNTU_SERVICE = proc_cgroup_path("proc-self-cgroup/hybrid-ubuntu1804-service", "memory")
# Amazon Linux 2 EKS (5.x, arm64): the container's memory cgroup and /proc/493239/cgroup are one capture.
EKS_PID = 493239
EKS_CONTAINER = proc_cgroup_path("proc-self-cgroup/v1-legacy-amzn2-k8s-container-process", "memory")
# AWS Docker (3.1x-4.1): the container's memory cgroup and /proc/985/cgroup are one capture (no cgroup.procs
# was captured; PID 985 is placed in it because its /proc/985/cgroup names that cgroup).
AWS_DOCKER_PID = 985
AWS_DOCKER = proc_cgroup_path("proc-self-cgroup/v1-docker-container-aws-pre4.5", "memory")
# This machine (6.18): the non-root v1 memory cgroup the session's shell ran in, as /proc/self/cgroup shows it.
THIS_MACHINE_CHILD = proc_cgroup_path("proc-self-cgroup/this-machine-hybrid", "memory")
# Pure v2 (Fedora-like, 5.12 and 6.x): the paths given in SOURCES.md.
SYSTEM_SLICE = "/system.slice"
SESSION_SCOPE = "/user.slice/user-1000.slice/session-520.scope"

V1_ROOT = "v1/this-machine-6.18/root"
V1_CHILD = "v1/this-machine-6.18/child"
V1_UBUNTU = "v1/kernel-4.15-ubuntu1804-service-noswapaccount"
V1_EKS = "v1/kernel-5.x-amzn2-arm64-eks-container"
V1_AWS = "v1/kernel-3.1x-4.1-aws-docker-container"
V2_HYBRID_ROOT = "v2/this-machine-6.18-hybrid-unified/root"
V2_HYBRID_CHILD = "v2/this-machine-6.18-hybrid-unified/child"
V2_UBUNTU_TWIN = "v2/kernel-4.15-ubuntu1804-hybrid-unified-service"
V2_SYSTEM_SLICE = "v2/kernel-5.12-fedora-system-slice"
V2_SESSION = "v2/kernel-6.x-fedora-session-scope"
V2_OOMD = "v2/kernel-4.x-fb-oomd-fixture"

PROC_618 = "proc/this-machine-6.18"
MEMINFO_618 = f"{PROC_618}/meminfo"
PSI_618 = f"{PROC_618}/pressure-memory"
MEMINFO_OOMD = "proc/kernel-4.8-4.19-fb-oomd-fixture/meminfo"  # 4.8-4.19: before PSI

# ---- live procfs text (no samples of these exist) --------------------------------------------------------------


def live_proc_text(name: str, pid: int | str = "self") -> str:
    with open(f"/proc/{pid}/{name}") as f:
        return f.read()


def rss_bytes_of_statm(text: str) -> int:
    """statm's second field is resident pages."""
    return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- building ----------------------------------------------------------------------------------------------------


def copy_sample_dir(rel: str, dest: Path) -> Path:
    """Copy the files (not the subdirectories) of a sample directory into `dest`, writable."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(sample(rel).iterdir()):
        if src.is_file():
            shutil.copyfile(src, dest / src.name)
    return dest


def write_procs(d: Path, pids: set[int] | list[int]) -> None:
    (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in sorted(pids)))


def relocate(layout: Layout, base: Path) -> Layout:
    """The same hierarchies (versions, controllers, roots as the sample gives them), mounted under `base`."""
    return Layout(
        kind=layout.kind,
        hierarchies=tuple(
            Hierarchy(version=h.version, controllers=h.controllers, mount_point=str(base) + h.mount_point, root=h.root)
            for h in layout.hierarchies
        ),
    )


@dataclass
class FixtureHost:
    base: Path
    layout: Layout
    proc: Path

    def hierarchy(self, name: str) -> Hierarchy:
        h = {"memory": self.layout.memory, "unified": self.layout.unified}.get(name) or self.layout.v1(name)
        if h is None:
            raise KeyError(f"no {name} hierarchy in this layout")
        return h

    def cgroup_dir(self, name: str, path: str) -> Path:
        return self.hierarchy(name).dir_of(path)

    def add_cgroup(
        self, name: str, path: str, sample_rel: str | None = None, procs: set[int] | list[int] | None = None
    ) -> Path:
        """Create cgroup `path` in hierarchy `name` from a sample directory, optionally with a cgroup.procs."""
        d = self.cgroup_dir(name, path)
        d.mkdir(parents=True, exist_ok=True)
        if sample_rel is not None:
            copy_sample_dir(sample_rel, d)
        if procs is not None:
            write_procs(d, procs)
        return d

    def add_process(
        self, pid: int, cgroup_sample: str | None = None, statm: bool = False, stat: str | None = None
    ) -> Path:
        """A fake /proc/PID: `cgroup` from a sample, `statm` and `stat` copied from the live kernel."""
        d = self.proc / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        if cgroup_sample is not None:
            (d / "cgroup").write_text(sample_text(cgroup_sample))
        if statm:
            (d / "statm").write_text(live_proc_text("statm"))
        if stat is not None:
            (d / "stat").write_text(stat)
        return d

    def fs(self) -> CgroupFS:
        return CgroupFS(self.layout, proc=self.proc)


def build_proc(base: Path, meminfo: str = MEMINFO_618, pressure: str | None = PSI_618) -> Path:
    """A fake /proc with meminfo and (when the kernel has PSI) pressure/memory from samples."""
    proc = base / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample(meminfo), proc / "meminfo")
    if pressure is not None:
        (proc / "pressure").mkdir(exist_ok=True)
        shutil.copyfile(sample(pressure), proc / "pressure" / "memory")
    return proc


def host_from_mountinfo(
    tmp_path: Path, mountinfo: str, meminfo: str = MEMINFO_618, pressure: str | None = PSI_618
) -> FixtureHost:
    """Every hierarchy of a mountinfo sample, relocated under tmp_path (mount points created, empty)."""
    layout = relocate(layout_from_mountinfo(sample_text(mountinfo)), tmp_path)
    for h in layout.hierarchies:
        Path(h.mount_point).mkdir(parents=True, exist_ok=True)
    return FixtureHost(base=tmp_path, layout=layout, proc=build_proc(tmp_path, meminfo, pressure))


def v1_host(
    tmp_path: Path,
    mountinfo: str = "mountinfo/v1-legacy-amzn2-eks-node-arm64",
    meminfo: str = MEMINFO_OOMD,
    pressure: str | None = None,
) -> FixtureHost:
    """Pure v1. The memory hierarchy holds, each at its host's path:

    /                     v1/this-machine-6.18/root
    UBUNTU_SERVICE        v1/kernel-4.15-ubuntu1804-service-noswapaccount (cgroup.procs: 3757)
    EKS_CONTAINER         v1/kernel-5.x-amzn2-arm64-eks-container (12 PIDs, limit 2 GiB)
    AWS_DOCKER            v1/kernel-3.1x-4.1-aws-docker-container (+ cgroup.procs: 985)
    THIS_MACHINE_CHILD    v1/this-machine-6.18/child (5 PIDs)

    /proc has meminfo (default: the 4.8-4.19 oomd sample, a kernel before PSI, so no pressure/) and the
    /proc/PID/cgroup samples of 3757, 493239 and 985.
    """
    host = host_from_mountinfo(tmp_path, mountinfo, meminfo, pressure)
    host.add_cgroup("memory", "/", V1_ROOT)
    host.add_cgroup("memory", UBUNTU_SERVICE, V1_UBUNTU)
    host.add_cgroup("memory", EKS_CONTAINER, V1_EKS)
    host.add_cgroup("memory", AWS_DOCKER, V1_AWS, procs=[AWS_DOCKER_PID])
    host.add_cgroup("memory", THIS_MACHINE_CHILD, V1_CHILD)
    host.add_process(UBUNTU_SERVICE_PID, "proc-self-cgroup/hybrid-ubuntu1804-service")
    host.add_process(EKS_PID, "proc-self-cgroup/v1-legacy-amzn2-k8s-container-process")
    host.add_process(AWS_DOCKER_PID, "proc-self-cgroup/v1-docker-container-aws-pre4.5")
    return host


def hybrid_host(tmp_path: Path, mountinfo: str = "mountinfo/this-machine-hybrid") -> FixtureHost:
    """Hybrid: v1 memory plus cgroup2 (at `unified`, or at `systemd` for the systemd 232 sample).

    memory  /                   v1/this-machine-6.18/root
    memory  THIS_MACHINE_CHILD  v1/this-machine-6.18/child (5 PIDs)
    memory  UBUNTU_SERVICE      v1/kernel-4.15-ubuntu1804-service-noswapaccount (3757)
    cgroup2 /                   v2/this-machine-6.18-hybrid-unified/root (PSI, no memory controller)
    cgroup2 UBUNTU_SERVICE      v2/kernel-4.15-ubuntu1804-hybrid-unified-service (3757; 4.15: no PSI files)

    No cgroup2 twin of THIS_MACHINE_CHILD: on that machine its processes sit in `0::/`. Tests add one.
    /proc: this machine's meminfo and pressure/memory, and /proc/3757/cgroup.
    """
    host = host_from_mountinfo(tmp_path, mountinfo)
    host.add_cgroup("memory", "/", V1_ROOT)
    host.add_cgroup("memory", THIS_MACHINE_CHILD, V1_CHILD)
    host.add_cgroup("memory", UBUNTU_SERVICE, V1_UBUNTU)
    host.add_cgroup("unified", "/", V2_HYBRID_ROOT)
    host.add_cgroup("unified", UBUNTU_SERVICE, V2_UBUNTU_TWIN)
    host.add_process(UBUNTU_SERVICE_PID, "proc-self-cgroup/hybrid-ubuntu1804-service")
    return host


def v2_host(
    tmp_path: Path,
    mountinfo: str = "mountinfo/v2-unified-host-opensuse-kubic",
    cgroups: dict[str, str] | None = None,
    init_scope: bool = True,
) -> FixtureHost:
    """Pure v2. By default:

    /system.slice                                  v2/kernel-5.12-fedora-system-slice (no cgroup.procs)
    /user.slice/user-1000.slice/session-520.scope  v2/kernel-6.x-fedora-session-scope (14 PIDs)
    /init.scope                                    cgroup.procs: 1, with /proc/1/cgroup = `0::/init.scope`
                                                   (the openSUSE Kubic PID 1 sample, same host as the mountinfo;
                                                   left out with init_scope=False, e.g. inside a container)
    /proc: this machine's meminfo and pressure/memory.
    """
    host = host_from_mountinfo(tmp_path, mountinfo)
    if cgroups is None:
        cgroups = {SYSTEM_SLICE: V2_SYSTEM_SLICE, SESSION_SCOPE: V2_SESSION}
    for path, rel in cgroups.items():
        host.add_cgroup("unified", path, rel)
    if init_scope:
        host.add_cgroup("unified", "/init.scope", procs=[1])
        host.add_process(1, "proc-self-cgroup/v2-unified-host-init-scope-opensuse-kubic")
    return host
