"""A deduplication index for tests that want one without PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

from relaypush.domain.dedup import IndexAnswer


class CaughtUpIndex:
    """Holds ``accepted`` and reaches ``position``; it caught up with the log at
    ``caught_up_at`` (now, at each lookup, when not set): its misses are then believed."""

    def __init__(self, *, position: int = 0, caught_up_at: datetime | None = None) -> None:
        self.accepted: set[tuple[str, str, str]] = set()
        self.position = position
        self.caught_up_at = caught_up_at
        self.lookups = 0

    async def lookup(self, tenant_id: str, client_id: str, message_id: str) -> IndexAnswer:
        self.lookups += 1
        return IndexAnswer(
            accepted=(tenant_id, client_id, message_id) in self.accepted,
            position=self.position,
            caught_up_at=self.caught_up_at or datetime.now(UTC),
        )
