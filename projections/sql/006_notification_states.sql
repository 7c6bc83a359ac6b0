-- A notification's states are the delivery domain's (relaypush.domain.delivery): `sent` is now
-- `delivered`, and a notification that failed because its deadline passed is `expired`.
ALTER TABLE messages DROP CONSTRAINT messages_status_known;
UPDATE messages SET status = 'delivered' WHERE status = 'sent';
UPDATE messages SET status = 'expired'
    WHERE status = 'failed' AND (last_error = 'expired' OR last_error LIKE 'expired:%');
ALTER TABLE messages ADD CONSTRAINT messages_status_known
    CHECK (status IN ('pending', 'delivered', 'failed', 'expired', 'dropped'));
