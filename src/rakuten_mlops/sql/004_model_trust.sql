-- Models the API may load (rakuten_mlops.model_trust): the sha256 of a registered
-- version's artifacts, recorded by the promotion step before the champion alias moves
-- to it. The API loads a champion only when the artifacts it downloaded hash to this.
CREATE TABLE IF NOT EXISTS trusted_models (
    model_name      text NOT NULL,
    version         text NOT NULL,
    run_id          text NOT NULL,
    artifact_sha256 text NOT NULL CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    files           integer NOT NULL,          -- artifact files hashed
    bytes           bigint NOT NULL,           -- their total size
    reason          text NOT NULL DEFAULT '',  -- the promotion decision
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version)
);
