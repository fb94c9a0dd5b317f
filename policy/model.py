"""The validated policy as plain data: what the supervisor hands to every worker.

Plugin arguments stay as the scalars the operator wrote (oomd's plugins take strings); each process builds
its plugin objects from them with the plugin's own `init`, so one validation path serves every process.
"""

from __future__ import annotations

import msgspec

ArgValue = str | int | float | bool


class PluginSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    args: dict[str, ArgValue] = {}


class DetectorGroup(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    detectors: list[PluginSpec]


class Ruleset(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    detector_groups: list[DetectorGroup]
    actions: list[PluginSpec]
    post_action_delay: float = 15.0


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rulesets: list[Ruleset]
    interval: float = 1.0
    dry_run: bool = False
    source: str = ""  # the file it was loaded from
