-- The data lake's tables. Applied once, in order, by rakuten_mlops.schema.migrate();
-- change the schema with a new numbered file, never by editing an applied one.

CREATE TABLE categories (
    prdtypecode integer PRIMARY KEY,
    name        text NOT NULL
);

-- One row per run of the load (prepare_data DAG run or CLI call).
CREATE TABLE load_batches (
    batch_id         bigserial PRIMARY KEY,
    run_id           text NOT NULL UNIQUE,
    source_dir       text NOT NULL,
    slice_spec       text NOT NULL,              -- e.g. '0.2' or 'all'
    status           text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    rows_read        integer NOT NULL DEFAULT 0,
    products_loaded  integer NOT NULL DEFAULT 0,
    labels_loaded    integer NOT NULL DEFAULT 0,
    images_loaded    integer NOT NULL DEFAULT 0,
    images_skipped   integer NOT NULL DEFAULT 0,  -- already stored with the same checksum
    rejects          integer NOT NULL DEFAULT 0,
    text_seconds     double precision,
    image_seconds    double precision,
    error            text
);

CREATE TABLE products (
    productid    bigint PRIMARY KEY,
    imageid      bigint NOT NULL,
    source_split text NOT NULL CHECK (source_split IN ('train', 'test')),  -- labelled file or not
    source_row   integer NOT NULL,                -- the challenge's row index
    designation  text NOT NULL,
    description  text,
    batch_id     bigint NOT NULL REFERENCES load_batches,
    loaded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_batch_idx ON products (batch_id);

CREATE TABLE labels (
    productid   bigint PRIMARY KEY REFERENCES products ON DELETE CASCADE,
    prdtypecode integer NOT NULL REFERENCES categories,
    batch_id    bigint NOT NULL REFERENCES load_batches
);

-- The deterministic, stratified split every later stage uses (labelled products only).
CREATE TABLE dataset_split (
    productid bigint PRIMARY KEY REFERENCES labels ON DELETE CASCADE,
    subset    text NOT NULL CHECK (subset IN ('train', 'validation', 'test')),
    seed      integer NOT NULL
);

CREATE TABLE images (
    s3_key      text PRIMARY KEY,
    bucket      text NOT NULL,
    productid   bigint NOT NULL,
    imageid     bigint NOT NULL,
    source_split text NOT NULL CHECK (source_split IN ('train', 'test')),
    size_bytes  integer NOT NULL,
    sha256      char(64) NOT NULL,
    width       integer NOT NULL,
    height      integer NOT NULL,
    batch_id    bigint NOT NULL REFERENCES load_batches,
    loaded_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_product_idx ON images (productid);

-- Every input the load refused, with why. Never silently dropped.
CREATE TABLE rejects (
    reject_id   bigserial PRIMARY KEY,
    batch_id    bigint NOT NULL REFERENCES load_batches,
    source_file text NOT NULL,
    locator     text NOT NULL,                    -- row number or file name
    reason      text NOT NULL,                    -- a short code, e.g. 'empty_designation'
    detail      text,
    UNIQUE (batch_id, source_file, locator, reason)
);
