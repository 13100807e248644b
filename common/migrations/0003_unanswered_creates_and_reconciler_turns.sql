-- A create call whose answer never came (a timeout at Studio's end): Skytells may still have made the prediction,
-- so the generation waits for its callback, which finds it by Studio's id, instead of ending `failed` early.
ALTER TABLE generations ADD COLUMN submit_timed_out_at timestamptz;

-- When the reconciler last looked this generation up at Skytells: it takes the least recently checked first, so
-- generations that never finish cannot hide the others from it.
ALTER TABLE generations ADD COLUMN checked_at timestamptz;

CREATE INDEX generations_unfinished_checked ON generations (checked_at NULLS FIRST, created_at)
    WHERE status IN ('queued', 'processing') AND prediction_id IS NOT NULL;
