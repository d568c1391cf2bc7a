-- What the prediction service produces (rakuten_mlops.serving).
-- IF NOT EXISTS: harmless if this file is ever renumbered after a concurrent migration.

-- One row per product the API classified (/predict: item 0; /predict/batch: its position),
-- written in batches off the request path for the data-quality jobs. Input *features*
-- only: the product text itself is not kept, a hash of it is (duplicates, joins).
CREATE TABLE IF NOT EXISTS inference_log (
    request_id        uuid NOT NULL,
    item              integer NOT NULL CHECK (item >= 0),
    predicted_at      timestamptz NOT NULL,
    endpoint          text NOT NULL CHECK (endpoint IN ('predict', 'predict_batch')),
    client_role       text NOT NULL,                  -- 'client' or 'admin', never the key
    model_name        text NOT NULL,
    model_version     text NOT NULL,
    model_source      text NOT NULL,                  -- 'registry' or 'export' (fallback)
    prdtypecode       integer NOT NULL,               -- the top-1 class
    confidence        double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    top_k             jsonb NOT NULL,                 -- [{"prdtypecode": .., "probability": ..}]
    designation_chars integer NOT NULL,
    description_chars integer NOT NULL,               -- 0 when there is no description
    designation_words integer NOT NULL,               -- whitespace-separated
    description_words integer NOT NULL,
    has_html          boolean NOT NULL,               -- tags or entities in the text
    language          text NOT NULL,                  -- 'fr', 'de', 'en' or 'unknown'
    text_sha256       char(64) NOT NULL,              -- of designation || '\n' || description
    batch_size        integer NOT NULL CHECK (batch_size >= 1),
    latency_ms        double precision NOT NULL,      -- the whole request, as served
    PRIMARY KEY (request_id, item)
);
CREATE INDEX IF NOT EXISTS inference_log_time_idx ON inference_log (predicted_at);
CREATE INDEX IF NOT EXISTS inference_log_model_idx ON inference_log (model_name, model_version);

-- Offline predictions for the lake's products (by default the unlabelled challenge test
-- file), one row per product and model version: re-running a version replaces its rows.
CREATE TABLE IF NOT EXISTS batch_prediction_runs (
    run_id        text PRIMARY KEY,
    model_name    text NOT NULL,
    model_version text NOT NULL,
    model_source  text NOT NULL,
    source_split  text NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    rows_predicted integer NOT NULL DEFAULT 0,
    seconds       double precision
);

CREATE TABLE IF NOT EXISTS batch_predictions (
    productid     bigint NOT NULL REFERENCES products ON DELETE CASCADE,
    model_name    text NOT NULL,
    model_version text NOT NULL,
    prdtypecode   integer NOT NULL,
    confidence    double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    top_k         jsonb NOT NULL,
    run_id        text NOT NULL REFERENCES batch_prediction_runs,
    predicted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (productid, model_name, model_version)
);
CREATE INDEX IF NOT EXISTS batch_predictions_run_idx ON batch_predictions (run_id);
