"""Allowlist, exclusion (opt-out) list and tracked IPs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from probe_agent.safety import Allowlist, ExclusionList, TrackedIps, parse_exclusions
from probe_agent.targets import Target


def T(text: str) -> Target:
    return Target.parse(text)


def test_empty_allowlist_refuses_everything():
    refusal = Allowlist([]).check([T("127.0.0.1")])
    assert refusal and refusal.error_class == "OutsideAllowlist" and "empty" in refusal.message


@pytest.mark.parametrize("target, allowed", [
    ("198.18.0.7", True),
    ("198.18.0.0/25", True),
    ("198.18.0.0/24", True),          # covered by the two adjacent /25 entries together
    ("198.18.0.0/23", False),         # overlaps the allowlist but reaches beyond it
    ("198.18.1.1", False),
    ("10.0.0.1", False),
    ("2001:db8::1", False),           # IPv6 outside an IPv4-only allowlist
    ("2001:db8:1::5", True),
])
def test_allowlist_needs_the_whole_target_inside(target, allowed):
    allow = Allowlist(["198.18.0.0/25", "198.18.0.128/25", "2001:db8:1::/48"])
    assert allow.permits(T(target)) is allowed


def test_one_target_outside_refuses_the_command_and_names_it():
    refusal = Allowlist(["198.18.0.0/24"]).check([T("198.18.0.1"), T("198.19.0.1"), T("198.18.0.2")])
    assert refusal is not None and "198.19.0.1" in refusal.message


def test_exclusion_file_format(tmp_path):
    nets = parse_exclusions("# opt-outs\n198.18.0.5\n198.18.2.9/24  # host bits allowed\n\n2001:db8::/32\n")
    assert [str(n) for n in nets] == ["198.18.0.5/32", "198.18.2.0/24", "2001:db8::/32"]
    with pytest.raises(ValueError, match="line 2"):
        parse_exclusions("198.18.0.1\nnot-an-address\n")


def test_exclusions_cover_targets_and_addresses(tmp_path):
    path = tmp_path / "optout.txt"
    path.write_text("198.18.0.0/25\n198.18.0.128/26\n198.18.0.192/26\n198.18.5.5\n")
    ex = ExclusionList(path)
    assert ex.covers(T("198.18.0.0/24"))       # three pieces together cover it
    assert ex.covers(T("198.18.5.5"))
    assert not ex.covers(T("198.18.5.0/30"))
    mask = ex.excluded_v4(np.array([int.from_bytes(bytes([198, 18, 5, i]), "big") for i in range(8)],
                                   dtype=np.uint64))
    assert mask.tolist() == [False] * 5 + [True] + [False] * 2
    assert ex.excludes("198.18.0.77") and not ex.excludes("198.18.1.1")


def test_builtin_exclusions_apply_without_a_file():
    ex = ExclusionList(None)
    assert ex.excludes("224.0.0.1") and ex.excludes("255.255.255.255") and ex.excludes("0.1.2.3")
    assert not ex.excludes("198.18.0.1")


def test_exclusion_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "optout.txt"
    path.write_text("198.18.0.1\n")
    ex = ExclusionList(path)
    assert not ex.excludes("198.18.0.2")
    path.write_text("198.18.0.1\n198.18.0.2\n")
    os.utime(path, ns=(1, 2_000_000_000))  # a different mtime even within the same clock tick
    assert ex.refresh() is True
    assert ex.excludes("198.18.0.2")
    assert ex.refresh() is False               # unchanged: not re-parsed
    assert ex.reloads == 2


def test_unreadable_exclusion_file_fails_closed(tmp_path):
    path = tmp_path / "optout.txt"
    path.write_text("198.18.0.1\n")
    ex = ExclusionList(path)
    path.write_text("198.18.0.1\ngarbage here\n")
    os.utime(path, ns=(1, 3_000_000_000))
    ex.refresh()
    assert not ex.healthy
    assert ex.excludes("198.18.7.7") and ex.covers(T("198.18.0.0/16"))
    assert ex.excluded_v4(np.array([1, 2, 3], dtype=np.uint64)).all()
    path.write_text("198.18.0.1\n")
    os.utime(path, ns=(1, 4_000_000_000))
    ex.refresh()
    assert ex.healthy and not ex.excludes("198.18.7.7")


def test_missing_exclusion_file_at_start_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        ExclusionList(tmp_path / "nope.txt")


def test_maybe_refresh_respects_its_interval(tmp_path):
    now = [0.0]
    path = tmp_path / "optout.txt"
    path.write_text("")
    ex = ExclusionList(path, check_interval_s=1.0, clock=lambda: now[0])
    path.write_text("198.18.0.9\n")
    os.utime(path, ns=(1, 5_000_000_000))
    now[0] = 0.5
    assert ex.maybe_refresh() is False and not ex.excludes("198.18.0.9")
    now[0] = 1.5
    assert ex.maybe_refresh() is True and ex.excludes("198.18.0.9")


def test_tracked_ips_by_policy_and_tombstones():
    tracked = TrackedIps()
    tracked.update("198.18.0.1", "EFFICIENT")
    assert tracked.is_tracked("198.18.0.1", "EFFICIENT")
    assert not tracked.is_tracked("198.18.0.1", "STANDARD")
    assert tracked.is_tracked("198.18.0.1", "UNKNOWN")
    tracked.update("198.18.0.1", None)
    assert not tracked.is_tracked("198.18.0.1") and len(tracked) == 0
