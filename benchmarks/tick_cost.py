"""CPU per tick of the collector and of the detector, per referenced cgroup, against a minimal reference.

The policy references N cgroups (one ruleset: pressure_above and a dry kill_by_memory_size_or_growth, both on
"<prefix>/*"). Each tick, in one process and interleaved so that all three see the same host state:

- collector: workers/collector.py SnapshotTaker.take() with the policy's needs (its event watches emptied, so no
  kernel event source is opened: they cost nothing per tick and are not what is measured);
- detector: policy.engine.Engine.tick() on that snapshot;
- reference: straight Python doing what the collector must do for the same cgroups with no framework: list the
  parent directories to resolve the glob, preads on descriptors kept open (cgroup.procs opened afresh, as the
  collector must, see cgroupfs/keptfiles.py), a scandir of each cgroup directory for descendants, the same
  xattr calls, and the same fields parsed.

N = 10, 100, 1000 are real cgroups in /sys/fs/cgroup/{memory,unified}/pyoomd-tick-<pid>/ (one `sleep` each,
or none with --empty); larger N (default 1000 and 5000) are fixture trees of the real kernel samples
(tests/fixture_trees.py) on tmpfs, which is cheaper to read than kernfs: compare fixture rows with each other.
A second table shows that the cost follows the referenced cgroups, not the size of the tree.

CPU is time.thread_time (user + system, so the kernel's work of generating cgroup files counts), median per
tick after a warm-up, divided by N. The detector's ruleset never fires here (an idle host is far from 80 %
pressure), which is its steady state; ranking candidates happens only when it fires.

Run as root on the test bed: `.venv/bin/python benchmarks/tick_cost.py [--empty] [--scale 1] [--profile]`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import fnmatch
import io
import os
import pstats
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cgroupfs import CgroupFS, Layout, detect_layout
from cgroupfs.keptfiles import LIMIT as KEPT_LIMIT
from policy.engine import Engine, policy_needs
from policy.loader import load_policy_text
from policy.model import Policy
from tests.fixture_trees import V1_CHILD, V2_HYBRID_CHILD, hybrid_host, sample_pids
from workers.collector import SnapshotTaker

CGROUP_ROOT = Path("/sys/fs/cgroup")
HIERARCHIES = ("memory", "unified")
UNLIMITED_FLOOR = 1 << 62
WARMUP = 3  # the first tick opens every kept descriptor; later ones are the steady state measured
REAL_SIZES = (10, 100, 1000)
TICKS = {10: 200, 100: 200, 1000: 50, 5000: 20}  # fewer ticks where each one is long: same wall time roughly
FD_MARGIN = 512  # descriptors left for everything else while the reference keeps its own

POLICY = """
rulesets:
  - name: tick-cost
    detectors:
      - name: pressure
        all:
          - pressure_above: {{cgroup: "{pattern}", resource: memory, threshold: 80, duration: 60}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{pattern}", dry: true}}
"""


# ---- trees -----------------------------------------------------------------------------------------------------


@dataclass
class RealTree:
    """Our cgroups in the memory and unified hierarchies, under one top-level directory of our own.

    Sleepers are started from here and only then moved into their cgroups (our own children, by PID), which is
    much quicker than a preexec_fn for a thousand of them."""

    top: str
    sleepers: bool
    dirs: list[Path] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def mkdir(self, rel: str) -> None:
        for h in HIERARCHIES:
            d = CGROUP_ROOT / h / self.top / rel if rel else CGROUP_ROOT / h / self.top
            if d not in self.dirs:
                d.mkdir()
                self.dirs.append(d)

    def add_cgroup(self, rel: str) -> None:
        self.mkdir(rel)
        if not self.sleepers:
            return
        proc = subprocess.Popen(["sleep", "1000000"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        for h in HIERARCHIES:
            (CGROUP_ROOT / h / self.top / rel / "cgroup.procs").write_text(str(proc.pid))

    def remove(self, keep_top: bool = True) -> None:
        """Our sleepers first (a busy cgroup cannot be removed), then our directories, deepest first."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()  # our own child, not yet reaped: the PID is still ours
            proc.wait()
        self.procs.clear()
        tops = {CGROUP_ROOT / h / self.top for h in HIERARCHIES}
        for d in sorted(self.dirs, key=lambda p: len(p.parts), reverse=True):
            if keep_top and d in tops:
                continue
            _rmdir(d)
        self.dirs = [d for d in self.dirs if d.exists()]


def _rmdir(d: Path) -> None:
    for _ in range(50):  # a killed process leaves its cgroup a moment after it is reaped
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    print(f"warning: could not remove {d}", file=sys.stderr)


@dataclass(frozen=True)
class Place:
    """Where one case's cgroups are: the layout and /proc to read, and the glob's parent in each hierarchy."""

    layout: Layout
    proc: Path
    parent: str  # cgroup path of the parent of the referenced cgroups, "/pyoomd-tick-1/n100"
    glob: str  # the last component of the policy's pattern

    @property
    def pattern(self) -> str:
        return f"{self.parent}/{self.glob}"

    def dir(self, hierarchy: str) -> str:
        h = self.layout.memory if hierarchy == "memory" else self.layout.unified
        assert h is not None
        return h.mount_point + self.parent


def fixture_place(base: Path, n: int) -> Place:
    """N cgroups built from this machine's kernel samples: a v1 memory directory and its cgroup2 twin, the
    same five PIDs in both (so the twin checks out and PSI is read, as on the real tree)."""
    host = hybrid_host(base)
    pids = sample_pids(f"{V1_CHILD}/cgroup.procs")
    parent = "/pyoomd-tick/fixture"
    for i in range(n):
        host.add_cgroup("memory", f"{parent}/c{i:05d}", V1_CHILD, procs=pids)
        host.add_cgroup("unified", f"{parent}/c{i:05d}", V2_HYBRID_CHILD, procs=pids)
    return Place(layout=host.layout, proc=host.proc, parent=parent, glob="*")


# ---- the reference ---------------------------------------------------------------------------------------------


def _pread(fd: int) -> bytes:
    return os.pread(fd, 65536, 0)


def _read_fresh(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _keyed(text: bytes) -> dict[bytes, int]:
    # "key value" lines: splitting the whole text at once is a third of the cost of a loop over lines.
    words = text.split()
    return dict(zip(words[::2], map(int, words[1::2]), strict=True))


def _psi(text: bytes) -> dict[bytes, tuple[float, float, float, int]]:
    out = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        a10, a60, a300, total = (f.partition(b"=")[2] for f in fields)
        out[kind] = (float(a10), float(a60), float(a300), int(total))
    return out


def _meminfo(text: bytes) -> dict[bytes, int]:
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(b":")
        out[key] = int(rest.split()[0]) * 1024
    return out


class Reference:
    """The collector's reads for these cgroups, written out by hand: no layout lookup, no Path, no tick cache.

    Kept files stay open for as long as the descriptor budget lasts (RLIMIT_NOFILE, less what the collector
    may keep at once); past it they are opened each time, and `fresh` counts how many were."""

    MEMORY_FILES = ("memory.stat", "memory.usage_in_bytes", "memory.limit_in_bytes")
    UNIFIED_FILES = ("cgroup.stat", "memory.pressure")

    def __init__(self, place: Place, fd_budget: int) -> None:
        self.mem = place.dir("memory")
        self.uni = place.dir("unified")
        self.proc = str(place.proc)
        self.glob = place.glob
        self.budget = fd_budget
        self.fds: dict[str, int] = {}
        self.fresh = 0

    def read(self, path: str) -> bytes:
        fd = self.fds.get(path)
        if fd is not None:
            return _pread(fd)
        if len(self.fds) >= self.budget:
            self.fresh += 1
            return _read_fresh(path)
        fd = self.fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return _pread(fd)

    def subtree_pids(self, d: str) -> set[int]:
        """cgroup.procs of the directory and of every descendant (v1 lists a cgroup's own processes only)."""
        pids = {int(x) for x in _read_fresh(d + "/cgroup.procs").split()}
        with os.scandir(d) as it:
            subdirs = [e.path for e in it if e.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            pids |= self.subtree_pids(sub)
        return pids

    def names(self) -> list[str]:
        found: set[str] = set()
        for parent in (self.mem, self.uni):
            with os.scandir(parent) as it:
                found.update(e.name for e in it if e.is_dir(follow_symlinks=False))
        return sorted(n for n in found if fnmatch.fnmatchcase(n, self.glob))

    def tick(self) -> list[tuple]:
        meminfo = _meminfo(self.read(self.proc + "/meminfo"))
        host = (meminfo[b"MemTotal"], meminfo.get(b"MemAvailable"), meminfo.get(b"SwapTotal"),
                meminfo.get(b"SwapFree"), _psi(self.read(self.proc + "/pressure/memory")))
        records: list[tuple] = [host]
        for name in self.names():
            records.append(self.cgroup(name))
        return records

    def cgroup(self, name: str) -> tuple:
        m, u = f"{self.mem}/{name}", f"{self.uni}/{name}"
        inode = os.stat(m).st_ino
        members = self.subtree_pids(m)
        stat = _keyed(self.read(m + "/memory.stat"))
        usage = int(self.read(m + "/memory.usage_in_bytes"))
        limit = int(self.read(m + "/memory.limit_in_bytes"))
        dying = pressure = None
        if self.subtree_pids(u) == members:  # the cgroup2 twin speaks for this cgroup only if it holds the same
            dying = _keyed(self.read(u + "/cgroup.stat")).get(b"nr_dying_descendants")
            pressure = _psi(self.read(u + "/memory.pressure"))
        xattrs = {n: os.getxattr(d, n) for d in (u, m) for n in os.listxattr(d)}
        return (name, inode, usage, None if limit >= UNLIMITED_FLOOR else limit, stat.get(b"total_rss"),
                stat.get(b"total_cache"), stat.get(b"total_shmem"), len(members), dying, pressure, xattrs)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


# ---- pyoomd's side ---------------------------------------------------------------------------------------------


class NoRegistrar:
    """No event descriptors are opened (the watches are emptied), so there is nothing to register."""

    def register(self, fd: int, eventmask: int) -> None:
        pass

    def unregister(self, fd: int) -> None:
        pass


@dataclass
class Pyoomd:
    taker: SnapshotTaker
    engine: Engine
    generation: int = 1

    @classmethod
    def for_place(cls, place: Place) -> Pyoomd:
        policy = load_policy_text(POLICY.format(pattern=place.pattern.lstrip("/")), "tick_cost.yaml")
        needs = dataclasses.replace(policy_needs(policy), pressure_watch=(), usage_watch=(), trigger_watch=())
        taker = SnapshotTaker(CgroupFS(place.layout, proc=place.proc), NoRegistrar())
        taker.use(needs)
        return cls(taker=taker, engine=_engine(policy))


def _engine(policy: Policy) -> Engine:
    # As tests/test_engine.py builds it.
    return Engine(policy, generation=1, dry_run=False, dry_run_source="default", protected=frozenset())


# ---- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Costs:
    n: int
    collector: list[int] = field(default_factory=list)  # ns of CPU per tick
    detector: list[int] = field(default_factory=list)
    reference: list[int] = field(default_factory=list)
    kept: int = 0  # descriptors the collector keeps open
    ref_fresh: int = 0  # files the reference had to open per tick, past its descriptor budget

    def per_cgroup_us(self, samples: list[int]) -> float:
        return statistics.median(samples) / self.n / 1000


def measure(place: Place, n: int, ticks: int) -> Costs:
    daemon = Pyoomd.for_place(place)
    ref = Reference(place, _fd_budget())
    costs = Costs(n=n)
    clock = time.thread_time_ns
    try:
        for i in range(WARMUP + ticks):
            ref.fresh = 0
            t0 = clock()
            snapshot = daemon.taker.take(daemon.generation)
            t1 = clock()
            daemon.engine.tick(snapshot, snapshot.monotonic)
            t2 = clock()
            records = ref.tick()
            t3 = clock()
            _check(snapshot.cgroups, records, n)
            if i >= WARMUP:
                costs.collector.append(t1 - t0)
                costs.detector.append(t2 - t1)
                costs.reference.append(t3 - t2)
        costs.kept = len(daemon.taker.fs._kept)
        costs.ref_fresh = ref.fresh
    finally:
        daemon.taker.close()
        ref.close()
    return costs


def _check(cgroups: list, records: list[tuple], n: int) -> None:
    """Both sides saw every referenced cgroup with its pressure (the twin verified): a benchmark that silently
    measured a short cut would be worse than none."""
    if len(cgroups) != n or len(records) != n + 1:
        raise RuntimeError(f"expected {n} cgroups; collector saw {len(cgroups)}, reference {len(records) - 1}")
    if any(cg.pressure is None for cg in cgroups) or any(r[9] is None for r in records[1:]):
        raise RuntimeError("a cgroup without pressure: the cgroup2 twin did not check out")


def _fd_budget() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft - KEPT_LIMIT - FD_MARGIN, 0)


# ---- which files each side touches -----------------------------------------------------------------------------

TRACED = ("open", "pread", "read", "stat", "scandir", "listxattr", "getxattr")


@contextlib.contextmanager
def traced(counts: Counter, name_of: Callable[[str], str], fd_paths: dict[int, str]) -> Iterator[None]:
    """Count the os calls both sides make, by call and by the file's path with the cgroup name generalised.
    `fd_paths` outlives one trace: a pread names the file its descriptor was opened on, maybe ticks before."""
    originals = {op: getattr(os, op) for op in TRACED}

    def wrap(op: str, fn: Callable) -> Callable:
        def call(target, *args, **kwargs):
            path = fd_paths.get(target, "?") if isinstance(target, int) else os.fspath(target)
            counts[(op, name_of(str(path)))] += 1
            result = fn(target, *args, **kwargs)
            if op == "open":
                fd_paths[result] = str(path)
            return result
        return call

    for op, fn in originals.items():
        setattr(os, op, wrap(op, fn))
    try:
        yield
    finally:
        for op, fn in originals.items():
            setattr(os, op, fn)


def path_namer(place: Place, top: str) -> Callable[[str], str]:
    mounts = sorted(((h.mount_point, h.controllers[0] if h.controllers else "unified")
                     for h in place.layout.hierarchies), key=lambda m: -len(m[0]))
    proc = str(place.proc)
    cgroup_name = re.compile(r"/(c\d{4,5}|ref-\d+)(?=/|$)")

    def name_of(path: str) -> str:
        if path.startswith(proc + "/"):
            return "/proc" + path[len(proc):]
        for mount, label in mounts:
            if path == mount or path.startswith(mount + "/"):
                path = f"[{label}]" + path[len(mount):]
                break
        return cgroup_name.sub("/<cg>", path.replace(top, "<top>"))

    return name_of


def trace_one_tick(place: Place, top: str) -> tuple[Counter, Counter]:
    """The calls of one steady-state tick of each side (the tick after the one that opened the descriptors)."""
    name_of = path_namer(place, top)
    daemon = Pyoomd.for_place(place)
    ref = Reference(place, _fd_budget())
    theirs: Counter = Counter()
    ours: Counter = Counter()
    fd_paths: dict[int, str] = {}
    try:
        with traced(Counter(), name_of, fd_paths):  # the first tick: opens what later ticks only pread
            daemon.taker.take(1)
            ref.tick()
        with traced(theirs, name_of, fd_paths):
            daemon.taker.take(1)
        with traced(ours, name_of, fd_paths):
            ref.tick()
    finally:
        daemon.taker.close()
        ref.close()
    return theirs, ours


def print_trace(theirs: Counter, ours: Counter, n: int) -> None:
    print(f"Calls in one steady-state tick, N = {n} (per cgroup where the path names one, else per tick)")
    print(f"{'call':10} {'path':52} {'collector':>9} {'reference':>9}")
    for op, path in sorted(set(theirs) | set(ours), key=lambda k: (TRACED.index(k[0]), k[1])):
        per = n if "<cg>" in path else 1
        a, b = theirs.get((op, path), 0) / per, ours.get((op, path), 0) / per
        print(f"{op:10} {path:52} {a:>9.3g} {b:>9.3g}")
    print()


# ---- the tables ------------------------------------------------------------------------------------------------


def print_costs_header(first: str) -> None:
    print(f"{first:34} {'N':>5} {'ticks':>5} {'collector':>9} {'detector':>9} {'pyoomd':>9} {'reference':>9} "
          f"{'pyoomd/ref':>10} {'coll/ref':>8} {'kept fds':>8} {'ref fresh':>9}")


def print_costs(label: str, costs: Costs) -> None:
    c = costs.per_cgroup_us(costs.collector)
    d = costs.per_cgroup_us(costs.detector)
    total = costs.per_cgroup_us([a + b for a, b in zip(costs.collector, costs.detector, strict=True)])
    r = costs.per_cgroup_us(costs.reference)
    print(f"{label:34} {costs.n:>5} {len(costs.collector):>5} {c:>9.1f} {d:>9.1f} {total:>9.1f} {r:>9.1f} "
          f"{total / r:>10.2f} {c / r:>8.2f} {costs.kept:>8} {costs.ref_fresh:>9}", flush=True)


def real_place(layout: Layout, top: str, parent_rel: str, glob: str = "*") -> Place:
    return Place(layout=layout, proc=Path("/proc"), parent=f"/{top}/{parent_rel}", glob=glob)


def build_real(tree: RealTree, parent_rel: str, names: list[str]) -> None:
    tree.mkdir(parent_rel)
    for name in names:
        tree.add_cgroup(f"{parent_rel}/{name}")


def table_sizes(tree: RealTree, layout: Layout, fixture_sizes: list[int], scale: float, trace: bool) -> None:
    print("Per referenced cgroup, CPU us per tick (median); pyoomd = collector + detector")
    print_costs_header("tree")
    for n in REAL_SIZES:
        build_real(tree, f"n{n}", [f"c{i:04d}" for i in range(n)])
        place = real_place(layout, tree.top, f"n{n}")
        if trace and n == REAL_SIZES[0]:
            traces = trace_one_tick(place, tree.top)
        print_costs("real" + (", one sleep each" if tree.sleepers else ", empty"), measure(place, n, _ticks(n, scale)))
        tree.remove()
    for n in fixture_sizes:
        with tempfile.TemporaryDirectory(prefix="pyoomd-tick-", dir=_tmpfs()) as tmp:
            print_costs("fixture (kernel samples, tmpfs)", measure(fixture_place(Path(tmp), n), n, _ticks(n, scale)))
    print()
    if trace:
        print_trace(*traces, REAL_SIZES[0])


def table_tree_size(tree: RealTree, layout: Layout, scale: float) -> None:
    n, extra = 100, 1000
    refs = [f"c{i:04d}" for i in range(n)]
    print(f"Cost follows the referenced cgroups, not the tree: {n} referenced, with and without {extra} others")
    print_costs_header("tree")
    build_real(tree, "ref", refs)
    print_costs(f"{n} referenced alone", measure(real_place(layout, tree.top, "ref"), n, _ticks(n, scale)))
    build_real(tree, "other", [f"c{i:04d}" for i in range(extra)])
    print_costs(f"+{extra} under a second prefix", measure(real_place(layout, tree.top, "ref"), n, _ticks(n, scale)))
    tree.remove()
    # Siblings in the very directory the glob lists: the one place where unreferenced cgroups cost something.
    build_real(tree, "mix", [f"ref-{i:04d}" for i in range(n)] + [f"other-{i:04d}" for i in range(extra)])
    place = real_place(layout, tree.top, "mix", glob="ref-*")
    print_costs(f"+{extra} siblings, glob ref-*", measure(place, n, _ticks(n, scale)))
    tree.remove()
    print()


def profile_collector(tree: RealTree, layout: Layout, n: int, ticks: int = 5) -> None:
    build_real(tree, f"prof{n}", [f"c{i:04d}" for i in range(n)])
    daemon = Pyoomd.for_place(real_place(layout, tree.top, f"prof{n}"))
    try:
        daemon.taker.take(1)  # opens the kept descriptors
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(ticks):
            daemon.taker.take(1)
        profiler.disable()
    finally:
        daemon.taker.close()
        tree.remove()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    print(f"cProfile of {ticks} collector ticks, N = {n} real cgroups, by own time:")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    print()


def _ticks(n: int, scale: float) -> int:
    return max(int(TICKS.get(n, 20) * scale), 5)


def _tmpfs() -> str | None:
    # Fixture trees on tmpfs: no disk in what is measured.
    return "/dev/shm" if os.path.isdir("/dev/shm") else None


def _raise_on_term(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that removes our cgroups


def print_load() -> None:
    # Other work on the host shows in latencies (and in caches) though not in this process's CPU time.
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at start\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--empty", action="store_true", help="real cgroups without a sleep in them")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the number of ticks measured")
    parser.add_argument("--fixture-sizes", default="1000,5000", help="N for fixture trees, comma-separated")
    parser.add_argument("--no-trace", action="store_true", help="skip the table of calls per tick")
    parser.add_argument("--profile", action="store_true", help="cProfile collector ticks at N = 1000")
    args = parser.parse_args()
    if os.geteuid() != 0 or not all((CGROUP_ROOT / h / "cgroup.procs").exists() for h in HIERARCHIES):
        sys.exit("needs root and /sys/fs/cgroup/{memory,unified}")
    signal.signal(signal.SIGTERM, _raise_on_term)
    signal.signal(signal.SIGHUP, _raise_on_term)
    layout = detect_layout()
    tree = RealTree(top=f"pyoomd-tick-{os.getpid()}", sleepers=not args.empty)
    fixture_sizes = [int(x) for x in args.fixture_sizes.split(",") if x]
    try:
        print_load()
        tree.mkdir("")
        table_sizes(tree, layout, fixture_sizes, args.scale, trace=not args.no_trace)
        table_tree_size(tree, layout, args.scale)
        if args.profile:
            profile_collector(tree, layout, 1000)
    finally:
        tree.remove(keep_top=False)


if __name__ == "__main__":
    main()
