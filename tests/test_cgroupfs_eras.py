"""One test body, every layout and kernel era: the same CgroupStats meaning from each tree of real samples.

The expectations are read from the sample files with plain string handling here, independently of
cgroupfs.parse and cgroupfs.figures: what the kernel printed is what the record must say, and a figure a
sample's kernel did not print is None in the record, never 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cgroupfs import CgroupFS
from tests.fixture_trees import (
    AWS_DOCKER,
    EKS_CONTAINER,
    SESSION_SCOPE,
    SYSTEM_SLICE,
    THIS_MACHINE_CHILD,
    UBUNTU_SERVICE,
    V1_CHILD,
    V1_EKS,
    V2_HYBRID_CHILD,
    V2_SESSION,
    FixtureHost,
    host_from_mountinfo,
    hybrid_host,
    sample,
    sample_pids,
    v1_host,
    v2_host,
)


@dataclass
class Era:
    name: str
    build: Callable[[Path], FixtureHost]
    path: str  # the cgroup, as the policy names it
    memory_dir: Callable[[FixtureHost], Path]  # where its memory files are in the tree
    pressure_dir: Callable[[FixtureHost], Path | None]  # its verified PSI file's directory, if any


def _hybrid_with_twin(tmp: Path) -> FixtureHost:
    host = hybrid_host(tmp)
    host.add_cgroup("unified", THIS_MACHINE_CHILD, V2_HYBRID_CHILD, procs=sample_pids(f"{V1_CHILD}/cgroup.procs"))
    return host


def _v1_in_container(tmp: Path) -> FixtureHost:
    # Docker's bind mount: /sys/fs/cgroup/memory shows the container's own cgroup as "/".
    host = host_from_mountinfo(tmp, "mountinfo/v1-docker-container-subpaths-ubuntu-aufs", pressure=None)
    host.add_cgroup("memory", "/", V1_EKS)
    return host


def _v2_in_cgroupns(tmp: Path) -> FixtureHost:
    host = host_from_mountinfo(tmp, "mountinfo/v2-container-cgroupns-docker-ubuntu")
    host.add_cgroup("unified", "/", V2_SESSION)
    return host


def _mem(name: str, path: str) -> Callable[[FixtureHost], Path]:
    return lambda host: host.cgroup_dir(name, path)


ERAS = [
    Era("v1 3.1x-4.1 (docker on AWS)", v1_host, AWS_DOCKER, _mem("memory", AWS_DOCKER), lambda h: None),
    Era("v1 4.15, no swap accounting", v1_host, UBUNTU_SERVICE, _mem("memory", UBUNTU_SERVICE), lambda h: None),
    Era("v1 5.x (EKS node)", v1_host, EKS_CONTAINER, _mem("memory", EKS_CONTAINER), lambda h: None),
    Era("v1 inside a container", _v1_in_container, "/", _mem("memory", "/"), lambda h: None),
    Era("hybrid 6.18 (this machine)", _hybrid_with_twin, THIS_MACHINE_CHILD, _mem("memory", THIS_MACHINE_CHILD),
        _mem("unified", THIS_MACHINE_CHILD)),
    Era("v2 5.12 (system.slice)", v2_host, SYSTEM_SLICE, _mem("unified", SYSTEM_SLICE),
        _mem("unified", SYSTEM_SLICE)),
    Era("v2 6.x (session scope)", v2_host, SESSION_SCOPE, _mem("unified", SESSION_SCOPE),
        _mem("unified", SESSION_SCOPE)),
    Era("v2 in a cgroup namespace", _v2_in_cgroupns, "/", _mem("unified", "/"), _mem("unified", "/")),
]


def _keyed(p: Path) -> dict[str, int] | None:
    if not p.exists():
        return None
    return {k: int(v) for k, v in (line.split() for line in p.read_text().splitlines())}


def _int(p: Path) -> int | None:
    return int(p.read_text()) if p.exists() else None


def _limit(p: Path) -> int | None:
    text = p.read_text().strip()
    return None if text == "max" or int(text) >= 1 << 62 else int(text)


def _psi_full_avg10(p: Path) -> float | None:
    for line in p.read_text().splitlines():
        if line.startswith("full "):
            return float(line.split()[1].split("=")[1])
    return None


@pytest.mark.parametrize("era", ERAS, ids=lambda e: e.name)
def test_the_same_meaning_on_every_layout_and_era(era: Era, tmp_path):
    host = era.build(tmp_path)
    fs: CgroupFS = host.fs()
    st = fs.read_stats(era.path)
    assert st is not None and st.path == era.path
    d = era.memory_dir(host)
    v1 = (d / "memory.usage_in_bytes").exists()
    stat = _keyed(d / "memory.stat")
    assert stat is not None

    # memory: v1 totals are hierarchical (total_*); v2 figures are hierarchical by nature.
    if v1:
        assert st.usage == _int(d / "memory.usage_in_bytes")
        assert st.limit == _limit(d / "memory.limit_in_bytes")
        assert st.anon == stat["total_rss"] and st.file == stat["total_cache"]
        assert st.shmem == stat.get("total_shmem")  # absent before 4.x's shmem line: None
        assert st.protection is None
    else:
        assert st.usage == _int(d / "memory.current")
        assert st.limit == _limit(d / "memory.max")
        assert (st.anon, st.file, st.shmem) == (stat["anon"], stat["file"], stat["shmem"])
        assert st.protection is not None and 0 <= st.protection <= st.usage
    assert st.memory_estimated is False

    # swap: v1 only with swap accounting (memsw files); v2 where memory.swap.current exists.
    if v1:
        memsw = _int(d / "memory.memsw.usage_in_bytes")
        # The two files are read moments apart: the EKS sample's memsw is 72 KiB below its usage. No swap then.
        assert st.swap_usage == (None if memsw is None else max(memsw - st.usage, 0))
    else:
        assert st.swap_usage == _int(d / "memory.swap.current")

    # reclaim activity: pgscan is v2 only; refaults whichever way the kernel counts them, if at all.
    prefix = "total_" if v1 else ""
    split = [stat.get(f"{prefix}workingset_refault_anon"), stat.get(f"{prefix}workingset_refault_file")]
    refaults = sum(x or 0 for x in split) if any(x is not None for x in split) else stat.get(
        f"{prefix}workingset_refault")
    assert st.workingset_refault == refaults
    assert st.pgmajfault == stat.get(f"{prefix}pgmajfault")
    assert st.pgscan == (None if v1 else stat.get("pgscan"))

    # OOM: v1 failcnt and oom_control's oom_kill (4.13+); v2 memory.events.
    if v1:
        assert st.failcnt == _int(d / "memory.failcnt")
        oom = _keyed(d / "memory.oom_control")
        assert st.oom_kills == (oom or {}).get("oom_kill")
    else:
        assert st.failcnt is None
        assert st.oom_kills == (_keyed(d / "memory.events") or {}).get("oom_kill")

    # pressure: only the cgroup's own PSI file (or its verified cgroup2 twin); never the host's.
    pdir = era.pressure_dir(host)
    if pdir is None or not (pdir / "memory.pressure").exists():
        assert st.pressure is None
    else:
        assert st.pressure is not None
        assert st.pressure.full_avg10 == _psi_full_avg10(pdir / "memory.pressure")

    # tree facts
    # dying descendants are a cgroup2 fact: the cgroup's own, or its verified twin's on a hybrid host
    tree_dir = pdir if v1 else d
    expected_dying = None if tree_dir is None else (_keyed(tree_dir / "cgroup.stat") or {}).get("nr_dying_descendants")
    assert st.nr_dying_descendants == expected_dying
    assert st.inode == fs.identity(era.path)
    assert st.populated == bool(st.nr_procs)


def test_eras_cover_what_the_issue_lists():
    names = " ".join(e.name for e in ERAS)
    for era in ("v1 3.1x", "v1 5.x", "hybrid 6.", "v2 5.", "v2 6.", "cgroup namespace", "v1 inside a container"):
        assert era in names
    assert sample("v1/kernel-3.1x-4.1-aws-docker-container/memory.stat").exists()
