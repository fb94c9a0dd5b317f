"""The drop-in directory: policy files added, changed and removed while pyoomd runs (oomd's --drop-in-dir).

Changes are waited on with inotify (a file closed after writing, moved in, moved out, deleted), so the
supervisor's poll loop wakes on them; it then loads every drop-in afresh. Files whose names begin with "." are
ignored (editors' and tools' temporary files), as oomd does. A drop-in that does not load, or names a ruleset the
base does not have or does not open to drop-ins, is refused with its reason and the others still apply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cgroupfs.inotify import (
    IN_CLOSE_WRITE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    Watch,
)
from policy.compose import check_drop_in
from policy.loader import PolicyInvalid, load_drop_in
from policy.model import DropIn, Policy
from supervisor.policyfiles import refusal

log = logging.getLogger("pyoomd.supervisor")

WATCHED = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF


@dataclass
class DropInDir:
    path: Path
    fd: int = -1
    _watch: Watch | None = None

    def open(self) -> None:
        """Start waiting on changes; `fd` is readable when one happened."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._watch = Watch(self.path, WATCHED)
        self.fd = self._watch.fd

    def drain(self) -> bool:
        """Read the pending change notices; True when there were any."""
        assert self._watch is not None, "open() first"
        return self._watch.drain()

    def load(self, base: Policy) -> tuple[list[DropIn], list[str]]:
        """Every drop-in that applies to `base`, and the reasons others were refused."""
        drop_ins: list[DropIn] = []
        errors: list[str] = []
        for p in sorted(self.path.iterdir()) if self.path.is_dir() else []:
            if p.name.startswith(".") or not p.is_file():
                continue
            try:
                problem = refusal(p)
                if problem is not None:
                    raise problem
                drop_in = load_drop_in(p)
            except PolicyInvalid as e:
                errors.extend(str(err) for err in e.errors)
                continue
            problems = check_drop_in(base, drop_in)
            if problems:
                errors.extend(problems)
                continue
            drop_ins.append(drop_in)
        return drop_ins, errors

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self.fd = -1
