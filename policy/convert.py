"""`pyoomd convert`: any policy (oomd's JSON or pyoomd's YAML) written as pyoomd's YAML, version 1.

The output loads to the same `Policy` (or `DropIn`) as its input, except for `source`: it is written from the
loaded struct, not from the input's text, so plugin arguments keep the type they were given ("60" stays a
string, as oomd wrote it) and settings left at their defaults are left out. Comments of the input are not carried.
"""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from policy.loader import DEFAULT_POST_ACTION_DELAY, POLICY_VERSION
from policy.model import DetectorGroup, DropIn, DropInOptions, DropInRuleset, PluginSpec, Policy, Ruleset

FLOW_WIDTH = 100  # plugin arguments fit on the plugin's line up to this width, else one per line


def duration(seconds: float) -> str | float:
    """A unit string that parses back to exactly `seconds` ('2m', '15s', '1.5s', '500ms'), else the number."""
    if seconds == 0:
        return "0s"
    for unit, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= scale and (seconds / scale).is_integer():
            return f"{int(seconds / scale)}{unit}"
    ms = round(seconds * 1000)
    if seconds < 1 and ms * 0.001 == seconds:  # the loader computes N * 0.001: write only what comes back exactly
        return f"{ms}ms"
    text = repr(float(seconds))
    return f"{text}s" if "e" not in text else seconds  # repr round-trips, and "N s" is N * 1.0


def _flow(items: dict[str, Any]) -> CommentedMap:
    m = CommentedMap(items)
    m.fa.set_flow_style()
    return m


def _plugin(spec: PluginSpec, indent: int) -> CommentedMap:
    args = CommentedMap(spec.args)
    # One line when it fits: `- pressure_above: {cgroup: user.slice, ...}`, as the shipped policy is written.
    line = f"{spec.name}: {{{', '.join(f'{k}: {v}' for k, v in spec.args.items())}}}"
    if indent + len(line) <= FLOW_WIDTH:
        args.fa.set_flow_style()
    return CommentedMap({spec.name: args})


def _plugins(specs: list[PluginSpec], indent: int) -> CommentedSeq:
    return CommentedSeq(_plugin(s, indent) for s in specs)


def _groups(groups: list[DetectorGroup]) -> CommentedSeq:
    return CommentedSeq(CommentedMap({"name": g.name, "all": _plugins(g.detectors, 12)}) for g in groups)


def _ruleset(rs: Ruleset) -> CommentedMap:
    m = CommentedMap({"name": rs.name})
    if rs.cgroup:
        m["cgroup"] = ",".join(rs.cgroup)
    if rs.xattr_filter:
        m["xattr_filter"] = rs.xattr_filter
    if rs.post_action_delay != DEFAULT_POST_ACTION_DELAY:
        m["post_action_delay"] = duration(rs.post_action_delay)
    if rs.prekill_hook_timeout is not None:
        m["prekill_hook_timeout"] = duration(rs.prekill_hook_timeout)
    if rs.silence_logs:
        m["silence_logs"] = CommentedSeq(rs.silence_logs)
        m["silence_logs"].fa.set_flow_style()
    if rs.drop_in != DropInOptions():
        m["drop_in"] = _flow({k: getattr(rs.drop_in, k) for k in DropInOptions.__struct_fields__})
    m["detectors"] = _groups(rs.detector_groups)
    m["actions"] = _plugins(rs.actions, 8)
    return m


def _drop_in_ruleset(rs: DropInRuleset) -> CommentedMap:
    m = CommentedMap({"name": rs.name})
    if rs.detector_groups is not None:
        m["detectors"] = _groups(rs.detector_groups)
    if rs.actions is not None:
        m["actions"] = _plugins(rs.actions, 8)
    return m


def _dump(doc: CommentedMap, header: str) -> str:
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never fold a long cgroup list or name across lines
    out = io.StringIO()
    yaml.dump(doc, out)
    return header + out.getvalue()


def policy_to_yaml(policy: Policy) -> str:
    doc = CommentedMap({"version": POLICY_VERSION})
    if policy.interval != 1.0:
        doc["interval"] = duration(policy.interval)
    if policy.dry_run:
        doc["dry_run"] = True
    doc["rulesets"] = CommentedSeq(_ruleset(rs) for rs in policy.rulesets)
    return _dump(doc, f"# pyoomd policy, converted from {policy.source} by `pyoomd convert`\n")


def drop_in_to_yaml(drop_in: DropIn) -> str:
    doc = CommentedMap({"version": POLICY_VERSION})
    doc["rulesets"] = CommentedSeq(_drop_in_ruleset(rs) for rs in drop_in.rulesets)
    return _dump(doc, f"# pyoomd drop-in, converted from {drop_in.source} by `pyoomd convert --drop-in`\n")
