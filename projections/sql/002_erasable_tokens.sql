-- Erasure (docs/audit.md#privacy): a device whose client was erased keeps its row, without a
-- token; so does a registration replayed after its client's key was destroyed.
ALTER TABLE devices ALTER COLUMN token DROP NOT NULL;
