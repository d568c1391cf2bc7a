-- Image phases in shards: a large batch's images are loaded as product-id
-- ranges, one task each. A shard's row, written before its first upload, tells a re-run
-- of that shard that objects of its range may already be stored (check them by sha256).
CREATE TABLE IF NOT EXISTS image_shards (
    batch_id    bigint NOT NULL REFERENCES load_batches ON DELETE CASCADE,
    first_id    bigint NOT NULL,
    last_id     bigint NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (batch_id, first_id),
    CHECK (first_id <= last_id)
);
