"""Fuzz targets: every parser of outside input, what to throw at it, and the contract it must keep.

Shared by the property tests (tests/test_fuzz_*.py, a few hundred examples per target in every test run) and by
the long pass (benchmarks/fuzz.py, tens of thousands). A `Target` pairs a hypothesis strategy of inputs with
`check(input)`, which runs the parser and returns ACCEPTED or TYPED (the parser's own documented error), after
asserting what a user relies on in either case. Anything else escaping `check` is a bug in the parser: an
AssertionError is a broken contract (an error without a position, a frame dropped but not counted, an accepted
policy the supervisor could not send), any other exception one the parser let through.

Inputs start from real ones (the kernel samples in tests/fixtures/kernel-samples, the shipped policy, the docs'
policies, oomd's desktop.json, valid frames of every message type) and are mutated at the byte, line, token and
structure level; crafted inputs add what random mutation rarely reaches: YAML alias bombs, deep nesting, huge
numbers, frames nested past msgspec's depth limit.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from cgroupfs import figures
from cgroupfs.layout import Layout, LayoutError, layout_from_mountinfo, parse_mountinfo
from cgroupfs.parse import (
    UNLIMITED_FLOOR,
    parse_flat_keyed,
    parse_limit,
    parse_meminfo,
    parse_pids,
    parse_pressure,
    parse_proc_cgroup,
)
from cgroupfs.stats import Pressure
from ipc.codec import Channel
from ipc.messages import CommandMessage, ControlMessage, PolicyUpdate, Snapshot
from policy.loader import PolicyInvalid, load_drop_in_text, load_policy, load_policy_text
from policy.model import DropIn, Policy
from policy.oomd_json import blank_comments
from policy.plugins.registry import plugins_of

ACCEPTED = "accepted"
TYPED = "typed error"

ROOT = Path(__file__).resolve().parent.parent
KERNEL_SAMPLES = ROOT / "tests" / "fixtures" / "kernel-samples"
SHARED_SAMPLES = ROOT.parent / "shared" / "fixtures"  # the same samples, where the workplace provides them


@dataclass(frozen=True)
class Target:
    name: str
    inputs: st.SearchStrategy[Any]
    check: Callable[[Any], str]  # ACCEPTED or TYPED; raises on a broken contract
    what: str  # one line for the fuzz table's legend


def ci_settings(max_examples: int) -> settings:
    """For the property tests: the same examples on every run and machine (derandomize, no example database),
    no per-example deadline (a crafted input may take a second: the budget is for the whole set), and no health
    check against the large inputs that are the point here."""
    return settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


# ---- seeds -----------------------------------------------------------------------------------------------------


@cache
def _sample_files() -> tuple[tuple[str, str], ...]:
    """(path relative to the samples root, text) of every sample, once per distinct content."""
    seen: dict[str, str] = {}
    for root in (KERNEL_SAMPLES, SHARED_SAMPLES):
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix != ".md":
                text = p.read_text(errors="surrogateescape")
                seen.setdefault(text, str(p.relative_to(root)))
    return tuple(sorted((rel, text) for text, rel in seen.items()))


def samples(match: Callable[[str], bool]) -> list[str]:
    return [text for rel, text in _sample_files() if match(rel)]


def _named(*names: str) -> Callable[[str], bool]:
    return lambda rel: Path(rel).name in names


def _under(prefix: str) -> Callable[[str], bool]:
    return lambda rel: rel.startswith(prefix)


# blkio.throttle.*_recursive as v1 prints it (no sample in the fixtures: this is its format, one line per device
# and operation, then the kernel's own Total).
BLKIO_SEEDS = [
    "8:0 Read 4096\n8:0 Write 12288\n8:0 Sync 16384\n8:0 Async 0\n8:0 Discard 0\n8:0 Total 16384\nTotal 16384\n",
    "Total 0\n",
    "253:0 Read 1\n253:0 Write 2\n253:0 Sync 3\n253:0 Async 0\n253:0 Total 3\n8:0 Read 5\n8:0 Total 5\nTotal 8\n",
]

# ---- text mutation ---------------------------------------------------------------------------------------------

# Numbers a kernel never prints but a corrupted, truncated or hostile file may hold, and what Python's int() and
# float() treat specially (digit-group underscores, other scripts' digits, the 4300-digit limit, inf and nan).
NASTY_NUMBERS = [
    "0", "-1", "-0", "+7", "18446744073709551615", "18446744073709551616", "-9223372036854775808", "9" * 40,
    "9" * 5000, "1e400", "-1e400", "inf", "-inf", "nan", "NaN", "1.5", "-2.5", ".", "0x1f", "1_000", "\u0661\u0662",
    "\uff11\uff12", "max", "", "=", "1e-400", "4.2e1",
]
NASTY_TEXT = [
    "\x00", "\ufeff", "\udcff", "\udc80\udcfe", "\r", "\r\n", "\x85", "\u2028", "\t", " ", "\n\n", ":", "=", "\\",
    "\\999", "\\08", "\\0", "-", " - ", "(", ")", "::", "0::/", "some", "full", "avg10=", "total=", "kB", "Total",
    "\\040", "\u00e9", "\U0001f600",
]
_TOKEN_SPLIT = re.compile(r"(\s+|=|:|,)")


def _nasty(draw: st.DrawFn) -> str:
    return draw(st.one_of(st.sampled_from(NASTY_NUMBERS), st.sampled_from(NASTY_TEXT), st.text(max_size=8),
                          st.integers(-(2**70), 2**70).map(str)))


def _mutate_once(draw: st.DrawFn, text: str, seeds: Sequence[str]) -> str:
    lines = text.split("\n")
    op = draw(st.sampled_from(["truncate", "drop_line", "dup_line", "swap_lines", "token", "token", "token",
                               "insert", "char", "bytes", "splice", "repeat", "drop_token"]))
    n = len(lines)
    if op == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if op == "drop_line" and n:
        del lines[draw(st.integers(0, n - 1))]
    elif op == "dup_line" and n:
        i = draw(st.integers(0, n - 1))
        lines.insert(i, lines[i])
    elif op == "swap_lines" and n > 1:
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        lines[i], lines[j] = lines[j], lines[i]
    elif op in ("token", "drop_token") and n:
        i = draw(st.integers(0, n - 1))
        parts = _TOKEN_SPLIT.split(lines[i])
        words = [k for k, p in enumerate(parts) if p and not _TOKEN_SPLIT.fullmatch(p)]
        if words:
            k = draw(st.sampled_from(words))
            parts[k] = "" if op == "drop_token" else _nasty(draw)
            lines[i] = "".join(parts)
    elif op == "insert":
        pos = draw(st.integers(0, len(text)))
        return text[:pos] + _nasty(draw) + text[pos:]
    elif op == "char" and text:
        pos = draw(st.integers(0, len(text) - 1))
        return text[:pos] + draw(st.characters()) + text[pos + 1:]
    elif op == "bytes" and text:
        # Bytes that are not UTF-8, as a file of garbage would hold them, carried as surrogateescape does.
        raw = bytearray(text.encode("utf-8", "surrogateescape"))
        pos = draw(st.integers(0, len(raw) - 1))
        raw[pos] = draw(st.integers(0, 255))
        return raw.decode("utf-8", "surrogateescape")
    elif op == "splice":
        other = draw(st.sampled_from(seeds))
        return text[: draw(st.integers(0, len(text)))] + other[draw(st.integers(0, len(other))):]
    elif op == "repeat" and len(text) < 20_000:
        # Large files, but not compounding into hundreds of megabytes over several mutations: parsing is linear,
        # and a fuzz example should take milliseconds.
        return text * draw(st.integers(2, 40))
    return "\n".join(lines)


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[str], max_ops: int = 6) -> str:
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_ops))):
        text = _mutate_once(draw, text, seeds)
    return text


def garbage_text() -> st.SearchStrategy[str]:
    """Text with no relation to any format: random characters, random bytes, random lines of nasty tokens."""
    tokens = st.one_of(st.sampled_from(NASTY_NUMBERS), st.sampled_from(NASTY_TEXT), st.text(max_size=6))
    return st.one_of(
        st.text(),
        st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
        st.lists(st.lists(tokens, max_size=6).map(" ".join), max_size=12).map("\n".join),
    )


def text_inputs(seeds: Sequence[str]) -> st.SearchStrategy[str]:
    seeds = list(seeds)
    return st.one_of(mutated(seeds), mutated(seeds), mutated(seeds), garbage_text(), st.sampled_from(seeds))


# ---- cgroup and procfs parsers ---------------------------------------------------------------------------------
# The parsers' own error is ValueError (tests/test_cgroupfs_stats.py pins it for PSI files): the caller turns it
# into an absent figure (a cgroup's PSI) or fails the tick. Parsers of keyed files skip what they cannot read.


def _typed_value_error(fn: Callable[[str], Any], accept: Callable[[Any], None]) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            result = fn(text)
        except ValueError:
            return TYPED
        accept(result)
        return ACCEPTED
    return check


def _never_raises(fn: Callable[[str], Any], accept: Callable[[Any], None]) -> Callable[[str], str]:
    def check(text: str) -> str:
        accept(fn(text))
        return ACCEPTED
    return check


def _str_int_dict(result: Any) -> None:
    assert isinstance(result, dict)
    assert all(isinstance(k, str) and type(v) is int for k, v in result.items()), result


def _limit(result: Any) -> None:
    assert result is None or (type(result) is int and result < UNLIMITED_FLOOR), result


def _pressure(result: Any) -> None:
    assert isinstance(result, Pressure)
    avgs = [result.some_avg10, result.some_avg60, result.some_avg300]
    if result.full_avg10 is not None:
        avgs += [result.full_avg10, result.full_avg60, result.full_avg300]  # type: ignore[list-item]
    assert all(isinstance(a, float) and math.isfinite(a) for a in avgs), result  # a NaN never crosses a threshold
    assert type(result.some_total) is int
    assert (result.full_total is None) == (result.full_avg10 is None)


def _pids(result: Any) -> None:
    assert isinstance(result, list) and all(type(p) is int for p in result)


def _proc_cgroup(result: Any) -> None:
    assert isinstance(result, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


def _hierarchies(result: Any) -> None:
    assert isinstance(result, list)
    keys = [(h.version, h.controllers) for h in result]
    assert len(keys) == len(set(keys)), "one entry per hierarchy"


def check_layout(args: tuple[str, tuple[str, ...] | None, str | None]) -> str:
    """A layout, or LayoutError saying what to enable: the daemon refuses to start with a message, never a trace."""
    mountinfo, controllers, proc_cgroups = args
    try:
        layout = layout_from_mountinfo(mountinfo, controllers, proc_cgroups)
    except LayoutError as e:
        assert str(e)
        return TYPED
    assert isinstance(layout, Layout) and layout.memory is not None
    assert layout.describe().startswith("cgroup layout ")
    return ACCEPTED


def _io_totals(result: Any) -> None:
    assert set(result) == {"io_bytes", "io_ops"} and all(type(v) is int for v in result.values())


def _blkio(result: Any) -> None:
    assert result is None or type(result) is int


# A cgroup directory's memory figures, read through a fake `read` that serves a sample directory's files, some
# mutated and some missing, as figures.py reads them on a live host.
_FIGURE_FILES = (
    "memory.stat", "memory.usage_in_bytes", "memory.limit_in_bytes", "memory.memsw.usage_in_bytes",
    "memory.memsw.limit_in_bytes", "memory.failcnt", "memory.oom_control", "memory.current", "memory.max",
    "memory.min", "memory.low", "memory.swap.current", "memory.swap.max", "memory.events", "cgroup.stat",
)


@cache
def _figure_dirs() -> tuple[tuple[int, tuple[tuple[str, str], ...]], ...]:
    """(version, ((file, text), ...)) of every sample directory with memory files."""
    out = []
    for root in (KERNEL_SAMPLES,):
        for d in sorted({p.parent for p in root.rglob("memory.stat")}):
            files = tuple((n, (d / n).read_text()) for n in _FIGURE_FILES if (d / n).is_file())
            version = 1 if (d / "memory.usage_in_bytes").exists() else 2
            out.append((version, files))
    return tuple(out)


@st.composite
def figure_inputs(draw: st.DrawFn) -> tuple[int, dict[str, str], frozenset[str]]:
    version, files = draw(st.sampled_from(_figure_dirs()))
    texts = dict(files)
    seeds = [t for _, t in files]
    for name in list(texts):
        choice = draw(st.integers(0, 5))
        if choice == 0:
            del texts[name]  # the kernel has no such file (no swap accounting, an older kernel)
        elif choice == 1:
            texts[name] = draw(mutated(seeds + [texts[name]] * 4, max_ops=3))
    fields = draw(st.frozensets(st.sampled_from(sorted(figures.FIELD_GROUPS))))
    return version, texts, fields


def check_figures(args: tuple[int, dict[str, str], frozenset[str]]) -> str:
    """A dict of figures, or ValueError (a file that does not parse) or FileNotFoundError (a file the layout
    must have is missing: read_stats treats the cgroup as gone)."""
    version, texts, fields = args

    def read(p: str | Path) -> str:
        try:
            return texts[os.path.basename(p)]  # figures.py passes str or Path paths
        except KeyError:
            raise FileNotFoundError(2, "No such file or directory", str(p)) from None

    d = Path("/fuzz")
    try:
        out = (figures.v1_memory if version == 1 else figures.v2_memory)(read, d, fields)
        out.update(figures.v2_tree(read, d))
    except (ValueError, FileNotFoundError):
        return TYPED
    assert all(v is None or type(v) in (int, bool) for v in out.values()), out
    return ACCEPTED


def check_root_figures(args: tuple[str, str, frozenset[str]]) -> str:
    """The cgroup2 root's figures from /proc/meminfo and /proc/vmstat, as the collector computes them."""
    meminfo, vmstat, fields = args
    try:
        out = figures.root_from_meminfo(parse_meminfo(meminfo), fields, parse_flat_keyed(vmstat))
    except ValueError:
        return TYPED
    assert all(v is None or type(v) is int for v in out.values()), out
    return ACCEPTED


def cgroup_targets() -> list[Target]:
    flat = samples(_named("memory.stat", "memory.events", "memory.events.local", "cgroup.events", "cgroup.stat",
                          "vmstat", "memory.oom_control", "memory.swap.events", "pids.events", "cpu.stat",
                          "memory.numa_stat"))
    limits = samples(_named("memory.limit_in_bytes", "memory.max", "memory.swap.max", "memory.high", "memory.low",
                            "memory.min", "memory.memsw.limit_in_bytes", "memory.usage_in_bytes"))
    psi = samples(lambda rel: "pressure" in Path(rel).name)
    mountinfo = samples(_under("mountinfo/"))
    proc_cgroups = samples(_named("cgroups"))
    controllers = samples(_named("cgroup.controllers", "cgroup.subtree_control"))
    layouts = st.tuples(
        text_inputs(mountinfo),
        st.none() | text_inputs(controllers).map(lambda t: tuple(t.split())),
        st.none() | text_inputs(proc_cgroups),
    )
    return [
        Target("cgroupfs.parse_flat_keyed", text_inputs(flat), _never_raises(parse_flat_keyed, _str_int_dict),
               "memory.stat, memory.events, cgroup.events, cgroup.stat, vmstat, oom_control: never raises"),
        Target("cgroupfs.parse_limit", text_inputs(limits), _typed_value_error(parse_limit, _limit),
               "memory.max, limit_in_bytes, ...: int below 2**62, None (no limit) or ValueError"),
        Target("cgroupfs.parse_pressure", text_inputs(psi), _typed_value_error(parse_pressure, _pressure),
               "PSI files, incl. without 'full' and irq's full-only: finite Pressure or ValueError"),
        Target("cgroupfs.parse_meminfo", text_inputs(samples(_named("meminfo"))),
               _typed_value_error(parse_meminfo, _str_int_dict), "/proc/meminfo: dict of ints or ValueError"),
        Target("cgroupfs.parse_pids", text_inputs(samples(_named("cgroup.procs", "tasks", "cgroup.threads"))),
               _typed_value_error(parse_pids, _pids), "cgroup.procs, tasks: list of ints or ValueError"),
        Target("cgroupfs.parse_proc_cgroup", text_inputs(samples(_under("proc-self-cgroup/"))),
               _never_raises(parse_proc_cgroup, _proc_cgroup), "/proc/PID/cgroup: never raises"),
        Target("cgroupfs.parse_mountinfo", text_inputs(mountinfo), _never_raises(parse_mountinfo, _hierarchies),
               "/proc/self/mountinfo: never raises"),
        Target("cgroupfs.layout_from_mountinfo", layouts, check_layout,
               "mountinfo + cgroup.controllers + /proc/cgroups: Layout or LayoutError"),
        Target("cgroupfs.v2_io_totals", text_inputs(samples(_named("io.stat"))),
               _typed_value_error(figures.v2_io_totals, _io_totals), "io.stat: totals or ValueError"),
        Target("cgroupfs.v1_blkio_total", text_inputs(BLKIO_SEEDS),
               _typed_value_error(figures.v1_blkio_total, _blkio), "blkio.throttle.*: int, None or ValueError"),
        Target("cgroupfs.memory_figures", figure_inputs(), check_figures,
               "v1_memory/v2_memory/v2_tree over a sample dir with files mutated or missing"),
        Target("cgroupfs.root_from_meminfo",
               st.tuples(text_inputs(samples(_named("meminfo"))), text_inputs(samples(_named("vmstat"))),
                         st.frozensets(st.sampled_from(sorted(figures.FIELD_GROUPS)))),
               check_root_figures, "the cgroup2 root's figures from /proc/meminfo and /proc/vmstat"),
    ]


# ---- policies ----------------------------------------------------------------------------------------------------

_VALID_ARG = {
    "cgroups": "system.slice/*", "globs": "system.slice/a*", "int": 5, "float": 1.5, "bool": True,
    "duration": "10s", "size": "1G", "size_or_percent": "10%", "string": "foo.service", "signal": "SIGTERM",
}


def _valid_args(plugin: Any, everything: bool) -> dict[str, Any]:
    args = {}
    for a in plugin.args:
        if a.name == "ruleset_cgroup":
            continue  # only valid in a per-cgroup ruleset, which these seeds are not
        if a.required or everything or a.name == "cgroup":
            args[a.name] = a.choices[0] if a.kind == "choice" else _VALID_ARG[a.kind]
    return args


def _yaml_blocks(path: Path, lang: str) -> list[str]:
    text = path.read_text() if path.is_file() else ""
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


@cache
def policy_seed_data() -> tuple[Any, ...]:
    """Plain data of valid-looking policies: the shipped one, the docs' and one ruleset per plugin."""
    safe = YAML(typ="safe", pure=True)
    texts = [(ROOT / "config.yaml").read_text(), *_yaml_blocks(ROOT / "README.md", "yaml"),
             *_yaml_blocks(ROOT / "docs" / "policy.md", "yaml")]
    docs: list[Any] = [safe.load(t) for t in texts]
    detectors = plugins_of("detector")
    actions = plugins_of("action")
    kill = {"kill_by_memory_size_or_growth": {"cgroup": "system.slice/*"}}
    watch = {"pressure_above": {"cgroup": "system.slice", "resource": "memory", "threshold": 80, "duration": 60}}
    for i, p in enumerate(detectors):
        docs.append({"rulesets": [{"name": f"d{i}", "detectors": [{"name": "g", "all": [
            {p.name: _valid_args(p, i % 2 == 0)}]}], "actions": [kill]}]})
    for i, p in enumerate(actions):
        docs.append({"interval": "500ms", "dry_run": True, "rulesets": [{
            "name": f"a{i}", "post_action_delay": "30s", "silence_logs": "engine",
            "detectors": [{"name": "g", "all": [watch]}], "actions": [{p.name: _valid_args(p, i % 2 == 1)}]}]})
    return tuple(docs)


def _to_oomd(doc: Any) -> Any:
    """The same policy in oomd's JSON shape (groups as [NAME, PLUGIN...], arguments as strings)."""
    def plugin(entry: dict[str, Any]) -> dict[str, Any]:
        (name, args), = entry.items()
        return {"name": name, "args": {k: (str(v).lower() if isinstance(v, bool) else str(v))
                                       for k, v in (args or {}).items()}}
    rulesets = []
    for rs in doc.get("rulesets", []):
        out = {k.replace("_", "-") if k in ("silence_logs", "drop_in") else k: v for k, v in rs.items()
               if k not in ("detectors", "actions")}
        out["detectors"] = [[g["name"], *(plugin(d) for d in g["all"])] for g in rs.get("detectors", [])]
        out["actions"] = [plugin(a) for a in rs.get("actions", [])]
        rulesets.append(out)
    return {"rulesets": rulesets}


@cache
def oomd_seed_data() -> tuple[Any, ...]:
    desktop = ROOT / "tests" / "fixtures" / "oomd" / "desktop.json"
    docs = [json.loads(blank_comments(desktop.read_text())[0])] if desktop.is_file() else []
    return tuple(docs + [_to_oomd(d) for d in policy_seed_data()])


def _drop_in_of(doc: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    keep = ("name", "detectors", "actions")
    return {"rulesets": [{k: v for k, v in rs.items() if k in keep} for rs in doc.get("rulesets", [])
                         if isinstance(rs, dict)]}


# Values of the wrong type, size or sign for any position in a policy.
WRONG_VALUES = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**63, 2**64, 10**30, 10**400, -(10**400), 1e308, -1e308,
                     float("inf"), float("-inf"), float("nan"), "", " ", "x" * 2000, [], {}, [1, [2, [3]]],
                     {"a": {"b": None}}, "system.slice/../x", "/", "*", "1e400", "-5s", "10%", "101%", "-1%",
                     "SIGKILL", "SIGFOO", "0", "1" + "0" * 400, "9" * 5000, "NaN", "inf", "1.5G 32K",
                     "engine,plugins", "bogus", "\x00", "\udcff", "a,,b", ",", "2001-12-14", "0x10"]),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
)


def _wrong_value(draw: st.DrawFn) -> Any:
    # A copy: sampled_from hands out the same list or dict every time, and a later mutation edits it in place.
    return copy.deepcopy(draw(WRONG_VALUES))


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*at, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated_tree(draw: st.DrawFn, seeds: Sequence[Any], max_ops: int = 4) -> Any:
    doc = json.loads(json.dumps(draw(st.sampled_from(seeds))))  # a private deep copy
    for _ in range(draw(st.integers(1, max_ops))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add_key", "dup", "empty", "wrap", "rename"]))
        if not path:
            if op == "replace":
                doc = _wrong_value(draw)
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = _wrong_value(draw)
        elif op == "delete":
            del parent[key]
        elif op == "add_key" and isinstance(parent, dict):
            name = draw(st.one_of(st.text(max_size=12), st.sampled_from(
                [str(key) + "s", str(key)[:-1], str(key).replace("_", "-"), "version", "rulesets", "args", "name",
                 "cgroup", "drop_in", "all", "detectors", "actions"])))
            parent[name] = _wrong_value(draw)
        elif op == "dup" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
        elif op == "empty" and isinstance(parent[key], list | dict):
            parent[key] = type(parent[key])()
        elif op == "wrap":
            parent[key] = [parent[key]] if draw(st.booleans()) else {"x": parent[key]}
        elif op == "rename" and isinstance(parent, dict) and isinstance(key, str):
            parent[key.replace("_", "-") if "_" in key else key.replace("-", "_") + "x"] = parent.pop(key)
    return doc


def _dump_yaml(doc: Any) -> str:
    buf = io.StringIO()
    y = YAML(typ="safe", pure=True)
    y.default_flow_style = None
    y.dump(doc, buf)
    return buf.getvalue()


def _dump_json(doc: Any) -> str:
    return json.dumps(doc, indent=2)  # NaN and Infinity come out as JSON does not allow them: refused as not JSON


@st.composite
def alias_bomb(draw: st.DrawFn, json_style: bool) -> str:
    """Billion laughs: each anchor a list of `width` aliases to the one before, `depth` times, used somewhere a
    policy's checker walks or prints (a ruleset list, a plugin argument, a key, the interval)."""
    width, depth = draw(st.integers(2, 40)), draw(st.integers(2, 12))
    defs = ['&b0 ["lol", "lol"]'] + [f"&b{i} [{', '.join([f'*b{i - 1}'] * width)}]" for i in range(1, depth + 1)]
    top = f"*b{depth}"
    where = draw(st.sampled_from(["rulesets", "arg", "key", "interval", "name"]))
    plugin = '{"name": "exists", "args": {"cgroup": %s}}' if json_style else '{"exists": {"cgroup": %s}}'
    if where == "rulesets":
        body = f'"rulesets": {top}'
    elif where == "arg":
        group = f'["g", {plugin % top}]' if json_style else '{"name": "g", "all": [%s]}' % (plugin % top)
        body = f'"rulesets": [{{"name": "r", "detectors": [{group}], "actions": []}}]'
    elif where == "key":
        body = f'? {top}\n: 1' if not json_style else f'{top}: 1'
    elif where == "interval":
        body = f'"interval": {top}'
    else:
        body = f'"rulesets": [{{"name": {top}}}]'
    if json_style:
        return '{"defs": [' + ", ".join(defs) + "], " + body + "}"
    return "defs: [" + ", ".join(defs) + "]\n" + body.replace('"rulesets"', "rulesets") + "\n"


@st.composite
def deep_nesting(draw: st.DrawFn, json_style: bool) -> str:
    depth = draw(st.integers(20, 3000))
    kind = draw(st.sampled_from(["seq", "map", "block", "mixed"]))
    if kind == "seq":
        inner = "[" * depth + "]" * depth
    elif kind == "map":
        inner = '{"a": ' * depth + "1" + "}" * depth
    elif kind == "mixed":
        inner = '[{"a": ' * (depth // 2) + "1" + "}]" * (depth // 2)
    else:
        if json_style:
            inner = "[" * depth + "]" * depth
        else:
            depth = min(depth, 400)  # block style grows quadratically in size with depth
            return "rulesets:\n" + "".join("  " * (i + 1) + "- a:\n" for i in range(depth)) + "  " * depth + "  x\n"
    return '{"rulesets": ' + inner + "}" if json_style else "rulesets: " + inner + "\n"


CRAFTED_YAML = [
    "", "~", "---", "--- !!python/object/apply:os.system ['true']", "rulesets: !!binary zz", "rulesets: &a [*a]",
    "a: &a {b: *a}", "rulesets: *undefined", "interval: 2001-13-45\nrulesets: []", "interval: 1" + "0" * 5000,
    "\ufeffrulesets: []", "rulesets: [\x00]", "rulesets:\n\t- x", "? [a, b]\n: c", "<<: {rulesets: []}",
    "rulesets: !!set {a, b}", "rulesets: !foo bar", "%YAML 1.1\n---\nrulesets: [on, off, 0o17, 1:20]",
    "%TAG ! tag:x,2000:\n---\nrulesets: !y z", "a: 1\n---\nb: 2", "rulesets: [" + "{}, " * 5000 + "]",
    "rulesets: '" + "x" * 100_000 + "'", "version: 2\nrulesets: []", "version: true\nrulesets: []",
    "defs: [&b0 [a], &b1 [*b0]]\nrulesets: !!set {? *b1}", "defs: [&b0 [a], &b1 [*b0]]\nrulesets: !!omap [? *b1 : 1]",
    "rulesets: [!!bool abc]", "rulesets: [!!int 0x]", "interval: 2001-02-30\nrulesets: []",
]


# YAML's standard tags and an unknown one: each makes ruamel construct something else than the plain value.
YAML_TAGS = ["!!bool", "!!int", "!!float", "!!str", "!!null", "!!binary", "!!timestamp", "!!set", "!!omap",
             "!!pairs", "!!map", "!!seq", "!!merge", "!!value", "!foo", "!<tag:x,2000:y>", "!!python/object:os.system"]


@st.composite
def tagged(draw: st.DrawFn, seeds: Sequence[str]) -> str:
    """A seed with explicit tags put before some of its values and list items."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 3))):
        spots = [m.end() for m in re.finditer(r"(: |- |\[|, )", text)]
        if not spots:
            break
        pos = draw(st.sampled_from(spots))
        text = text[:pos] + draw(st.sampled_from(YAML_TAGS)) + " " + text[pos:]
    return text


def policy_inputs(json_style: bool, drop_in: bool) -> st.SearchStrategy[str]:
    seeds = oomd_seed_data() if json_style else policy_seed_data()
    if drop_in:
        seeds = tuple(_drop_in_of(d) for d in seeds)
    dump = _dump_json if json_style else _dump_yaml
    seed_texts = [dump(d) for d in seeds]
    if json_style and not drop_in:
        desktop = ROOT / "tests" / "fixtures" / "oomd" / "desktop.json"
        if desktop.is_file():
            seed_texts.append(desktop.read_text())  # with its // comments
    elif not json_style and not drop_in:
        seed_texts.append((ROOT / "config.yaml").read_text())  # with comments and block style
    return st.one_of(
        mutated_tree(seeds).map(dump),
        mutated_tree(seeds).map(dump),
        mutated(seed_texts),
        alias_bomb(json_style),
        deep_nesting(json_style),
        tagged(seed_texts),
        st.sampled_from(CRAFTED_YAML),
        garbage_text(),
        st.sampled_from(seed_texts),
    )


def _line_bound(text: str) -> int:
    # ruamel also breaks lines at \r, NEL and the Unicode line and paragraph separators.
    return sum(text.count(c) for c in ("\n", "\r", "\x85", "\u2028", "\u2029")) + 1


def policy_check(source: str, drop_in: bool) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            loaded = (load_drop_in_text if drop_in else load_policy_text)(text, source)
        except PolicyInvalid as e:
            assert e.errors, "PolicyInvalid without an error"
            bound = _line_bound(text)
            for err in e.errors:
                assert err.file == source, err
                assert 1 <= err.line <= bound and err.col >= 1, f"{err} is outside the file ({bound} lines)"
                assert err.message.strip(), err
            assert str(e).startswith(f"{source}:"), str(e)[:200]
            return TYPED
        # Accepted: the supervisor must be able to hand it to every worker, and it must arrive the same.
        policy = Policy(rulesets=[], drop_ins=[loaded]) if drop_in else loaded
        assert isinstance(loaded, DropIn if drop_in else Policy)
        update = PolicyUpdate(generation=1, policy=policy, dry_run=False, dry_run_source="default",
                              protected_paths=["/"], daemon_pid=1)
        channel = Channel("fuzz", ControlMessage)
        frame = channel.encode(update)
        decoded = channel.decode(frame)
        assert decoded is not None and channel.encode(decoded) == frame, "an accepted policy does not survive the wire"
        return ACCEPTED
    return check


@cache
def _policy_seed_texts() -> tuple[str, ...]:
    return ((ROOT / "config.yaml").read_text(), *(_dump_yaml(d) for d in policy_seed_data()))


@st.composite
def policy_bytes(draw: st.DrawFn) -> bytes:
    """A policy file's bytes: a seed in UTF-8 with bytes changed or inserted (invalid UTF-8, a NUL, a BOM, UTF-16),
    as an editor, a truncated copy or a wrong encoding leaves it."""
    text = draw(st.sampled_from(_policy_seed_texts()))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]))
    raw = bytearray(text.encode(encoding, "replace"))
    for _ in range(draw(st.integers(0, 4))):
        pos = draw(st.integers(0, len(raw)))
        raw[pos:pos] = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xb3\xbf", b"\x00", b"\xef\xbb\xbf", b"\x80\x80"])
                            | st.binary(max_size=4))
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    return bytes(raw)


def check_policy_file(raw: bytes) -> str:
    """load_policy on a file: bytes that are not UTF-8 are PolicyInvalid at 1:1 ("not UTF-8 text"), never a
    UnicodeDecodeError; the rest is the text's contract."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "policy.yaml"
        path.write_bytes(raw)
        try:
            load_policy(path)
        except PolicyInvalid as e:
            assert e.errors and all(err.file == str(path) and err.line >= 1 and err.col >= 1 for err in e.errors)
            return TYPED
    return ACCEPTED


def policy_targets() -> list[Target]:
    return [
        Target("policy.yaml", policy_inputs(False, False), policy_check("fuzz.yaml", False),
               "load_policy_text, pyoomd YAML: Policy, or PolicyInvalid with FILE:LINE:COL"),
        Target("policy.yaml-drop-in", policy_inputs(False, True), policy_check("fuzz.yaml", True),
               "load_drop_in_text, YAML drop-ins"),
        Target("policy.oomd-json", policy_inputs(True, False), policy_check("fuzz.json", False),
               "oomd JSON policies (by extension)"),
        Target("policy.oomd-json-sniffed", policy_inputs(True, False), policy_check("fuzz-policy", False),
               "oomd JSON or YAML told apart by content (no extension)"),
        Target("policy.oomd-json-drop-in", policy_inputs(True, True), policy_check("fuzz.json", True),
               "oomd JSON drop-ins"),
        Target("policy.file-bytes", policy_bytes(), check_policy_file,
               "load_policy on a file of changed bytes (not UTF-8, NUL, BOM, UTF-16, truncated)"),
    ]


# ---- IPC frames --------------------------------------------------------------------------------------------------

_WIRE_INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry at all
_ANY_WIRE = st.recursive(
    st.none() | st.booleans() | _WIRE_INT | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _from_type_info(t: Any) -> st.SearchStrategy[Any]:
    """Builtins (dicts, lists, scalars) that decode as msgspec type `t`: valid frames of every message."""
    if isinstance(t, mi.IntType):
        return _WIRE_INT | st.integers(-5, 5)
    if isinstance(t, mi.FloatType):
        return st.floats()
    if isinstance(t, mi.StrType):
        return st.text(max_size=12)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.ListType):
        return st.lists(st.deferred(lambda: _from_type_info(t.item_type)), max_size=3)
    if isinstance(t, mi.DictType):
        return st.dictionaries(_from_type_info(t.key_type), st.deferred(lambda: _from_type_info(t.value_type)),
                               max_size=3)
    if isinstance(t, mi.UnionType):
        return st.one_of([_from_type_info(x) for x in t.types])
    if isinstance(t, mi.StructType):
        required = {f.encode_name: _from_type_info(f.type) for f in t.fields if f.required}
        optional = {f.encode_name: _from_type_info(f.type) for f in t.fields if not f.required}
        if t.tag_field is not None:
            required[t.tag_field] = st.just(t.tag)
        return st.fixed_dictionaries(required, optional=optional)
    return _ANY_WIRE  # Any and types pyoomd's messages do not use


@st.composite
def _shape_mutated(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]], tags: Sequence[str]) -> bytes:
    """A valid message with its shape broken: an unknown field, a missing one, one of the wrong type, another
    message's tag, an unknown tag; or its frame truncated, padded, or a byte changed."""
    msg = draw(valid)
    op = draw(st.sampled_from(["unknown", "missing", "retype", "retag", "truncate", "pad", "flip", "nested"]))
    if op == "unknown":
        msg[draw(st.text(max_size=8).filter(lambda k: k not in msg))] = draw(_ANY_WIRE)
    elif op == "missing" and msg:
        del msg[draw(st.sampled_from(sorted(msg)))]
    elif op == "retype" and msg:
        msg[draw(st.sampled_from(sorted(msg)))] = draw(_ANY_WIRE)
    elif op == "retag":
        msg["kind"] = draw(st.sampled_from(list(tags)) | st.text(max_size=6) | _ANY_WIRE)
    elif op == "nested":
        # An unknown field one level down, where the field is itself a struct (a Candidate, a ruleset report).
        for value in msg.values():
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, dict):
                    item[draw(st.text(min_size=1, max_size=8).filter(lambda k, item=item: k not in item))] = 1
                    break
    frame = msgspec.msgpack.encode(msg)
    if op == "truncate":
        return frame[: draw(st.integers(0, max(len(frame) - 1, 0)))]
    if op == "pad":
        return frame + draw(st.binary(min_size=1, max_size=8))
    if op == "flip" and frame:
        raw = bytearray(frame)
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    return frame


@st.composite
def _crafted_frame(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 200_000))
    unit = draw(st.sampled_from([b"\x91", b"\x81\xa1a", b"\x81\xa4kind", b"\xdc\x00\x01", b"\x81\xc4\x01a"]))
    tail = draw(st.sampled_from([b"\xc0", b"\x80", b"", b"\xa5hello"]))
    prefix = draw(st.sampled_from([b"", b"\x82\xa4kind\xa5hello\xa1x", b"\x81\xa1x"]))
    lengths = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
               b"\xc7\xff\x01", b"\xd6\xff\x00\x00\x00\x00", b"\xd4\x01\x00", b"\xa2\xff\xfe", b"\xc1"]
    if draw(st.booleans()):
        return prefix + unit * depth + tail
    return prefix + draw(st.sampled_from(lengths)) + draw(st.binary(max_size=16))


def frame_inputs(message_type: Any) -> st.SearchStrategy[bytes]:
    info = mi.type_info(message_type)
    structs = info.types if isinstance(info, mi.UnionType) else (info,)
    tags = [s.tag for s in structs if isinstance(s, mi.StructType) and s.tag is not None]
    valid = _from_type_info(info)
    return st.one_of(
        valid.map(msgspec.msgpack.encode),
        _shape_mutated(valid, tags),
        _shape_mutated(valid, tags),
        _crafted_frame(),
        st.binary(max_size=64),
        _ANY_WIRE.map(msgspec.msgpack.encode),
    )


def frame_check(message_type: Any) -> Callable[[bytes], str]:
    info = mi.type_info(message_type)
    classes = tuple(s.cls for s in (info.types if isinstance(info, mi.UnionType) else (info,)))

    def check(frame: bytes) -> str:
        channel = Channel("fuzz", message_type)
        msg = channel.decode(frame)
        if msg is None:
            assert channel.dropped == 1, "a dropped frame must be counted once"
            return TYPED
        assert channel.dropped == 0
        assert isinstance(msg, classes), type(msg)
        again = channel.decode(channel.encode(msg))
        assert again is not None and channel.encode(again) == channel.encode(msg)
        return ACCEPTED
    return check


def ipc_targets() -> list[Target]:
    return [
        Target("ipc.control", frame_inputs(ControlMessage), frame_check(ControlMessage),
               "Channel.decode, control channel (supervisor <-> workers): message, or None and dropped += 1"),
        Target("ipc.commands", frame_inputs(CommandMessage), frame_check(CommandMessage),
               "Channel.decode, commands (detector <-> actuator)"),
        Target("ipc.snapshots", frame_inputs(Snapshot), frame_check(Snapshot),
               "Channel.decode, snapshots (collector -> detector)"),
    ]


def all_targets() -> list[Target]:
    return [*cgroup_targets(), *policy_targets(), *ipc_targets()]
