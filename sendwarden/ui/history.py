"""Suspensions as support staff change them from the page: through the durable
suspension store (:mod:`sendwarden.store.suspensions`, which keeps every suspension
and lifting with who, when and why), with the page's clock."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sendwarden.policy.suspension import Suspension
from sendwarden.store.suspensions import DurableSuspensionStore, SuspensionEvent

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> datetime:
    return datetime.now(UTC)


class SuspensionDesk:
    """Suspend and lift with a reason and the staff member's name; read the history."""

    def __init__(
        self, store: DurableSuspensionStore, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.store = store
        self._clock = clock

    def _now(self) -> str:
        return self._clock().strftime(TIME_FORMAT)

    def current(self, account_id: str) -> Suspension | None:
        return self.store.get(account_id)

    def suspend(self, account_id: str, reason: str, by: str) -> None:
        self.store.suspend(account_id, Suspension(reason=reason, since=self._now(), by=by))

    def lift(self, account_id: str, reason: str, by: str) -> bool:
        return self.store.lift(account_id, by=by, reason=reason, at=self._now())

    def history(self, account_id: str) -> list[SuspensionEvent]:
        """Newest first, as the page lists it."""
        return list(reversed(self.store.history(account_id)))
