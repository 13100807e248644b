-- Generations: one row per image a user asked for. `id` is Studio's own; `prediction_id` is Skytells'.
CREATE TABLE generations (
    id               uuid PRIMARY KEY,
    user_id          text        NOT NULL,
    prediction_id    text        UNIQUE,
    model            text        NOT NULL,
    prompt           text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'processing', 'succeeded', 'failed', 'canceled')),
    output_url       text,
    output_urls      text[]      NOT NULL DEFAULT '{}',
    error            text,
    idempotency_key  text,
    request_hash     text,
    request_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    CONSTRAINT terminal_has_completed_at
        CHECK ((status IN ('succeeded', 'failed', 'canceled')) = (completed_at IS NOT NULL)),
    CONSTRAINT idempotency_key_per_user UNIQUE (user_id, idempotency_key)
);

-- Listing a user's generations newest first, keyset on (created_at, id).
CREATE INDEX generations_user_created ON generations (user_id, created_at DESC, id DESC);

-- Quota counts and reconciliation scan only unfinished rows.
CREATE INDEX generations_user_active ON generations (user_id) WHERE status IN ('queued', 'processing');
CREATE INDEX generations_unfinished ON generations (created_at) WHERE status IN ('queued', 'processing');
