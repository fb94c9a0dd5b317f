"""Detector and action plugins, registered by oomd's names. Importing this package registers all of them."""

from policy.plugins import actions, detectors  # noqa: F401  (registration side effect)
from policy.plugins.base import REGISTRY, ArgError, Needs, Plugin, Ret, build_plugin

__all__ = ["REGISTRY", "ArgError", "Needs", "Plugin", "Ret", "build_plugin"]
