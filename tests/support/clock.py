"""A clock tests move by hand (``clock.now += 60``), for code that takes a clock."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T", int, float)


class ManualClock(Generic[T]):
    """Returns ``now`` (seconds as a float, or microseconds as an int: whatever the code
    under test counts in) until the test changes it."""

    def __init__(self, now: T) -> None:
        self.now: T = now

    def __call__(self) -> T:
        return self.now
