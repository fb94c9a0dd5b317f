"""Drop-in policy files on top of the base policy, as oomd composes them.

A drop-in names a base ruleset. pyoomd adds a copy of that ruleset with the drop-in's detector groups and/or
actions in place of the base's, where the base allows it (`drop_in: {detectors, actions}`), and runs the copy
before the base. Several drop-ins for one base run newest first. The base keeps running, unless it says
`disable_on_drop_in`, in which case it rests while any drop-in targets it. If several base rulesets share the
name, the first is the target.
"""

from __future__ import annotations

import msgspec

from policy.model import DropIn, PluginSpec, Policy, Ruleset
from policy.plugins.base import PluginKind


def check_drop_in(base: Policy, drop_in: DropIn) -> list[str]:
    """Why `drop_in` cannot apply to `base` (empty: it can)."""
    errors = []
    for rs in drop_in.rulesets:
        target = next((b for b in base.rulesets if b.name == rs.name), None)
        if target is None:
            errors.append(f"{drop_in.source}: ruleset {rs.name!r} names no ruleset of the base policy")
            continue
        if rs.detector_groups is not None and not target.drop_in.detectors:
            errors.append(f"{drop_in.source}: ruleset {rs.name!r} replaces detectors, which its base ruleset does "
                          "not allow (drop_in: {detectors: true})")
        if rs.actions is not None and not target.drop_in.actions:
            errors.append(f"{drop_in.source}: ruleset {rs.name!r} replaces actions, which its base ruleset does not "
                          "allow (drop_in: {actions: true})")
    return errors


def drop_in_name(base: str, source: str) -> str:
    return f"{base} [drop-in {source}]"


def effective_rulesets(policy: Policy) -> list[Ruleset]:
    """The rulesets the engine runs, in order: each base ruleset preceded by its drop-in copies."""
    newest_first = sorted(policy.drop_ins, key=lambda d: d.mtime_ns, reverse=True)
    out: list[Ruleset] = []
    claimed: set[int] = set()
    for index, base in enumerate(policy.rulesets):
        first_of_name = next(i for i, b in enumerate(policy.rulesets) if b.name == base.name) == index
        copies = []
        if first_of_name:
            for drop_in in newest_first:
                if check_drop_in(policy, drop_in):
                    continue  # refused when it was loaded; never half-applied
                for rs in drop_in.rulesets:
                    if rs.name != base.name:
                        continue
                    copies.append(msgspec.structs.replace(
                        base,
                        name=drop_in_name(base.name, drop_in.source),
                        detector_groups=rs.detector_groups if rs.detector_groups is not None else base.detector_groups,
                        actions=rs.actions if rs.actions is not None else base.actions,
                    ))
        out.extend(copies)
        if copies:
            claimed.add(index)
        if not (copies and base.drop_in.disable_on_drop_in):
            out.append(base)
    return out


def _meaning_of(spec: PluginSpec, kind: PluginKind) -> tuple:
    """A plugin as it will run: its arguments parsed (defaults filled in), so that `1`, `"1"` and `1s` are one
    duration. A plugin that does not build (it could not have loaded) keeps its arguments as written."""
    from policy.plugins.args import ArgError, parse_args
    from policy.plugins.registry import lookup

    try:
        cls = lookup(spec.name, kind)
        values = parse_args(spec.name, cls.args, spec.args)
    except (ArgError, ValueError):
        return (spec.name, tuple(sorted(spec.args.items())))
    return (spec.name, tuple(sorted((k, repr(v)) for k, v in values.items())))


def same_meaning(a: Ruleset, b: Ruleset) -> bool:
    """Whether two rulesets run the same, however their plugin arguments are written: a reload that only
    rewrites `duration: 1` as `duration: 1s` keeps the ruleset's state (windows, pauses)."""
    if a == b:
        return True
    plain = {"detector_groups": [], "actions": []}
    if msgspec.structs.replace(a, **plain) != msgspec.structs.replace(b, **plain):
        return False
    groups_a = [(g.name, [_meaning_of(d, "detector") for d in g.detectors]) for g in a.detector_groups]
    groups_b = [(g.name, [_meaning_of(d, "detector") for d in g.detectors]) for g in b.detector_groups]
    return groups_a == groups_b and [_meaning_of(x, "action") for x in a.actions] == [
        _meaning_of(x, "action") for x in b.actions]
