"""The detector: evaluate the policy on each snapshot, and send the actuator one concrete command.

Write commands (senpai's) are sent the same way but waited for by nobody: their answers are only logged when
something went wrong, once a minute for the same cgroup, file and outcome."""

from __future__ import annotations

import logging
import time

import msgspec
import zmq

from ipc.codec import Channel
from ipc.endpoints import command_client, snapshot_receiver
from ipc.messages import (
    CommandMessage,
    CommandResult,
    Message,
    PolicyUpdate,
    Query,
    QueryAnswer,
    RulesetDisabled,
    RulesetFired,
    RulesetReport,
    RulesetStates,
    Snapshot,
    SnapshotEvaluated,
    WantFullSnapshot,
    WatchedFigure,
    WatchedFigures,
    WriteCommand,
)
from policy.engine import Engine
from workers.base import Worker, WorkerArgs, main

FIGURES_INTERVAL = 10.0  # seconds between the watched cgroups' figures sent for the metrics
FRESH_ENOUGH = 1.0  # a query is answered from a full snapshot at most this old (seconds), else from a new one
WANT_FULL_GAP = 0.2  # seconds between asks for a full snapshot while a ruleset waits to act


class Detector(Worker):
    name = "detector"

    def __init__(self, args: WorkerArgs) -> None:
        super().__init__(args)
        self.snapshots = snapshot_receiver(self.zmq, self.endpoints)
        self.snapshot_channel = Channel("detector/snapshots", Snapshot)
        self.commands = command_client(self.zmq, self.endpoints)
        self.command_channel = Channel("detector/commands", CommandMessage)
        self.engine: Engine | None = None
        self.last_snapshot: Snapshot | None = None  # the last full one the engine ran on, for queries
        self.pending_queries: list[Query] = []  # waiting for a full snapshot fresher than FRESH_ENOUGH
        self.full_asked = 0.0  # when a full snapshot was last asked for (monotonic)
        self.next_figures = 0.0
        self.reported: list[RulesetReport] | None = None  # the ruleset states last sent to the supervisor
        self.evaluated_generation = -1
        self.last_logged: dict[str, tuple[str, float]] = {}
        self.writes_out: dict[str, WriteCommand] = {}  # sent, not yet answered (by id)
        self.write_failures_logged: dict[tuple[str, str, str], float] = {}
        self.add_socket(self.snapshots, self._on_snapshot)
        self.add_socket(self.commands, self._on_result)

    def dropped_frames(self) -> int:
        return super().dropped_frames() + self.snapshot_channel.dropped + self.command_channel.dropped

    def apply_policy(self, update: PolicyUpdate) -> None:
        # Rulesets the new policy leaves unchanged keep their state (sliding windows, pauses, commands out);
        # the rest start afresh. Pauses set at run time come as wall-clock ends; the engine keeps time monotonic.
        offset = time.monotonic() - time.time()
        self.engine = Engine(
            update.policy,
            generation=update.generation,
            dry_run=update.dry_run,
            dry_run_source=update.dry_run_source,
            protected=frozenset(update.protected_paths),
            previous=self.engine,
            paused={name: until + offset for name, until in update.paused.items()},
        )
        self._report(time.monotonic())

    def _report(self, now: float) -> None:
        """Tell the supervisor the rulesets' states when they changed (fired, paused, disabled, added)."""
        assert self.engine is not None
        reports = self.engine.reports(now)
        if reports != self.reported:
            self.reported = reports
            self.send_control(RulesetStates(rulesets=reports))

    def on_control_message(self, msg: Message) -> bool:
        if not isinstance(msg, Query):
            return False
        last = self.last_snapshot
        if last is not None and time.monotonic() - last.monotonic < FRESH_ENOUGH:
            self._answer(msg)
        else:
            # What the collector saw *now*, with what the actions would rank by: a full snapshot is asked for, and
            # the query answered when it comes (the supervisor gives up after its own deadline).
            self.pending_queries.append(msg)
            self._want_full(force=True)
        return True

    def _answer(self, query: Query) -> None:
        if self.engine is None or self.last_snapshot is None:
            self.send_control(QueryAnswer(id=query.id, error="no snapshot evaluated yet"))
            return
        if query.what == "snapshot":
            answer = msgspec.json.encode(self.last_snapshot)
        else:
            answer = msgspec.json.encode({"generation": self.engine.generation, "dry_run": self.engine.dry_run,
                                          "rulesets": self.engine.explain(self.last_snapshot, time.monotonic())})
        self.send_control(QueryAnswer(id=query.id, json=answer.decode()))

    def _want_full(self, force: bool = False) -> None:
        """Ask for a full snapshot, at most every WANT_FULL_GAP (the collector sends one as soon as it can)."""
        now = time.monotonic()
        if force or now - self.full_asked >= WANT_FULL_GAP:
            self.full_asked = now
            self.send_control(WantFullSnapshot())

    def _on_snapshot(self) -> None:
        try:
            frame = self.snapshots.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        snapshot = self.snapshot_channel.decode(frame)
        if snapshot is None or self.engine is None:
            return
        if snapshot.generation != self.engine.generation:
            return  # read for another policy: it may lack cgroups this one needs
        now = time.monotonic()
        outcome = self.engine.tick(snapshot, now)
        if now >= self.next_figures:
            self.next_figures = now + FIGURES_INTERVAL
            self.send_control(WatchedFigures(
                read_seconds=snapshot.took, evaluate_seconds=round(time.monotonic() - now, 6),
                cgroups=[WatchedFigure(path=cg.path,
                                       some_avg10=cg.pressure.some_avg10 if cg.pressure else None,
                                       full_avg10=cg.pressure.full_avg10 if cg.pressure else None,
                                       usage=cg.usage) for cg in snapshot.cgroups]))
        if outcome.want_full:
            self._want_full()
        if snapshot.full:
            self.last_snapshot = snapshot
            for query in self.pending_queries:
                self._answer(query)
            self.pending_queries.clear()
        # Answers that never came (an actuator restarted meanwhile) are forgotten a minute past their deadline.
        self.writes_out = {k: w for k, w in self.writes_out.items() if w.not_after + 60 > now}
        for command in outcome.commands:
            try:
                self.commands.send(self.command_channel.encode(command), zmq.NOBLOCK)
                if isinstance(command, WriteCommand):
                    self.writes_out[command.id] = command  # the plugin logs its own decisions
                    continue
                # The same decision retried every tick (nothing could be killed) is logged once a minute.
                seen = self.last_logged.get(command.ruleset)
                if seen is None or seen[0] != command.reason or now - seen[1] > 60:
                    self.last_logged[command.ruleset] = (command.reason, now)
                    self.log.info("ruleset %r (group %r): %s", command.ruleset, command.group, command.reason)
            except zmq.Again:
                self.log.warning("no actuator connected (restarting?); command %s dropped, deciding again", command.id)
                self.engine.abandon(command.id)
        for ruleset, reason in outcome.disabled:
            self.send_control(RulesetDisabled(ruleset=ruleset, reason=reason))
        for ruleset, group in outcome.began:
            self.send_control(RulesetFired(ruleset=ruleset, group=group))
        self._report(now)
        if self.evaluated_generation != self.engine.generation:
            self.evaluated_generation = self.engine.generation
            self.send_control(SnapshotEvaluated(seq=snapshot.seq, generation=snapshot.generation))

    def _on_result(self) -> None:
        while True:
            try:
                frame = self.commands.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            msg = self.command_channel.decode(frame)
            if not isinstance(msg, CommandResult) or self.engine is None:
                continue
            write = self.writes_out.pop(msg.id, None)
            if write is not None:
                self._write_answered(write, msg)
                continue
            if not self.engine.on_result(msg, time.monotonic()):
                logging.getLogger("pyoomd.detector").info("late or unknown result for command %s ignored", msg.id)
            self._report(time.monotonic())  # a kill's answer starts the ruleset's post_action_delay

    def _write_answered(self, write: WriteCommand, result: CommandResult) -> None:
        if result.status in ("written", "dry-run"):
            self.log.debug("%s %s of %s: %s", result.status, write.file, write.path, result.detail)
            return
        key, now = (write.path, write.file, result.status), time.monotonic()
        if now - self.write_failures_logged.get(key, -60.0) >= 60:
            self.write_failures_logged[key] = now
            self.log.warning("ruleset %r: %s could not write %s to %s/%s (%s): %s", write.ruleset, write.plugin,
                             write.value, write.path, write.file, result.status, result.detail)


if __name__ == "__main__":
    main(Detector)
