"""Desktop notifications after a kill: a real notification server (dunst) on the victim's user's own session
bus gets pyoomd's message, sent as that user; a bus that never answers delays nothing."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psutil
import pytest

from ipc.messages import CommandResult, KillCommand
from tests.daemon import Daemon
from tests.desktop_session import USER, DesktopSession, require_tools
from tests.realhost import SYSTEM_PYTHON, wait_for
from workers.desktop_notify import message, owners, session_bus


def notify_policy(parent: str) -> str:
    return f"""
interval: 0.5
rulesets:
  - name: desktop thrash
    post_action_delay: 30
    detectors:
      - name: session under memory pressure
        all:
          - pressure_above: {{cgroup: "{parent}", resource: memory, threshold: 5, duration: 1}}
    actions:
      - kill_by_memory_size_or_growth: {{cgroup: "{parent}/*", notify: true}}
"""


@pytest.mark.real
def test_a_kill_notifies_the_victims_user_through_their_own_session_bus(cgroups, desktop: DesktopSession,
                                                                         tmp_path):
    cgroups.mkdir("app", memory_limit=64 << 20)
    cgroups.mkdir("idle")
    thrasher = cgroups.thrasher("app", user=desktop.uid)  # the user's application, thrashing
    helper = cgroups.sleeper("app")  # and a process of root's in it: root has no session bus to tell
    idle = cgroups.sleeper("idle", user=desktop.uid)
    daemon = Daemon(tmp_path, notify_policy(cgroups.path), "--bus", "none").start(
        wrapper=desktop.daemon_wrapper())
    try:
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        assert helper.wait(timeout=10) == -signal.SIGKILL
        record = wait_for(daemon.actions, 20, "the kill's record")[0]
        assert record["target"] == f"{cgroups.path}/app" and record["result"] == "killed"
        assert f"desktop notification to uid {desktop.uid}" in record["detail"]
        assert "no session bus for uid 0" in record["detail"]
        sent = daemon.wait_log(rf"desktop notification to uid {desktop.uid}: sent over "
                               rf"/run/user/{desktop.uid}/bus \(notification (\d+)\)")
        shown = [n for n in desktop.notifications() if n["id"] == int(sent.group(1))]
        assert len(shown) == 1, desktop.notifications()
        note = shown[0]
        assert note["appname"] == "pyoomd"
        assert note["summary"] == "pyoomd killed app to relieve memory pressure"
        assert f"in {cgroups.path}/app ended" in note["body"]
        assert "ruleset desktop thrash" in note["body"]
        assert idle.poll() is None, "the idle sibling was touched"
    finally:
        assert daemon.stop() == 0


@pytest.mark.real
def test_a_session_bus_that_never_answers_delays_no_kill(cgroups, tmp_path):
    require_tools()
    # A socket of the user's that takes connections and never says a word: a wedged session bus.
    root = Path(tempfile.mkdtemp(prefix="pyoomd-desktop-", dir="/tmp"))
    root.chmod(0o755)
    (root / str(USER)).mkdir(mode=0o700)
    os.chown(root / str(USER), USER, USER)
    wedged = socket.socket(socket.AF_UNIX)
    wedged.bind(str(root / str(USER) / "bus"))
    os.chown(root / str(USER) / "bus", USER, USER)
    wedged.listen(8)
    cgroups.mkdir("app", memory_limit=64 << 20)
    thrasher = cgroups.thrasher("app", user=USER)
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               'mount --bind "$0" /run/user && exec "$@"', str(root)]
    daemon = Daemon(tmp_path, notify_policy(cgroups.path), "--bus", "none").start(wrapper=wrapper)
    try:
        thrasher.wait(timeout=90)
        assert thrasher.returncode == -signal.SIGKILL
        # While it waits on the wedged bus, the notifier is the user's, with nothing of root's left.
        notifier = wait_for(lambda: next((p for p in psutil.Process(daemon.proc.pid).children(recursive=True)
                                          if "workers.notify_send" in " ".join(p.cmdline())), None), 20,
                            "the notifier child")
        status = wait_for(lambda: (lambda t: t if f"Uid:\t{USER}\t" in t else None)(
            Path(f"/proc/{notifier.pid}/status").read_text()), 10, "the notifier to drop to the user")
        assert re.search(r"^CapEff:\s+0+$", status, re.M) and re.search(r"^CapBnd:\s+0+$", status, re.M), status
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        assert Path(f"/proc/{notifier.pid}/oom_score_adj").read_text().strip() == "0"
        given_up = daemon.wait_log(rf"desktop notification to uid {USER}: not sent: /run/user/{USER}/bus did not "
                                   r"answer within \d+s")
        # The kill was done and reported before the notification gave up, not after it.
        killed = re.search(r"action: .* target=" + re.escape(f"{cgroups.path}/app") + r" .*result=killed",
                           daemon.log)
        assert killed is not None and killed.start() < given_up.start(), daemon.log
        record = daemon.actions()[0]
        assert record["result"] == "killed" and f"desktop notification to uid {USER}" in record["detail"]
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0
        wedged.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _command(**kw) -> KillCommand:
    fields = dict(id="c1", generation=1, ruleset="rs", group="g", plugin="kill_by_memory_size_or_growth",
                  snapshot_time=0.0, not_after=0.0, candidates=[],
                  mechanism="direct", signal=9, reason="kill_by_memory_size_or_growth picked /a/b: 60 MB <&>",
                  dry_run=False, dry_run_source="", kill_timeout=1.0, notify=True)
    fields.update(kw)
    return KillCommand(**fields)


def test_the_message_names_the_unit_or_cgroup_and_is_safe_as_markup():
    result = CommandResult(id="c1", status="killed", target="/user.slice/user-1000.slice/app-x.scope",
                           pids=[10, 11], unit="app-x.scope")
    summary, body = message(_command(), result)
    assert summary == "pyoomd killed app-x.scope to relieve memory pressure"
    assert body.startswith("2 processes in /user.slice/user-1000.slice/app-x.scope ended.")
    assert "60 MB &lt;&amp;&gt;" in body and "<&>" not in body
    summary, _ = message(_command(operation="stop"), CommandResult(id="c1", status="killed", target="/s/b.service",
                                                                    pids=[3]))
    assert summary == "pyoomd stopped b.service to relieve memory pressure"


def test_owners_are_the_real_uids_of_the_living_processes():
    child = subprocess.Popen([SYSTEM_PYTHON, "-c", "import time; time.sleep(60)"],
                             preexec_fn=lambda: (os.setgroups([]), os.setresgid(USER, USER, USER),
                                                 os.setresuid(USER, USER, USER)))
    try:
        wait_for(lambda: Path(f"/proc/{child.pid}/status").read_text().find(f"Uid:\t{USER}") >= 0, 10,
                 "the child to become nobody")
        assert owners({os.getpid(), child.pid, 2**22 + 7}) == {os.getuid(), USER}  # a gone PID is passed over
    finally:
        child.kill()
        child.wait()


def test_a_session_bus_counts_only_when_it_is_the_users_own_socket(tmp_path, monkeypatch):
    import workers.desktop_notify as dn

    monkeypatch.setattr(dn, "SESSION_BUS", str(tmp_path / "{uid}" / "bus"))
    (tmp_path / "7").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "7" / "bus"))
    try:
        assert session_bus(7) is None  # root's socket in user 7's place
        os.chown(tmp_path / "7" / "bus", 7, 7)
        assert session_bus(7) == str(tmp_path / "7" / "bus")
        assert session_bus(8) is None  # no such directory
        (tmp_path / "9").mkdir()
        (tmp_path / "9" / "bus").write_text("")
        os.chown(tmp_path / "9" / "bus", 9, 9)
        assert session_bus(9) is None  # a file, not a socket
    finally:
        sock.close()
