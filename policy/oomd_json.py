"""oomd's JSON policy format, loaded as oomd writes it, with errors at file, line and column.

oomd reads its config with jsoncpp, comments allowed (`//` to the end of the line, `/* ... */`). Here the comments
are blanked out (kept as spaces, so every line and column stays where it was) and the rest is parsed by
ruamel.yaml, since JSON is YAML: the tree carries the positions every error needs. What YAML accepts but JSON
does not (unquoted or single-quoted strings, `#` comments) is reported, so a file that passes here is JSON.

The mapping to pyoomd's model:
  "rulesets": [RULESET...]              -> Policy.rulesets
  "prekill_hooks": []                   -> pyoomd runs no prekill hooks yet: only an empty list is accepted
  RULESET "name"                        -> Ruleset.name
          "drop-in": {"detectors", "actions", "disable-on-drop-in"}  -> Ruleset.drop_in
          "silence-logs": "engine,plugins"                          -> Ruleset.silence_logs
          "post_action_delay", "prekill_hook_timeout" (seconds)     -> the same names
          "cgroup": "a/*,b", "xattr_filter"                         -> the same names
          "detectors": [[GROUP NAME, PLUGIN...]...]                 -> Ruleset.detector_groups
          "actions": [PLUGIN...]                                    -> Ruleset.actions
  PLUGIN {"name": NAME, "args": {ARG: VALUE}}                       -> PluginSpec (values kept as written)
Every key with a '-' or '_' is accepted in both spellings ("drop_in", "silence_logs", "disable_on_drop_in").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from policy.loader import (
    Checker,
    Dialect,
    Fields,
    Keys,
    PolicyError,
    PolicyInvalid,
    Pos,
    RawPlugin,
    Spots,
    check_plugins,
    check_rulesets,
    lc_pos,
    offset_pos,
    parse_name,
    parse_tree,
)
from policy.model import DetectorGroup, DropIn, Policy
from policy.plugins.base import PluginKind, RulesetOptions


def _both(preferred: str) -> tuple[str, str]:
    """oomd's spelling first, then the other one (kebab <-> snake)."""
    other = preferred.replace("-", "_") if "-" in preferred else preferred.replace("_", "-")
    return preferred, other


TOP_KEYS: Keys = {"rulesets": ("rulesets",), "prekill_hooks": _both("prekill_hooks")}
RULESET_KEYS: Keys = {
    "name": ("name",),
    "drop_in": _both("drop-in"),
    "silence_logs": _both("silence-logs"),
    "post_action_delay": _both("post_action_delay"),
    "prekill_hook_timeout": _both("prekill_hook_timeout"),
    "cgroup": ("cgroup",),
    "xattr_filter": _both("xattr_filter"),
    "detectors": ("detectors",),
    "actions": ("actions",),
}
DROP_IN_KEYS: Keys = {
    "detectors": ("detectors",),
    "actions": ("actions",),
    "disable_on_drop_in": _both("disable-on-drop-in"),
}
PLUGIN_KEYS: Keys = {"name": ("name",), "args": ("args",)}
# pyoomd's YAML has these at the top; an oomd JSON policy gets them elsewhere.
YAML_ONLY = {
    "version": "is a key of pyoomd's YAML policy; oomd's JSON has no version",
    "interval": "is a key of pyoomd's YAML policy; with oomd's JSON, use `pyoomd run --interval`",
    "dry_run": "is a key of pyoomd's YAML policy; with oomd's JSON, use `pyoomd run --dry-run`",
}


# ---- telling the formats apart ---------------------------------------------------------------------------------


def is_oomd_json(text: str, source: str) -> bool:
    """By extension (.json; .yaml and .yml are YAML), else by content: the first thing after whitespace and
    JSON comments is '{' (a YAML policy starts with a key; oomd's desktop.json starts with // comments)."""
    suffix = Path(source).suffix.lower()
    if suffix == ".json":
        return True
    if suffix in (".yaml", ".yml"):
        return False
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace() or text[i] == "\ufeff":
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            return text[i] == "{"
    return False


def blank_comments(text: str) -> tuple[str, list[tuple[int, str]]]:
    """The text with `//` and `/* */` comments replaced by spaces (newlines kept), and (offset, message) for
    what jsoncpp would reject here: an unterminated comment, a YAML '#' comment."""
    out = list(text)
    problems: list[tuple[int, str]] = []
    i, n = 0, len(text)
    in_string = False

    def blank(start: int, end: int) -> None:
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch in '"\n':  # an unterminated string ends at the line's end; the parser reports it
                in_string = False
            i += 1
        elif ch == '"':
            in_string = True
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                problems.append((i, "unterminated /* comment"))
                blank(i, n)
                break
            blank(i, end + 2)
            i = end + 2
        else:
            if ch == "#":
                problems.append((i, "not JSON: '#' does not start a comment; use // or /* */"))
            i += 1
    return "".join(out), problems


def _strictly_json(c: Checker, node: Any, pos: Pos) -> None:
    """Report what YAML took that JSON would not: keys and strings not in double quotes."""
    if isinstance(node, CommentedMap):
        for key, value in node.items():
            if not isinstance(key, DoubleQuotedScalarString):
                c.error(lc_pos(node, key), f"not JSON: write the key {key!r} in double quotes")
            _strictly_json(c, value, lc_pos(node, key, value=True))
    elif isinstance(node, CommentedSeq):
        for i, value in enumerate(node):
            _strictly_json(c, value, lc_pos(node, i))
    elif isinstance(node, str) and not isinstance(node, DoubleQuotedScalarString):
        c.error(pos, f"not JSON: write the string {str(node)!r} in double quotes")


def _parse(c: Checker, text: str, source: str) -> Any:
    blanked, problems = blank_comments(text)
    if problems:
        raise PolicyInvalid([PolicyError(source, *(x + 1 for x in offset_pos(text, off)), msg)
                             for off, msg in problems])
    doc = parse_tree(blanked, source, label="JSON", preserve_quotes=True)
    _strictly_json(c, doc, (0, 0))
    return doc


# ---- oomd's structure ------------------------------------------------------------------------------------------


class OomdJsonDialect(Dialect):
    ruleset_keys = RULESET_KEYS
    drop_in_keys = DROP_IN_KEYS

    def groups(self, c: Checker, f: Fields, opts: RulesetOptions, at: tuple[Any, ...],
               no_cgroup: bool) -> list[DetectorGroup]:
        seq = self.group_list(c, f)
        groups: list[DetectorGroup] = []
        for gi, node in enumerate(seq or []):
            gpos = c.item_pos(seq, gi)  # type: ignore[arg-type]
            g = c.sequence(node, "a detector group ([NAME, DETECTOR, ...])", gpos)
            if g is None:
                continue
            if not g or not isinstance(g[0], str):
                c.error(c.item_pos(g, 0) if g else gpos,
                        "a detector group is [NAME, DETECTOR, ...]: its first element must be its name")
                continue
            try:
                name = parse_name(g[0])
            except ValueError as e:
                c.error(c.item_pos(g, 0), f"the name of a detector group: {e}")
                continue
            if len(g) == 1:
                c.error(gpos, f"detector group '{name}' has no detectors")
                continue
            items = [(g[i], c.item_pos(g, i)) for i in range(1, len(g))]
            groups.append(DetectorGroup(name=name, detectors=check_plugins(
                c, self, items, "detector", opts, (*at, gi), no_cgroup)))
        return groups

    def plugin(self, c: Checker, node: Any, pos: Pos, kind: PluginKind) -> RawPlugin | None:
        p = c.fields(node, "an action" if kind == "action" else "a detector", pos, PLUGIN_KEYS)
        if p is None:
            return None
        if "name" not in p:
            c.error(pos, f"each {kind} needs \"name\", the plugin's name")
            return None
        try:
            name = parse_name(p.value("name"))
        except ValueError as e:
            c.error(p.value_pos("name"), f"'name': {e}")
            return None
        args = p.value("args") if "args" in p else None
        if args is not None and not isinstance(args, CommentedMap):
            c.error(p.value_pos("args"), f"the arguments of '{name}' must be an object")
            return None
        return RawPlugin(name, p.value_pos("name"), args)


JSON_DIALECT = OomdJsonDialect()


def _prekill_hooks(c: Checker, f: Fields) -> None:
    if "prekill_hooks" not in f:
        return
    seq = c.sequence(f.value("prekill_hooks"), f"'{f.key('prekill_hooks')}'", f.value_pos("prekill_hooks"))
    if seq:
        c.error(c.item_pos(seq, 0), "pyoomd does not run prekill hooks yet: remove them (an empty "
                f"'{f.key('prekill_hooks')}' is fine)")


def _top(c: Checker, doc: Any, where: str) -> Fields:
    f = c.fields(doc, where, (0, 0), TOP_KEYS, YAML_ONLY)
    if f is None:
        raise PolicyInvalid(c.errors)
    _prekill_hooks(c, f)
    return f


def oomd_json_policy(text: str, source: str, spots: Spots | None = None) -> Policy:
    c = Checker(source, "an object", "an array", spots)
    doc = _parse(c, text, source)
    f = _top(c, doc, "the policy")
    # The interval is 1 s unless `pyoomd run --interval` says otherwise, as oomd's own --interval.
    rulesets = check_rulesets(c, f, JSON_DIALECT, 1.0, drop_in=False)
    if c.errors:
        raise PolicyInvalid(c.errors)
    return Policy(rulesets=rulesets, source=source)


def oomd_json_drop_in(text: str, source: str, mtime_ns: int = 0, spots: Spots | None = None) -> DropIn:
    c = Checker(source, "an object", "an array", spots)
    doc = _parse(c, text, source)
    f = _top(c, doc, "the drop-in")
    rulesets = check_rulesets(c, f, JSON_DIALECT, 1.0, drop_in=True)
    if c.errors:
        raise PolicyInvalid(c.errors)
    return DropIn(source=source, mtime_ns=mtime_ns, rulesets=rulesets)
