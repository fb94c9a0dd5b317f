"""What the daemon shows of itself: one immutable record, built by the supervisor's loop from what the workers
report, read by the D-Bus service (its properties) without touching the loop's own state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def usec(wall: float) -> int:
    """Seconds since the epoch as D-Bus `t` microseconds; 0 stands for never."""
    return int(wall * 1_000_000) if wall > 0 else 0


@dataclass(frozen=True)
class DaemonState:
    version: str
    layout: str
    hierarchies: dict[str, str]
    policy_path: str
    policy_generation: int
    policy_loaded_at: float  # wall clock
    last_reload_ok: bool
    last_reload_errors: tuple[str, ...]
    dry_run: bool
    dry_run_source: str
    rulesets: tuple[tuple[str, bool, float, float], ...]  # name, enabled, paused until, last fired (wall clock)
    workers: tuple[tuple[str, int, str, int, float], ...]  # name, pid, state, restarts, last heartbeat (wall)
    actions_taken: int

    def properties(self) -> dict[str, Any]:
        """Each property of io.github.pyoomd1.Manager, as the D-Bus marshaller takes it."""
        return {
            "Version": self.version,
            "Layout": self.layout,
            "Hierarchies": dict(self.hierarchies),
            "PolicyPath": self.policy_path,
            "PolicyGeneration": self.policy_generation,
            "PolicyLoadedAt": usec(self.policy_loaded_at),
            "LastReloadResult": [self.last_reload_ok, list(self.last_reload_errors)],
            "DryRun": self.dry_run,
            "DryRunSource": self.dry_run_source,
            "Rulesets": [[name, enabled, usec(paused), usec(fired)] for name, enabled, paused, fired in self.rulesets],
            "Workers": [[name, pid, state, restarts, usec(beat)] for name, pid, state, restarts, beat in self.workers],
            "ActionsTaken": self.actions_taken,
        }
