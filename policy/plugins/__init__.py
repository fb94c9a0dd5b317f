"""Detector and action plugins, registered by oomd's names. Importing this package registers all of them."""

from policy.plugins import actions, detectors, senpai, systemd_actions  # noqa: F401  (registration side effect)
from policy.plugins.base import REGISTRY, Arg, ArgError, Needs, Plugin, Ret, RulesetOptions, build_plugin, register

__all__ = ["REGISTRY", "Arg", "ArgError", "Needs", "Plugin", "Ret", "RulesetOptions", "build_plugin", "register"]
