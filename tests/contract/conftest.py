"""The ``event_log`` fixture: every contract test runs against each implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from eventstore import EventLog, InMemoryEventLog, JetStreamEventLog


@pytest_asyncio.fixture(name="event_log", params=["memory", "jetstream"])
async def fx_event_log(request: pytest.FixtureRequest) -> AsyncIterator[EventLog]:
    """A fresh, empty log: in memory, or on its own JetStream stream and subject prefix."""
    event_log: EventLog
    if request.param == "memory":
        event_log = InMemoryEventLog()
    else:
        nats_url: str = request.getfixturevalue("nats_url")
        name: str = request.getfixturevalue("unique_name")
        event_log = await JetStreamEventLog.connect(nats_url, stream=name, prefix=name)
    try:
        yield event_log
    finally:
        await event_log.close()
