"""Who may call the privileged D-Bus methods, and how often the others may call at all."""

from __future__ import annotations

from supervisor.access import PER_UID_BURST, PER_UID_RATE, SHARED_BURST, AccessPolicy, Caller


def test_root_and_the_admin_group_are_privileged_and_never_limited():
    policy = AccessPolicy(admin_gid=4242)
    root, admin, other = Caller(0, None), Caller(1000, frozenset({100, 4242})), Caller(1001, frozenset({100}))
    assert policy.privileged(root) and policy.privileged(admin) and not policy.privileged(other)
    assert all(policy.admit(root, now=0.0) and policy.admit(admin, now=0.0) for _ in range(1000))
    assert not AccessPolicy().privileged(admin)  # no admin group configured: root alone


def test_an_unprivileged_uid_gets_its_burst_then_its_rate():
    policy = AccessPolicy()
    caller = Caller(1000, frozenset())
    admitted = sum(policy.admit(caller, now=0.0) for _ in range(100))
    assert admitted == PER_UID_BURST
    assert not policy.admit(caller, now=0.0)
    assert sum(policy.admit(caller, now=1.0) for _ in range(100)) == PER_UID_RATE  # one second later


def test_many_uids_together_share_one_bound():
    policy = AccessPolicy()
    admitted = sum(policy.admit(Caller(2000 + uid, frozenset()), now=0.0) for uid in range(200) for _ in range(2))
    assert admitted == SHARED_BURST
    assert policy.admit(Caller(0, None), now=0.0)  # root still gets through
