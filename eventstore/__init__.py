"""A generic append-only event log on NATS JetStream, with an in-memory twin for tests.

Knows nothing of push notifications: events are bytes under subjects made of tokens.
"""

from eventstore.errors import (
    EventLogUnavailable,
    EventStoreError,
    InvalidSubject,
    WrongExpectedVersion,
)
from eventstore.jetstream import JetStreamEventLog
from eventstore.keystore import InMemoryKeyStore, JetStreamKeyStore, KeyStore
from eventstore.log import (
    ANY,
    REST,
    AppendResult,
    Delivery,
    EventLog,
    RecordedEvent,
    Subject,
    SubjectFilter,
    SubjectFilters,
    Subscription,
    Wildcard,
    filters_of,
)
from eventstore.memory import InMemoryEventLog
from eventstore.once import InMemoryOnce, JetStreamOnce, Once

__all__ = [
    "ANY",
    "REST",
    "AppendResult",
    "Delivery",
    "EventLog",
    "EventLogUnavailable",
    "EventStoreError",
    "InMemoryEventLog",
    "InMemoryKeyStore",
    "InMemoryOnce",
    "InvalidSubject",
    "JetStreamEventLog",
    "JetStreamKeyStore",
    "JetStreamOnce",
    "KeyStore",
    "Once",
    "RecordedEvent",
    "Subject",
    "SubjectFilter",
    "SubjectFilters",
    "Subscription",
    "Wildcard",
    "WrongExpectedVersion",
    "filters_of",
]
