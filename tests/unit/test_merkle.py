"""The audit's Merkle tree: pymerkle's roots are RFC 6962's, and the service's incremental
frontier agrees with them at every size, however the leaves arrive."""

from __future__ import annotations

import hashlib
import random

from services.audit import record
from services.audit.merkle import Frontier, Tree

LEAVES = [hashlib.sha256(b"\x00" + str(i).encode()).digest() for i in range(300)]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962, 2.1, as written."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def test_the_tree_roots_are_rfc_6962s() -> None:
    tree = Tree.of(LEAVES)
    assert all(tree.root(n) == mth(LEAVES[:n]) for n in range(1, len(LEAVES) + 1))


def test_the_frontier_agrees_at_every_size_whatever_the_batches() -> None:
    rng = random.Random(7)
    tree = Tree.of(LEAVES)
    frontier = Frontier(0, ())
    assert frontier.root() == mth([])
    while frontier.size < len(LEAVES):
        batch = LEAVES[frontier.size : frontier.size + rng.randint(0, 40)]
        frontier = frontier.extended(batch)
        assert frontier.root() == mth(LEAVES[: frontier.size])
        assert Frontier.of(tree, frontier.size) == frontier


def test_a_leaf_covers_its_position_attribution_and_bytes() -> None:
    meta = b"1\n[]"
    base = record.leaf(meta, record.value_digest(b"v"))
    assert record.leaf(b"2\n[]", record.value_digest(b"v")) != base
    assert record.leaf(meta, record.value_digest(b"w")) != base
    assert base == hashlib.sha256(b"\x00" + meta + hashlib.sha256(b"v").digest()).digest()
