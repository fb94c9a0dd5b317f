"""The build identity a worker names in its hello, so a worker from another install is refused at once."""

from __future__ import annotations

import zlib
from functools import cache
from pathlib import Path

VERSION = "0.1.0"
PACKAGES = ("supervisor", "workers", "ipc", "cgroupfs", "policy")


@cache
def build_id() -> str:
    """The version plus a checksum of every source file of the five packages, as this interpreter sees them.

    A CRC, not a cryptographic hash: it tells one install from another, and hashlib would load OpenSSL's libcrypto
    (megabytes, in every process forked from the supervisor) for nothing else."""
    root = Path(__file__).resolve().parent.parent
    crc = 0
    for package in PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            crc = zlib.crc32(str(source.relative_to(root)).encode(), crc)
            crc = zlib.crc32(source.read_bytes(), crc)
    return f"{VERSION}+{crc:08x}"


def source_root() -> Path:
    """The directory holding the packages: what a worker's PYTHONPATH must name."""
    return Path(__file__).resolve().parent.parent
