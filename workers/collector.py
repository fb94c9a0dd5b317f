"""The collector: every tick, read exactly what the policy needs and push one snapshot to the detector."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import zmq

from cgroupfs import CgroupFS, detect_layout
from ipc.codec import Channel
from ipc.endpoints import snapshot_sender
from ipc.messages import PolicyUpdate, Snapshot
from policy.engine import policy_needs
from policy.plugins import Needs
from workers.base import Worker, main


class Collector(Worker):
    name = "collector"

    def __init__(self, runtime_dir: Path) -> None:
        super().__init__(runtime_dir)
        self.fs = CgroupFS(detect_layout())
        self.snapshots = snapshot_sender(self.zmq, self.endpoints)
        self.snapshot_channel = Channel("collector/snapshots", Snapshot)
        self.needs = Needs()
        self.seq = 0
        self.next_tick = 0.0

    def apply_policy(self, update: PolicyUpdate) -> None:
        self.needs = policy_needs(update.policy)
        self.next_tick = 0.0  # the first snapshot of a new policy goes out at once

    def on_timer(self, now: float) -> float:
        assert self.update is not None
        if now >= self.next_tick:
            self.collect(self.update)
            # Keep a steady cadence; after a stall, start again from now rather than catching up.
            self.next_tick = max(self.next_tick + self.update.policy.interval, now)
        return self.next_tick

    def collect(self, update: PolicyUpdate) -> None:
        cgroups = []
        fields = self.needs.fields
        with self.fs.tick():
            host = self.fs.read_host()
            for path in self.fs.resolve(self.needs.cgroups):  # globs resolved afresh every tick
                stats = self.fs.read_stats(path, fields, host)
                if stats is not None:
                    cgroups.append(stats)
        self.seq += 1
        snapshot = Snapshot(
            seq=self.seq,
            generation=update.generation,
            time=time.time(),
            monotonic=time.monotonic(),
            host=host,
            cgroups=cgroups,
        )
        # No detector connected: drop it; CONFLATE would keep only the newest anyway.
        with contextlib.suppress(zmq.Again):
            self.snapshots.send(self.snapshot_channel.encode(snapshot), zmq.NOBLOCK)


if __name__ == "__main__":
    main(Collector)
