#!/usr/bin/env python3
"""Benchmark (issue 17): /predict with a photo, served by a fused model; prints one JSON object.

A fused model (the `quick` profile's `fusion` family at its first grid point: LinearSVC
out-of-fold scores + image vector + has_image) is trained here on ../shared/data/rakuten's
sample with its photos and served by a real API (`rakuten-mlops serve`, its export
fallback), driven at concurrency 1 by bench_serving's keep-alive load generator:

* /predict with each product's real photo in base64 (checked, decoded, described per
  request), the image case's p50/p99;
* /predict with the same products' text alone, for comparison.

Target: /predict with an image p50 under 50 ms. Skips (exit 0) when the data is absent.

    .venv/bin/python bench/bench_predict_image.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as base  # noqa: E402 - its server, load generator and summaries

TARGET_P50_MS = 50.0
PHOTOS = 300  # distinct products (and photos) the requests cycle through


def log(line: str) -> None:
    print(f"[bench_predict_image] {line}", file=sys.stderr, flush=True)


def fused_model(settings, products):
    import pandas as pd

    from rakuten_mlops.ml.fusion import IMAGE_COLUMN
    from rakuten_mlops.ml.profile import load_profile
    from rakuten_mlops.ml.train import family_pipeline

    profile = load_profile("quick")
    first = {key: values[0] for key, values in profile["families"]["fusion"]["grid"].items()}
    pipeline = family_pipeline("fusion", profile, {**profile["families"]["fusion"]["fixed"],
                                                   **first})
    frame = pd.DataFrame(products, dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.fit(frame[["designation", "description", IMAGE_COLUMN]],
                     frame["prdtypecode"].astype(int))
    return pipeline


def sample_products() -> list[dict]:
    """The sample's labelled products, each with its photo's bytes when it has one."""
    import pandas as pd

    from rakuten_mlops.ml.image_features import image_vector

    x = pd.read_csv(base.SHARED / "X_train_sample.csv", index_col=0)
    y = pd.read_csv(base.SHARED / "Y_train_sample.csv", index_col=0)["prdtypecode"]
    photos = {int(p.stem.rpartition("_product_")[2]): p
              for p in (base.SHARED / "images" / "image_train").glob("*.jpg")}
    products = []
    for index, row in x.iterrows():
        photo = photos.get(int(row.productid))
        data = photo.read_bytes() if photo else None
        products.append({
            "designation": row.designation,
            "description": row.description if isinstance(row.description, str) else None,
            "prdtypecode": int(y[index]),
            "image_features": image_vector(data) if data else None,
            "photo": data,
        })
    return products


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    args = parser.parse_args()
    if not (base.SHARED / "images" / "image_train").is_dir():
        log(f"skipped: {base.SHARED / 'images'} not found; it lives in ../shared/data")
        print(json.dumps({"benchmark": "predict_image", "skipped": True}))
        return 0
    import joblib

    from rakuten_mlops.settings import get_settings

    os.environ.setdefault("POSTGRES_DB", os.environ.get("BENCH_POSTGRES_DB", "rakuten_lake_test"))
    settings = get_settings()
    products = sample_products()
    log(f"training a fused model on {len(products)} products...")
    model = fused_model(settings, products)
    pictured = [p for p in products if p["photo"]][:PHOTOS]
    with tempfile.TemporaryDirectory(prefix="bench-predict-image-") as folder:
        workdir = Path(folder)
        models = workdir / "models"
        models.mkdir()
        joblib.dump(model, models / f"{settings.model_name}.joblib")
        (models / f"{settings.model_name}.json").write_text(json.dumps({"version": "bench"}))
        env = {"MODELS_DIR": str(models),
               "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{base.free_port()}"}  # the export
        results = {}
        with base.Server(workdir, env) as server:
            for name, with_photo in (("with_image", True), ("text_only", False)):
                requests = [base.request_bytes(server.port, "/predict", server.client_key, {
                    "designation": p["designation"],
                    **({"image_base64": base64.b64encode(p["photo"]).decode()}
                       if with_photo else {})}) for p in pictured]
                latencies, statuses, elapsed = base.load(server.port, requests, 1,
                                                         args.seconds, warmup=1.0)
                results[name] = {**base.summary(latencies, elapsed), "statuses": dict(statuses)}
                del results[name]["rows_per_s"]
    p50 = results["with_image"]["p50_ms"]
    print(json.dumps({
        "benchmark": "predict_image",
        "model": f"fusion (quick profile, first grid point) trained on {len(products)} products",
        "photos": len(pictured),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "predict_concurrency_1": results,
        "ratio_image_vs_text_p50": round(p50 / results["text_only"]["p50_ms"], 2),
        "target": f"/predict with an image p50 < {TARGET_P50_MS:g} ms",
        "meets_target": p50 < TARGET_P50_MS,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
