-- Outbound webhooks: where a generation's changes are to be told, the deliveries that tell them, and each user's
-- signing key.
ALTER TABLE generations
    ADD COLUMN webhook        text,
    ADD COLUMN webhook_events text[] NOT NULL DEFAULT '{}';

-- The outbox. A delivery is inserted by the very statement that changes its generation (common/db/deliveries.py),
-- so a change committed always has its delivery, whichever process made it. `id` is the `webhook-id`, the same on
-- every attempt. `generation` is the row as of the change, rendered at sending time. Notifier replicas share the
-- work through leases: `leased_by` holds a row until `leased_until`, renewed while the attempt runs, so a dead
-- replica's rows are free again once its lease runs out.
CREATE TABLE webhook_deliveries (
    id               uuid        PRIMARY KEY,
    generation_id    uuid        NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    user_id          text        NOT NULL,
    url              text        NOT NULL,
    host             text        NOT NULL,
    event            text        NOT NULL CHECK (event IN ('start', 'completed')),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts         integer     NOT NULL DEFAULT 0,
    last_status_code integer,
    last_error       text,
    next_attempt_at  timestamptz DEFAULT now(),
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    changed_at       timestamptz NOT NULL,
    generation       jsonb       NOT NULL,
    leased_by        text,
    leased_until     timestamptz,
    CONSTRAINT one_delivery_per_event UNIQUE (generation_id, event)
);

-- What the notifier claims: pending deliveries that are due.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- A receiver that answered 410 ends every pending delivery of the same user to the same URL.
CREATE INDEX webhook_deliveries_receiver ON webhook_deliveries (user_id, url) WHERE status = 'pending';

-- One signing key per user (`whsec_` + base64 of 32 random bytes); after a rotation the previous key keeps signing
-- alongside the new one for NOTIFY_ROTATION_OVERLAP_S after `rotated_at`.
CREATE TABLE webhook_keys (
    user_id      text        PRIMARY KEY,
    key          text        NOT NULL,
    previous_key text,
    rotated_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Wakes the notifiers (LISTEN studio_webhook_deliveries) when a delivery becomes pending: an attempt starts
-- within a second of the change, without polling the table fast. Sent at commit, so never before the row is
-- visible; repeats within one transaction are folded into one.
CREATE FUNCTION studio_webhook_delivery_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('studio_webhook_deliveries', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER webhook_delivery_pending
    AFTER INSERT OR UPDATE OF status ON webhook_deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending')
    EXECUTE FUNCTION studio_webhook_delivery_pending();
