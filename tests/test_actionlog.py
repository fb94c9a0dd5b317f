"""actions.jsonl: one JSON object per line, every field an operator needs, rotated at a size bound."""

from __future__ import annotations

import json

from ipc.messages import ActionRecord
from supervisor.actionlog import ActionLog


def record(i: int) -> ActionRecord:
    return ActionRecord(time=1700000000.0 + i, command_id=f"c{i}", ruleset="rs", group="g",
                        plugin="kill_by_memory_size_or_growth", target=f"/a/{i}", pids=[100 + i], signal="SIGKILL",
                        dry_run=False, dry_run_source="default", result="killed", duration=0.01, reason="r")


def test_lines_are_json_with_the_documented_fields(tmp_path):
    log = ActionLog(tmp_path / "state")
    log.append(record(1))
    (line,) = (tmp_path / "state" / "actions.jsonl").read_text().splitlines()
    obj = json.loads(line)
    for key in ("time", "ruleset", "group", "plugin", "target", "pids", "signal", "dry_run", "result", "duration"):
        assert key in obj
    assert obj["target"] == "/a/1" and obj["pids"] == [101]


def test_rotation_keeps_a_bounded_number_of_files(tmp_path):
    log = ActionLog(tmp_path, max_bytes=1000, keep=2)
    for i in range(40):
        log.append(record(i))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["actions.jsonl", "actions.jsonl.1", "actions.jsonl.2"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    newest = json.loads((tmp_path / "actions.jsonl").read_text().splitlines()[-1])
    assert newest["command_id"] == "c39"
    kept = sum(len(p.read_text().splitlines()) for p in tmp_path.iterdir())
    assert kept < 40  # the oldest were dropped
