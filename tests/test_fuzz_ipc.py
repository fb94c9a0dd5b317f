"""Bad frames (issue 7): a frame that does not decode to one of its channel's messages is dropped (None) and
counted, whatever its bytes; nothing else escapes Channel.decode, so a worker never dies of its peer's garbage.
The property tests throw valid frames of every message type, the same frames with their shape broken (unknown,
missing and mistyped fields, other tags, truncated, padded, bytes changed), crafted frames and random bytes at each
channel (tests/fuzz_targets.py); the tests after them pin the bugs the fuzzing found."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given

from ipc.codec import Channel
from ipc.messages import CommandMessage, ControlMessage, Snapshot
from tests.fuzz_targets import Target, ci_settings, ipc_targets

EXAMPLES = 300


@pytest.mark.parametrize("target", ipc_targets(), ids=lambda t: t.name)
def test_any_frame_decodes_or_is_dropped_and_counted(target: Target):
    @ci_settings(EXAMPLES)
    @given(target.inputs)
    def run(frame: bytes) -> None:
        target.check(frame)

    run()


@pytest.mark.parametrize("unit", [b"\x81\xa1a", b"\x91"])
def test_frame_nested_past_msgspecs_depth_limit_is_dropped_and_counted(unit):
    # Nested one-entry maps escaped as RecursionError (150 kB is far below ZeroMQ's 16 MiB frame limit).
    ch = Channel("control", ControlMessage)
    assert ch.decode(unit * 50_000 + b"\xc0") is None
    assert ch.dropped == 1


def test_field_name_that_is_not_utf8_is_dropped_and_counted():
    # Escaped as UnicodeDecodeError: msgspec decodes field names outside its DecodeError handling.
    frame = b"\x82\xa4kind\xa7welcome\xa5\xe3uild\xa1b"
    ch = Channel("control", ControlMessage)
    assert ch.decode(frame) is None and ch.dropped == 1
    assert ch.decode(frame.replace(b"\xe3uild", b"build")) is not None and ch.dropped == 1


@pytest.mark.parametrize(("message_type", "message"), [
    (ControlMessage, {"kind": "stop", "extra": 1}),
    (CommandMessage, {"kind": "result", "id": "x", "status": "killed", "target": None, "pids": [], "why": "?"}),
    (CommandMessage, {"kind": "kill", "id": "x", "generation": 1, "ruleset": "r", "group": "g", "plugin": "p",
                      "snapshot_time": 0.0, "not_after": 0.0, "mechanism": "direct", "signal": 9, "reason": "",
                      "dry_run": True, "dry_run_source": "", "kill_timeout": 1.0,
                      "candidates": [{"path": "/a", "inode": 1, "usage": None, "why": "", "pid": 1}]}),
    (Snapshot, {"kind": "snapshot", "seq": 1, "generation": 1, "time": 0.0, "monotonic": 0.0, "cgroups": [],
                "host": {"mem_total": 1, "mem_available": 1, "swap_total": 0, "swap_free": 0}, "extra": 1}),
])
def test_unknown_fields_are_dropped_and_counted(message_type, message):
    ch = Channel("test", message_type)
    assert ch.decode(msgspec.msgpack.encode(message)) is None
    assert ch.dropped == 1
