-- Batch predictions in shards: a run is planned as product-id ranges, each
-- predicted by its own task; the summary records the shard count and the counts per
-- predicted class once every shard is done.
ALTER TABLE batch_prediction_runs ADD COLUMN IF NOT EXISTS shards integer;
ALTER TABLE batch_prediction_runs ADD COLUMN IF NOT EXISTS class_counts jsonb;
