"""Durations and sizes as operators write them."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT])?(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_SCALE = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string like '500ms', '30s', '2m', '1h'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"invalid duration {value!r}: use seconds or a string like '500ms', '30s', '2m'")
        seconds = float(m.group(1)) * _DURATION_SCALE[m.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative")
    return seconds


def parse_size(value: object, bare_unit: int = 1 << 20) -> int:
    """Bytes from '1.5G', '512M', '100K', '2T' or a bare number, counted in `bare_unit` (oomd: MB)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int | float):
        return int(value * bare_unit)
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"invalid size {value!r}: use a number of MB, or a size like '512M', '1.5G'")
    number, unit = float(m.group(1)), m.group(2)
    return int(number * (_SIZE_SCALE[unit.upper()] if unit else bare_unit))
