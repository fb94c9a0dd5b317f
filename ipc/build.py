"""The build identity a worker names in its hello, so a worker from another install is refused at once."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

VERSION = "0.1.0"
PACKAGES = ("supervisor", "workers", "ipc", "cgroupfs", "policy")


@cache
def build_id() -> str:
    """The version plus a digest of every source file of the five packages, as this interpreter sees them."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(str(source.relative_to(root)).encode())
            digest.update(source.read_bytes())
    return f"{VERSION}+{digest.hexdigest()[:16]}"


def source_root() -> Path:
    """The directory holding the packages: what a worker's PYTHONPATH must name."""
    return Path(__file__).resolve().parent.parent
