"""The fusion family: text scores + image vector, stacked; searched, registered, exported.

The stack test runs the stages as ml_pipeline does on the shipped sample loaded into a
lake of this module's own (preprocess, image_features, train with a fusion-only
profile, evaluate, promote): the fused model is registered, and the registry and the
`models/` export give the same answers for products with and without an image.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from rakuten_mlops.ml.fusion import IMAGE_COLUMN, image_used
from tests.support import lake as lakehelpers

# One candidate, two folds, word TF-IDF only: the family's wiring in seconds.
FUSION_PROFILE = {
    "name": "fusion-test",
    "cv_folds": 2,
    "random_state": 42,
    "n_jobs": 2,
    "train_subsets": ["train"],
    "baseline": True,
    "features": {"word": {"ngram_range": [1, 2]}, "char": None},
    "families": {
        "fusion": {"search": "grid", "fixed": {"stack__inner_folds": 2}, "grid": {"C": [0.03]}},
    },
}


def with_sample_images(frame):
    """The sample frame with each product's image vector, computed from raw_data/."""
    from rakuten_mlops.ml.image_features import image_vector

    vectors = {}
    for path in (lakehelpers.SAMPLE / "images" / "image_train").glob("*.jpg"):
        vectors[int(path.stem.rpartition("_product_")[2])] = image_vector(path.read_bytes())
    return frame.assign(**{IMAGE_COLUMN: [vectors.get(int(p)) for p in frame["productid"]]})


def test_one_fused_model_serves_products_with_and_without_an_image(sample_frame):
    from rakuten_mlops.ml.features import build_pipeline
    from rakuten_mlops.ml.train import split_xy

    frame = with_sample_images(sample_frame)
    X, y = split_xy(frame[frame["subset"] == "train"])  # noqa: N806
    model = build_pipeline("fusion", {"C": 0.03, "stack__inner_folds": 2},
                           FUSION_PROFILE["features"]).fit(X, y)
    test, _ = split_xy(frame[frame["subset"] == "test"])
    used = image_used(test)
    assert 0 < used.sum() < len(test)  # both kinds among the test rows
    with_image = model.predict_proba(test)
    without = model.predict_proba(test.drop(columns=[IMAGE_COLUMN]))
    assert with_image.shape == (len(test), len(model.classes_))
    np.testing.assert_allclose(with_image.sum(axis=1), 1.0, rtol=1e-6)
    # The image changes the scores of the products that have one, and only theirs.
    assert not np.allclose(with_image[used], without[used])
    np.testing.assert_allclose(with_image[~used], without[~used])


@pytest.fixture(scope="module")
def fused(settings, lake_database, tmp_path_factory):
    """The stages on the sample lake with FUSION_PROFILE: (settings, run id, promotion)."""
    from rakuten_mlops.ingest import run_ingest
    from rakuten_mlops.ml.dataset import prepare_dataset
    from rakuten_mlops.ml.image_stage import run_image_features
    from rakuten_mlops.ml.stages import promote, run_evaluate, run_train
    from tests.support.ml import private_model

    folder = tmp_path_factory.mktemp("fusion")
    shutil.copytree(lakehelpers.SAMPLE, folder / "raw_data",
                    ignore=shutil.ignore_patterns("README.md"))
    lake = lakehelpers.Lake(settings.model_copy(update={
        "postgres_db": lake_database,
        "s3_bucket_images": f"{settings.s3_bucket_images}-ingest",
        "raw_data_dir": folder / "raw_data",
    }))
    lake.reset()
    assert run_ingest(lake.settings, "fusion", bar=False)["status"] == "succeeded"
    with private_model(lake.settings, folder, "test-fusion") as own:
        dataset_id = prepare_dataset(own).dataset_id
        run_image_features(own, dataset_id, report=lambda line: None)
        run_id = run_train(own, dataset_id, dict(FUSION_PROFILE), report=lambda line: None)
        run_evaluate(own, run_id, report=lambda line: None)
        yield own, run_id, promote(own, run_id), dataset_id


@pytest.mark.stack
def test_the_fused_model_is_registered_and_answers_alike_from_registry_and_export(fused):
    import mlflow.sklearn

    from rakuten_mlops.ml import export, registry
    from rakuten_mlops.ml.image_stage import load_dataset_with_images
    from rakuten_mlops.ml.train import split_xy

    own, run_id, promotion, dataset_id = fused
    run = registry.client(own).get_run(run_id)
    assert run.data.tags["best_family"] == "fusion"
    assert promotion.alias == "champion", promotion.reason  # the first model, not worse
    registry.configure(own)
    served = mlflow.sklearn.load_model(f"models:/{own.model_name}@champion")
    exported = export.read_export(own).load()
    frame = load_dataset_with_images(own, dataset_id).frame
    X, _ = split_xy(frame[frame["subset"] == "test"])  # noqa: N806
    assert image_used(X).any() and not image_used(X).all()
    np.testing.assert_array_equal(served.predict_proba(X), exported.predict_proba(X))
    np.testing.assert_array_equal(served.predict(X), exported.predict(X))


@pytest.fixture(scope="module")
def fused_api(fused, tmp_path_factory):
    """The API serving the fused champion of `fused` (its lake, registry and export)."""
    from tests.support.serving import ApiServer

    own = fused[0]
    server = ApiServer(tmp_path_factory.mktemp("fused_api") / "api.log",
                       MODEL_NAME=own.model_name, MODELS_DIR=str(own.models_dir),
                       POSTGRES_DB=own.postgres_db, API_MODEL_POLL_SECONDS="0")
    server.start()
    yield server
    server.stop()


@pytest.mark.stack
def test_the_served_fused_model_reads_an_uploaded_or_stored_image(fused, fused_api):
    import base64

    import pandas as pd

    from rakuten_mlops.ml import export
    from rakuten_mlops.ml.image_stage import load_dataset_with_images
    from tests.support.serving import CLIENT

    own, _, _, dataset_id = fused
    frame = load_dataset_with_images(own, dataset_id).frame
    product = frame[frame["subset"] == "test"].dropna(subset=[IMAGE_COLUMN]).iloc[0]
    path = next((own.raw_data_dir / "images").glob(f"*/image_*_product_{product.productid}.jpg"))
    text = {"designation": product.designation, "top_k": 27}
    alone = fused_api.post("/predict", json=text, headers=CLIENT).json()
    seen = fused_api.post("/predict", json={
        **text, "image_base64": base64.b64encode(path.read_bytes()).decode()},
        headers=CLIENT).json()
    assert (alone["image_used"], seen["image_used"]) == (False, True)
    # The service's answer is the exported model's, with and without the image.
    model = export.read_export(own).load()
    for answer, image in ((alone, None), (seen, product[IMAGE_COLUMN])):
        X = pd.DataFrame({"designation": [product.designation], "description": [None],  # noqa: N806
                          IMAGE_COLUMN: [image]}, dtype=object)
        expected = dict(zip(model.classes_.tolist(), model.predict_proba(X)[0], strict=True))
        for score in answer["predictions"]:
            assert score["probability"] == pytest.approx(expected[score["prdtypecode"]],
                                                         abs=1e-9)
    # A batch item naming the product gets the image the lake stored for it.
    batch = fused_api.post("/predict/batch", headers=CLIENT, json={"top_k": 27, "items": [
        {"designation": product.designation, "productid": int(product.productid)},
        {"designation": product.designation}]}).json()
    assert [item["image_used"] for item in batch["results"]] == [True, False]
    for item, single in zip(batch["results"], (seen, alone), strict=True):
        assert scores(item) == pytest.approx(scores(single), abs=1e-6)  # batched BLAS sums


def scores(answer: dict) -> dict[int, float]:
    return {p["prdtypecode"]: p["probability"] for p in answer["predictions"]}


@pytest.mark.stack
def test_batch_predictions_of_a_fused_model_read_the_lakes_images(fused):
    import pandas as pd

    from rakuten_mlops.ml import export
    from rakuten_mlops.ml.image_features import image_vector
    from rakuten_mlops.serving.batch import predict_lake

    own = fused[0]
    lake = lakehelpers.Lake(own)
    summary = predict_lake(own, "test", run_id="fusion-batch")
    products = lake.rows("SELECT p.productid, p.designation, p.description, b.prdtypecode"
                         " FROM batch_predictions b JOIN products p USING (productid)"
                         " WHERE b.run_id = 'fusion-batch' ORDER BY productid")
    assert len(products) == summary["rows_predicted"] > 0
    # The unlabelled products' images were described by the run (read from S3 once).
    photos = {int(p.stem.rpartition("_product_")[2]): p
              for p in (own.raw_data_dir / "images" / "image_test").glob("*.jpg")}
    pictured = [row for row in products if row[0] in photos]
    assert pictured and len(pictured) < len(products)
    frame = pd.DataFrame({
        "designation": [row[1] for row in products], "description": [row[2] for row in products],
        IMAGE_COLUMN: [image_vector(photos[row[0]].read_bytes()) if row[0] in photos else None
                       for row in products]}, dtype=object)
    expected = export.read_export(own).load().predict(frame)
    assert [row[3] for row in products] == expected.tolist()
