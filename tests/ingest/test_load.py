"""The load against the real PostgreSQL and S3 of the local stack, on the shipped sample."""

from __future__ import annotations

from collections import Counter

import pytest

from rakuten_mlops.ingest import IngestError, run_ingest
from tests.support.lake import expected_from, sha256

pytestmark = pytest.mark.stack


def test_slices_load_every_valid_row_and_image_exactly_once(lake):
    expected = expected_from(lake.settings.raw_data_dir)
    summaries = []
    while not summaries or summaries[-1]["remaining_rows"]:
        summaries.append(run_ingest(lake.settings, f"slice-{len(summaries) + 1}", "0.2"))
    assert [s["rows_read"] for s in summaries] == [462, 462, 462, 462, 458]
    assert all(s["status"] == "succeeded" for s in summaries)

    products = lake.rows("SELECT source_split, source_row, productid, imageid, designation"
                         " FROM products")
    assert len(products) == expected.products == 2306
    wanted = {("train", i, int(r["productid"]), int(r["imageid"]), r["designation"].strip())
              for i, r in expected.train.items()}
    wanted |= {("test", i, int(r["productid"]), int(r["imageid"]), r["designation"].strip())
               for i, r in expected.test.items()}
    assert set(products) == wanted
    labels = dict(lake.rows("SELECT p.source_row, l.prdtypecode FROM labels l"
                            " JOIN products p USING (productid)"))
    assert labels == expected.labels
    assert lake.scalar("SELECT count(*) FROM categories") == 27

    # The split: every labelled product once, about 70/15/15 in every class.
    assert lake.scalar("SELECT count(*) FROM dataset_split") == len(expected.labels)
    subsets = Counter(dict(lake.rows("SELECT subset, count(*) FROM dataset_split GROUP BY 1")))
    assert abs(subsets["train"] / len(expected.labels) - 0.70) < 0.01
    assert abs(subsets["validation"] / len(expected.labels) - 0.15) < 0.01

    # Images: catalogue = bucket = the files of loaded products, checksums match.
    catalogue = dict(lake.rows("SELECT s3_key, sha256 FROM images"))
    objects = lake.objects()
    assert set(catalogue) == set(objects) == set(expected.images) and len(catalogue) == 280
    assert all(catalogue[key] == sha256(path) for key, path in expected.images.items())
    from rakuten_mlops.storage import s3_client

    client = s3_client(lake.settings)
    key = next(iter(expected.images))
    stat = client.stat_object(lake.settings.s3_bucket_images, key)
    assert stat.content_type == "image/jpeg"
    assert stat.metadata["x-amz-meta-sha256"] == catalogue[key]
    assert lake.scalar("SELECT count(*) FROM images WHERE width = 500 AND height = 500") == 280

    # Every product without an image file is a missing_image reject, once.
    assert dict(lake.rows("SELECT reason, count(*) FROM rejects GROUP BY 1")) == {
        "missing_image": 2306 - 280}
    assert not lake.rows("SELECT batch_id, source_file, locator, reason FROM rejects"
                         " GROUP BY 1, 2, 3, 4 HAVING count(*) > 1")


def test_rerunning_a_run_changes_nothing(lake):
    first = run_ingest(lake.settings, "rerun", "all")
    counts, batch = lake.counts(), lake.rows("SELECT * FROM load_batches")
    again = run_ingest(lake.settings, "rerun", "all")
    assert lake.counts() == counts
    assert lake.rows("SELECT * FROM load_batches") == batch
    assert again == first
    # A new run finds nothing left to load: an empty batch, no data changes.
    empty = run_ingest(lake.settings, "nothing-left", "all")
    assert (empty["rows_read"], empty["products_loaded"], empty["rejects"]) == (0, 0, 0)
    assert {k: v for k, v in lake.counts().items() if k != "load_batches"} == {
        k: v for k, v in counts.items() if k != "load_batches"}


def test_staging_write_mode_loads_the_same_lake(lake):
    staged = lake.with_raw(lake.settings.raw_data_dir, ingest_text_write="staging")
    summary = run_ingest(staged.settings, "staged", "0.5")
    assert summary["products_loaded"] == 1153
    run_ingest(staged.settings, "staged-2", "all")
    expected = expected_from(lake.settings.raw_data_dir)
    assert lake.scalar("SELECT count(*) FROM products") == expected.products
    assert lake.scalar("SELECT count(*) FROM labels") == len(expected.labels)
    again = run_ingest(staged.settings, "staged", "0.5")
    assert again["products_loaded"] == 1153


def test_too_many_bad_rows_fail_the_run_without_loading_it(lake, sample_dir):
    path = sample_dir / "X_train_update.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    # Blank the designation of 200 single-line rows (about 8.7% of the 2,306 records).
    blanked = 0
    for number, line in enumerate(lines[1:], start=1):
        fields = line.split(",")
        if blanked < 200 and len(fields) == 5 and fields[0].isdigit() and fields[1]:
            lines[number] = ",".join([fields[0], "", *fields[2:]])
            blanked += 1
    path.write_text("\n".join(lines), encoding="utf-8")

    with pytest.raises(IngestError) as failure:
        run_ingest(lake.settings, "too-bad", "all")
    message = str(failure.value)
    assert "INGEST_MAX_TEXT_REJECT_RATIO=0.05" in message
    assert "empty_designation x200" in message
    assert lake.scalar("SELECT count(*) FROM products") == 0
    assert lake.rows("SELECT status, text_loaded_at IS NULL FROM load_batches") == [
        ("failed", True)]
    assert lake.scalar("SELECT count(*) FROM rejects WHERE reason = 'empty_designation'") == 200

    # The same run, allowed more rejects, loads the good rows; rejects stay recorded once.
    relaxed = lake.with_raw(sample_dir, ingest_max_text_reject_ratio=0.2)
    summary = run_ingest(relaxed.settings, "too-bad", "all")
    assert summary["status"] == "succeeded"
    assert summary["products_loaded"] == 2306 - 200
    assert lake.scalar("SELECT count(*) FROM rejects WHERE reason = 'empty_designation'") == 200


def test_too_many_bad_images_fail_the_run_and_name_the_limit(lake, sample_dir):
    folder = sample_dir / "images" / "image_train"
    for path in sorted(folder.iterdir())[:20]:  # 20 of 280 image files: 7%
        path.write_bytes(b"not an image")
    with pytest.raises(IngestError, match="INGEST_MAX_IMAGE_REJECT_RATIO=0.05"):
        run_ingest(lake.settings, "bad-images", "all")
    assert lake.rows("SELECT status FROM load_batches") == [("failed",)]
    assert lake.scalar("SELECT count(*) FROM images") == 260  # the good ones are stored
    assert lake.scalar("SELECT count(*) FROM rejects WHERE reason = 'not_jpeg'") == 20


def test_a_missing_required_file_fails_with_its_name(lake, sample_dir):
    (sample_dir / "Y_train_CVw08PX.csv").unlink()
    result = lake.cli("ingest", "--run-id", "no-labels")
    assert result.returncode == 1
    assert "Y_train_CVw08PX.csv" in result.stderr and "missing" in result.stderr
    assert lake.scalar("SELECT count(*) FROM load_batches") == 0


def test_a_file_not_in_the_challenge_layout_fails_the_run_and_loads_nothing(lake, sample_dir):
    path = sample_dir / "X_train_update.csv"
    text = path.read_text(encoding="utf-8")
    path.write_text("id" + text, encoding="utf-8")  # header "id,designation,..."
    with pytest.raises(IngestError, match="X_train_update.csv: header is"):
        run_ingest(lake.settings, "bad-header", "all")
    assert lake.scalar("SELECT count(*) FROM load_batches") == 0
    assert lake.scalar("SELECT count(*) FROM products") == 0
