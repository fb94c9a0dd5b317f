"""Who may call what on pyoomd's D-Bus interface, and how often.

The bus policy file (units/io.github.pyoomd1.conf) already keeps unprivileged callers from the privileged
methods; the daemon checks again, from the caller's credentials as the bus daemon reports them, so a bus with a
looser policy (a session bus, a misinstalled file) does not open them. Everyone else may read, but only at a
bounded rate: each uid has a bucket of calls, and all unprivileged callers together share another, so nobody
can keep a root daemon busy at the moment it is needed. Root and the admin group are never limited.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from dataclasses import dataclass, field

PER_UID_BURST = 20.0  # calls an unprivileged uid may make at once
PER_UID_RATE = 10.0  # calls per second it gets back
SHARED_BURST = 60.0  # all unprivileged callers together
SHARED_RATE = 30.0


@dataclass(frozen=True)
class Caller:
    uid: int
    gids: frozenset[int] | None  # None: the bus did not say (older dbus-daemon); looked up from the uid instead
    pid: int | None = None

    def describe(self) -> str:
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            name = "?"
        return f"uid {self.uid} ({name})" + (f", pid {self.pid}" if self.pid else "")


@dataclass
class TokenBucket:
    burst: float
    rate: float
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.stamp = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def group_id(name: str | None) -> int | None:
    """The gid of the admin group; None when none is configured. Raises KeyError for a group that does not exist."""
    if not name:
        return None
    return grp.getgrnam(name).gr_gid


@dataclass
class AccessPolicy:
    admin_gid: int | None = None
    per_uid: dict[int, TokenBucket] = field(default_factory=dict)
    shared: TokenBucket = field(default_factory=lambda: TokenBucket(SHARED_BURST, SHARED_RATE))

    def privileged(self, caller: Caller) -> bool:
        if caller.uid == 0:
            return True
        if self.admin_gid is None:
            return False
        gids = caller.gids
        if gids is None:
            try:
                user = pwd.getpwuid(caller.uid)
            except KeyError:
                return False
            gids = frozenset(os.getgrouplist(user.pw_name, user.pw_gid))
        return self.admin_gid in gids

    def admit(self, caller: Caller, now: float | None = None) -> bool:
        """Whether this call may go ahead now: always for privileged callers, else within both buckets."""
        if self.privileged(caller):
            return True
        now = time.monotonic() if now is None else now
        bucket = self.per_uid.get(caller.uid)
        if bucket is None:
            if len(self.per_uid) > 10_000:  # a flood of uids must not grow this without bound
                self.per_uid.clear()
            bucket = self.per_uid[caller.uid] = TokenBucket(PER_UID_BURST, PER_UID_RATE)
        # The uid's own bucket first: one noisy uid exhausts its bucket, not everybody's.
        return bucket.take(now) and self.shared.take(now)
