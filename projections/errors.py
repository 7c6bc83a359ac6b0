"""Errors raised by the projections.

ProjectionError
├── MigrationError          the read tables could not be created or upgraded
├── ProjectionUnavailable   PostgreSQL could not be reached or failed mid-batch
├── CheckpointMoved         the checkpoint changed under a running projector (rebuild, restore)
├── PoisonBatch             a batch failed for a reason retrying cannot change
└── RebuildError            a rebuild or a schema comparison failed
"""

from __future__ import annotations

__all__ = [
    "CheckpointMoved",
    "MigrationError",
    "PoisonBatch",
    "ProjectionError",
    "ProjectionUnavailable",
    "RebuildError",
]


class ProjectionError(Exception):
    """Root of every error raised by :mod:`projections`."""


class MigrationError(ProjectionError):
    """A migration failed; nothing of it was applied (migrations run in one transaction)."""


class ProjectionUnavailable(ProjectionError):
    """PostgreSQL could not be reached, or the connection broke while a batch was applied."""


class CheckpointMoved(ProjectionError):
    """The stored checkpoint is not where the projector left it: the schema was rebuilt or
    restored under it. The projector resubscribes from the stored checkpoint."""

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"checkpoint moved from {expected} to {actual}")


class PoisonBatch(ProjectionError):
    """Applying a batch failed in a way retrying cannot change (bad data, a limit of the
    database, a bug): one of its events cannot be applied. Nothing of the batch was applied."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__(error)


class RebuildError(ProjectionError):
    """A rebuild, a schema swap or a comparison of schemas failed."""
