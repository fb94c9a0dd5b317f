"""The policy files the supervisor will read, and the last policy that loaded.

Trust, as sshd trusts its keys: started as root, pyoomd reads a policy file or drop-in only when it and every
directory above it belong to root and nobody else may write them (a world-writable directory passes only with the
sticky bit, as /tmp has it, since nobody can then replace a file root owns). Otherwise anyone who could edit the
file could have a root daemon kill whatever they liked.

The last good policy: every policy that loads is kept, as text, in the state directory. When the policy file is
broken at start-up (an edit half-done when the host rebooted), pyoomd runs that copy, says so loudly, and keeps
the real file as the one a reload reads, rather than leaving the host unprotected.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from policy.loader import PolicyError, PolicyInvalid, Spots, load_policy_text
from policy.model import Policy
from policy.plugins.actions import hook_argv

LAST_GOOD = "last-good-policy"


def untrusted(path: Path, owner: int = 0) -> str | None:
    """Why `path` may not be trusted (the file, then each directory above it), or None."""
    real = Path(os.path.realpath(path))
    try:
        st = real.stat()
    except OSError:
        return None  # reading it will say what is wrong
    if st.st_uid != owner:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "others" if st.st_mode & stat.S_IWOTH else "its group"
        return f"writable by {who} (mode {stat.S_IMODE(st.st_mode):o})"
    for directory in real.parents:
        d = directory.stat()
        if d.st_uid != owner:
            return f"its directory {directory} is owned by uid {d.st_uid}, not root"
        if d.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not d.st_mode & stat.S_ISVTX:
            return f"its directory {directory} is writable by others (mode {stat.S_IMODE(d.st_mode):o})"
    return None


def refusal(path: Path) -> PolicyInvalid | None:
    """The error for an untrusted file, when pyoomd runs as root (as anyone else, it can do no more harm than its
    user could, and the check would only get in the way)."""
    if os.geteuid() != 0:
        return None
    why = untrusted(path)
    if why is None:
        return None
    return PolicyInvalid([PolicyError(str(path), 1, 1, f"refused: {why}; as root pyoomd reads only files that root "
                                                       "owns and nobody else can write")])


HOOK_ARGS = ("prekill_hook", "postkill_hook")


def untrusted_hooks(policy: Policy, spots: Spots, source: str) -> list[PolicyError]:
    """Every hook whose executable a root daemon may not run (see `untrusted`), at the argument's position.
    Checked only when pyoomd runs as root (anyone else runs its hooks with no more than its own rights)."""
    if os.geteuid() != 0:
        return []
    out = []
    for ri, rs in enumerate(policy.rulesets):
        for ai, spec in enumerate(rs.actions):
            for arg in HOOK_ARGS:
                command = spec.args.get(arg)
                if not isinstance(command, str) or not command.strip():
                    continue
                executable = Path(hook_argv(command)[0])
                why = untrusted(executable) if executable.exists() else "missing"
                if why is None:
                    continue
                line, col = spots.get(("action", ri, ai, arg), spots.get(("action", ri, ai), (1, 1)))
                out.append(PolicyError(source, line, col, f"{spec.name}: argument '{arg}': refused: {executable} "
                                       f"is {why}; a root daemon runs only hooks root owns and nobody else can "
                                       "write"))
    return out


@dataclass(frozen=True)
class LastGood:
    policy: Policy
    copy: Path
    source: str
    loaded_at: float


class PolicySource:
    def __init__(self, path: Path, state_dir: Path) -> None:
        self.path = path
        self.state_dir = state_dir

    @property
    def _copy(self) -> Path:
        # The original's suffix: oomd's JSON is told from pyoomd's YAML partly by it.
        return self.state_dir / (LAST_GOOD + (self.path.suffix or ".yaml"))

    @property
    def _meta(self) -> Path:
        return self.state_dir / (LAST_GOOD + ".meta.json")

    def load(self) -> Policy:
        """Check, read and load the policy file; raises PolicyInvalid with FILE:LINE:COL errors."""
        problem = refusal(self.path)
        if problem is not None:
            raise problem
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
            raise PolicyInvalid([PolicyError(str(self.path), 1, 1, f"cannot read the policy: {reason}")]) from None
        spots: Spots = {}
        policy = load_policy_text(text, str(self.path), spots)
        problems = untrusted_hooks(policy, spots, str(self.path))
        if problems:
            raise PolicyInvalid(problems)
        self._remember(text)
        return policy

    def _remember(self, text: str) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            for old in self.state_dir.glob(LAST_GOOD + ".*"):
                if old not in (self._copy, self._meta):
                    old.unlink()
            for target, data in ((self._copy, text),
                                 (self._meta, json.dumps({"source": str(self.path), "loaded_at": time.time()}))):
                tmp = target.with_name("." + target.name + ".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(data)
                tmp.replace(target)
        except OSError:
            pass  # the policy loaded; only the fallback for a later broken start is lost

    def last_good(self) -> LastGood | None:
        """The kept copy of the last policy that loaded, if there is one and it still loads."""
        try:
            meta = json.loads(self._meta.read_text())
            policy = load_policy_text(self._copy.read_text(), str(self._copy))
        except (OSError, ValueError, PolicyInvalid):
            return None
        return LastGood(policy, self._copy, str(meta.get("source", "?")), float(meta.get("loaded_at", 0)))
