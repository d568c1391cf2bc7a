-- Data quality, drift and model history (rakuten_mlops.monitoring), read by the Grafana
-- dashboards in config/grafana/dashboards/.
-- IF NOT EXISTS: harmless if this file is ever renumbered after a concurrent migration.

-- One row per checked window: a load batch ('batch-<id>') or the inference log over a
-- DAG run's data interval ('inference-<start>'). Re-checking a window replaces its row.
CREATE TABLE IF NOT EXISTS quality_windows (
    window_id        text PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('load_batch', 'inference')),
    batch_id         bigint,                      -- load_batches.batch_id (load_batch)
    interval_start   timestamptz,                 -- the inference log's [start, end)
    interval_end     timestamptz,
    window_time      timestamptz NOT NULL,        -- where dashboards plot the window
    rows             integer NOT NULL,            -- products / predictions in the window
    reference_kind   text NOT NULL CHECK (reference_kind IN ('champion', 'lake_train', 'none')),
    reference_id     text,                        -- dataset id, or which lake rows
    reference_rows   integer NOT NULL DEFAULT 0,
    reference_note   text NOT NULL DEFAULT '',    -- what the reference is, in words
    model_version    text,                        -- the champion's version (reference_kind champion)
    status           text NOT NULL
        CHECK (status IN ('ok', 'breach', 'insufficient', 'empty', 'no_reference')),
    breaches         integer NOT NULL DEFAULT 0,  -- result rows with breach
    breached_features text[] NOT NULL DEFAULT '{}',
    report_bucket    text,                        -- the HTML report in S3
    report_key       text,
    dag_run_id       text,
    seconds          double precision,
    computed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS quality_windows_time_idx ON quality_windows (window_time);
CREATE UNIQUE INDEX IF NOT EXISTS quality_windows_batch_idx ON quality_windows (batch_id)
    WHERE batch_id IS NOT NULL;

-- Every statistic of a window, keyed by (window, feature, metric): drift (psi,
-- js_distance, kl_divergence against the reference) and quality (empty_ratio,
-- duplicate_ratio, outlier_ratio, class_imbalance_ratio, emptiness_association) with
-- their threshold and breach flag, plus informational statistics (mean, p50, ...).
-- enough_data false: the samples were too small to tell; such a row never breaches.
CREATE TABLE IF NOT EXISTS quality_results (
    window_id     text NOT NULL REFERENCES quality_windows ON DELETE CASCADE,
    feature       text NOT NULL,
    metric        text NOT NULL,
    category      text NOT NULL CHECK (category IN ('drift', 'quality', 'stats')),
    value         double precision,              -- NaN when it could not be computed
    threshold     double precision,              -- NULL: informational
    breach        boolean NOT NULL DEFAULT false,
    enough_data   boolean NOT NULL DEFAULT true,
    n_reference   integer,
    n_current     integer NOT NULL,
    bins          integer,                       -- K of a drift statistic
    expected_bias double precision,              -- its expected value without drift
    reason        text NOT NULL DEFAULT '',      -- why enough_data is false
    details       jsonb NOT NULL DEFAULT '{}',   -- histograms, fences, top class, ...
    computed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (window_id, feature, metric)
);
CREATE INDEX IF NOT EXISTS quality_results_breach_idx ON quality_results (window_id) WHERE breach;

-- Every promotion decision of rakuten_mlops.registry.promote (recorded by
-- rakuten_mlops.monitoring.record_promotion): one row per (model, version, alias);
-- re-running the same decision updates it and keeps when it was first made.
CREATE TABLE IF NOT EXISTS model_promotions (
    model_name       text NOT NULL,
    version          text NOT NULL,
    run_id           text NOT NULL,
    alias            text NOT NULL,              -- 'champion' or 'challenger'
    promoted         boolean NOT NULL,
    test_f1_weighted double precision,
    cv_f1_weighted   double precision,
    best_family      text,
    dataset_id       text,
    reason           text NOT NULL DEFAULT '',
    decided_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    details          jsonb NOT NULL DEFAULT '{}',  -- the whole decision as given
    PRIMARY KEY (model_name, version, alias)
);
CREATE INDEX IF NOT EXISTS model_promotions_time_idx ON model_promotions (decided_at);
