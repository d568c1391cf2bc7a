#!/usr/bin/env python3
"""Benchmark of the data-quality job (rakuten_mlops.quality.job) at the scale of issue 6.

Input: ../shared/data/translated (57,375 labelled products) is the **reference**: a
dataset snapshot (processed_data layout, content-hashed like `preprocess`) named as the
champion's training data. The **window** is a load batch of 10,000 products drawn from
the same set (seeded), a third of them with upper-cased designations (a real drift to
detect, so the breach path and its report are part of the measure), written to the
benchmark's own lake (`rakuten_bench_quality`) and bucket (`bench-quality-artifacts`),
both removed at the end.

Measured, each in a fresh process (the job's imports done before the clock starts and
reported apart; peak RSS of that process, and its growth over the post-import RSS):

* job, cold: `quality.job.check_window` on the batch, the whole job as the DAG task runs
  it: the reference profile computed and cached in S3, the window read from PostgreSQL,
  features, every statistic, the HTML report rendered and stored in S3, results upserted;
* job, warm: the same with the reference profile read back from the S3 cache (what a
  daily run does once per champion);
* compute, project vs naive: features of both samples plus every statistic, no I/O.
  The naive way is the usual per-feature pandas/scipy loop: row-wise Python features
  (`str.split`, `isdigit`/`isupper` per character), a `collections.Counter` of regex
  tokens, then per feature `np.histogram` + `scipy.stats.entropy` +
  `scipy.spatial.distance.jensenshannon`, quality ratios with pandas. Both use the same
  language guesser (the inference log's) and must agree on what drifted.

Target: the whole job (cold) under 5 s. Skips (exit 0) when ../shared/data is absent.
Needs the local stack (`make up`). Prints readable lines on stderr, one JSON on stdout.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAKUTEN_SHARED_DATA", ROOT.parent / "shared" / "data"))
TRANSLATED = SHARED / "translated"
BENCH_DB = "rakuten_bench_quality"
BUCKET = "bench-quality-artifacts"
WINDOW_ROWS = 10_000
TARGET_SECONDS = 5.0
DATASET_ID = "bench-translated"

sys.path.insert(0, str(ROOT / "src"))


def note(message: str) -> None:
    print(f"[bench_quality] {message}", file=sys.stderr, flush=True)


def bench_env(processed: Path) -> dict[str, str]:
    return {
        "POSTGRES_DB": BENCH_DB,
        "S3_BUCKET_ARTIFACTS": BUCKET,
        "PROCESSED_DATA_DIR": str(processed),
        "MODEL_NAME": "bench-quality",
    }


# --------------------------------------------------------------------------- data


def reference_frame():
    import pandas as pd

    x = pd.read_csv(TRANSLATED / "X_train_translated.csv", index_col=0)
    y = pd.read_csv(TRANSLATED / "Y_train_translated.csv", index_col=0)
    frame = x.join(y, how="inner")[["productid", "designation", "description", "prdtypecode"]]
    frame = frame.astype(
        {"productid": "int64", "prdtypecode": "int64", "designation": object, "description": object}
    )
    frame["description"] = frame["description"].where(frame["description"].notna(), None)
    return frame.assign(subset="train").reset_index(drop=True)


def window_frame(reference):
    window = reference.sample(n=WINDOW_ROWS, random_state=0).reset_index(drop=True)
    window["productid"] = 8_000_000_000 + window.index  # new products, same distribution
    shouting = window.index % 3 == 0
    window.loc[shouting, "designation"] = window.loc[shouting, "designation"].str.upper()
    return window


# --------------------------------------------------------------------------- set-up


def admin_connection(settings):
    import psycopg

    from rakuten_mlops.localstack.postgres import postgres_superuser_kwargs

    return psycopg.connect(**postgres_superuser_kwargs(settings), autocommit=True)


def set_up(settings, reference, window) -> None:
    """A fresh lake holding the window as load batch 1; the reference as a dataset snapshot."""
    from rakuten_mlops import schema
    from rakuten_mlops.ml.dataset import dataset_dir, dataset_manifest
    from rakuten_mlops.storage import connect, ensure_buckets, s3_client

    with admin_connection(settings) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}" OWNER "{settings.postgres_user}"')
    with connect(settings) as conn:
        schema.migrate(conn)
        with conn.transaction():
            conn.execute(
                "INSERT INTO categories SELECT DISTINCT prdtypecode, 'c' || prdtypecode"
                " FROM unnest(%s::int[]) AS prdtypecode",
                (sorted({int(c) for c in reference["prdtypecode"]}),),
            )
            conn.execute(
                "INSERT INTO load_batches (batch_id, run_id, source_dir, slice_spec,"
                " status, finished_at) VALUES (1, 'bench', 'bench', 'all', 'succeeded',"
                " now())"
            )
            with conn.cursor().copy(
                "COPY products (productid, imageid, source_split, source_row,"
                " source_line, designation, description, batch_id)"
                " FROM STDIN"
            ) as copy:
                for i, row in enumerate(window.itertuples(index=False)):
                    copy.write_row(
                        (
                            row.productid,
                            row.productid,
                            "train",
                            i,
                            i + 2,
                            row.designation,
                            row.description,
                            1,
                        )
                    )
            with conn.cursor().copy(
                "COPY labels (productid, prdtypecode, batch_id) FROM STDIN"
            ) as copy:
                for row in window.itertuples(index=False):
                    copy.write_row((row.productid, row.prdtypecode, 1))
    folder = dataset_dir(settings, DATASET_ID)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = dataset_manifest(reference)
    manifest["dataset_id"] = DATASET_ID
    reference.to_parquet(folder / "products.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    client = s3_client(settings)
    empty_bucket(client)
    ensure_buckets(client, [BUCKET])


def empty_bucket(client, remove: bool = False) -> None:
    from minio.deleteobjects import DeleteObject

    if client.bucket_exists(BUCKET):
        objects = [DeleteObject(o.object_name) for o in client.list_objects(BUCKET, recursive=True)]
        assert not list(client.remove_objects(BUCKET, objects))
        if remove:
            client.remove_bucket(BUCKET)


def tear_down(settings) -> None:
    from rakuten_mlops.storage import s3_client

    with admin_connection(settings) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    empty_bucket(s3_client(settings), remove=True)


# --------------------------------------------------------------------------- the naive way


def naive_compute(reference, window, guess, stopwords, config) -> tuple[set[str], int]:
    """Per-feature pandas/scipy loop: what a first version of the job would do."""
    import re
    from collections import Counter

    import numpy as np
    import pandas as pd
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import entropy
    from scipy.stats.contingency import association

    from rakuten_mlops.quality.features import TEXT_NUMERIC

    html = re.compile(r"<[a-zA-Z/!][^>]*>|&(?:[a-zA-Z]{2,8}|#\d{2,5}|#x[0-9a-fA-F]{2,4});")
    markup = re.compile(r"<[^>]*>|&#?[0-9a-zA-Z]+;")
    word = re.compile(r"[^\W\d_]+")

    def features(frame):
        rows, tokens = [], Counter()
        for designation, description in zip(
            frame["designation"], frame["description"], strict=True
        ):
            description = description or ""
            text = f"{designation}\n{description}"
            size = max(len(text), 1)
            rows.append(
                {
                    "designation_chars": len(designation),
                    "description_chars": len(description),
                    "designation_words": len(designation.split()),
                    "description_words": len(description.split()),
                    "digit_ratio": sum(c.isdigit() for c in text) / size,
                    "uppercase_ratio": sum(c.isupper() for c in text) / size,
                    "has_html": bool(html.search(text)),
                    "language": guess(text),
                    "description_empty": not description.strip(),
                }
            )
            tokens.update(
                t
                for t in word.findall(markup.sub(" ", text).lower())
                if len(t) >= 2 and t not in stopwords
            )
        return pd.DataFrame(rows), tokens

    ref, ref_tokens = features(reference)
    cur, cur_tokens = features(window)
    eps, drifted, statistics = config.drift.epsilon, set(), 0

    def compare(name, p_counts, q_counts):
        nonlocal statistics
        p, q = p_counts / p_counts.sum(), q_counts / q_counts.sum()
        ps, qs = np.maximum(p, eps), np.maximum(q, eps)
        ps, qs = ps / ps.sum(), qs / qs.sum()
        values = {
            "psi": float(np.sum((qs - ps) * np.log(qs / ps))),
            "kl_divergence": float(entropy(qs, ps)),
            "js_distance": float(jensenshannon(p, q, base=2)),
        }
        statistics += 3
        if any(values[m] >= t for m, t in config.drift.threshold_map.items()):
            drifted.add(name)

    for name in TEXT_NUMERIC:
        edges = np.unique(np.quantile(ref[name], np.linspace(0, 1, config.drift.bins + 1)[1:-1]))
        bins = np.r_[-np.inf, edges, np.inf]
        compare(
            name,
            np.histogram(ref[name], bins)[0].astype(float),
            np.histogram(cur[name], bins)[0].astype(float),
        )
    for name, left, right in (
        ("language", ref["language"], cur["language"]),
        ("has_html", ref["has_html"], cur["has_html"]),
        ("label", reference["prdtypecode"], window["prdtypecode"]),
    ):
        both = pd.concat([left.value_counts(), right.value_counts()], axis=1).fillna(0)
        compare(name, both.iloc[:, 0].to_numpy(float), both.iloc[:, 1].to_numpy(float))
    top = [t for t, _ in ref_tokens.most_common(config.drift.top_tokens)]
    ref_top, cur_top = [ref_tokens[t] for t in top], [cur_tokens[t] for t in top]
    compare(
        "text_tokens",
        np.array(ref_top + [sum(ref_tokens.values()) - sum(ref_top)], float),
        np.array(cur_top + [sum(cur_tokens.values()) - sum(cur_top)], float),
    )
    # quality
    cur["description_empty"].mean()
    window[["designation", "description"]].duplicated().mean()
    for name in ("designation_chars", "description_chars"):
        q1, q3 = ref[name].quantile([0.25, 0.75])
        ((cur[name] < q1 - 1.5 * (q3 - q1)) | (cur[name] > q3 + 1.5 * (q3 - q1))).mean()
    counts = window["prdtypecode"].value_counts()
    counts.max() / counts.min()
    association(pd.crosstab(cur["description_empty"], window["prdtypecode"]).to_numpy())
    cur.describe()
    return drifted, statistics + 8


# --------------------------------------------------------------------------- children


def child(kind: str) -> dict:
    """One measurement, in this (fresh) process; returns its figures."""
    import psutil

    from rakuten_mlops.quality.config import settings_config
    from rakuten_mlops.quality.features import product_profile
    from rakuten_mlops.quality.job import check_window
    from rakuten_mlops.quality.resources import QualityResources
    from rakuten_mlops.quality.results import Reference
    from rakuten_mlops.quality.statistics import evaluate
    from rakuten_mlops.quality.windows import batch_window, query_frame
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    config = settings_config(settings)
    reference_ref = Reference(
        "champion", f"dataset-{DATASET_ID}-train", "bench: the translated set", "1", DATASET_ID
    )
    imports = warm_imports()
    if kind in ("naive", "compute"):
        from rakuten_mlops.ml.dataset import load_dataset
        from rakuten_mlops.storage import connect

        reference = load_dataset(settings, DATASET_ID).frame
        with connect(settings) as conn:
            window = query_frame(
                conn,
                "SELECT p.productid, p.designation, p.description,"
                " l.prdtypecode FROM products p JOIN labels l"
                " USING (productid) ORDER BY productid",
            )
    stages: dict[str, float] = {}
    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    if kind in ("cold", "warm"):
        tools = QualityResources(settings)
        with lake_connect(settings) as conn:
            window_spec = batch_window(conn, 1)
        result = check_window(
            settings, window_spec, reference_ref, config, "bench", tools
        )
        drifted = {r.feature for r in result.rows if r.category == "drift" and r.breach}
        statistics = len(result.rows)
        stages = result.timings
    elif kind == "compute":
        tools = QualityResources(settings)
        ref_profile = product_profile(reference, None, tools.guesser, tools.stopwords)
        cur_profile = product_profile(
            window, None, tools.guesser, tools.stopwords, keep_tokens=None
        )
        rows = evaluate(ref_profile, cur_profile, config)
        drifted = {r.feature for r in rows if r.category == "drift" and r.breach}
        statistics = len(rows)
    else:
        tools = QualityResources(settings)
        drifted, statistics = naive_compute(
            reference, window, tools.guesser.guess, tools.stopwords, config
        )
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "seconds": round(seconds, 3),
        "imports_seconds": round(imports, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "growth_mb": round(max(peak - rss_before, 0) / 2**20, 1),
        "drifted": sorted(drifted),
        "statistics": statistics,
        "stages": stages,
    }


def warm_imports() -> float:
    """Import every module the job imports lazily, before the clock; how long it took.

    A task process pays this once (about 1-2 s with compiled bytecode; much more where
    PYTHONDONTWRITEBYTECODE makes every process compile every module): reported apart.
    """
    import importlib

    started = time.perf_counter()
    for name in (
        "concurrent.futures",
        "PIL.Image",
        "minio.deleteobjects",
        "minio.error",
        "psycopg.types.json",
        "pyarrow.compute",
        "pyarrow.parquet",
        "rakuten_mlops.ml.dataset",
        "rakuten_mlops.quality.job",
        "rakuten_mlops.serving.inference_log",
        "scipy.spatial.distance",
        "scipy.stats",
        "yaml",
    ):
        importlib.import_module(name)
    return time.perf_counter() - started


def lake_connect(settings):
    from rakuten_mlops.storage import connect

    return connect(settings)


def measure(kind: str, env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    needed = [TRANSLATED / "X_train_translated.csv", TRANSLATED / "Y_train_translated.csv"]
    if missing := [str(p) for p in needed if not p.exists()]:
        note(
            f"skipped: benchmark data not found ({', '.join(missing)}); it lives in "
            "../shared/data next to the checkout"
        )
        print(json.dumps({"benchmark": "quality", "skipped": True, "missing": missing}))
        return 0
    processed = Path(tempfile.mkdtemp(prefix="rakuten-bench-quality-"))
    env = bench_env(processed)
    os.environ.update(env)
    from rakuten_mlops.settings import get_settings

    settings = get_settings()
    reference = reference_frame()
    window = window_frame(reference)
    note(f"reference {len(reference):,} products (translated set), window {len(window):,}")
    set_up(settings, reference, window)
    try:
        cold = measure("cold", env)  # no cached profile yet: computes and caches it
        warm = measure("warm", env)
        compute = measure("compute", env)
        naive = measure("naive", env)
    finally:
        tear_down(settings)
        shutil.rmtree(processed, ignore_errors=True)
    for name, figures in (
        ("job, cold reference", cold),
        ("job, cached reference", warm),
        ("compute, project", compute),
        ("compute, naive", naive),
    ):
        note(
            f"{name:24s} {figures['seconds']:7.2f} s   peak RSS {figures['peak_rss_mb']:7.1f} MB"
            f" (+{figures['growth_mb']:.1f} MB)   drift on {', '.join(figures['drifted'])}"
            f"   (imports before the clock: {figures['imports_seconds']:.1f} s)"
            + (f"\n{'':26s}stages (s): {figures['stages']}" if figures["stages"] else "")
        )
    speedup = naive["seconds"] / compute["seconds"]
    memory = naive["growth_mb"] / max(compute["growth_mb"], 0.1)
    note(
        f"naive / project: {speedup:.2f}x the time, {memory:.2f}x the memory growth; "
        f"target: job under {TARGET_SECONDS:g} s: "
        f"{'met' if cold['seconds'] < TARGET_SECONDS else 'NOT met'} ({cold['seconds']:.2f} s)"
    )
    assert compute["drifted"] == naive["drifted"], (compute["drifted"], naive["drifted"])
    print(
        json.dumps(
            {
                "benchmark": "quality",
                "reference_rows": len(reference),
                "window_rows": len(window),
                "job_cold": cold,
                "job_warm": warm,
                "compute_project": compute,
                "compute_naive": naive,
                "naive_over_project_time": round(speedup, 2),
                "naive_over_project_memory_growth": round(memory, 2),
                "target_seconds": TARGET_SECONDS,
                "target_met": cold["seconds"] < TARGET_SECONDS,
                "load_average": os.getloadavg()[0],
                "cpus": os.cpu_count(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(child(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
