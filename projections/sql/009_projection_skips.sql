-- Events a projection could not apply (docs/operations.md#an-event-the-read-tables-cannot-take):
-- a deterministic failure (bad data, a limit, a bug) is narrowed down to one event, recorded
-- here with its position, and the projection goes on past it. Every value comes from the event
-- and the error, so a rebuild that meets the same event records the same row.
CREATE TABLE projection_skips (
    position    bigint      PRIMARY KEY,
    type        text        NOT NULL,
    error       text        NOT NULL,
    occurred_at timestamptz
);
