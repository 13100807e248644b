-- Generations keep the object keys of their outputs, not URLs: each answer makes the URLs it gives out
-- (presigned for a while, or public, as S3_OUTPUT_ACCESS says), so switching the mode or the address clients
-- reach S3 by changes every URL from then on without touching a row.
ALTER TABLE generations RENAME COLUMN output_url TO output_key;
ALTER TABLE generations RENAME COLUMN output_urls TO output_keys;

-- Rows written before hold S3_PUBLIC_BASE_URL/generations/<name>: every key Studio writes is
-- `generations/<id>[-n].<ext>`, so the key is the URL's tail from its last `generations/`, whatever the base was.
-- A value that does not end that way was not written by Studio and is kept as it is.
UPDATE generations
SET output_key = coalesce(substring(output_key FROM '(generations/[^/?#]+)$'), output_key),
    output_keys = ARRAY(
        SELECT coalesce(substring(url FROM '(generations/[^/?#]+)$'), url)
        FROM unnest(output_keys) WITH ORDINALITY AS outputs(url, n)
        ORDER BY n
    )
WHERE output_key IS NOT NULL OR cardinality(output_keys) > 0;
