"""Target expansion: the keyed permutation, target spaces, overlaps and shards."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probe_agent.targets import KeyedPermutation, Target, TargetSpace, derive_key


@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32))
@settings(max_examples=60, deadline=None)
def test_permutation_is_a_bijection_of_range_n(n, seed):
    perm = KeyedPermutation(n, derive_key(seed, "cmd"))
    values = perm.block(0, n)
    assert sorted(values.tolist()) == list(range(n))


def test_permutation_is_deterministic_by_key_and_differs_between_keys():
    a = KeyedPermutation(100_000, derive_key(7, "c1")).block(0, 1000)
    b = KeyedPermutation(100_000, derive_key(7, "c1")).block(0, 1000)
    c = KeyedPermutation(100_000, derive_key(8, "c1")).block(0, 1000)
    d = KeyedPermutation(100_000, derive_key(7, "c2")).block(0, 1000)
    assert (a == b).all()
    assert (a != c).sum() > 990 and (a != d).sum() > 990


def test_blocks_compose_to_the_whole_permutation():
    perm = KeyedPermutation(10_007, derive_key(1, "x"))
    whole = perm.block(0, 10_007)
    parts = np.concatenate([perm.block(i, min(10_007, i + 333)) for i in range(0, 10_007, 333)])
    assert (whole == parts).all()
    assert perm[5] == int(whole[5])


def test_consecutive_probes_spread_over_networks():
    # A /16 x 1 port: the first 256 probes should touch many different /24s, not march through one.
    space = TargetSpace([Target.parse("198.18.0.0/16")], [80], derive_key(0, "sweep"))
    _, block = next(space.blocks(block_size=256))
    nets = {int(o) >> 8 for o in block.offset.tolist()}
    assert len(nets) > 150
    # ... and not in ascending order
    assert not (np.diff(block.offset.astype(np.int64)) > 0).all()


def test_large_domains_are_walked_without_materialising_them():
    n = 2**32 * 500  # every IPv4 address x 500 ports
    perm = KeyedPermutation(n, derive_key(0, "internet"))
    values = perm.block(10**12, 10**12 + 4096)
    assert values.max() < n and len(set(values.tolist())) == 4096


def test_target_space_covers_every_pair_once():
    targets = [Target.parse("198.18.0.0/29"), Target.parse("198.18.1.7")]
    space = TargetSpace(targets, [22, 80, 443], derive_key(3, "c"))
    pairs = []
    for _, block in space.blocks(block_size=5):
        for t, off, port in zip(block.target, block.offset, block.port):
            pairs.append((targets[t].address(int(off)), int(port)))
    expected = {(str(ip), p) for ip in ipaddress.ip_network("198.18.0.0/29") for p in (22, 80, 443)}
    expected |= {("198.18.1.7", p) for p in (22, 80, 443)}
    assert len(pairs) == len(expected) and set(pairs) == expected


def test_overlapping_targets_probe_an_address_once_attributed_to_the_first():
    targets = [Target.parse("198.18.0.4/30"), Target.parse("198.18.0.0/29"), Target.parse("198.18.0.5")]
    space = TargetSpace(targets, [80], derive_key(0, "o"))
    seen = []
    for _, block in space.blocks():
        seen += [(int(t), targets[t].address(int(o))) for t, o in zip(block.target, block.offset)]
    addresses = [a for _, a in seen]
    assert sorted(addresses) == [f"198.18.0.{i}" for i in range(8)]
    assert {a for t, a in seen if t == 0} == {f"198.18.0.{i}" for i in range(4, 8)}
    assert not [a for t, a in seen if t == 2]
    assert space.owned_count(0) == 4 and space.owned_count(1) == 4 and space.owned_count(2) == 0


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_shards_are_disjoint_complete_and_keep_an_address_whole(shards):
    targets = [Target.parse("198.18.4.0/24")]
    ports = [21, 22, 80]
    key = derive_key(5, "cmd")
    owners: dict[str, set[int]] = {}
    count = 0
    for shard in range(shards):
        space = TargetSpace(targets, ports, key, shards=shards, shard=shard)
        for _, block in space.blocks():
            for off in block.offset.tolist():
                owners.setdefault(targets[0].address(off), set()).add(shard)
                count += 1
    assert count == 256 * 3                                  # every pair exactly once over all shards
    assert all(len(s) == 1 for s in owners.values())         # each address in one shard only
    assert len(owners) == 256
    sizes = [sum(1 for s in owners.values() if s == {k}) for k in range(shards)]
    assert min(sizes) > 256 / shards / 2                     # roughly balanced


def test_ipv6_targets_expand_small_ranges():
    t = Target.parse("2001:db8::/126")
    space = TargetSpace([t], [80], derive_key(0, "v6"))
    addrs = sorted(t.address(int(o)) for _, b in space.blocks() for o in b.offset)
    assert addrs == ["2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert Target.parse("2001:DB8::1").text == "2001:db8::1"


def test_target_parse_rejects_host_bits_and_garbage():
    for bad in ("198.18.0.1/24", "300.1.1.1", "198.18.0.0/33", "", "example.org"):
        with pytest.raises(ValueError):
            Target.parse(bad)


# -- targets a person writes (scanflow agent --scan) ---------------------------------------------

from probe_agent.targets import parse_target_spec  # noqa: E402


@pytest.mark.parametrize("text, expected", [
    ("198.18.7.10", ["198.18.7.10"]),
    (" 198.18.7.0/24 ", ["198.18.7.0/24"]),
    ("198.18.7.1/32", ["198.18.7.1"]),
    ("198.18.7.10-198.18.7.14", ["198.18.7.10/31", "198.18.7.12/31", "198.18.7.14"]),
    ("198.18.7.0-198.18.7.255", ["198.18.7.0/24"]),
    ("198.18.7.9-198.18.7.9", ["198.18.7.9"]),
    ("2001:db8::1-2001:db8::2", ["2001:db8::1", "2001:db8::2"]),
])
def test_cli_targets_are_addresses_cidrs_or_first_last_ranges(text, expected):
    targets = parse_target_spec(text)
    assert [t.text for t in targets] == expected
    # A range becomes exactly its addresses, each piece a canonical target the agent vets as usual.
    first, _, last = text.strip().partition("-")
    if last:
        covered = [int(a) for t in targets for a in t.network]
        lo, hi = int(ipaddress.ip_address(first)), int(ipaddress.ip_address(last))
        assert covered == list(range(lo, hi + 1))
    for t in targets:
        assert Target.parse(t.text) == t


@pytest.mark.parametrize("text, fragments", [
    ("198.18.7.300", ["'198.18.7.300'", "198.18.7.0/24", "198.18.7.10-198.18.7.14"]),
    ("198.18.7.0/23", ["host bits", "198.18.6.0/23", "198.18.7.0-198.18.7.255"]),
    ("198.18.7.5/33", ["'198.18.7.5/33'"]),
    ("198.18.7.14-198.18.7.10", ["ends before it starts"]),
    ("198.18.7.10-14", ["both ends in full"]),
    ("198.18.7.1-2001:db8::1", ["IPv4 and IPv6"]),
    ("", ["empty"]),
    ("scanme.example", ["'scanme.example'"]),
])
def test_malformed_cli_targets_say_what_to_write_in_one_line(text, fragments):
    with pytest.raises(ValueError) as err:
        parse_target_spec(text)
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
