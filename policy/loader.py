"""Loading a YAML policy, with every error pointing at its file, line and column.

The whole file is checked before anything is returned: either a valid `Policy`, or `PolicyInvalid` with every
error found. A policy that fails to load changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from policy.model import DetectorGroup, PluginSpec, Policy, Ruleset
from policy.plugins import ArgError, build_plugin
from policy.plugins.base import RulesetOptions
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
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


TOP_KEYS = ("interval", "dry_run", "rulesets")
RULESET_KEYS = ("name", "detectors", "actions", "post_action_delay")
GROUP_KEYS = ("name", "all")


class _Checker:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[PolicyError] = []

    def error(self, pos: tuple[int, int], message: str) -> None:
        self.errors.append(PolicyError(self.source, pos[0] + 1, pos[1] + 1, message))

    @staticmethod
    def key_pos(m: CommentedMap, key: str) -> tuple[int, int]:
        return tuple(m.lc.key(key))  # type: ignore[return-value]

    @staticmethod
    def value_pos(m: CommentedMap, key: str) -> tuple[int, int]:
        return tuple(m.lc.value(key))  # type: ignore[return-value]

    @staticmethod
    def node_pos(node: Any, fallback: tuple[int, int]) -> tuple[int, int]:
        lc = getattr(node, "lc", None)
        return (lc.line, lc.col) if lc is not None else fallback

    def mapping(self, node: Any, where: str, pos: tuple[int, int], allowed: tuple[str, ...]) -> CommentedMap | None:
        if not isinstance(node, CommentedMap):
            self.error(pos, f"{where} must be a mapping")
            return None
        for key in node:
            if key not in allowed:
                self.error(self.key_pos(node, key), f"unknown key '{key}' in {where} (allowed: {', '.join(allowed)})")
        return node

    def sequence(self, node: Any, where: str, pos: tuple[int, int]) -> CommentedSeq | None:
        if not isinstance(node, CommentedSeq):
            self.error(pos, f"{where} must be a list")
            return None
        return node

    def scalar(self, m: CommentedMap, key: str, parse: Any, default: Any) -> Any:
        if key not in m:
            return default
        try:
            return parse(m[key])
        except (ValueError, TypeError) as e:
            self.error(self.value_pos(m, key), f"'{key}': {e}")
            return default


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be greater than zero, got {value!r}")
    return seconds


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def load_policy_text(text: str, source: str) -> Policy:
    try:
        doc = YAML(typ="rt").load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line, mark.column) if mark else (0, 0)
        problem = e.problem or e.context or "invalid YAML"
        raise PolicyInvalid([PolicyError(source, line + 1, col + 1, f"YAML: {problem}")]) from None
    c = _Checker(source)
    top = c.mapping(doc, "the policy", (0, 0), TOP_KEYS)
    if top is None:
        raise PolicyInvalid(c.errors)
    interval = c.scalar(top, "interval", _positive_duration, 1.0)
    dry_run = c.scalar(top, "dry_run", _boolean, False)
    rulesets: list[Ruleset] = []
    if "rulesets" not in top:
        c.error((0, 0), "missing 'rulesets': a policy needs at least one ruleset")
    else:
        seq = c.sequence(top["rulesets"], "'rulesets'", c.value_pos(top, "rulesets"))
        if seq is not None and not seq:
            c.error(c.value_pos(top, "rulesets"), "'rulesets' is empty: a policy needs at least one ruleset")
        names: set[str] = set()
        for i, node in enumerate(seq or []):
            rs = _ruleset(c, node, c.node_pos(node, tuple(seq.lc.item(i))), interval)
            if rs is None:
                continue
            if rs.name in names:
                c.error(c.value_pos(node, "name"), f"duplicate ruleset name '{rs.name}'")
            names.add(rs.name)
            rulesets.append(rs)
    if c.errors:
        raise PolicyInvalid(c.errors)
    return Policy(rulesets=rulesets, interval=interval, dry_run=dry_run, source=source)


def _ruleset(c: _Checker, node: Any, pos: tuple[int, int], interval: float) -> Ruleset | None:
    m = c.mapping(node, "a ruleset", pos, RULESET_KEYS)
    if m is None:
        return None
    errors_before = len(c.errors)
    for required in ("name", "detectors", "actions"):
        if required not in m:
            c.error(pos, f"ruleset is missing '{required}'")
    name = c.scalar(m, "name", _name, "")
    delay = c.scalar(m, "post_action_delay", parse_duration, 15.0)
    opts = RulesetOptions(name=name, post_action_delay=delay, interval=interval)
    groups: list[DetectorGroup] = []
    if "detectors" in m:
        seq = c.sequence(m["detectors"], "'detectors'", c.value_pos(m, "detectors"))
        if seq is not None and not seq:
            c.error(c.value_pos(m, "detectors"), "'detectors' is empty: the ruleset could never fire")
        for i, g in enumerate(seq or []):
            gpos = c.node_pos(g, tuple(seq.lc.item(i)))
            gm = c.mapping(g, "a detector group", gpos, GROUP_KEYS)
            if gm is None:
                continue
            if "name" not in gm or "all" not in gm:
                c.error(gpos, "a detector group needs 'name' and 'all' (a list of detectors)")
                continue
            gname = c.scalar(gm, "name", _name, "")
            plugins = _plugins(c, gm, "all", "detector", opts)
            groups.append(DetectorGroup(name=gname, detectors=plugins))
    actions = _plugins(c, m, "actions", "action", opts) if "actions" in m else []
    if len(c.errors) > errors_before:
        return None
    return Ruleset(name=name, detector_groups=groups, actions=actions, post_action_delay=delay)


def _plugins(c: _Checker, parent: CommentedMap, key: str, kind: str, opts: RulesetOptions) -> list[PluginSpec]:
    seq = c.sequence(parent[key], f"'{key}'", c.value_pos(parent, key))
    if seq is not None and not seq:
        c.error(c.value_pos(parent, key), f"'{key}' is empty")
    out: list[PluginSpec] = []
    for i, node in enumerate(seq or []):
        pos = c.node_pos(node, tuple(seq.lc.item(i)))
        if not isinstance(node, CommentedMap) or len(node) != 1:
            c.error(pos, f"each {kind} is a mapping with one key, the plugin name: '- pressure_above: {{...}}'")
            continue
        (pname,) = node.keys()
        raw_args = node[pname]
        args_pos = c.value_pos(node, pname)
        if raw_args is None:
            raw_args = CommentedMap()
        if not isinstance(raw_args, CommentedMap):
            c.error(args_pos, f"the arguments of '{pname}' must be a mapping")
            continue
        args: dict[str, Any] = {}
        bad = False
        for arg, value in raw_args.items():
            if not isinstance(value, str | int | float | bool):
                c.error(c.value_pos(raw_args, arg), f"argument '{arg}' of '{pname}' must be a scalar")
                bad = True
            args[str(arg)] = value
        if bad:
            continue
        spec = PluginSpec(name=str(pname), args=args)
        try:
            build_plugin(spec, kind, opts)  # type: ignore[arg-type]
        except ArgError as e:
            if e.arg is not None and e.arg in raw_args:
                where = c.value_pos(raw_args, e.arg) if e.at_value else c.key_pos(raw_args, e.arg)
            else:
                where = c.key_pos(node, pname)
            c.error(where, f"{pname}: {e}")
            continue
        out.append(spec)
    return out


def load_policy(path: str | Path) -> Policy:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PolicyInvalid([PolicyError(str(p), 1, 1, f"cannot read the policy: {e.strerror}")]) from None
    return load_policy_text(text, str(p))
