#!/usr/bin/env python3
"""Measurement (issue 17): does the product photo help? Text-only vs fused, same split.

Data: ../shared/data/rakuten (X_train_sample.csv, 2,306 labelled products; the photos in
images/image_train, 1,635 files, of which those of these products are used), split as
the lake splits (rakuten_mlops.ml.dataset.frame_from_csv: 70/15/15 stratified). Both
models are searched and refit as the train stage does with the `quick` profile, on the
same non-test rows: text-only = its `linear_svc` family, fused = its `fusion` family
(the LinearSVC's out-of-fold scores + the image vector + has_image, stacked). Both score
the same test rows once.

Prints one JSON object: weighted F1 of each, the fused model's gain with a paired
bootstrap 95% interval (rakuten_mlops.ml.evaluate.f1_gain), overall and on the test
products that have a photo, and the three classes whose F1 gains and loses most.
Reported as measured. No stack needed. Skips (exit 0) when the data is absent.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAKUTEN = ROOT.parent / "shared" / "data" / "rakuten"
PROFILE = "quick"


def log(line: str) -> None:
    print(f"[bench_fusion_quality] {line}", file=sys.stderr, flush=True)


def sample_with_images():
    """The labelled sample, split like the lake, with each product's image vector."""
    from rakuten_mlops.ml.dataset import frame_from_csv
    from rakuten_mlops.ml.fusion import IMAGE_COLUMN
    from rakuten_mlops.ml.image_features import image_vector

    frame = frame_from_csv(RAKUTEN / "X_train_sample.csv", RAKUTEN / "Y_train_sample.csv")
    wanted = set(frame["productid"].astype(int))
    vectors = {}
    for path in (RAKUTEN / "images" / "image_train").glob("*.jpg"):
        productid = int(path.stem.rpartition("_product_")[2])
        if productid in wanted:
            vectors[productid] = image_vector(path.read_bytes())
    return frame.assign(**{IMAGE_COLUMN: [vectors.get(int(p)) for p in frame["productid"]]})


def trained(frame, family: str):
    """The profile's `family` searched and refit on the non-test rows, as `train` does."""
    from rakuten_mlops.ml.train import refit, search

    started = time.perf_counter()
    result = search(frame, PROFILE, families=[family], report=log)
    model = refit(frame, result.best, PROFILE)
    best = result.best
    return model, {"cv_f1_weighted": round(best.cv_score, 4), "params": best.best_params,
                   "seconds": round(time.perf_counter() - started, 1)}


def compare(fused, text, rows=None) -> dict:
    from rakuten_mlops.ml.evaluate import f1_gain, score_predictions

    if rows is not None:
        fused = score_predictions(fused.truth[rows], fused.predicted[rows])
        text = score_predictions(text.truth[rows], text.predicted[rows])
    gain = f1_gain(fused, text)
    return {"products": int(fused.n_test), "text_only_f1_weighted": round(text.f1_weighted, 4),
            "fused_f1_weighted": round(fused.f1_weighted, 4),
            "gain": round(gain.f1_weighted, 4),
            "gain_95_interval": [round(gain.low, 4), round(gain.high, 4)],
            "clearly_better": gain.clear, "clearly_worse": gain.high < 0}


def class_changes(fused, text, names: dict[int, str]) -> dict:
    changes = []
    for label in sorted(set(fused.labels) | set(text.labels)):
        ours, theirs = fused.report.get(str(label)), text.report.get(str(label))
        if ours is None or theirs is None:
            continue
        changes.append({"prdtypecode": label, "category": names.get(label, ""),
                        "support": int(ours["support"]),
                        "text_only_f1": round(theirs["f1-score"], 3),
                        "fused_f1": round(ours["f1-score"], 3),
                        "change": round(ours["f1-score"] - theirs["f1-score"], 3)})
    changes.sort(key=lambda row: row["change"])
    return {"gain_most": changes[::-1][:3], "lose_most": changes[:3]}


def main() -> int:
    needed = [RAKUTEN / "X_train_sample.csv", RAKUTEN / "Y_train_sample.csv",
              RAKUTEN / "images" / "image_train"]
    if missing := [str(path) for path in needed if not path.exists()]:
        log(f"skipped: data not found ({', '.join(missing)}); it lives in ../shared/data")
        print(json.dumps({"benchmark": "fusion_quality", "skipped": True, "missing": missing}))
        return 0
    import pandas as pd

    from rakuten_mlops.ml.evaluate import evaluate_pipeline
    from rakuten_mlops.ml.fusion import image_used
    from rakuten_mlops.ml.train import split_xy

    warnings.filterwarnings("ignore", category=UserWarning)
    frame = sample_with_images()
    test = frame[frame["subset"] == "test"]
    log(f"{len(frame)} products, {int(frame['image_features'].notna().sum())} with a photo; "
        f"{len(test)} test rows")
    text_model, text_search = trained(frame, "linear_svc")
    fused_model, fused_search = trained(frame, "fusion")
    text, fused = evaluate_pipeline(text_model, frame), evaluate_pipeline(fused_model, frame)
    pictured = image_used(split_xy(test)[0])
    names = pd.read_csv(RAKUTEN / "category_names.csv")
    names = dict(zip(names.prdtypecode.astype(int), names.category, strict=True))
    print(json.dumps({
        "benchmark": "fusion_quality",
        "profile": PROFILE,
        "rows": {"products": len(frame), "with_photo": int(frame["image_features"].notna().sum()),
                 "test": len(test), "test_with_photo": int(pictured.sum())},
        "text_only": text_search,
        "fused": fused_search,
        "overall": compare(fused, text),
        "test_products_with_photo": compare(fused, text, pictured),
        "classes": class_changes(fused, text, names),
    }, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
