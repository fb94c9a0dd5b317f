"""The validated policy as plain data: what the supervisor hands to every worker.

Plugin arguments stay as the scalars the operator wrote (oomd's plugins take strings); each process builds
its plugin objects from them through the plugins' declarations, so one validation path serves every process.
"""

from __future__ import annotations

from typing import Literal

import msgspec

ArgValue = str | int | float | bool
LogEntity = Literal["engine", "plugins"]


class PluginSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    args: dict[str, ArgValue] = {}


class DetectorGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    detectors: list[PluginSpec]


class DropInOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What drop-in files may replace in a base ruleset (oomd's "drop-in"); all off by default."""

    detectors: bool = False
    actions: bool = False
    disable_on_drop_in: bool = False  # the base ruleset stops running while a drop-in targets it


class Ruleset(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    detector_groups: list[DetectorGroup]
    actions: list[PluginSpec]
    post_action_delay: float = 15.0
    prekill_hook_timeout: float | None = None
    silence_logs: list[LogEntity] = []
    drop_in: DropInOptions = DropInOptions()
    # Per-cgroup ruleset: run once for each cgroup matching these patterns (with the xattr, if given).
    cgroup: list[str] = []
    xattr_filter: str = ""


class DropInRuleset(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A drop-in's ruleset: names a base ruleset; what it gives replaces the base's (None: keep the base's)."""

    name: str
    detector_groups: list[DetectorGroup] | None = None
    actions: list[PluginSpec] | None = None


class DropIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    source: str  # the file
    mtime_ns: int  # newest first: oomd adds drop-ins last-in-first-out
    rulesets: list[DropInRuleset]


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rulesets: list[Ruleset]
    interval: float = 1.0
    dry_run: bool = False
    source: str = ""  # the file it was loaded from
    version: int = 1  # the policy language
    drop_ins: list[DropIn] = []  # newest first
