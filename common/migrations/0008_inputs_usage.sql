-- The model's own options, as the request's `input` held them (upload references as given), and what Skytells
-- reported of the prediction: `metrics.predict_time` and `metadata.billing.credits_used`.
ALTER TABLE generations ADD COLUMN input jsonb NOT NULL DEFAULT '{}';
ALTER TABLE generations ADD COLUMN predict_time double precision;
ALTER TABLE generations ADD COLUMN credits_used numeric;

-- What each user used in each UTC month: counted in the same transaction as a create and as a success, never
-- recomputed from `generations`, so deleting a generation later does not give its use back.
CREATE TABLE usage_months (
    user_id      text    NOT NULL,
    month        date    NOT NULL,
    generations  bigint  NOT NULL DEFAULT 0,
    succeeded    bigint  NOT NULL DEFAULT 0,
    images       bigint  NOT NULL DEFAULT 0,
    credits_used numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, month)
);

-- Reference images uploaded for image-to-image: the stored object under `uploads/` and who owns it.
CREATE TABLE uploads (
    id           uuid PRIMARY KEY,
    user_id      text        NOT NULL,
    object_key   text        NOT NULL,
    content_type text        NOT NULL,
    bytes        bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_user_created ON uploads (user_id, created_at);
