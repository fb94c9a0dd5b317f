"""Cgroup path patterns as the policy writes them: comma-separated, relative to the root, globs per component."""

from __future__ import annotations

import fnmatch
import functools

from cgroupfs.tree import is_under, normalize

# Never a target, whatever the policy says.
ALWAYS_PROTECTED = ("/", "/init.scope")


def parse_cgroup_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected one or more cgroup paths, comma-separated (e.g. 'system.slice/*')")
    return tuple(normalize(p) for p in value.split(",") if p.strip())


def join_cgroup(base: str, rel: str) -> str:
    """`rel` under `base` ("/a/*" + "/b" -> "/a/*/b"); rel "/" is base itself."""
    if rel in ("", "/"):
        return base
    return (base.rstrip("/") + "/" + rel.strip("/")) if base != "/" else "/" + rel.strip("/")


@functools.lru_cache(maxsize=1 << 16)
def matches(pattern: str, path: str) -> bool:
    """Does `path` match `pattern` component by component (a '*' never crosses a '/')?

    Cached: every tick asks the same pairs again (each plugin's patterns against every cgroup of the snapshot),
    and the answer depends on the two strings alone."""
    pp = [p for p in pattern.split("/") if p]
    cp = [p for p in path.split("/") if p]
    return len(pp) == len(cp) and all(fnmatch.fnmatchcase(c, p) for p, c in zip(pp, cp, strict=True))


def literal_prefix(pattern: str) -> str:
    """The deepest cgroup every match of `pattern` lies under: its components before the first glob."""
    parts: list[str] = []
    for part in (p for p in pattern.split("/") if p):
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return "/" + "/".join(parts)


def matches_any(patterns: tuple[str, ...], path: str) -> bool:
    return any(matches(p, path) for p in patterns)


def is_protected(path: str, protected: frozenset[str]) -> bool:
    """The root, init.scope and everything below it, and the daemon's own cgroups and their ancestors."""
    return path in protected or path == "/" or is_under(path, "/init.scope")
