"""The PostgreSQL read models of relaypush, projected from the event log.

Tables (in a named schema, ``relaypush`` by default): ``devices``, ``messages``, ``inbox``,
``tenants`` and ``projection_checkpoints``. :class:`Projector` keeps them up to date, one per
schema; :func:`rebuild` replays the whole log into fresh tables beside the live ones while the
service runs and swaps them in; :func:`schema_status` tells where a schema stands;
:func:`compare_schemas` checks two schemas hold the same rows. Imports :mod:`eventstore` and
:mod:`relaypush.domain` only.
"""

from projections.batch import Opener
from projections.checkpoint import AppliedBatch, apply_events, apply_records, read_checkpoint
from projections.compare import compare_schemas
from projections.errors import (
    CheckpointMoved,
    MigrationError,
    ProjectionError,
    ProjectionUnavailable,
    RebuildError,
)
from projections.rebuild import (
    RebuildResult,
    rebuild,
    rebuild_and_swap,
    rebuild_into,
    swap_schemas,
)
from projections.runner import Projector, default_durable, wait_for_position
from projections.schema import CHECKPOINT_NAME, PROJECTION_TABLES, migrate
from projections.status import CheckpointStatus, LockHolder, SchemaStatus, schema_status

__all__ = [
    "CHECKPOINT_NAME",
    "PROJECTION_TABLES",
    "AppliedBatch",
    "CheckpointMoved",
    "CheckpointStatus",
    "LockHolder",
    "MigrationError",
    "Opener",
    "ProjectionError",
    "ProjectionUnavailable",
    "Projector",
    "RebuildError",
    "RebuildResult",
    "SchemaStatus",
    "apply_events",
    "apply_records",
    "compare_schemas",
    "default_durable",
    "migrate",
    "read_checkpoint",
    "rebuild",
    "rebuild_and_swap",
    "rebuild_into",
    "schema_status",
    "swap_schemas",
    "wait_for_position",
]
