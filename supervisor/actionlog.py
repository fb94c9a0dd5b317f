"""The action log: one JSON object per line in <state-dir>/actions.jsonl, rotated at a size bound."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from ipc.messages import ActionRecord

MAX_BYTES = 10 << 20
KEEP = 3  # actions.jsonl.1 .. actions.jsonl.3


class ActionLog:
    def __init__(self, state_dir: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "actions.jsonl"
        self.max_bytes = max_bytes
        self.keep = keep
        self._encoder = msgspec.json.Encoder()

    def append(self, record: ActionRecord) -> None:
        line = self._encoder.encode(record) + b"\n"
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self.max_bytes:
            self._rotate()
        # O_APPEND keeps each line whole even if someone else appends; fsync so a record survives a crash
        # of the host that the kill was trying to prevent.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def newest(self, limit: int) -> list[dict]:
        """The newest `limit` records, oldest first, from this file and the rotated ones before it. A line that
        does not decode (a torn write, an edit by hand) is left out."""
        lines: list[bytes] = []
        for i in range(self.keep + 1):
            if len(lines) >= limit:
                break
            path = self.path if i == 0 else self.path.with_name(f"{self.path.name}.{i}")
            try:
                older = path.read_bytes().splitlines()
            except FileNotFoundError:
                continue
            lines = older[-(limit - len(lines)):] + lines
        out = []
        for line in lines:
            try:
                out.append(msgspec.json.decode(line))
            except msgspec.DecodeError:
                continue
        return out

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{i + 1}"))
        self.path.rename(self.path.with_name(f"{self.path.name}.1"))
