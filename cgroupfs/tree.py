"""`CgroupFS`: one interface over every layout. A cgroup is named by its path; this class finds its files.

On v1 and hybrid hosts every hierarchy keeps its own tree, so a path is looked up per hierarchy. Memory figures
come from the memory controller's directory (the "primary" directory of a path); a twin in another hierarchy
(the cgroup2 directory for PSI) is used only after checking that it holds the same processes.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from cgroupfs.figures import (
    FIELD_GROUPS,
    root_from_meminfo,
    v1_blkio_total,
    v1_memory,
    v2_io_totals,
    v2_memory,
    v2_tree,
)
from cgroupfs.keptfiles import KeptFiles
from cgroupfs.layout import Hierarchy, Layout
from cgroupfs.listing import Entry, Listings, list_subdirectories
from cgroupfs.parse import (
    parse_flat_keyed,
    parse_meminfo,
    parse_pids,
    parse_pressure,
    parse_proc_cgroup,
)
from cgroupfs.quiet import QuietPressure
from cgroupfs.stats import CgroupStats, HostStats, Pressure

log = logging.getLogger("pyoomd.cgroupfs")

FIELDS_ALL = FIELD_GROUPS
PRESSURE_ONLY = frozenset({"pressure"})
TWIN_RECHECK = 5.0  # seconds a twin verdict is trusted by the collector before both member lists are read again
_GLOB_CHARS = frozenset("*?[")


class CgroupPathError(ValueError):
    pass


def normalize(path: str) -> str:
    """'system.slice/x' and '/system.slice/x/' both become '/system.slice/x'; '..' is refused."""
    parts = [p for p in path.strip().split("/") if p and p != "."]
    if any(p == ".." for p in parts):
        raise CgroupPathError(f"cgroup path {path!r} may not contain '..'")
    return "/" + "/".join(parts)


def is_under(path: str, ancestor: str) -> bool:
    """True when `path` is `ancestor` or lies below it."""
    return ancestor == "/" or path == ancestor or path.startswith(ancestor + "/")


def _read_file(p: str | Path) -> str:
    with open(p) as f:
        return f.read()


_MISSING = object()


class DirInfo(NamedTuple):
    is_dir: bool
    inode: int
    nlink: int | None  # None when it came from a directory listing, which does not say


def _dir_str(h: Hierarchy, path: str) -> str:
    """Hierarchy.dir_of as a string: no pathlib object on the hot path."""
    return h.mount_point if path == "/" else h.mount_point + path


class CgroupFS:
    def __init__(self, layout: Layout, proc: str | Path = "/proc", clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.layout = layout
        self.proc = Path(proc)
        self._clock = clock
        # Hierarchies a policy path is looked up in, in order of preference for memory accounting.
        self._lookup: list[Hierarchy] = []
        for h in (layout.memory, layout.unified):
            if h is not None and h not in self._lookup:
                self._lookup.append(h)
        self._page_size = os.sysconf("SC_PAGE_SIZE")
        self._tick_cache: dict[str, str] | None = None
        # Within a tick, what a record's parts ask again and again: a path's directories, a directory's members,
        # a twin's verdict. Each is found once a tick (the members walk alone was done four times per cgroup).
        self._memo: dict[tuple, object] | None = None
        # (path, hierarchy) -> (recheck after, primary directory's inode, verdict): see _recent_twin
        self._twin_verdicts: dict[tuple[str, str], tuple[float, int, Path | None]] = {}
        self._bad_logged: set[tuple[str, str, str]] = set()
        self._paths: dict[str, Path] = {}
        self._kept = KeptFiles()
        self._listings: Listings | None = None  # made at the first tick: outside ticks, directories are listed afresh
        self._quiet = QuietPressure()  # pressure records that stand in for a reading while the host has not stalled
        self._tick_started = 0.0

    @contextlib.contextmanager
    def tick(self) -> Iterator[CgroupFS]:
        """Within a tick each file is read at most once (a parent's walk and its children's records share
        their cgroup.procs), through descriptors kept open from tick to tick; the next tick reads afresh."""
        self._tick_cache = {}
        self._memo = {}
        self._tick_started = self._clock()
        if self._listings is None:
            self._listings = Listings()
        self._listings.refresh()
        try:
            yield self
        finally:
            self._tick_cache = None
            self._memo = None
            self._kept.sweep()
            self._quiet.end_tick()

    def _read(self, p: str | Path) -> str:
        cache = self._tick_cache
        if cache is None:
            return _read_file(p)  # outside a tick (the actuator): always a fresh open
        key = p if isinstance(p, str) else os.fspath(p)
        text = cache.get(key)
        if text is None:
            text = cache[key] = self._kept.read(key)
        return text

    def _stat(self, d: str) -> DirInfo | None:
        """What a directory is, once a tick: from a kept listing that holds it, else from a stat (existence,
        inode and link count from the one call)."""
        memo = self._memo
        key = ("stat", d)
        if memo is not None:
            found = memo.get(key, _MISSING)
            if found is not _MISSING:
                return found  # type: ignore[return-value]
        listed = self._listings.entry(d) if memo is not None and self._listings is not None else None
        if listed is not None:
            # A glob's listing saw it, and inotify has reported no change in its parent since: no call of its own.
            info: DirInfo | None = DirInfo(True, listed.inode, None)
        else:
            try:
                st = os.stat(d)
                info = DirInfo(stat.S_ISDIR(st.st_mode), st.st_ino, st.st_nlink)
            except OSError:
                info = None
        if memo is not None:
            memo[key] = info
        return info

    def _path_of(self, d: str) -> Path:
        """One Path object per directory, kept from tick to tick: making one costs more than reading a file."""
        p = self._paths.get(d)
        if p is None:
            if len(self._paths) > 50_000:  # cgroups come and go: start afresh rather than grow
                self._paths.clear()
            p = self._paths[d] = Path(d)
        return p

    def _is_dir(self, d: str) -> bool:
        st = self._stat(d)
        return st is not None and st.is_dir

    def close(self) -> None:
        self._kept.close()
        if self._listings is not None:
            self._listings.close()

    # ---- finding cgroups -------------------------------------------------------------------------------------

    def locate(self, path: str) -> tuple[Hierarchy, Path] | None:
        """The primary directory of `path`: its memory cgroup, else its cgroup2 directory."""
        memo = self._memo
        if memo is not None:
            found = memo.get(("locate", path), _MISSING)
            if found is not _MISSING:
                return found  # type: ignore[return-value]
        out = None
        for h in self._lookup:
            d = _dir_str(h, path)
            if self._is_dir(d):
                out = (h, self._path_of(d))
                break
        if memo is not None:
            memo[("locate", path)] = out
        return out

    def resolve(self, patterns: Iterable[str]) -> list[str]:
        """Every existing cgroup matching any pattern (globs per path component), sorted, no duplicates."""
        found: set[str] = set()
        for pattern in patterns:
            parts = [p for p in normalize(pattern).split("/") if p]
            for h in self._lookup:
                found.update(rel or "/" for rel in self._glob(h.mount_point, parts))
        return sorted(found)

    def _glob(self, base: str, parts: list[str]) -> list[str]:
        """The paths below mount point `base` ("/a/b", "" for its root) that match `parts` one by one."""
        results = [""]
        for part in parts:
            nxt: list[str] = []
            for rel in results:
                d = base + rel
                if _GLOB_CHARS & set(part):
                    try:
                        nxt.extend(rel + "/" + e.name for e in self._matching(d, part))
                    except OSError:
                        continue
                elif self._is_dir(d + "/" + part):
                    nxt.append(rel + "/" + part)
            results = nxt
        return results

    def _matching(self, d: str, glob: str) -> list[Entry]:
        if self._memo is not None and self._listings is not None:
            return self._listings.matching(d, glob)  # in a tick: kept while inotify says nothing changed
        return [e for e in list_subdirectories(d) if fnmatch.fnmatchcase(e.name, glob)]

    def identity(self, path: str) -> int | None:
        loc = self.locate(path)
        if loc is None:
            return None
        try:
            return os.stat(loc[1]).st_ino
        except FileNotFoundError:
            return None

    # ---- members ---------------------------------------------------------------------------------------------

    def _members_of_dir(self, d: str | Path) -> set[int]:
        """Every process in the subtree of directory `d`. Within a tick each directory is listed once, and a
        parent's walk leaves its children's answers behind for their own records."""
        return set(self._subtree(d if isinstance(d, str) else os.fspath(d)))

    def _subtree(self, d: str) -> frozenset[int]:
        memo = self._memo
        if memo is not None:
            found = memo.get(("members", d))
            if found is not None:
                return found  # type: ignore[return-value]
        try:
            pids = set(parse_pids(self._read(d + "/cgroup.procs")))
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV, errno.ENOTDIR):
                raise
            pids = set()
        st = self._stat(d)
        if st is not None and st.nlink == 2:
            # A directory's link count is 2 plus its subdirectories on cgroupfs (kernfs), tmpfs and ext4: a
            # leaf needs no listing (a filesystem that does not count them, as btrfs, says 1 and is listed).
            children: list[str] = []
        else:
            try:
                with os.scandir(d) as entries:
                    children = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError:
                children = []  # gone meanwhile: what it held is gone with it
        for child in children:
            pids |= self._subtree(child)
        out = frozenset(pids)
        if memo is not None:
            memo[("members", d)] = out
        return out

    def twin(self, path: str, which: str) -> Path | None:
        """The directory of `path` in another hierarchy ("unified", or a v1 controller such as "freezer"),
        only if it exists and holds exactly the processes the path's primary directory holds.

        The primary directory is its own twin (a v2 host, or a path that exists only in cgroup2)."""
        memo = self._memo
        if memo is None:
            return self._twin(path, which)  # outside a tick (the actuator): always checked afresh
        found = memo.get(("twin", path, which), _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        out = self._recent_twin(path, which)
        memo[("twin", path, which)] = out
        return out

    def _recent_twin(self, path: str, which: str) -> Path | None:
        """The collector's view: a verdict is checked again once TWIN_RECHECK has passed, or at once when the
        path's primary directory is not the one it was (recreated: another inode; a twin recreated on its own
        shows in its files' reads, which fail with ENODEV and reopen). Reading both cgroup.procs of every
        cgroup every tick was most of an idle tick; the actuator, which acts on the answer, always checks
        afresh."""
        loc = self.locate(path)
        if loc is None:
            return None
        primary = self._stat(os.fspath(loc[1]))
        identity = primary.inode if primary else 0
        now = self._clock()
        cached = self._twin_verdicts.get((path, which))
        if cached is not None and cached[0] > now and cached[1] == identity:
            return cached[2]
        verdict = self._twin(path, which)
        if len(self._twin_verdicts) > 50_000:  # cgroups come and go: start afresh rather than grow
            self._twin_verdicts.clear()
        self._twin_verdicts[(path, which)] = (now + TWIN_RECHECK, identity, verdict)
        return verdict

    def _twin(self, path: str, which: str) -> Path | None:
        loc = self.locate(path)
        h = self.layout.unified if which == "unified" else self.layout.v1(which)
        if loc is None or h is None:
            return None
        if h is loc[0]:
            return loc[1]
        d = _dir_str(h, path)
        if not self._is_dir(d):
            return None
        try:
            return Path(d) if self._subtree(d) == self._subtree(os.fspath(loc[1])) else None
        except FileNotFoundError:
            return None

    def pressure_file(self, path: str, resource: str = "memory") -> Path | None:
        """The PSI file that speaks for `path` alone: its own (or its verified cgroup2 twin's) RESOURCE.pressure;
        for the root, the cgroup2 root's or /proc/pressure/RESOURCE. None where the host has none."""
        twin = self.layout.unified
        name = f"{resource}.pressure"
        if path == "/":
            if twin is not None and (twin.dir_of("/") / name).exists():
                return twin.dir_of("/") / name
            host_psi = self.proc / "pressure" / resource
            loc = self.locate("/")
            return host_psi if loc is not None and loc[0].root == "/" and host_psi.exists() else None
        d = self.twin(path, "unified")
        if d is None or not (d / name).exists():
            return None
        return d / name

    def v1_memory_dir(self, path: str) -> Path | None:
        """The v1 memory cgroup directory of `path`, for v1 notifications (vmpressure, thresholds)."""
        h = self.layout.v1("memory")
        if h is None:
            return None
        d = h.dir_of(path)
        return d if d.is_dir() else None

    def members(self, path: str) -> set[int]:
        """Every process in the subtree of `path` (in its primary hierarchy)."""
        loc = self.locate(path)
        return set() if loc is None else self._members_of_dir(loc[1])

    def _hierarchy_key(self, h: Hierarchy) -> str:
        return "" if h.version == 2 else h.controllers[0]

    def _hierarchy_of_key(self, key: str) -> Hierarchy | None:
        return self.layout.unified if key == "" else self.layout.v1(key)

    @staticmethod
    def _in_mount(h: Hierarchy, proc_path: str) -> str | None:
        """A /proc/PID/cgroup path as a path within mount `h`, or None if the mount does not show it.

        /proc paths are relative to the reader's cgroup namespace; the mount shows the subtree at its root
        field (a container's own cgroup, or "/../.." seen from inside another namespace)."""
        root = h.root.rstrip("/")
        if not root:
            return proc_path
        if proc_path == root:
            return "/"
        if proc_path.startswith(root + "/"):
            return proc_path[len(root):]
        return None

    def cgroups_of_pid(self, pid: int) -> dict[str, str]:
        """The pid's cgroup path in every hierarchy, keyed by controller ("" for cgroup2)."""
        return parse_proc_cgroup(self._read(self.proc / str(pid) / "cgroup"))

    def pid_in(self, pid: int, path: str) -> bool:
        """Is `pid` inside the subtree of `path`, as seen in the path's primary hierarchy?"""
        loc = self.locate(path)
        if loc is None:
            return False
        try:
            where = self.cgroups_of_pid(pid).get(self._hierarchy_key(loc[0]))
        except OSError:
            return False
        if where is None:
            return False
        inside = self._in_mount(loc[0], where)
        return inside is not None and is_under(inside, path)

    def own_paths(self, pid: int) -> set[str]:
        """The cgroups `pid` sits in across all hierarchies, with all their ancestors."""
        out = {"/"}
        try:
            entries = self.cgroups_of_pid(pid)
        except OSError:
            return out
        for key, proc_path in entries.items():
            h = self._hierarchy_of_key(key)
            inside = self._in_mount(h, proc_path) if h is not None else None
            if inside is None:
                continue  # a hierarchy not mounted here, or a cgroup outside what the mount shows
            try:
                p = normalize(inside)
            except CgroupPathError:
                continue
            while p != "/":
                out.add(p)
                p = p.rsplit("/", 1)[0] or "/"
        return out

    # ---- stats -----------------------------------------------------------------------------------------------

    def read_host(self) -> HostStats:
        try:
            info = parse_meminfo(self._read(self.proc / "meminfo"))
        except (ValueError, UnicodeDecodeError) as e:
            self._bad_content("/proc/meminfo", "host memory", e)
            info = {}
        try:
            pressure: Pressure | None = parse_pressure(self._read(self.proc / "pressure" / "memory"))
        except OSError:
            pressure = None  # kernel without PSI (before 4.20, or psi=0)
        except (ValueError, UnicodeDecodeError) as e:
            self._bad_content("/proc/pressure/memory", "host pressure", e)
            pressure = None
        return HostStats(
            mem_total=info.get("MemTotal", 0),
            mem_available=info.get("MemAvailable", info.get("MemFree", 0)),
            swap_total=info.get("SwapTotal", 0),
            swap_free=info.get("SwapFree", 0),
            pressure=pressure,
        )

    def read_stats(
        self, path: str, fields: frozenset[str] = FIELDS_ALL, host: HostStats | None = None
    ) -> CgroupStats | None:
        """One record for `path` with the field groups asked for, or None if it does not exist (any more).

        A cgroup removed while we read it is simply absent from this tick: no error, no log."""
        host_stall = None
        if fields == PRESSURE_ONLY and self._memo is not None and path != "/" and host is not None \
                and host.pressure is not None:
            host_stall = host.pressure.some_total
            reading = self._quiet.reusable(path, host_stall, self._tick_started)
            if reading is not None:
                st = self._stat(reading.directory)  # from its kept listing: no call of its own
                if st is not None and st.inode == reading.record.inode:
                    self._kept.touch(reading.source)  # its descriptor stays open for when it is read again
                    return reading.record
        loc = self.locate(path)
        if loc is None:
            return None
        hier, d = loc

        def part(group: str, compute: Callable[[], dict]) -> dict:
            # A file the kernel never writes so (garbage, not UTF-8) costs that group's figures, which are then
            # absent, never made up; the record and the tick go on.
            try:
                return compute()
            except (ValueError, UnicodeDecodeError, IndexError) as e:
                self._bad_content(path, group, e)
                return {}

        try:
            st = self._stat(os.fspath(d))
            if st is None:
                return None  # removed since it was located
            inode = st.inode
            figures: dict = {}
            if fields & {"memory", "swap", "reclaim", "oom"}:
                figures.update(part("memory", lambda: self._memory_figures(hier, d, path, fields)))
            if "tree" in fields:
                figures.update(part("tree", lambda: self._tree(hier, d, path)))
            if "pressure" in fields:
                figures.update(part("pressure", lambda: {"pressure": self._pressure(hier, path, host)}))
            if "io" in fields:
                figures.update(part("io", lambda: self._io(hier, path)))
            if "xattrs" in fields:
                figures["xattrs"] = self.xattrs(path)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENODEV):
                return None  # removed while we read it
            raise
        record = CgroupStats(path=path, inode=inode, **figures)
        if host_stall is not None:
            twin = self.twin(path, "unified")  # the one its pressure was read from (known this tick)
            self._quiet.remember(record, os.fspath(d), f"{twin}/memory.pressure" if twin is not None else None,
                                 host_stall, self._tick_started)
        return record

    def _tree(self, hier: Hierarchy, d: Path, path: str) -> dict:
        members = self._subtree(os.fspath(d))
        out: dict = {"nr_procs": len(members), "populated": bool(members)}  # of the whole subtree, as the kernel
        # Dying descendants are a cgroup2 fact; a hybrid host has them in the verified twin.
        tree_dir = d if hier.version == 2 else self.twin(path, "unified")
        if tree_dir is not None:
            out.update(v2_tree(self._read, tree_dir))
        return out

    def _bad_content(self, path: str, group: str, error: Exception) -> None:
        key = (path, group, type(error).__name__)
        if key not in self._bad_logged and len(self._bad_logged) < 1000:
            self._bad_logged.add(key)
            log.warning("%s: cannot read its %s figures (%s: %s); they are left out", path, group,
                        type(error).__name__, error)

    def _memory_figures(self, hier: Hierarchy, d: Path, path: str, fields: frozenset[str]) -> dict:
        if hier is self.layout.memory and hier.version == 1:
            return v1_memory(self._read, d, fields)
        if hier.version == 2 and (d / "memory.current").exists():
            return v2_memory(self._read, d, fields)
        if path == "/" and hier.version == 2:
            vmstat = None
            if "reclaim" in fields:
                with contextlib.suppress(FileNotFoundError):
                    vmstat = parse_flat_keyed(self._read(self.proc / "vmstat"))
            return root_from_meminfo(parse_meminfo(self._read(self.proc / "meminfo")), fields, vmstat)
        # No memory cgroup of its own (a cgroup2 directory on a hybrid host): the members' resident memory
        # stands in, marked as an estimate.
        if "memory" in fields:
            return {"usage": self._rss_sum(self._subtree(os.fspath(d))), "memory_estimated": True}
        return {}

    def _rss_sum(self, pids: set[int]) -> int:
        total = 0
        for pid in pids:
            try:
                total += int(self._read(self.proc / str(pid) / "statm").split()[1]) * self._page_size
            except (OSError, IndexError, ValueError):
                continue
        return total

    def _pressure(self, hier: Hierarchy, path: str, host: HostStats | None, resource: str = "memory"
                  ) -> Pressure | None:
        twin = self.layout.unified
        if path == "/":
            # The root of what we see. Its own memory.pressure, where the kernel has one, is right both on the
            # host (system-wide) and in a cgroup namespace (the namespace's root). Host PSI stands in only for
            # the true root: a mount whose root is "/" (not a container's bind-mounted subtree).
            if twin is not None and (twin.dir_of("/") / f"{resource}.pressure").exists():
                return self._own_pressure(twin.dir_of("/"), resource)
            if hier.root == "/":
                if resource == "memory":
                    return host.pressure if host is not None else self.read_host().pressure
                return self._own_pressure(self.proc / "pressure", resource, bare=True)
            return None
        if twin is None:
            return None  # pure v1: no per-cgroup PSI
        # Trust the cgroup2 twin only if it holds exactly the processes the primary directory holds.
        td = self.twin(path, "unified")
        return None if td is None else self._own_pressure(td, resource)

    def _own_pressure(self, td: str | Path, resource: str = "memory", bare: bool = False) -> Pressure | None:
        try:
            return parse_pressure(self._read(f"{td}/{resource if bare else resource + '.pressure'}"))
        except (FileNotFoundError, ValueError):
            return None
        except OSError as e:
            if e.errno == errno.EOPNOTSUPP:  # psi disabled for this cgroup
                return None
            raise

    def _io(self, hier: Hierarchy, path: str) -> dict:
        out: dict = {"io_pressure": self._pressure(hier, path, None, "io")}
        unified = self.twin(path, "unified")
        if unified is not None and (unified / "io.stat").exists():
            out.update(v2_io_totals(self._read(unified / "io.stat")))
            return out
        blkio = self.twin(path, "blkio")
        if blkio is not None:
            with contextlib.suppress(FileNotFoundError):
                out["io_bytes"] = v1_blkio_total(self._read(blkio / "blkio.throttle.io_service_bytes_recursive"))
                out["io_ops"] = v1_blkio_total(self._read(blkio / "blkio.throttle.io_serviced_recursive"))
        return out

    XATTR_HIERARCHIES = ("name=systemd",)

    def xattrs(self, path: str) -> dict[str, str]:
        """The cgroup's extended attributes, from its primary directory and, where systemd keeps them, its
        cgroup2 and name=systemd directories (the primary's win). trusted.* needs CAP_SYS_ADMIN to read."""
        dirs: list[str] = []
        loc = self.locate(path)
        if loc is not None:
            dirs.append(os.fspath(loc[1]))
        for h in (self.layout.unified, *(self.layout.v1(c) for c in self.XATTR_HIERARCHIES)):
            if h is not None:
                d = _dir_str(h, path)
                if d not in dirs and self._is_dir(d):
                    dirs.append(d)
        out: dict[str, str] = {}
        for d in reversed(dirs):
            try:
                names = os.listxattr(d)
            except OSError:
                continue
            for name in names:
                with contextlib.suppress(OSError):
                    out[name] = os.getxattr(d, name).decode(errors="replace")
        return out
