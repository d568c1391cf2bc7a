"""The dataset version: loading from the lake, content hashes, snapshots by reference."""

from __future__ import annotations

import pandas as pd
import pytest

from rakuten_mlops.ml.dataset import content_hash, dataset_manifest, split_hash


def test_content_hash_ignores_row_order_and_sees_every_change(sample_frame):
    base = content_hash(sample_frame)
    assert content_hash(sample_frame.sample(frac=1, random_state=1)) == base
    for column, value in (("designation", "autre"), ("prdtypecode", 10), ("subset", "test")):
        changed = sample_frame.copy()
        changed.loc[changed.index[5], column] = value
        assert content_hash(changed) != base, column


def test_the_test_split_hash_depends_on_the_test_rows_only(sample_frame):
    base = split_hash(sample_frame)
    changed = sample_frame.copy()
    train_row = changed.index[changed["subset"] == "train"][0]
    changed.loc[train_row, "designation"] = "autre chose"
    assert split_hash(changed) == base
    test_row = changed.index[changed["subset"] == "test"][0]
    changed.loc[test_row, "subset"] = "train"
    assert split_hash(changed) != base


def test_the_csv_frame_is_split_like_the_lake_70_15_15(sample_frame):
    shares = sample_frame["subset"].value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.70, abs=0.02)
    assert shares["validation"] == pytest.approx(0.15, abs=0.02)
    assert shares["test"] == pytest.approx(0.15, abs=0.02)
    # Stratified: every class is in every subset.
    per_class = sample_frame.groupby("prdtypecode")["subset"].nunique()
    assert (per_class == 3).all()


def test_manifest_counts_rows_subsets_and_batches(sample_frame):
    frame = sample_frame.assign(product_batch_id=1, label_batch_id=2)
    manifest = dataset_manifest(frame, {10: "Livres occasion"})
    assert manifest["rows"] == len(frame)
    assert sum(manifest["subsets"].values()) == len(frame)
    assert manifest["load_batches"] == [1, 2]
    assert manifest["dataset_id"] == manifest["sha256"][:16]
    assert manifest["classes"] == 27


@pytest.mark.stack
def test_labelled_products_are_read_from_the_lake_with_their_stored_split(db):
    from rakuten_mlops import schema
    from rakuten_mlops.ml.dataset import load_labelled_products

    schema.migrate(db)
    # Inside a transaction that is always rolled back: other suites share this database.
    with db.transaction(force_rollback=True):
        db.execute(
            "INSERT INTO categories VALUES (10, 'Livres'), (40, 'Jeux') ON CONFLICT DO NOTHING"
        )
        batch = db.execute(
            "INSERT INTO load_batches (run_id, source_dir, slice_spec, status)"
            " VALUES ('test-ml-loader', '/tmp', 'all', 'succeeded') RETURNING batch_id"
        ).fetchone()[0]
        rows = [
            (990000001, "Livre A", None, 10, "train"),
            (990000002, "Jeu B", "<b>x</b>", 40, "test"),
            (990000003, "Sans label", None, None, None),
            (990000004, "Sans split", None, 10, None),
        ]
        for productid, designation, description, code, subset in rows:
            db.execute(
                "INSERT INTO products (productid, imageid, source_split, source_row, source_line,"
                " designation, description, batch_id) VALUES (%s, 1, 'train', %s, 2, %s, %s, %s)",
                (productid, productid, designation, description, batch),
            )
            if code:
                db.execute("INSERT INTO labels VALUES (%s, %s, %s)", (productid, code, batch))
            if subset:
                db.execute("INSERT INTO dataset_split VALUES (%s, %s, 42)", (productid, subset))
        frame = load_labelled_products(db)
        mine = frame[frame["productid"] >= 990000000].reset_index(drop=True)
    expected = pd.DataFrame(
        {
            "productid": [990000001, 990000002],
            "designation": ["Livre A", "Jeu B"],
            "description": [None, "<b>x</b>"],
            "prdtypecode": [10, 40],
            "subset": ["train", "test"],
        }
    )
    pd.testing.assert_frame_equal(mine[expected.columns], expected, check_dtype=False)
    assert (mine["product_batch_id"] == batch).all()
