"""The PostgreSQL read models of relaypush, projected from the event log.

Tables (in a named schema, ``relaypush`` by default): ``devices``, ``messages``, ``inbox``,
``tenants`` and ``projection_checkpoints``. :class:`Projector` keeps them up to date, one per
schema; :func:`rebuild` replays the whole log into fresh tables and swaps them in;
:func:`compare_schemas` checks two schemas hold the same rows. Imports :mod:`eventstore` and
:mod:`relaypush.domain` only.
"""

from projections.checkpoint import AppliedBatch, apply_events, apply_records, read_checkpoint
from projections.compare import compare_schemas
from projections.errors import (
    CheckpointMoved,
    MigrationError,
    ProjectionError,
    ProjectionUnavailable,
    RebuildError,
)
from projections.rebuild import rebuild, rebuild_into, swap_schemas
from projections.runner import Projector, default_durable, wait_for_position
from projections.schema import CHECKPOINT_NAME, PROJECTION_TABLES, migrate

__all__ = [
    "CHECKPOINT_NAME",
    "PROJECTION_TABLES",
    "AppliedBatch",
    "CheckpointMoved",
    "MigrationError",
    "ProjectionError",
    "ProjectionUnavailable",
    "Projector",
    "RebuildError",
    "apply_events",
    "apply_records",
    "compare_schemas",
    "default_durable",
    "migrate",
    "read_checkpoint",
    "rebuild",
    "rebuild_into",
    "swap_schemas",
    "wait_for_position",
]
