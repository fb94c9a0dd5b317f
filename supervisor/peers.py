"""Other OOM daemons on the same host: two daemons acting on the same pressure may both kill, one victim each."""

from __future__ import annotations

from pathlib import Path

# As /proc/PID/comm shows them (the executable's name, cut at 15 characters).
PEERS = frozenset({"systemd-oomd", "oomd", "oomd_bin", "earlyoom", "nohang", "nohang_psi"})


def other_oom_daemons(proc: Path = Path("/proc")) -> list[tuple[int, str]]:
    """(PID, name) of every running process that is one of the known OOM daemons."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue  # gone meanwhile, or hidden
        if comm in PEERS:
            found.append((int(entry.name), comm))
    return sorted(found)
