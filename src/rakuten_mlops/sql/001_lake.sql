-- The data lake's tables. Applied once, in order, by rakuten_mlops.schema.migrate();
-- change the schema with a new numbered file, never by editing an applied one.

CREATE TABLE categories (
    prdtypecode integer PRIMARY KEY,
    name        text NOT NULL
);

-- One row per run of the load (prepare_data DAG run or `rakuten-mlops ingest` call).
-- The batch_id columns of the bulk-loaded tables below are deliberately not foreign
-- keys: each row is written by the transaction that owns its batch row, and a per-row
-- FK check costs about a third of a bulk load. Keys between the data itself are.
-- A batch's text (products, labels, its rejects) commits in one transaction that also
-- sets text_loaded_at; then the split of its labelled products, its images, and the
-- batch is finalised.
CREATE TABLE load_batches (
    batch_id         bigserial PRIMARY KEY,
    run_id           text NOT NULL UNIQUE,
    source_dir       text NOT NULL,
    slice_spec       text NOT NULL,              -- e.g. '0.2' or 'all'
    status           text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    started_at       timestamptz NOT NULL DEFAULT now(),
    text_loaded_at   timestamptz,                -- NULL until the text transaction committed
    images_started_at timestamptz,               -- set by the first attempt at its images
    finished_at      timestamptz,
    rows_read        integer NOT NULL DEFAULT 0,  -- source records in this batch's slice
    remaining_rows   integer NOT NULL DEFAULT 0,  -- source records left for later batches
    products_loaded  integer NOT NULL DEFAULT 0,
    labels_loaded    integer NOT NULL DEFAULT 0,
    split_assigned   integer NOT NULL DEFAULT 0,
    images_loaded    integer NOT NULL DEFAULT 0,  -- image catalogue rows of this batch
    images_uploaded  integer NOT NULL DEFAULT 0,  -- objects written to S3
    images_skipped   integer NOT NULL DEFAULT 0,  -- already stored with the same checksum
    text_rejects     integer NOT NULL DEFAULT 0,  -- rejected records of the slice
    image_rejects    integer NOT NULL DEFAULT 0,  -- rejected image files (not missing ones)
    missing_images   integer NOT NULL DEFAULT 0,  -- loaded products without an image file
    rejects          integer NOT NULL DEFAULT 0,  -- every reject row of the batch
    text_seconds     double precision,
    split_seconds    double precision,
    image_seconds    double precision,
    error            text,
    summary          jsonb                        -- what the run returned, for later stages
);

CREATE TABLE products (
    productid    bigint PRIMARY KEY,
    imageid      bigint NOT NULL,
    source_split text NOT NULL CHECK (source_split IN ('train', 'test')),  -- challenge file
    source_row   bigint NOT NULL,                 -- the challenge's row index
    source_line  integer NOT NULL,                -- first line of the record in its file
    designation  text NOT NULL CHECK (designation <> ''),
    description  text,
    batch_id     bigint NOT NULL,                 -- load_batches.batch_id
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_split, source_row)
);
CREATE INDEX products_batch_idx ON products (batch_id);

CREATE TABLE labels (
    productid   bigint PRIMARY KEY REFERENCES products ON DELETE CASCADE,
    prdtypecode integer NOT NULL REFERENCES categories,
    batch_id    bigint NOT NULL                  -- load_batches.batch_id
);
CREATE INDEX labels_batch_idx ON labels (batch_id);

-- The deterministic, stratified split every later stage uses (labelled products only).
-- 'test' here is a held-out subset of the labelled products; products.source_split
-- 'test' is the challenge's unlabelled X_test file.
CREATE TABLE dataset_split (
    productid bigint PRIMARY KEY REFERENCES labels ON DELETE CASCADE,
    subset    text NOT NULL CHECK (subset IN ('train', 'validation', 'test')),
    seed      integer NOT NULL
);

-- One object per product image; the key is derived from the ids.
CREATE TABLE images (
    s3_key       text PRIMARY KEY,                -- image_<split>/<productid>/<imageid>.jpg
    bucket       text NOT NULL,
    productid    bigint NOT NULL UNIQUE REFERENCES products ON DELETE CASCADE,
    imageid      bigint NOT NULL,
    source_split text NOT NULL CHECK (source_split IN ('train', 'test')),
    content_type text NOT NULL DEFAULT 'image/jpeg',
    size_bytes   integer NOT NULL CHECK (size_bytes > 0),
    sha256       char(64) NOT NULL,
    width        integer NOT NULL CHECK (width > 0),
    height       integer NOT NULL CHECK (height > 0),
    batch_id     bigint NOT NULL,                 -- load_batches.batch_id
    loaded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX images_batch_idx ON images (batch_id);

-- Every input the load refused, with why. Never silently dropped.
CREATE TABLE rejects (
    batch_id    bigint NOT NULL,                  -- load_batches.batch_id
    source_file text NOT NULL,                    -- e.g. 'X_train_update.csv', 'images/image_train'
    locator     text NOT NULL,                    -- 'line 12' or an image file name
    source_row  bigint,                           -- the challenge index, when usable
    reason      text NOT NULL,                    -- a short code, e.g. 'empty_designation'
    detail      text,
    PRIMARY KEY (batch_id, source_file, locator, reason)
);

-- Labelled and unlabelled products with everything later stages join on.
CREATE VIEW product_catalogue AS
SELECT p.productid, p.imageid, p.source_split, p.designation, p.description,
       l.prdtypecode, c.name AS category, s.subset,
       i.bucket AS image_bucket, i.s3_key AS image_key,
       p.batch_id
FROM products p
LEFT JOIN labels l USING (productid)
LEFT JOIN categories c USING (prdtypecode)
LEFT JOIN dataset_split s USING (productid)
LEFT JOIN images i USING (productid);
