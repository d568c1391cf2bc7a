"""The training dataset: labelled products and their stored split, read from the lake.

`load_labelled_products` joins products, labels and dataset_split (never the CSVs).
`prepare_dataset` freezes what it read as one *dataset version*: a parquet snapshot
(raw text, cleaned text, label, subset) and a manifest (content hash, row counts per
subset, load batches), written to `processed_data/datasets/<id>/` and to S3 under
`processed/datasets/<id>/`. The id is the content hash, so the same lake content gives
the same files (re-running is a no-op) and every training run names exactly the data it
saw. Later stages receive only the id and read the snapshot back with `load_dataset`
(from the local folder, or from S3 when another machine or container wrote it).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from minio.error import S3Error

from rakuten_mlops.errors import LakeError
from rakuten_mlops.ingest.split import assign_subsets, fractions
from rakuten_mlops.ml.features import TextCleaner
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect, ensure_buckets, get_bytes, put_bytes, s3_client

DATASET_COLUMNS = ["productid", "designation", "description", "prdtypecode", "subset"]
S3_PREFIX = "processed/datasets"

LABELLED_PRODUCTS_SQL = """
SELECT p.productid, p.designation, p.description, l.prdtypecode, s.subset,
       p.batch_id AS product_batch_id, l.batch_id AS label_batch_id
FROM products p
JOIN labels l USING (productid)
JOIN dataset_split s USING (productid)
ORDER BY p.productid
"""


def load_labelled_products(conn) -> pd.DataFrame:
    """Every labelled product with its subset (train/validation/test), by productid."""
    with conn.cursor() as cur:
        cur.execute(LABELLED_PRODUCTS_SQL)
        columns = [column.name for column in cur.description]
        rows = cur.fetchall()
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype(
        {
            "productid": "int64",
            "prdtypecode": "int64",
            "product_batch_id": "int64",
            "label_batch_id": "int64",
            "designation": object,
            "description": object,
            "subset": object,
        }
    )


def load_categories(conn) -> dict[int, str]:
    return {
        int(code): name for code, name in conn.execute("SELECT prdtypecode, name FROM categories")
    }


# --------------------------------------------------------------------------- versions


def content_hash(frame: pd.DataFrame) -> str:
    """sha256 of the rows that matter for training, in productid order, text included."""
    digest = hashlib.sha256()
    ordered = frame.sort_values("productid")
    for productid, designation, description, code, subset in ordered[DATASET_COLUMNS].itertuples(
        index=False
    ):
        description = "" if description is None or description != description else description
        digest.update(f"{productid}\t{code}\t{subset}\t{designation}\t{description}\n".encode())
    return digest.hexdigest()


def split_hash(frame: pd.DataFrame, subset: str = "test") -> str:
    """sha256 of one subset's (productid, label) pairs: 'the same test split' means equal."""
    rows = frame.loc[frame["subset"] == subset, ["productid", "prdtypecode"]].sort_values(
        "productid"
    )
    payload = "\n".join(f"{pid}\t{code}" for pid, code in rows.itertuples(index=False))
    return hashlib.sha256(payload.encode()).hexdigest()


def dataset_manifest(
    frame: pd.DataFrame, categories: dict[int, str] | None = None
) -> dict[str, Any]:
    sha = content_hash(frame)
    batches = sorted(
        {
            int(b)
            for column in ("product_batch_id", "label_batch_id")
            if column in frame
            for b in frame[column]
        }
    )
    return {
        "dataset_id": sha[:16],
        "sha256": sha,
        "rows": int(len(frame)),
        "subsets": {k: int(v) for k, v in frame["subset"].value_counts().sort_index().items()},
        "classes": int(frame["prdtypecode"].nunique()),
        "load_batches": batches,
        "test_split_sha256": split_hash(frame, "test"),
        "categories": {str(k): v for k, v in sorted((categories or {}).items())},
    }


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Dataset:
    frame: pd.DataFrame
    manifest: dict[str, Any]

    @property
    def dataset_id(self) -> str:
        return self.manifest["dataset_id"]

    @property
    def categories(self) -> dict[int, str]:
        return {int(k): v for k, v in self.manifest.get("categories", {}).items()}


def dataset_dir(settings: Settings, dataset_id: str) -> Path:
    return settings.path(settings.processed_data_dir) / "datasets" / dataset_id


def s3_key(dataset_id: str, name: str) -> str:
    return f"{S3_PREFIX}/{dataset_id}/{name}"


def save_dataset(
    settings: Settings,
    frame: pd.DataFrame,
    categories: dict[int, str] | None = None,
    upload: bool = True,
) -> Dataset:
    """Write the snapshot (parquet + manifest) locally and, with `upload`, to S3."""
    manifest = dataset_manifest(frame, categories)
    snapshot = frame[
        DATASET_COLUMNS + [c for c in ("product_batch_id", "label_batch_id") if c in frame]
    ]
    snapshot = snapshot.sort_values("productid").reset_index(drop=True)
    cleaner = TextCleaner(nltk_data_dir=str(settings.path(settings.nltk_data_dir))).fit(snapshot)
    # For inspection and other consumers (drift, reports). Models clean raw text themselves.
    snapshot = snapshot.assign(text_clean=cleaner.transform(snapshot)["words"].to_numpy())
    folder = dataset_dir(settings, manifest["dataset_id"])
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    snapshot.to_parquet(buffer, index=False)
    parquet = buffer.getvalue()
    manifest["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    manifest["local_path"] = str(folder)
    if upload:
        manifest["s3_uri"] = (
            f"s3://{settings.s3_bucket_artifacts}/{s3_key(manifest['dataset_id'], '')}"
        )
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (folder / "products.parquet").write_bytes(parquet)
    (folder / "manifest.json").write_bytes(body)
    if upload:
        client = s3_client(settings)
        ensure_buckets(client, [settings.s3_bucket_artifacts])
        put_bytes(
            client,
            settings.s3_bucket_artifacts,
            s3_key(manifest["dataset_id"], "products.parquet"),
            parquet,
        )
        put_bytes(
            client,
            settings.s3_bucket_artifacts,
            s3_key(manifest["dataset_id"], "manifest.json"),
            body,
            content_type="application/json",
        )
    return Dataset(snapshot, manifest)


def load_dataset(settings: Settings, dataset_id: str) -> Dataset:
    """The snapshot `dataset_id`: from processed_data/, else downloaded from S3 (and cached)."""
    folder = dataset_dir(settings, dataset_id)
    parquet, manifest_file = folder / "products.parquet", folder / "manifest.json"
    if not (parquet.is_file() and manifest_file.is_file()):
        client = s3_client(settings)
        folder.mkdir(parents=True, exist_ok=True)
        for name, target in (("products.parquet", parquet), ("manifest.json", manifest_file)):
            key = s3_key(dataset_id, name)
            try:
                body = get_bytes(client, settings.s3_bucket_artifacts, key)
            except S3Error as exc:
                if exc.code not in ("NoSuchKey", "NoSuchBucket"):
                    raise
                raise LakeError(
                    f"unknown dataset {dataset_id!r}: no {folder} and no "
                    f"s3://{settings.s3_bucket_artifacts}/{key} ({exc.code}); run `preprocess`"
                ) from None
            target.write_bytes(body)
    manifest = json.loads(manifest_file.read_text())
    frame = pd.read_parquet(parquet)
    frame = frame.astype({"designation": object, "description": object, "subset": object})
    if (actual := content_hash(frame)) != manifest["sha256"]:
        raise LakeError(
            f"dataset {dataset_id}: content hash {actual[:16]} "
            f"!= manifest {manifest['sha256'][:16]}"
        )
    return Dataset(frame, manifest)


def prepare_dataset(settings: Settings, upload: bool = True) -> Dataset:
    """The lake's labelled products, frozen as a dataset version (the `preprocess` stage)."""
    with connect(settings) as conn:
        frame = load_labelled_products(conn)
        categories = load_categories(conn)
    if frame.empty:
        raise LakeError(
            "no labelled products with a subset in the lake: run prepare_data (or "
            "`python -m rakuten_mlops ingest`) first"
        )
    missing = {"train", "test"} - set(frame["subset"])
    if missing:
        raise LakeError(f"the stored split has no {', '.join(sorted(missing))} rows")
    return save_dataset(settings, frame, categories, upload=upload)


# --------------------------------------------------------------------------- CSV frames


def frame_from_csv(
    x_csv: str | Path,
    y_csv: str | Path,
    validation: float = 0.15,
    test: float = 0.15,
    seed: int = 42,
) -> pd.DataFrame:
    """A dataset frame from challenge-layout CSVs, split like the lake splits (tests, bench).

    Uses the lake's own assignment (`rakuten_mlops.ingest.split.assign_subsets`): stratified by
    class, ordered by a seeded hash of the productid.
    """
    x = pd.read_csv(x_csv, index_col=0)
    y = pd.read_csv(y_csv, index_col=0)
    frame = x.join(y, how="inner")[["productid", "designation", "description", "prdtypecode"]]
    frame = frame.astype(
        {"productid": "int64", "prdtypecode": "int64", "designation": object, "description": object}
    )
    frame = frame.drop_duplicates("productid").reset_index(drop=True)
    subsets = assign_subsets(
        zip(frame["productid"], frame["prdtypecode"], strict=True),
        {},
        seed,
        fractions(validation, test),
    )
    return frame.assign(subset=frame["productid"].map(subsets).astype(object))
