"""`airflow dags test data_quality` on the sample loaded in two batches, the second shifted
on exactly `uppercase_ratio` and `label` (conftest.py, tests/support/quality.py): drift is
flagged on those two features of batch 2 and nowhere else, every window is stored with
its reference and sample sizes, reports land in S3, and a re-run replaces, never adds.
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support.quality import SHIFTED_FEATURES

pytestmark = pytest.mark.stack

TASKS = (
    "migrate_schema",
    "reference",
    "interval",
    "pending_batches",
    "check_batch",
    "check_inference",
    "summarize",
    "retrain_wanted",
)


def rows(settings, query: str, *args) -> list[tuple]:
    from rakuten_mlops.storage import connect

    with connect(settings) as conn:
        return conn.execute(query, args).fetchall()


def drifted(settings, window_id: str) -> set[str]:
    return {
        r[0]
        for r in rows(
            settings,
            "SELECT DISTINCT feature FROM quality_results"
            " WHERE window_id = %s AND category = 'drift' AND breach",
            window_id,
        )
    }


def test_the_dag_succeeds_and_warns_about_the_breach(drift_run):
    log = drift_run.log
    assert drift_run.result.returncode == 0, log[-6000:]
    for task in TASKS:
        assert f"task_id={task}" in log or f"'{task}'" in log, task
    assert re.search(r"warning.*data quality breach in batch-2: label, uppercase_ratio", log)
    assert "quality/reports/batch-2.html" in log  # the report is linked from the run
    assert "trigger ml_pipeline: False (QUALITY_TRIGGER_RETRAIN=False)" in log


def test_drift_is_flagged_on_exactly_the_shifted_features(drift_run):
    settings = drift_run.settings
    assert drifted(settings, "batch-2") == SHIFTED_FEATURES
    assert drifted(settings, "batch-1") == set()  # batch 1 vs its own train subset
    # Every other drift statistic of batch 2 was computed and is below its threshold.
    others = rows(
        settings,
        "SELECT feature, metric, value, threshold, enough_data"
        " FROM quality_results WHERE window_id = 'batch-2'"
        " AND category = 'drift' AND feature <> ALL(%s)",
        sorted(SHIFTED_FEATURES),
    )
    features = {r[0] for r in others}
    assert {
        "designation_chars",
        "description_chars",
        "designation_words",
        "description_words",
        "digit_ratio",
        "language",
        "has_html",
        "text_tokens",
        "image_bytes",
        "image_brightness",
    } <= features
    assert all(not (enough and value >= threshold) for _, _, value, threshold, enough in others)
    # Each shifted feature breaches all three statistics, with enough data to tell.
    shifted = rows(
        settings,
        "SELECT feature, metric, breach, enough_data FROM quality_results"
        " WHERE window_id = 'batch-2' AND feature = ANY(%s)"
        " AND category = 'drift'",
        sorted(SHIFTED_FEATURES),
    )
    assert len(shifted) == 6 and all(breach and enough for _, _, breach, enough in shifted)
    # No quality statistic breaches either: the shift is in the distributions only.
    assert (
        rows(
            settings,
            "SELECT window_id, feature, metric FROM quality_results"
            " WHERE category = 'quality' AND breach",
        )
        == []
    )


def test_windows_record_the_reference_sizes_and_status(drift_run):
    settings = drift_run.settings
    windows = {
        r[0]: r[1:]
        for r in rows(
            settings,
            """
        SELECT window_id, kind, status, rows, reference_kind, reference_id, reference_rows,
               model_version, breached_features, report_key, dag_run_id
        FROM quality_windows""",
        )
    }
    start = drift_run.interval[0]
    inference_id = f"inference-{start:%Y-%m-%dT%H:%M:%SZ}"
    assert set(windows) == {"batch-1", "batch-2", inference_id}
    reference = f"dataset-{drift_run.dataset_id}-train"
    for window_id, (
        _,
        _,
        _,
        ref_kind,
        ref_id,
        ref_rows,
        version,
        _,
        key,
        run_id,
    ) in windows.items():
        assert ref_kind == "champion" and ref_id == reference and version == "1", window_id
        assert ref_rows == 807  # batch 1's train subset (70% of its 1,153 labelled products)
        assert key == f"quality/reports/{window_id}.html"
        assert run_id.startswith("manual__")
    assert windows["batch-1"][:3] == ("load_batch", "ok", 1153)
    assert windows["batch-2"][:3] == ("load_batch", "breach", 1153)
    assert sorted(windows["batch-2"][7]) == sorted(SHIFTED_FEATURES)
    kind, status, n = windows[inference_id][:3]
    assert kind == "inference" and n == drift_run.predictions
    # Live traffic was unshifted products: its text features do not drift (the predicted
    # classes of a model trained on 807 products may, and are not asserted on).
    assert drifted(settings, inference_id) <= {"predicted_class"}
    # Sample sizes are stored with every drift statistic.
    sizes = rows(
        settings,
        "SELECT DISTINCT n_reference, n_current FROM quality_results"
        " WHERE window_id = 'batch-2' AND feature = 'designation_chars'"
        " AND category = 'drift'",
    )
    assert sizes == [(807, 1153)]


def test_small_windows_are_reported_but_not_flagged(drift_run):
    # About 115 images per batch against about 115 in the reference: PSI on 10 bins
    # expects ~0.17 without any drift, so image drift is "too small to tell".
    ((n_ref, n_cur, bias, enough, reason),) = rows(
        drift_run.settings,
        "SELECT n_reference, n_current, expected_bias, enough_data, reason"
        " FROM quality_results WHERE window_id = 'batch-2'"
        " AND feature = 'image_bytes' AND metric = 'psi'",
    )
    assert n_ref < 200 and n_cur < 200
    assert bias == pytest.approx(9 * (1 / n_ref + 1 / n_cur))
    assert not enough and "expected no-drift bias" in reason


def test_reports_are_self_contained_html_in_s3(drift_run):
    from rakuten_mlops.storage import get_bytes, s3_client

    settings = drift_run.settings
    client = s3_client(settings)
    html = get_bytes(client, settings.s3_bucket_artifacts, "quality/reports/batch-2.html").decode()
    assert html.startswith("<!doctype html>") and "uppercase_ratio" in html
    assert html.count("<svg") >= 10  # one chart per drift feature
    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html)  # nothing external
    assert "status s-breach" in html


def test_a_rerun_replaces_the_windows(drift_run):
    from tests.support.quality import dags_test

    settings = drift_run.settings
    query = (
        "SELECT window_id, feature, metric, nullif(value, 'NaN'), breach FROM quality_results"
        " ORDER BY 1, 2, 3"
    )
    before = rows(settings, query)
    stamps = dict(rows(settings, "SELECT window_id, computed_at FROM quality_windows"))
    again = dags_test(settings, drift_run.interval[0].strftime("%Y-%m-%d"))  # the same day
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    after = rows(settings, query)
    # The batches finished in the interval and the interval's inference log are re-checked:
    # the same statistics, nothing duplicated, newer computed_at. (Other tests may have
    # added predictions since: the inference window's values may differ, not its keys.)
    assert [r[:3] for r in after] == [r[:3] for r in before]
    batches = [r for r in before if r[0].startswith("batch-")]
    assert [r for r in after if r[0].startswith("batch-")] == batches
    newer = dict(rows(settings, "SELECT window_id, computed_at FROM quality_windows"))
    assert set(newer) == set(stamps) and all(newer[w] > stamps[w] for w in stamps)
    assert "cached profile" in again.stdout + again.stderr  # the reference is not recomputed


def test_without_a_champion_the_lake_is_the_reference(drift_run):
    """The fallback, computed without storing (the windows above stay the champion's)."""
    from rakuten_mlops.quality.config import settings_config
    from rakuten_mlops.quality.reference import (
        reference_profile,
        resolve_reference,
        window_reference,
    )
    from rakuten_mlops.quality.resources import QualityResources
    from rakuten_mlops.quality.statistics import evaluate, window_status
    from rakuten_mlops.quality.windows import batch_profile
    from rakuten_mlops.storage import connect
    from tests.support.quality import SHIFTED_FEATURES as shifted

    settings = drift_run.settings.model_copy(update={"model_name": "test-quality-no-such-model"})
    base = resolve_reference(settings)
    assert base.kind == "lake_train" and "no test-quality-no-such-model@champion" in base.note
    with connect(settings) as conn:
        first = window_reference(base, conn, 1)
        second = window_reference(base, conn, 2)
        inference = window_reference(base, conn, None)
    assert first.kind == "none" and first.reference_id is None  # nothing before batch 1
    assert second.reference_id == "lake-train-before-batch-2"
    assert inference.reference_id == "lake-train-upto-batch-2"
    config = settings_config(settings)
    tools = QualityResources(settings)
    with connect(settings) as conn:
        reference = reference_profile(settings, conn, second, config, tools)
        current = batch_profile(conn, 2, tools, config.images.max_images)
    tools.finish()
    assert reference.rows == 807  # batch 1's train subset, as the champion's dataset
    rows = evaluate(reference, current, config)
    assert {r.feature for r in rows if r.category == "drift" and r.breach} == shifted
    assert window_status(rows, current.rows, second, config) == "breach"


def test_the_reference_is_every_subset_the_champion_trained_on(drift_run):
    """A champion trained on train + validation is compared with both, not train alone."""
    from rakuten_mlops.ml.dataset import load_dataset
    from rakuten_mlops.quality.reference import champion_reference, reference_products
    from rakuten_mlops.storage import connect
    from tests.support.quality import delete_champion, train_champion

    name = f"test-quality-tv-{uuid.uuid4().hex[:8]}"
    settings = drift_run.settings.model_copy(update={"model_name": name})
    dataset = load_dataset(settings, drift_run.dataset_id)
    model = train_champion(settings, dataset, name, subsets=("train", "validation"))
    try:
        reference = champion_reference(settings)
        assert reference.subsets == ("train", "validation")
        assert reference.reference_id == f"dataset-{drift_run.dataset_id}-train+validation"
        with connect(settings) as conn:
            products = reference_products(settings, conn, reference)
        frame = dataset.frame
        trained_on = frame.loc[frame["subset"].isin(["train", "validation"]), "productid"]
        assert sorted(products["productid"]) == sorted(trained_on)
        assert len(products) > 807  # more than batch 1's train subset alone
    finally:
        delete_champion(settings, model)
