-- Web Push (VAPID) credentials: the fingerprint of a tenant's key pair, as for APNs and FCM.
ALTER TABLE tenants ADD COLUMN webpush_fingerprint text;
