"""The audit's decisions: when its tree head is signed, and which signed heads go out.

A head is signed once `every` records have been appended since the last one, or once `every_s`
seconds have passed since it with records not yet signed, so a quiet log is still committed to
within the interval. The times are the caller's clock's (microseconds), never read here.

Replicas share one log, and each sees it at its own moment. So `last_*` must be the newest head
stored, read where no other replica can sign at the same time (heads.signing): a head is then only
ever larger than every head before it. Heads go out in that order too, and a head no larger than
one already published never goes out (a monitor following the newest head would see the log
shrink), whoever signed it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Cadence:
    every: int
    every_s: float


def checkpoint_due(size: int, last_size: int, last_at_us: int, now_us: int, cadence: Cadence) -> bool:
    """Whether a log of `size` records, whose last head covered `last_size` and was signed at
    `last_at_us`, should have a head signed at `now_us`."""
    if size <= last_size:
        return False
    return size - last_size >= cadence.every or now_us - last_at_us >= cadence.every_s * 1e6


def to_publish(unpublished: Iterable[int], last_published: int) -> list[int]:
    """The sizes of the signed heads to publish now, in the order to publish them: those larger
    than the largest already published, smallest first."""
    return sorted(s for s in set(unpublished) if s > last_published)
