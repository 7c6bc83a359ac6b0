"""When the deduplication index can be trusted, and when the log must be asked instead.

A push is a duplicate when the same (tenant, client, message id) was accepted before. Two layers
answer it (docs/architecture.md#deduplication):

- the event log's idempotency key (JetStream's ``Nats-Msg-Id``) catches any copy appended within
  the log's duplicate window of the first;
- an index kept with the read tables (the ``messages`` projection) catches older copies. It lags
  the log a little, which is harmless as long as every event older than the duplicate window is
  in it: a copy of anything newer is caught by the first layer.

:func:`needs_scan` decides from what the index answered whether its "not seen" may be trusted;
when it may not (the projector is behind by more than the window allows, or never said where it
stands), the caller reads the client's accepted notifications after the index's position.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

__all__ = ["NOTHING_INDEXED", "IndexAnswer", "IndexUnavailable", "needs_scan", "safety_margin"]

MAX_MARGIN: Final = 60.0
"""Seconds kept between the index's horizon and the duplicate window, at most (clock skew
between the processes and the log's server, a projector commit under way)."""


class IndexUnavailable(Exception):
    """The index cannot answer now (its database is unreachable); the push may be retried."""


@dataclass(frozen=True, slots=True)
class IndexAnswer:
    """What the index knows of one notification, and how far the index reaches."""

    accepted: bool
    """The index holds the notification as accepted: it is a duplicate."""
    position: int
    """The index reflects the log up to this position."""
    caught_up_at: datetime | None
    """Every event appended to the log before this time is at or below ``position`` (None:
    the index cannot say)."""


NOTHING_INDEXED: Final = IndexAnswer(accepted=False, position=0, caught_up_at=None)
"""The answer of an index that holds nothing: the whole client must be read."""


def safety_margin(window: float) -> float:
    """Seconds of the duplicate window not relied upon: a fifth of it, at most a minute."""
    return min(MAX_MARGIN, window / 5)


def needs_scan(answer: IndexAnswer, *, now: datetime, window: float) -> bool:
    """Whether a notification the index does not hold may still have been accepted before:
    true unless the index had caught up with the log less than the duplicate window (minus a
    margin) ago, in which case anything it misses is recent enough for the log's own
    idempotency check."""
    if answer.accepted:
        return False
    if answer.caught_up_at is None:
        return True
    horizon = now - timedelta(seconds=window - safety_margin(window))
    return answer.caught_up_at < horizon
