-- The create rate of each user, counted across every API replica (RATE_LIMIT_CREATES_PER_MINUTE): one row per
-- user holding the "theoretical arrival time" of the generic cell rate algorithm. A call is allowed while that
-- time, pushed one interval (a minute divided by the limit) further, stays within a minute of now: a burst of up
-- to the limit is fine after a quiet minute, and a steady caller gets one call per interval. One conditional
-- upsert per call decides, atomically, whatever the number of replicas.
CREATE TABLE create_rate (
    user_id text PRIMARY KEY,
    tat timestamptz NOT NULL
);
