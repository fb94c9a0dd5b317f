"""Loading a policy or a drop-in, in pyoomd's YAML or oomd's JSON, with every error at its file, line and column.

The whole file is checked before anything is returned: either a valid `Policy` (or `DropIn`), or `PolicyInvalid`
with every error found. A policy that fails to load changes nothing.

Both formats are read by ruamel.yaml (JSON is YAML, once oomd's comments are blanked out; see policy/oomd_json.py),
so both arrive as the same position-carrying trees. A `Dialect` says how a format spells keys, detector groups
and plugins; everything else (the checks, the messages, the structs) is shared, so a policy means the same
whichever format it is written in.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import Composer, ComposerError, MaxDepthExceededError
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent, ScalarEvent
from ruamel.yaml.reader import ReaderError

from policy.model import (
    ArgValue,
    DetectorGroup,
    DropIn,
    DropInOptions,
    DropInRuleset,
    LogEntity,
    PluginSpec,
    Policy,
    Ruleset,
)
from policy.paths import parse_cgroup_list
from policy.plugins import ArgError, build_plugin
from policy.plugins.base import PluginKind, RulesetOptions
from policy.plugins.registry import lookup
from policy.units import parse_duration


class PolicyError(msgspec.Struct, frozen=True):
    file: str
    line: int  # 1-based
    col: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class PolicyInvalid(Exception):
    def __init__(self, errors: list[PolicyError]) -> None:
        # In file order, as an editor walks them; the checks find them in the order they run.
        errors = sorted(errors, key=lambda e: (e.file, e.line, e.col))
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


Pos = tuple[int, int]  # 0-based (line, column), as ruamel.yaml records them
# Where the parts of a loaded policy were written (1-based line, column), for tools that report on a valid
# policy (`pyoomd check --host`). Keys: ("ruleset", r), ("ruleset_cgroup", r), ("detector", r, group, i),
# ("action", r, i), and a plugin's key + (argument name,) for the value of that argument.
Spots = dict[tuple[Any, ...], tuple[int, int]]


def lc_pos(node: Any, key: Any, value: bool = False) -> Pos:
    """Where a mapping's key (or, with `value`, its value) or a sequence's item `key` was written. Where ruamel
    recorded no position, the position of `node` itself: for the keys a mapping got through a merge
    (`<<: *base`), and inside an explicitly tagged collection (`!!omap [...]`, `!foo {...}`)."""
    lc = getattr(node, "lc", None)
    try:
        entry = lc.data[key]  # type: ignore[union-attr]
        return (entry[2], entry[3]) if value else (entry[0], entry[1])
    except (AttributeError, TypeError, KeyError, IndexError):
        return (lc.line or 0, lc.col or 0) if lc is not None else (0, 0)


POLICY_VERSION = 1  # the policy language this pyoomd reads; `version` in a file says which one it speaks
DEFAULT_POST_ACTION_DELAY = 15.0
LOG_ENTITIES: tuple[LogEntity, ...] = ("engine", "plugins")
GLOB_ARG_KINDS = ("globs", "cgroups")  # declared argument kinds that take a list of patterns
WIRE_INT_MIN, WIRE_INT_MAX = -(2**63), 2**64 - 1  # the integers msgpack can carry

Keys = Mapping[str, tuple[str, ...]]  # canonical key -> the spellings a format accepts (the preferred first)


def _same(*names: str) -> dict[str, tuple[str, ...]]:
    return {n: (n,) for n in names}


TOP_KEYS = _same("version", "interval", "dry_run", "rulesets")
RULESET_KEYS = _same(
    "name", "detectors", "actions", "post_action_delay", "prekill_hook_timeout", "silence_logs", "drop_in",
    "cgroup", "xattr_filter",
)
GROUP_KEYS = _same("name", "all")
DROP_IN_KEYS = _same("detectors", "actions", "disable_on_drop_in")
# A drop-in replaces a base ruleset's detector groups or actions, nothing else: the rest of its ruleset
# (and the policy-wide settings) belong to the base policy.
DROP_IN_FILE_KEYS = ("version", "rulesets")
DROP_IN_RULESET_KEYS = ("name", "detectors", "actions")
_NOT_IN_DROP_IN = "cannot be set by a drop-in: it replaces only a base ruleset's detectors and actions"


# ---- the checker ---------------------------------------------------------------------------------------------


class Fields:
    """A checked mapping, its keys looked up by canonical name whichever accepted spelling the file used."""

    def __init__(self, node: CommentedMap, keys: dict[str, Any]) -> None:
        self.node = node
        self._keys = keys  # canonical -> the key as written

    def __contains__(self, name: str) -> bool:
        return name in self._keys

    def key(self, name: str) -> str:
        return str(self._keys[name])

    def value(self, name: str) -> Any:
        return self.node[self._keys[name]]

    def key_pos(self, name: str) -> Pos:
        return lc_pos(self.node, self._keys[name])

    def value_pos(self, name: str) -> Pos:
        return lc_pos(self.node, self._keys[name], value=True)


class Checker:
    def __init__(self, source: str, mapping_word: str = "a mapping", list_word: str = "a list",
                 spots: Spots | None = None) -> None:
        self.source = source
        self.errors: list[PolicyError] = []
        self.mapping_word = mapping_word  # oomd's JSON says "an object" and "an array"
        self.list_word = list_word
        self.spots = spots

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(PolicyError(self.source, pos[0] + 1, pos[1] + 1, message))

    def spot(self, key: tuple[Any, ...], pos: Pos) -> None:
        if self.spots is not None:
            self.spots[key] = (pos[0] + 1, pos[1] + 1)

    @staticmethod
    def node_pos(node: Any, fallback: Pos) -> Pos:
        lc = getattr(node, "lc", None)
        return (lc.line, lc.col) if lc is not None and lc.line is not None else fallback

    def item_pos(self, seq: CommentedSeq, i: int) -> Pos:
        return self.node_pos(seq[i], lc_pos(seq, i))

    def fields(
        self, node: Any, where: str, pos: Pos, keys: Keys, misplaced: Mapping[str, str] | None = None
    ) -> Fields | None:
        """`node` as a mapping of the allowed keys; unknown keys get the nearest valid one as a hint, keys that
        belong elsewhere say where (`misplaced`: spelling -> why not here)."""
        if not isinstance(node, CommentedMap):
            self.error(pos, f"{where} must be {self.mapping_word}")
            return None
        spelling = {s: canon for canon, spellings in keys.items() for s in spellings}
        found: dict[str, Any] = {}
        for key in node:
            kpos = lc_pos(node, key)
            canon = spelling.get(key) if isinstance(key, str) else None
            if canon is None:
                if misplaced and key in misplaced:
                    self.error(kpos, f"'{key}' {misplaced[key]}")
                    continue
                close = difflib.get_close_matches(str(key), list(spelling), n=1)
                preferred = [s[0] for s in keys.values()]
                hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(preferred)}"
                self.error(kpos, f"unknown key '{key}' in {where} ({hint})")
            elif canon in found:
                self.error(kpos, f"'{key}' and '{found[canon]}' are the same key: give it once")
            else:
                found[canon] = key
        return Fields(node, found)

    def sequence(self, node: Any, where: str, pos: Pos) -> CommentedSeq | None:
        if not isinstance(node, CommentedSeq):
            self.error(pos, f"{where} must be {self.list_word}")
            return None
        return node

    def get(self, f: Fields, name: str, parse: Any, default: Any) -> Any:
        if name not in f:
            return default
        try:
            return parse(f.value(name))
        except (ValueError, TypeError) as e:
            self.error(f.value_pos(name), f"'{f.key(name)}': {e}")
            return default
        except OverflowError:
            # float() of an integer past a float's range (post_action_delay: 1 followed by 400 zeros)
            self.error(f.value_pos(name), f"'{f.key(name)}': the number is too large")
            return default


# ---- values ----------------------------------------------------------------------------------------------------


def _duration(value: Any) -> float:
    seconds = parse_duration(value)
    # YAML's .nan and .inf (and 1e400, which YAML reads as inf) are floats parse_duration takes. A NaN delay
    # compares false with every clock reading, so the ruleset would never rest after a kill.
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def parse_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return str(value)  # a plain str, not ruamel's quoted-string subclass


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


def _log_entities(value: Any) -> list[LogEntity]:
    """oomd's "engine,plugins" string, or a YAML list of the same names."""
    if isinstance(value, str):
        names = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [str(v).strip() for v in value]
    else:
        raise ValueError(f"expected a list of {', '.join(LOG_ENTITIES)} (or a comma-separated string)")
    out: list[LogEntity] = []
    for name in names:
        if name not in LOG_ENTITIES:
            close = difflib.get_close_matches(name, LOG_ENTITIES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use {', '.join(LOG_ENTITIES)}"
            raise ValueError(f"unknown log entity '{name}' ({hint})")
        if name not in out:
            out.append(name)  # type: ignore[arg-type]
    return out


def _cgroup_patterns(value: Any) -> list[str]:
    """Comma-separated patterns (or a YAML list), normalised as plugins' cgroup arguments are."""
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ValueError("expected cgroup paths")
        value = ",".join(str(v) for v in value)
    return list(parse_cgroup_list(value))


def _plain(value: Any) -> ArgValue:
    """ruamel's scalar subclasses (quoted strings, ScalarFloat) as the plain types the wire carries."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


# ---- the shared structure ------------------------------------------------------------------------------------


class RawPlugin(NamedTuple):
    """A plugin entry as a format wrote it: its name, and its arguments as a mapping with positions."""

    name: str
    name_pos: Pos
    args: CommentedMap | None


class Dialect:
    """How a format spells a policy. Subclasses give the key spellings, detector groups and plugin entries."""

    ruleset_keys: Keys = RULESET_KEYS
    drop_in_keys: Keys = DROP_IN_KEYS

    def groups(self, c: Checker, f: Fields, opts: RulesetOptions, at: tuple[Any, ...],
               no_cgroup: bool) -> list[DetectorGroup]:
        raise NotImplementedError

    def plugin(self, c: Checker, node: Any, pos: Pos, kind: PluginKind) -> RawPlugin | None:
        raise NotImplementedError

    @staticmethod
    def group_list(c: Checker, f: Fields) -> Any:
        """The ruleset's `detectors` list, the same in every format; an empty one is an error."""
        seq = c.sequence(f.value("detectors"), "'detectors'", f.value_pos("detectors"))
        if seq is not None and not seq:
            c.error(f.value_pos("detectors"), "'detectors' is empty: the ruleset could never fire")
        return seq


def check_rulesets(c: Checker, f: Fields, d: Dialect, interval: float, drop_in: bool) -> list[Any]:
    """The rulesets of a policy (`Ruleset`) or of a drop-in (`DropInRuleset`); errors go to `c`."""
    out: list[Any] = []
    if "rulesets" not in f:
        c.error((0, 0), "missing 'rulesets': a policy needs at least one ruleset")
        return out
    seq = c.sequence(f.value("rulesets"), "'rulesets'", f.value_pos("rulesets"))
    if seq is not None and not seq:
        c.error(f.value_pos("rulesets"), "'rulesets' is empty: a policy needs at least one ruleset")
    names: set[str] = set()
    for i, node in enumerate(seq or []):
        rs = _ruleset(c, node, c.item_pos(seq, i), d, interval, i, drop_in)  # type: ignore[arg-type]
        if rs is None:
            continue
        if rs.name in names:
            c.error(lc_pos(node, "name", value=True), f"duplicate ruleset name '{rs.name}'")
        names.add(rs.name)
        out.append(rs)
    return out


def _ruleset(c: Checker, node: Any, pos: Pos, d: Dialect, interval: float, index: int,
             drop_in: bool) -> Ruleset | DropInRuleset | None:
    keys = {k: v for k, v in d.ruleset_keys.items() if not drop_in or k in DROP_IN_RULESET_KEYS}
    misplaced = {s: _NOT_IN_DROP_IN for k, v in d.ruleset_keys.items() if k not in keys for s in v}
    f = c.fields(node, "a ruleset", pos, keys, misplaced)
    if f is None:
        return None
    errors_before = len(c.errors)
    for required in ("name",) if drop_in else ("name", "detectors", "actions"):
        if required not in f:
            c.error(pos, f"ruleset is missing '{d.ruleset_keys[required][0]}'")
    name = c.get(f, "name", parse_name, "")
    delay = c.get(f, "post_action_delay", _duration, DEFAULT_POST_ACTION_DELAY)
    timeout = c.get(f, "prekill_hook_timeout", _positive_duration, None)
    silence = c.get(f, "silence_logs", _log_entities, [])
    options = _drop_in_options(c, f, d) if "drop_in" in f else DropInOptions()
    cgroups: list[str] = c.get(f, "cgroup", _cgroup_patterns, [])
    xattr = c.get(f, "xattr_filter", _string, "")
    if "xattr_filter" in f and "cgroup" not in f:
        # oomd filters the ruleset's cgroup matches by the xattr; without 'cgroup' there is nothing to filter.
        c.error(f.key_pos("xattr_filter"), f"'{f.key('xattr_filter')}' filters the matches of the ruleset's "
                f"'cgroup': give 'cgroup' too")
    c.spot(("ruleset", index), pos)
    if "cgroup" in f:
        c.spot(("ruleset_cgroup", index), f.value_pos("cgroup"))
    opts = RulesetOptions(name=name, post_action_delay=delay, interval=interval, cgroup=tuple(cgroups),
                          prekill_hook_timeout=timeout)
    # `ruleset_cgroup` watches nothing in a ruleset without `cgroup`. A drop-in's plugins run with the base
    # ruleset's cgroup, which this file cannot know; an invalid `cgroup` has had its error already.
    no_cgroup = not drop_in and "cgroup" not in f
    groups = d.groups(c, f, opts, ("detector", index), no_cgroup) if "detectors" in f else None
    actions = None
    if "actions" in f:
        seq = c.sequence(f.value("actions"), f"'{f.key('actions')}'", f.value_pos("actions"))
        if seq is not None and not seq:
            c.error(f.value_pos("actions"), f"'{f.key('actions')}' is empty")
        items = [(node, c.item_pos(seq, i)) for i, node in enumerate(seq or [])]  # type: ignore[arg-type]
        actions = check_plugins(c, d, items, "action", opts, ("action", index), no_cgroup)
    if len(c.errors) > errors_before:
        return None
    if drop_in:
        return DropInRuleset(name=name, detector_groups=groups, actions=actions)
    return Ruleset(
        name=name, detector_groups=groups or [], actions=actions or [], post_action_delay=delay,
        prekill_hook_timeout=timeout, silence_logs=silence, drop_in=options, cgroup=cgroups, xattr_filter=xattr,
    )


def _drop_in_options(c: Checker, f: Fields, d: Dialect) -> DropInOptions:
    m = c.fields(f.value("drop_in"), f"'{f.key('drop_in')}'", f.value_pos("drop_in"), d.drop_in_keys)
    if m is None:
        return DropInOptions()
    return DropInOptions(
        detectors=c.get(m, "detectors", _boolean, False),
        actions=c.get(m, "actions", _boolean, False),
        disable_on_drop_in=c.get(m, "disable_on_drop_in", _boolean, False),
    )


def check_plugins(c: Checker, d: Dialect, items: list[tuple[Any, Pos]], kind: PluginKind, opts: RulesetOptions,
                  at: tuple[Any, ...], no_cgroup: bool) -> list[PluginSpec]:
    """Each entry's plugin, validated by its declarations; `at` + (index,) keys its spots."""
    out: list[PluginSpec] = []
    for i, (node, pos) in enumerate(items):
        raw = d.plugin(c, node, pos, kind)
        if raw is not None:
            spec = _plugin(c, raw, kind, opts, (*at, i), no_cgroup)
            if spec is not None:
                out.append(spec)
    return out


def _declared_kinds(name: str, kind: PluginKind) -> dict[str, str]:
    """A known plugin's argument kinds by name; {} for an unknown plugin (build_plugin reports that)."""
    try:
        return {a.name: a.kind for a in lookup(name, kind).args}
    except ArgError:
        return {}


def _overflowing_arg(name: str, kind: PluginKind, args: Mapping[str, ArgValue]) -> str | None:
    """The argument whose declared parsing raises OverflowError, to point at its value; None if none does alone."""
    try:
        decls = {a.name: a for a in lookup(name, kind).args}
    except ArgError:
        return None
    for arg, value in args.items():
        if arg not in decls:
            continue
        try:
            decls[arg].parse(value)
        except OverflowError:
            return arg
        except (ValueError, TypeError):
            continue
    return None


def _plugin(c: Checker, raw: RawPlugin, kind: PluginKind, opts: RulesetOptions, at: tuple[Any, ...],
            no_cgroup: bool) -> PluginSpec | None:
    args: dict[str, ArgValue] = {}
    raw_args = raw.args if raw.args is not None else CommentedMap()
    declared = _declared_kinds(raw.name, kind)
    bad = False
    for arg, value in raw_args.items():
        vpos = lc_pos(raw_args, arg, value=True)
        name = str(arg)
        if isinstance(value, list):
            # A list of patterns is written as one comma-separated string, so the wire stays scalars and the
            # argument means what oomd's "a,b" means.
            if name in declared and declared[name] not in GLOB_ARG_KINDS:
                c.error(vpos, f"{raw.name}: argument '{name}' takes one value, not a list")
                bad = True
            elif not value or not all(isinstance(v, str) for v in value):
                c.error(vpos, f"{raw.name}: argument '{name}' must be a list of cgroup patterns")
                bad = True
            else:
                args[name] = ",".join(str(v) for v in value)
        elif isinstance(value, float) and not math.isfinite(value):
            # .nan, .inf, 1e400: no argument means anything with them (a NaN threshold is never crossed).
            c.error(vpos, f"{raw.name}: argument '{name}' must be a finite number, got {value!r}")
            bad = True
        elif isinstance(value, int) and not isinstance(value, bool) and not WIRE_INT_MIN <= value <= WIRE_INT_MAX:
            # Arguments travel to the workers as they were written, and msgpack carries no larger integer: the
            # policy would pass here and then fail to reach them.
            c.error(vpos, f"{raw.name}: argument '{name}': the number is too large")
            bad = True
        elif _is_scalar(value):
            args[name] = _plain(value)
        else:
            c.error(vpos, f"argument '{name}' of '{raw.name}' must be a scalar")
            bad = True
        c.spot((*at, name), vpos)
    c.spot(at, raw.name_pos)
    if bad:
        return None
    spec = PluginSpec(name=raw.name, args=args)
    try:
        plugin = build_plugin(spec, kind, opts)
    except ArgError as e:
        known = e.arg is not None and e.arg in raw_args
        where = lc_pos(raw_args, e.arg, value=e.at_value) if known else raw.name_pos
        c.error(where, f"{raw.name}: {e}")
        return None
    except OverflowError as e:
        # The declarations turn a bad value into ArgError, but float() and int() raise OverflowError for an integer
        # past a float's range or an infinite size (threshold: 1 followed by 400 zeros, size_threshold: 1e400).
        arg = _overflowing_arg(raw.name, kind, args)
        if arg is None:
            c.error(raw.name_pos, f"{raw.name}: a number is too large ({e})")
        else:
            c.error(lc_pos(raw_args, arg, value=True),
                    f"{raw.name}: argument '{arg}': the number is too large")
        return None
    if no_cgroup and getattr(plugin, "ruleset_cgroup", ()):
        c.error(lc_pos(raw_args, "ruleset_cgroup"),
                f"{raw.name}: 'ruleset_cgroup' is relative to the ruleset's 'cgroup', which this ruleset does not set")
        return None
    return spec


# ---- pyoomd's YAML ---------------------------------------------------------------------------------------------


class YamlDialect(Dialect):
    def groups(self, c: Checker, f: Fields, opts: RulesetOptions, at: tuple[Any, ...],
               no_cgroup: bool) -> list[DetectorGroup]:
        seq = self.group_list(c, f)
        groups: list[DetectorGroup] = []
        for gi, node in enumerate(seq or []):
            gpos = c.item_pos(seq, gi)  # type: ignore[arg-type]
            g = c.fields(node, "a detector group", gpos, GROUP_KEYS)
            if g is None:
                continue
            missing = [k for k in GROUP_KEYS if k not in g]
            if missing:
                c.error(gpos, f"a detector group needs {' and '.join(repr(k) for k in missing)} "
                        "(a group is {name: ..., all: [DETECTOR, ...]})")
                continue
            gname = c.get(g, "name", parse_name, "")
            plugins = c.sequence(g.value("all"), "'all'", g.value_pos("all"))
            if plugins is not None and not plugins:
                c.error(g.value_pos("all"), "'all' is empty")
            items = [(p, c.item_pos(plugins, i)) for i, p in enumerate(plugins or [])]  # type: ignore[arg-type]
            groups.append(DetectorGroup(name=gname, detectors=check_plugins(
                c, self, items, "detector", opts, (*at, gi), no_cgroup)))
        return groups

    def plugin(self, c: Checker, node: Any, pos: Pos, kind: PluginKind) -> RawPlugin | None:
        if not isinstance(node, CommentedMap) or len(node) != 1:
            c.error(pos, f"each {kind} is a mapping with one key, the plugin name: '- pressure_above: {{...}}'")
            return None
        (name,) = node.keys()
        args = node[name]
        if args is not None and not isinstance(args, CommentedMap):
            c.error(lc_pos(node, name, value=True), f"the arguments of '{name}' must be a mapping")
            return None
        return RawPlugin(str(name), lc_pos(node, name), args)


YAML_DIALECT = YamlDialect()


# A policy is a few levels deep and a few hundred nodes large. Past these bounds a file is refused where it
# crosses them: the checker walks the tree recursively and prints values in its messages, so a deeper file would
# end in RecursionError, and a YAML alias bomb ("billion laughs": each alias repeating an anchor made of aliases)
# would be expanded by those walks and messages until time or memory ran out, while ruamel itself loads it in
# milliseconds (an alias is the same object again).
MAX_DEPTH = 64
MAX_NODES = 100_000  # counting each alias as the whole subtree it repeats
_SURROGATE = re.compile("[\ud800-\udfff]")


class _BoundedComposer(Composer):
    """ruamel's composer, refusing (at the offending node or alias) a document nested deeper than MAX_DEPTH, one
    that expands through its aliases to more than MAX_NODES nodes, and an alias inside its own anchor (a
    recursive structure, which every walk of the tree would follow forever)."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self._expanded = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size, once it is complete

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.parser.peek_event().start_mark
        if self.parser.check_event(AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise ComposerError(None, None, "an alias may not refer to a node that contains it", mark)
            self._count(size, mark)
            return node
        if self.parser.check_event(ScalarEvent) and _SURROGATE.search(self.parser.peek_event().value):
            # A "\udcff" escape in a double-quoted string: Python takes it, but it is not text, and the policy
            # could not be sent to the workers (msgpack encodes UTF-8).
            raise ComposerError(None, None, "a string with a lone surrogate (an escape like \\udcff) is not text",
                                mark)
        before = self._expanded
        node = super().compose_node(parent, index)
        self._count(1, mark)
        self._sizes[id(node)] = self._expanded - before
        return node

    def _count(self, size: int, mark: Any) -> None:
        self._expanded += size
        if self._expanded > MAX_NODES:
            raise ComposerError(None, None, f"the document expands to more than {MAX_NODES} nodes "
                                "(aliases counted at every use): a policy is never this large", mark)


# What ruamel's constructors let escape, unpositioned, on values the document's tags or aliases make impossible:
# an integer of more than 4300 digits, an impossible date, an alias of a list of lists as a key of a `!!set` or
# `!!omap` (TypeError), and from deeper inside, `!!bool abc` (KeyError), `!!int 0x` (IndexError), a collection's
# tag on a scalar, `!!omap x` (AttributeError).
_CONSTRUCTION_ERRORS = (ValueError, OverflowError, TypeError, KeyError, IndexError, AttributeError)


def _unpositioned(e: Exception, node: Any) -> ConstructorError:
    tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
    message = f"cannot read this value as {tag}"
    if isinstance(e, ValueError | OverflowError | TypeError):
        # Python's advice after the ';' (sys.set_int_max_str_digits) is not for a policy's author.
        message += ": " + str(e).split(";", 1)[0]
    return ConstructorError(None, None, message, node.start_mark)


def _positioned(generator: Any, node: Any) -> Any:
    try:
        yield from generator
    except MarkedYAMLError:
        raise
    except _CONSTRUCTION_ERRORS as e:
        raise _unpositioned(e, node) from None


class _PositionedConstructor(RoundTripConstructor):
    """ruamel's round-trip constructor, with the errors Python raises while constructing a value turned into
    ruamel's positioned ConstructorError, at the node they came from."""

    def construct_non_recursive_object(self, node: Any, tag: str | None = None) -> Any:
        pending = len(self.state_generators)
        try:
            data = super().construct_non_recursive_object(node, tag)
        except MarkedYAMLError:
            raise
        except _CONSTRUCTION_ERRORS as e:
            raise _unpositioned(e, node) from None
        # A collection is filled in later, by generators that construct_document runs after this returns: each
        # keeps its node, for the position of what it raises.
        self.state_generators[pending:] = [
            g if g.gi_code is _positioned.__code__ else _positioned(g, node) for g in self.state_generators[pending:]
        ]
        return data

    def check_mapping_key(self, node: Any, key_node: Any, mapping: Any, key: Any, value: Any) -> bool:
        # A key that is an alias of a list of lists (`? *anchor`) passes ruamel's own hashability check as a
        # tuple of lists, and fails only when hashed.
        try:
            return super().check_mapping_key(node, key_node, mapping, key, value)
        except TypeError:
            raise ConstructorError(None, None, "found unhashable key (a list of lists, used as a key through an "
                                   "alias)", key_node.start_mark) from None


def parse_tree(text: str, source: str, label: str = "YAML", preserve_quotes: bool = False) -> Any:
    """The round-trip tree (positions kept), or PolicyInvalid with the parser's position."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = preserve_quotes  # oomd_json checks that strings were written in double quotes
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _PositionedConstructor
    yaml.max_depth = MAX_DEPTH
    try:
        return yaml.load(text)
    except MaxDepthExceededError as e:
        # ruamel's own message suggests raising YAML().max_depth, which a policy's author cannot do.
        mark = e.problem_mark
        line, col = (mark.line, mark.column) if mark else (0, 0)
        raise PolicyInvalid([PolicyError(source, line + 1, col + 1,
                                         f"{label}: nested deeper than {MAX_DEPTH} levels")]) from None
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line, mark.column) if mark else (0, 0)
        problem = e.problem or e.context or "invalid syntax"
        raise PolicyInvalid([PolicyError(source, line + 1, col + 1, f"{label}: {problem}")]) from None
    except ReaderError as e:
        # Bad characters: the reader gives an offset into the text, not a line and column.
        line, col = offset_pos(text, e.position)
        char = f"#x{e.character:04x}" if isinstance(e.character, int) else repr(e.character)
        raise PolicyInvalid([PolicyError(source, line + 1, col + 1, f"{e.reason} ({char})")]) from None


def offset_pos(text: str, offset: int) -> Pos:
    line = text.count("\n", 0, offset)
    return line, offset - (text.rfind("\n", 0, offset) + 1)


def _version(c: Checker, doc: Any) -> None:
    """A file in another policy language would only produce noise: stop at the version with one error."""
    if not isinstance(doc, CommentedMap) or "version" not in doc:
        return
    value = doc["version"]
    if isinstance(value, bool) or not isinstance(value, int) or value != POLICY_VERSION:
        c.error(lc_pos(doc, "version", value=True),
                f"unsupported policy version {value!r}: this pyoomd reads version {POLICY_VERSION}")
        raise PolicyInvalid(c.errors)


def _yaml_policy(doc: Any, source: str, spots: Spots | None) -> Policy:
    c = Checker(source, spots=spots)
    _version(c, doc)
    f = c.fields(doc, "the policy", (0, 0), TOP_KEYS)
    if f is None:
        raise PolicyInvalid(c.errors)
    interval = c.get(f, "interval", _positive_duration, 1.0)
    dry_run = c.get(f, "dry_run", _boolean, False)
    rulesets = check_rulesets(c, f, YAML_DIALECT, interval, drop_in=False)
    if c.errors:
        raise PolicyInvalid(c.errors)
    return Policy(rulesets=rulesets, interval=interval, dry_run=dry_run, source=source, version=POLICY_VERSION)


def _yaml_drop_in(doc: Any, source: str, mtime_ns: int, spots: Spots | None) -> DropIn:
    c = Checker(source, spots=spots)
    _version(c, doc)
    keys = {k: v for k, v in TOP_KEYS.items() if k in DROP_IN_FILE_KEYS}
    misplaced = {k: "cannot be set by a drop-in: it belongs in the base policy" for k in TOP_KEYS if k not in keys}
    f = c.fields(doc, "the drop-in", (0, 0), keys, misplaced)
    if f is None:
        raise PolicyInvalid(c.errors)
    rulesets = check_rulesets(c, f, YAML_DIALECT, 1.0, drop_in=True)
    if c.errors:
        raise PolicyInvalid(c.errors)
    return DropIn(source=source, mtime_ns=mtime_ns, rulesets=rulesets)


# ---- entry points ----------------------------------------------------------------------------------------------


def load_policy_text(text: str, source: str, spots: Spots | None = None) -> Policy:
    """A policy from text: oomd's JSON when `is_oomd_json` says so, pyoomd's YAML otherwise."""
    # Imported here: policy.oomd_json builds on this module's checker.
    from policy.oomd_json import is_oomd_json, oomd_json_policy

    if is_oomd_json(text, source):
        return oomd_json_policy(text, source, spots)
    return _yaml_policy(parse_tree(text, source), source, spots)


def load_drop_in_text(text: str, source: str, mtime_ns: int = 0, spots: Spots | None = None) -> DropIn:
    """A drop-in from text: the policy format, but a ruleset may leave out its detectors or its actions."""
    from policy.oomd_json import is_oomd_json, oomd_json_drop_in

    if is_oomd_json(text, source):
        return oomd_json_drop_in(text, source, mtime_ns, spots)
    return _yaml_drop_in(parse_tree(text, source), source, mtime_ns, spots)


def _read(p: Path, what: str) -> tuple[str, int]:
    try:
        return p.read_text(), p.stat().st_mtime_ns
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
        raise PolicyInvalid([PolicyError(str(p), 1, 1, f"cannot read the {what}: {reason}")]) from None


def load_policy(path: str | Path, spots: Spots | None = None) -> Policy:
    p = Path(path)
    text, _ = _read(p, "policy")
    return load_policy_text(text, str(p), spots)


def load_drop_in(path: str | Path, spots: Spots | None = None) -> DropIn:
    """A drop-in file, validated (syntax and plugins); which base ruleset it targets is the engine's business."""
    p = Path(path)
    text, mtime_ns = _read(p, "drop-in")
    return load_drop_in_text(text, str(p), mtime_ns, spots)
