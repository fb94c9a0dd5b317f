"""The documentation matches the code."""

from __future__ import annotations

from pathlib import Path

from policy.docgen import render
from policy.plugins.registry import plugins_of

REPO = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_generated_from_the_plugin_declarations():
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `python -m policy.docgen > docs/configuration.md`"


def test_every_oomd_plugin_is_there_with_oomds_name():
    oomd = {
        "pressure_above", "pressure_rising_beyond", "memory_above", "memory_reclaim", "swap_free", "exists",
        "nr_dying_descendants", "dump_cgroup_overview", "continue", "stop", "kill_by_memory_size_or_growth",
        "kill_by_swap_usage", "kill_by_pressure", "kill_by_pg_scan", "kill_by_io_cost",
    }
    ours = {c.name for c in plugins_of("detector")} | {c.name for c in plugins_of("action")}
    assert oomd <= ours, sorted(oomd - ours)


def test_every_declared_argument_is_documented():
    for kind in ("detector", "action"):
        for cls in plugins_of(kind):
            if not cls.__module__.startswith("policy."):
                continue
            assert cls.doc.strip(), f"{cls.name} has no doc"
            for arg in cls.args:
                assert arg.doc.strip(), f"{cls.name}.{arg.name} has no doc"


def test_dbus_reference_is_generated_from_the_interface_table():
    from supervisor.dbus_docs import render as render_dbus

    committed = (REPO / "docs" / "dbus.md").read_text()
    assert committed == render_dbus(), "docs/dbus.md is stale: run `python -m supervisor.dbus_docs > docs/dbus.md`"
