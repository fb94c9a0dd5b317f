"""Every message pyoomd sends, as typed structs. Unknown fields are errors; each struct is tagged by kind."""

from __future__ import annotations

from typing import Literal

import msgspec

from cgroupfs.stats import CgroupStats, HostStats
from policy.model import Policy

WorkerName = Literal["collector", "detector", "actuator"]


class Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


# ---- control channel: supervisor <-> worker ------------------------------------------------------------------


class Hello(Message, tag="hello"):
    worker: WorkerName
    pid: int
    build: str


class Welcome(Message, tag="welcome"):
    build: str


class Refused(Message, tag="refused"):
    reason: str


class PolicyUpdate(Message, tag="policy"):
    generation: int
    policy: Policy
    dry_run: bool  # effective value, whatever set it
    dry_run_source: str  # "command line" | "policy" | "default"
    protected_paths: list[str]  # the daemon's own cgroups and their ancestors, in every hierarchy
    daemon_pid: int
    systemd_bus: str = "system"  # where the actuator finds the service manager: system | session | none | ADDRESS
    # Rulesets paused at run time (D-Bus PauseRuleset): base ruleset name -> wall-clock end of the pause
    paused: dict[str, float] = {}


class PolicyAck(Message, tag="policy-ack"):
    generation: int
    error: str = ""


class Heartbeat(Message, tag="heartbeat"):
    worker: WorkerName
    dropped_frames: int = 0


class SnapshotEvaluated(Message, tag="evaluated"):
    """The detector has run the policy on a snapshot (the supervisor's readiness signal)."""

    seq: int
    generation: int


class PeerRestarted(Message, tag="peer-restarted"):
    """A worker was replaced: its peers renew their sockets to it (a conflated PUSH socket does not always
    recover from its peer's restart on its own)."""

    worker: WorkerName


class RulesetDisabled(Message, tag="ruleset-disabled"):
    """The detector disabled a ruleset whose plugin kept raising; the supervisor reports it."""

    ruleset: str
    reason: str


class Stop(Message, tag="stop"):
    pass


class WatchedFigure(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    some_avg10: float | None
    full_avg10: float | None
    usage: int | None


class WatchedFigures(Message, tag="watched-figures"):
    """Every few seconds, for the metrics: the watched cgroups' pressure and memory, and what a tick costs."""

    read_seconds: float
    evaluate_seconds: float
    cgroups: list[WatchedFigure]


class WantFullSnapshot(Message, tag="want-full-snapshot"):
    """The detector needs a full snapshot now (a ruleset is about to act, or a query): the supervisor passes it
    on to the collector, which takes one at once."""


class Query(Message, tag="query"):
    """The supervisor asks the detector for what only it holds (for the D-Bus interface)."""

    id: int
    what: Literal["snapshot", "explain"]


class QueryAnswer(Message, tag="query-answer"):
    id: int
    json: str = ""  # the answer, a JSON document
    error: str = ""  # why there is none (no snapshot yet)


class RulesetFired(Message, tag="ruleset-fired"):
    """A ruleset began to fire (it did not fire on the snapshot before)."""

    ruleset: str
    group: str


class RulesetReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str  # "name", or "name @ /cgroup" for a per-cgroup ruleset's copy
    enabled: bool
    paused_until: float  # wall clock; 0: not paused
    last_fired: float  # wall clock; 0: never
    last_group: str = ""


class RulesetStates(Message, tag="ruleset-states"):
    """Every running ruleset, sent by the detector whenever one of them changed."""

    rulesets: list[RulesetReport]


# ---- snapshots: collector -> detector --------------------------------------------------------------------------


class Snapshot(Message, tag="snapshot"):
    seq: int
    generation: int
    time: float  # wall clock, seconds since the epoch
    monotonic: float  # CLOCK_MONOTONIC, comparable across processes of this host
    host: HostStats
    cgroups: list[CgroupStats]
    # With what actions read too (Needs.action_cgroups/action_fields); a tick's snapshot has only what the
    # detectors read. A ruleset acts only on a full one.
    full: bool = True
    took: float = 0.0  # seconds the collector spent reading it


# ---- commands: detector <-> actuator ---------------------------------------------------------------------------


class Candidate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str
    inode: int
    usage: int | None
    why: str  # the figures that ranked it
    # Its own 'full' memory PSI (avg10, avg60, avg300) in the snapshot ranked: for oomd's kill line in kmsg.
    pressure: list[float] | None = None


class KillCommand(Message, tag="kill"):
    id: str
    generation: int
    ruleset: str
    group: str  # detector group that fired
    plugin: str
    snapshot_time: float
    not_after: float  # monotonic deadline; an older command is refused, never acted on late
    candidates: list[Candidate]  # ranked; the actuator takes the first that still qualifies
    mechanism: Literal["direct"]
    signal: int
    reason: str
    dry_run: bool
    dry_run_source: str
    kill_timeout: float
    grace: float = 0.0  # > 0: SIGTERM first, SIGKILL whatever is left after this many seconds
    target: Literal["cgroup", "largest_process"] = "cgroup"  # the whole cgroup, or only its largest process (RSS)
    reap_memory: bool = True  # process_mrelease after SIGKILL (oomd's reap_memory)
    # Through the service manager (KillUnit) when the candidate is a unit's own cgroup, or always directly; "auto"
    # uses the manager only when it answered its last probe. "direct" is the default here so that a command
    # without the field (an older detector) behaves as before; the kill actions' own default is "auto".
    via: Literal["direct", "systemd", "auto"] = "direct"
    # "stop": StopUnit (the stop_unit action), then a direct kill of whatever the stop job left behind.
    operation: Literal["kill", "stop"] = "kill"
    stop_timeout: float = 5.0  # seconds the actuator waits for a stop job before it kills directly
    prekill_hook: list[str] = []  # argv run before the kill, waited for at most prekill_timeout
    postkill_hook: list[str] = []  # argv run after it, never waited for
    prekill_timeout: float = 5.0
    notify: bool = False  # after a kill, a desktop notification to the session of each user whose processes died


# The only files a WriteCommand may name: the actuator refuses any other, whatever the policy says.
WritableFile = Literal["memory.high", "memory.reclaim"]


class WriteCommand(Message, tag="write"):
    """Write one value into one cgroup2 control file (senpai's memory.high or memory.reclaim).

    Fire and forget: the actuator re-checks it as it does a kill (generation, deadline, the action's patterns,
    protection, inode) and answers with a CommandResult that nobody waits for; the next decision overwrites it."""

    id: str
    generation: int
    ruleset: str
    group: str  # detector group that fired
    plugin: str
    snapshot_time: float
    not_after: float  # monotonic deadline; an older command is refused, never applied late
    path: str
    inode: int  # of the cgroup2 directory the decision was read from
    file: WritableFile
    value: str  # exactly what is written: a byte count
    reason: str
    dry_run: bool
    dry_run_source: str


class UnitCommand(Message, tag="unit"):
    """Ask the service manager to act on one unit (oomd's systemd_restart: RestartUnit)."""

    id: str
    generation: int
    ruleset: str
    group: str
    plugin: str
    snapshot_time: float
    not_after: float
    operation: Literal["restart"]
    unit: str
    reason: str
    dry_run: bool
    dry_run_source: str
    timeout: float = 5.0  # how long the actuator waits for the manager's job


# "written" (added with WriteCommand): a write's value landed in its file; kill commands never get it.
# "restarted": a unit command's job finished "done".
CommandStatus = Literal["killed", "dry-run", "no-target", "refused", "expired", "failed", "written", "restarted"]


class CommandResult(Message, tag="result"):
    id: str
    status: CommandStatus
    target: str | None
    pids: list[int]
    detail: str = ""
    mechanism: str = ""  # how the kill was delivered: "cgroup.kill", "freezer+signal (v1)", ...
    emptied: bool | None = None  # the cgroup held no process afterwards
    unit: str = ""  # the systemd unit acted on through the manager, when one was


class ActionRecord(Message, tag="action"):
    """What happened, once, for the log, actions.jsonl and (later) D-Bus and metrics."""

    time: float
    command_id: str
    ruleset: str
    group: str
    plugin: str
    target: str | None
    pids: list[int]
    signal: str
    dry_run: bool
    dry_run_source: str
    result: CommandStatus
    duration: float
    reason: str
    detail: str = ""
    mechanism: str = ""
    emptied: bool | None = None
    unit: str = ""  # the systemd unit acted on through the manager, when one was


# ---- the broker: collector <-> supervisor, over a socketpair of their own (SOCK_SEQPACKET, SCM_RIGHTS) ---------
# The unprivileged collector cannot register what only root may (a cgroup's PSI trigger, v1 cgroup.event_control)
# nor read trusted.* xattrs: it asks the supervisor, which checks the request and answers with descriptors.


class OpenSource(Message, tag="open-source"):
    id: int
    mechanism: Literal["psi", "vmpressure", "usage"]
    path: str  # psi: the pressure file; vmpressure, usage: the v1 memory cgroup directory
    stall_kind: str = ""  # psi: "some" | "full"
    stall_us: int = 0
    window_us: int = 0
    level: str = ""  # vmpressure
    mode: str = ""
    threshold: int = 0  # usage, bytes


class SourceOpened(Message, tag="source-opened"):
    """The answer; the descriptors (the source's fds(), in order) travel with it as SCM_RIGHTS."""

    id: int
    source_kind: str = ""  # the source's kind, for cgroupfs.events.adopt
    description: str = ""
    note: str = ""
    error: str = ""  # why it was not opened; then no descriptor comes
    errno: int = 0


class ReadXattrs(Message, tag="read-xattrs"):
    id: int
    paths: list[str]  # cgroup paths ("/a/b"), as in the snapshot


class XattrValues(Message, tag="xattr-values"):
    id: int
    values: dict[str, dict[str, str]]  # path -> trusted.* name -> value, for the paths that have any


BrokerRequest = OpenSource | ReadXattrs
BrokerAnswer = SourceOpened | XattrValues


# ---- the fork server: supervisor <-> fork server, over a socketpair of their own (ipc/fdchannel.py) -------------


class Spawn(Message, tag="spawn"):
    """Fork this worker. The collector's broker socket, when it has one, travels with it (SCM_RIGHTS)."""

    worker: WorkerName
    runtime_dir: str
    state_dir: str
    drop_to: str = ""  # "UID:GID" to become, or "" to stay as the supervisor is
    with_broker: bool = False


class Spawned(Message, tag="spawned"):
    worker: WorkerName
    pid: int = 0  # the worker's, a child of the supervisor by then (reparented: it is the subreaper)
    error: str = ""


class ForkServerReady(Message, tag="forkserver-ready"):
    pid: int
    build: str


ForkServerRequest = Spawn
ForkServerAnswer = Spawned | ForkServerReady


ControlMessage = (
    Hello | Welcome | Refused | PolicyUpdate | PolicyAck | Heartbeat | SnapshotEvaluated | Stop | ActionRecord
    | RulesetDisabled | PeerRestarted | Query | QueryAnswer | RulesetFired | RulesetStates | WantFullSnapshot
    | WatchedFigures
)
CommandMessage = KillCommand | WriteCommand | UnitCommand | CommandResult
AnyMessage = ControlMessage | Snapshot | KillCommand | WriteCommand | UnitCommand | CommandResult
