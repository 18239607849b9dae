"""The audit's decision: when its tree head is signed.

A head is signed once `every` records have been appended since the last one, or once `every_s`
seconds have passed since it with records not yet signed, so a quiet log is still committed to
within the interval. The times are the caller's clock's (microseconds), never read here.
"""

from __future__ import annotations

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
