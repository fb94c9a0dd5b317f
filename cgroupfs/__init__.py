"""The only package that knows how cgroups are laid out on this host.

Everything else names a cgroup by its path relative to the hierarchy root ("/system.slice/foo.service") and
asks `CgroupFS` about it; whether that path lives in a v1 controller tree, the hybrid `unified` mount or a pure
cgroup2 tree is decided here and nowhere else.
"""

from cgroupfs.layout import Hierarchy, Layout, LayoutError, detect_layout
from cgroupfs.stats import CgroupStats, HostStats, Pressure
from cgroupfs.tree import CgroupFS

__all__ = [
    "CgroupFS",
    "CgroupStats",
    "Hierarchy",
    "HostStats",
    "Layout",
    "LayoutError",
    "Pressure",
    "detect_layout",
]
