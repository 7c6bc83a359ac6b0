-- The deduplication index (docs/architecture.md#deduplication): the API looks a notification up in
-- `messages` (its primary key) and trusts a miss only when the projector had caught up with the
-- log recently enough: `caught_up_at` is a time before which every event appended to the log is
-- at or below `position` (set by the projector when it saw the log's head; NULL: unknown).
ALTER TABLE projection_checkpoints ADD COLUMN caught_up_at timestamptz;
-- Retention (RELAYPUSH_DEDUP_RETENTION) deletes rows accepted before a horizon.
CREATE INDEX messages_accepted_at ON messages (accepted_at);
