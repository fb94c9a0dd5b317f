"""Declared plugin arguments: name, type, default, unit and doc, in one place.

The same declarations parse a policy's arguments (with errors that name the argument and suggest the nearest
valid name), fill `pyoomd check`, and generate docs/configuration.md. Values arrive as the scalars an operator
wrote (oomd's JSON passes every argument as a string), so each type accepts its string form too.
"""

from __future__ import annotations

import difflib
import math
import re
import signal as signal_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from policy.paths import parse_cgroup_list
from policy.units import parse_duration, parse_size

ArgKind = Literal[
    "cgroups", "int", "float", "bool", "duration", "size", "size_or_percent", "choice", "string", "globs", "signal"
]


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


class ArgError(ValueError):
    """A bad plugin argument; `arg` names it (None when the problem is the plugin as a whole)."""

    def __init__(self, arg: str | None, message: str, at_value: bool = False) -> None:
        super().__init__(message)
        self.arg = arg
        self.at_value = at_value  # the value is wrong (point at it), not the argument's name


@dataclass(frozen=True)
class SizeOrPercent:
    """A threshold given as bytes or as a percentage of a total known only at run time (MemTotal, SwapTotal)."""

    bytes: int | None = None
    percent: float | None = None

    def of(self, total: int) -> int:
        return int(total * self.percent / 100) if self.percent is not None else int(self.bytes or 0)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.bytes} bytes"


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"expected true or false, got {value!r}")


def parse_number(value: object, integer: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if integer and isinstance(value, int):
        return value  # exactly: a float would round an integer past 2**53
    if integer and isinstance(value, str) and _INTEGER.fullmatch(value):
        return int(value)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {value!r}") from None
    if not math.isfinite(number):
        # "nan", "inf", "1e999": no threshold or count means anything with them (NaN is never crossed).
        raise ValueError(f"expected a finite number, got {value!r}")
    if integer and not number.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    return number


_INTEGER = re.compile(r"\s*[-+]?\d+\s*")


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
# oomd's sizes: components like "1.5G 32K 512" add up; a bare number is MB (for backward compatibility).
_SIZE_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)", re.IGNORECASE)


def parse_size_or_percent(value: object) -> SizeOrPercent:
    m = _PERCENT.match(str(value))
    if m:
        percent = float(m.group(1))
        if not 0 <= percent <= 100:
            raise ValueError(f"a percentage must be within 0..100, got {value!r}")
        return SizeOrPercent(percent=percent)
    return SizeOrPercent(bytes=parse_oomd_size(value))


def parse_oomd_size(value: object) -> int:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return parse_size(value)
    text = str(value).strip()
    parts = text.split()
    if len(parts) > 1 and all(_SIZE_PART.fullmatch(p) for p in parts):
        return sum(parse_size(p) if p[-1].isalpha() else int(float(p)) for p in parts)
    return parse_size(text)


def parse_signal(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(signal_module.Signals(value))
    name = str(value).strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return int(signal_module.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {value!r}") from None


def parse_globs(value: object) -> tuple[str, ...]:
    """A comma-separated list (or a YAML list) of cgroup path globs."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    return parse_cgroup_list(value)


@dataclass(frozen=True)
class Arg:
    name: str
    kind: ArgKind
    default: Any = REQUIRED
    doc: str = ""
    unit: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def parse(self, raw: object) -> Any:
        value: Any
        if self.kind == "cgroups":
            value = parse_cgroup_list(raw)
        elif self.kind == "globs":
            value = parse_globs(raw)
        elif self.kind in ("int", "float"):
            value = parse_number(raw, self.kind == "int")
            value = int(value) if self.kind == "int" else value
        elif self.kind == "bool":
            value = parse_bool(raw)
        elif self.kind == "duration":
            value = parse_duration(raw)
        elif self.kind == "size":
            value = parse_oomd_size(raw)
        elif self.kind == "size_or_percent":
            value = parse_size_or_percent(raw)
        elif self.kind == "signal":
            value = parse_signal(raw)
        elif self.kind == "choice":
            value = str(raw)
            if value not in self.choices:
                raise ValueError(f"{value!r} is not one of {', '.join(self.choices)}")
        else:
            value = str(raw)
        if self.kind in ("int", "float", "duration") and (
            (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum)
        ):
            lo = "" if self.minimum is None else f"{self.minimum:g}"
            hi = "" if self.maximum is None else f"{self.maximum:g}"
            raise ValueError(f"{raw!r} is outside {lo}..{hi}")
        return value

    def describe_default(self) -> str:
        if self.required:
            return "required"
        if self.default is None:
            return "none"
        if isinstance(self.default, tuple):
            return ",".join(self.default) or "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        if self.kind == "signal":
            return signal_module.Signals(self.default).name
        if isinstance(self.default, SizeOrPercent) and self.default.bytes is not None:
            return f"{self.default.bytes} B"
        return str(self.default)


def parse_args(plugin: str, decls: tuple[Arg, ...], raw: Mapping[str, object]) -> dict[str, Any]:
    """Every declared argument's value (defaults filled in); unknown or missing ones raise ArgError."""
    by_name = {a.name: a for a in decls}
    for name in raw:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else (
                f" (it takes: {', '.join(by_name)})" if by_name else " (it takes no arguments)")
            raise ArgError(name, f"unknown argument '{name}'{hint}")
    values: dict[str, Any] = {}
    for decl in decls:
        if decl.name not in raw:
            if decl.required:
                raise ArgError(None, f"missing required argument '{decl.name}'")
            values[decl.name] = decl.default
            continue
        try:
            values[decl.name] = decl.parse(raw[decl.name])
        except (ValueError, TypeError) as e:
            raise ArgError(decl.name, f"argument '{decl.name}': {e}", at_value=True) from None
    return values
