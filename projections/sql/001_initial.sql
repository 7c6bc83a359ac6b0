-- The read tables, projected from the event log. Applied by projections.schema.migrate with
-- search_path set to the target schema alone: never name a schema here.
-- Every value comes from the events (occurred_at, positions), never from now(), so that a replay
-- gives identical rows; the one exception is projection_checkpoints.updated_at.

CREATE TABLE devices (
    tenant_id           text        NOT NULL,
    client_id           text        NOT NULL,
    provider            text        NOT NULL,
    token               text        NOT NULL,
    always_raw          boolean     NOT NULL,
    active              boolean     NOT NULL,
    first_registered_at timestamptz NOT NULL,
    last_registered_at  timestamptz NOT NULL,
    unregistered_at     timestamptz,
    unregister_reason   text,
    last_position       bigint      NOT NULL,
    PRIMARY KEY (tenant_id, client_id)
);
CREATE INDEX devices_active_token ON devices (tenant_id, token) WHERE active;

CREATE TABLE messages (
    tenant_id         text        NOT NULL,
    client_id         text        NOT NULL,
    message_id        text        NOT NULL,
    topic             text,
    flags             bigint      NOT NULL DEFAULT 0,
    flag_names        text[]      NOT NULL DEFAULT '{}',
    encrypted         boolean     NOT NULL DEFAULT false,
    raw               boolean     NOT NULL DEFAULT false,
    status            text        NOT NULL
        CONSTRAINT messages_status_known CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
    attempts          integer     NOT NULL DEFAULT 0,
    duplicates        integer     NOT NULL DEFAULT 0,
    provider          text,
    provider_id       text,
    last_error        text,
    next_attempt_at   timestamptz,
    accepted_at       timestamptz,
    delivered_at      timestamptz,
    failed_at         timestamptz,
    updated_at        timestamptz NOT NULL,
    accepted_position bigint,
    PRIMARY KEY (tenant_id, client_id, message_id)
);
CREATE INDEX messages_status ON messages (status);

CREATE TABLE inbox (
    tenant_id   text        NOT NULL,
    client_id   text        NOT NULL,
    message_id  text        NOT NULL,
    topic       text        NOT NULL,
    flags       bigint      NOT NULL,
    title       text,
    body        text,
    icon        text,
    url         text,
    type        text,
    blob        text,
    raw_message text,
    created_at  timestamptz NOT NULL,
    read        boolean     NOT NULL DEFAULT false,
    read_at     timestamptz,
    PRIMARY KEY (tenant_id, client_id, message_id)
);
CREATE INDEX inbox_client_read ON inbox (tenant_id, client_id, read);

CREATE TABLE tenants (
    tenant_id        text        PRIMARY KEY,
    created_at       timestamptz,
    suspended        boolean     NOT NULL DEFAULT false,
    suspended_reason text,
    apns_fingerprint text,
    fcm_fingerprint  text,
    deleted_at       timestamptz
);

CREATE TABLE projection_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);
INSERT INTO projection_checkpoints (name, position, updated_at) VALUES ('read_models', 0, now());
