-- Issue 17: image feature vectors, computed once per image content and extractor
-- version (rakuten_mlops.ml.image_stage). A row holds either the vector or why the
-- image could not give one (an undecodable file is its content's problem: re-reading
-- it would fail the same way).
CREATE TABLE IF NOT EXISTS image_features (
    sha256            char(64) NOT NULL,
    extractor_version text NOT NULL,
    vector            bytea,                 -- float32 little-endian; NULL on failure
    failure_reason    text,                  -- e.g. 'undecodable_image'; NULL with a vector
    failure_detail    text,
    s3_key            text NOT NULL,         -- where it was first read
    computed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, extractor_version),
    CHECK ((vector IS NULL) <> (failure_reason IS NULL))
);

-- Which image, so which cached vector, each product of a dataset version has; the
-- stage replaces a version's rows as a whole. Products without an image have no row.
CREATE TABLE IF NOT EXISTS dataset_image_features (
    dataset_id        text NOT NULL,
    extractor_version text NOT NULL,
    productid         bigint NOT NULL,
    s3_key            text NOT NULL,
    sha256            char(64) NOT NULL,
    reason            text,                  -- NULL: its vector is in image_features
    PRIMARY KEY (dataset_id, extractor_version, productid)
);
