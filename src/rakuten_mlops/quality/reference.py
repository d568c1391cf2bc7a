"""The reference a window is compared with, and its profile (cached in S3).

The training data of the current champion: the subsets its run trained on
(`train_subsets`) of the dataset version (`dataset_id` tag of the `MODEL_NAME@champion`
version or of its run; `rakuten_mlops.ml.dataset.load_dataset`). Without a champion, the
lake's own labelled `train` products: for a load batch those of *earlier* batches (the
first batch has no reference: quality only), for the inference log all of them. Each
window row says which reference it used (`reference_kind`, `reference_id`,
`reference_note`). A reference's profile is computed once and cached in S3
(`quality/reference/v<FEATURES_VERSION>/<reference_id>/`).
"""

from __future__ import annotations

import logging
import time

import pandas as pd
from minio.error import S3Error

# The quality job reads the ML side (the champion, its dataset); ML never imports quality.
from rakuten_mlops.ml import registry
from rakuten_mlops.ml.dataset import load_dataset
from rakuten_mlops.quality.config import QualityConfig, settings_config
from rakuten_mlops.quality.errors import QualityError
from rakuten_mlops.quality.features import FEATURES_VERSION, Profile, product_profile
from rakuten_mlops.quality.resources import QualityResources
from rakuten_mlops.quality.results import Reference
from rakuten_mlops.quality.windows import image_rows, query_frame, with_brightness
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

log = logging.getLogger("rakuten_mlops.quality.reference")

REFERENCE_PREFIX = "quality/reference"
PROFILE_OBJECTS = ("features.parquet", "images.parquet", "profile.json")


def champion_reference(settings: Settings) -> Reference | None:
    """The champion's training data, or None when the registry has no champion."""
    version = registry.champion(settings)
    if version is None:
        return None
    name, alias = settings.model_name, settings.model_alias
    client = registry.client(settings)
    run = client.get_run(version.run_id).data if version.run_id else None
    run_tags, run_params = (run.tags, run.params) if run else ({}, {})
    dataset_id = (version.tags or {}).get("dataset_id") or run_tags.get("dataset_id")
    if not dataset_id:
        raise QualityError(
            f"{name}@{alias} (v{version.version}) names no dataset_id: its training data is unknown"
        )
    subsets = tuple(run_params.get("train_subsets", "train").split(","))
    return Reference(
        "champion",
        f"dataset-{dataset_id}-{'+'.join(subsets)}",
        f"{' + '.join(subsets)} rows of dataset {dataset_id}, the training data of "
        f"{name}@{alias} v{version.version}",
        str(version.version),
        dataset_id,
        subsets,
    )


def resolve_reference(settings: Settings) -> Reference:
    """The champion's training data, else the fallback (decided per window, see below)."""
    found = champion_reference(settings)
    if found is not None:
        return found
    return Reference(
        "lake_train",
        None,
        f"no {settings.model_name}@{settings.model_alias} in the registry: the lake's "
        "labelled train-subset products (of earlier batches, for a load batch)",
    )


def window_reference(base: Reference, conn, batch_id: int | None) -> Reference:
    """The reference of one window: the champion's, or the lake fallback for this window."""
    if base.kind == "champion":
        return base
    if batch_id is not None:
        earlier = conn.execute(
            "SELECT count(*) FROM products p JOIN dataset_split s USING (productid)"
            " WHERE s.subset = 'train' AND p.batch_id < %s",
            (batch_id,),
        ).fetchone()[0]
        if not earlier:
            return Reference(
                "none",
                None,
                "no champion and no earlier batch: no reference, quality statistics only",
            )
        return Reference(
            "lake_train",
            f"lake-train-before-batch-{batch_id}",
            f"no champion: labelled train-subset products of batches before {batch_id}",
        )
    last = conn.execute(
        "SELECT max(batch_id) FROM load_batches WHERE status = 'succeeded'"
    ).fetchone()[0]
    if last is None:
        return Reference("none", None, "no champion and an empty lake: no reference")
    return Reference(
        "lake_train",
        f"lake-train-upto-batch-{last}",
        f"no champion: labelled train-subset products of batches up to {last}",
    )


def reference_products(settings: Settings, conn, ref: Reference) -> pd.DataFrame:
    if ref.kind == "champion":
        frame = load_dataset(settings, ref.dataset_id).frame
        return frame.loc[
            frame["subset"].isin(ref.subsets),
            ["productid", "designation", "description", "prdtypecode"],
        ]
    bound = int(ref.reference_id.rsplit("-", 1)[1])
    operator = "<" if "before" in ref.reference_id else "<="
    return query_frame(
        conn,
        f"""
        SELECT p.productid, p.designation, p.description, l.prdtypecode
        FROM products p JOIN labels l USING (productid) JOIN dataset_split s USING (productid)
        WHERE s.subset = 'train' AND p.batch_id {operator} %s ORDER BY p.productid""",
        (bound,),
    )


def reference_profile(
    settings: Settings,
    conn,
    ref: Reference,
    config: QualityConfig,
    tools: QualityResources | None = None,
) -> Profile | None:
    """The reference's profile: from the S3 cache, else computed and cached."""
    if ref.kind == "none":
        return None
    tools = tools or QualityResources(settings)
    bucket = settings.s3_bucket_artifacts
    prefix = f"{REFERENCE_PREFIX}/v{FEATURES_VERSION}/{ref.reference_id}"
    try:
        profile = Profile.from_objects(
            {n: tools.fetch(bucket, f"{prefix}/{n}") for n in PROFILE_OBJECTS}
        )
        if profile.meta.get("max_images") == config.images.max_images:
            log.info("reference %s: cached profile (%d rows)", ref.reference_id, profile.rows)
            return profile
    except S3Error as exc:
        if exc.code not in ("NoSuchKey", "NoSuchBucket"):
            raise
    started = time.perf_counter()
    products = reference_products(settings, conn, ref)
    images = image_rows(conn, "WHERE i.productid = ANY(%s)", (products["productid"].tolist(),))
    images = with_brightness(images, tools, config.images.max_images)
    profile = product_profile(
        products,
        images,
        tools.guesser,
        tools.stopwords,
        {"reference_id": ref.reference_id, "max_images": config.images.max_images},
    )
    for name, body in profile.to_objects().items():
        tools.upload(bucket, f"{prefix}/{name}", body, "application/octet-stream")
    log.info(
        "reference %s: profile of %d products, %d images computed in %.1f s and cached in "
        "s3://%s/%s/",
        ref.reference_id,
        profile.rows,
        len(images),
        time.perf_counter() - started,
        bucket,
        prefix,
    )
    return profile


def prepare_reference(settings: Settings, base: Reference) -> int:
    """Build and cache the champion's reference profile once, before windows are checked in
    parallel (they then read it from S3); its row count. The lake fallback differs per
    window and is built by each check."""
    if base.kind != "champion":
        return 0
    tools = QualityResources(settings)
    with connect(settings) as conn:
        profile = reference_profile(settings, conn, base, settings_config(settings), tools)
    tools.finish()
    return profile.rows
