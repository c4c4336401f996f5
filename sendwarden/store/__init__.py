"""Storage behind small interfaces. Every backend raises :class:`StoreError`, so
the pipeline maps any storage failure to the one ``on_store_error`` setting."""

from __future__ import annotations


class StoreError(Exception):
    """A backend (Redis, the consent database) could not answer in time."""

    def __init__(self, backend: str, detail: str) -> None:
        super().__init__(f"{backend}: {detail}")
        self.backend = backend
        self.detail = detail
