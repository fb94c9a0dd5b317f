"""Plugins by name: pyoomd's own, and those other packages register through entry points.

A package adds plugins by naming their classes in its metadata:

    [project.entry-points."pyoomd.detectors"]
    memory_pressure_threshold = "mypkg.plugins:MemoryPressureThreshold"

The class follows policy.plugins.base.Plugin. A built-in name cannot be taken over.
"""

from __future__ import annotations

import difflib
import logging
from importlib.metadata import entry_points

from policy.plugins.base import REGISTRY, ArgError, Plugin, PluginKind

log = logging.getLogger("pyoomd.plugins")
GROUPS = {"detector": "pyoomd.detectors", "action": "pyoomd.actions"}
_loaded = False


def load_entry_points() -> None:
    """Import the plugins other installed packages declare (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for kind, group in GROUPS.items():
        for ep in entry_points(group=group):
            if ep.name in REGISTRY and REGISTRY[ep.name].__module__.startswith("policy."):
                log.warning("plugin %s from %s ignored: a built-in plugin has that name", ep.name, ep.value)
                continue
            try:
                cls = ep.load()
            except Exception as e:  # a broken third-party package must not stop the daemon
                log.error("cannot load %s plugin %s (%s): %s", kind, ep.name, ep.value, e)
                continue
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                log.error("%s plugin %s (%s) is not a pyoomd Plugin class", kind, ep.name, ep.value)
                continue
            cls.name = ep.name
            REGISTRY[ep.name] = cls


def lookup(name: str, kind: PluginKind) -> type[Plugin]:
    load_entry_points()
    cls = REGISTRY.get(name)
    if cls is None:
        known = sorted(n for n, c in REGISTRY.items() if kind in c.kinds)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
        raise ArgError(None, f"unknown {kind} plugin '{name}' ({hint})")
    if kind not in cls.kinds:
        raise ArgError(None, f"'{name}' is not a {kind} plugin")
    return cls


def plugins_of(kind: PluginKind) -> list[type[Plugin]]:
    load_entry_points()
    return sorted((c for c in REGISTRY.values() if kind in c.kinds), key=lambda c: c.name)
