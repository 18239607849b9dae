"""The audit log's leaves as an RFC 6962 Merkle tree, through pymerkle, with its proofs.

pymerkle (RFC 9162 compatible: SHA-256, 0x00 leaf and 0x01 node prefixes) computes roots and
inclusion and consistency proofs from any store of leaf hashes; here the leaves come from the
audit log's `leaf_hash` column or from a list in memory. It caches the roots of large complete
subtrees, which never change once written, so the service's tree costs O(new leaves) per head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pymerkle import BaseMerkleTree, ConsistencyProof, InclusionProof, InvalidProof
from sqlalchemy import Connection

from services.audit import store
from services.audit.record import node

Fetch = Callable[[int, int], Sequence[bytes]]

__all__ = ["Frontier", "InvalidProof", "Tree", "check_consistency", "check_inclusion"]


class Tree(BaseMerkleTree):  # type: ignore[misc]
    """A read-only view: leaves are appended by the store, never through the tree."""

    def __init__(self, fetch: Fetch, size: Callable[[], int], tiles: Fetch | None = None) -> None:
        super().__init__("sha256")
        self._fetch = fetch
        self._size = size
        self._tiles = tiles

    @classmethod
    def of(cls, leaves: Sequence[bytes]) -> Tree:
        return cls(lambda offset, width: leaves[offset : offset + width], lambda: len(leaves))

    @classmethod
    def over(cls, conn: Callable[[], Connection]) -> Tree:
        """The log's tree, read through whichever connection `conn` returns at the time."""
        return cls(
            lambda offset, width: store.leaves(conn(), offset, width),
            lambda: store.size(conn()),
            lambda first, count: store.tiles(conn(), first, count),
        )

    def root(self, size: int) -> bytes:
        return bytes(self.get_root(size))

    def inclusion(self, index: int, size: int) -> dict[str, Any]:
        """The proof that leaf `index` (1-based, the record's seq) is in the tree of `size`."""
        return dict(self.prove_inclusion(index, size).serialize())

    def consistency(self, prior: int, later: int) -> dict[str, Any]:
        """The proof that the tree of `prior` leaves is a prefix of the tree of `later`."""
        return dict(self.prove_consistency(prior, later).serialize())

    # The storage interface pymerkle asks of a backend.
    def _encode_entry(self, data: Any) -> bytes:
        raise NotImplementedError("the audit store appends leaves; the tree only reads them")

    def _store_leaf(self, data: Any, digest: bytes) -> int:
        raise NotImplementedError("the audit store appends leaves; the tree only reads them")

    def _get_leaf(self, index: int) -> bytes:
        return self._fetch(index - 1, 1)[0]

    def _get_leaves(self, offset: int, width: int) -> Sequence[bytes]:
        return self._fetch(offset, width)

    def _get_size(self) -> int:
        return self._size()

    def _get_subroot_uncached(self, offset: int, width: int) -> bytes:
        # A subtree in the tree is aligned to its width: one of TILE leaves or more is made of
        # whole tiles, whose stored roots save reading its leaves.
        if self._tiles is not None and width >= store.TILE and offset % store.TILE == 0:
            roots = self._tiles(offset // store.TILE, width // store.TILE)
            if len(roots) == width // store.TILE:
                return store.perfect_root(roots)
        return bytes(super()._get_subroot_uncached(offset, width))


@dataclass(frozen=True)
class Frontier:
    """A tree of `size` leaves as the roots of its perfect subtrees, largest first (RFC 6962's
    compact range). Appending a leaf merges as many roots as the new size has trailing zero
    bits, so the service keeps its root current at O(1) hashes a record, with no reads; pymerkle
    builds the first one from the stored leaves, and a test holds both to the same roots."""

    size: int
    roots: tuple[bytes, ...]

    @classmethod
    def of(cls, tree: Tree, size: int) -> Frontier:
        roots, offset = [], 0
        for power in reversed(range(size.bit_length())):
            if size >> power & 1:
                roots.append(bytes(tree._get_subroot(offset, 1 << power)))
                offset += 1 << power
        return cls(size, tuple(roots))

    def extended(self, leaves: Sequence[bytes]) -> Frontier:
        roots, size = list(self.roots), self.size
        for leaf in leaves:
            roots.append(leaf)
            size += 1
            merges = size
            while merges & 1 == 0:
                right = roots.pop()
                roots.append(node(roots.pop(), right))
                merges >>= 1
        return Frontier(size, tuple(roots))

    def root(self) -> bytes:
        if not self.roots:
            return hashlib.sha256(b"").digest()
        digest = self.roots[-1]
        for left in reversed(self.roots[:-1]):
            digest = node(left, digest)
        return digest


def check_inclusion(proof: dict[str, Any], leaf: bytes, root: bytes, index: int, size: int) -> None:
    """Raise InvalidProof unless `proof` shows `leaf` at `index` in the tree of `size` with `root`."""
    parsed = InclusionProof.deserialize(proof)
    parsed.verify(leaf, root, index=index, size=size)


def check_consistency(proof: dict[str, Any], prior: tuple[int, bytes], later: tuple[int, bytes]) -> None:
    """Raise InvalidProof unless the tree (size, root) `prior` is a prefix of `later`."""
    parsed = ConsistencyProof.deserialize(proof)
    parsed.verify(prior[1], later[1], prior_size=prior[0], later_size=later[0])
