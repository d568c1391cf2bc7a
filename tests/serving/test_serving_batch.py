"""Batch predictions for the lake's unlabelled products, and `make demo`'s last step
(`rakuten-mlops demo-predict`) against the running service."""

from __future__ import annotations

import uuid

import pytest

from tests.support.serving import ADMIN_KEY, CLIENT_KEY

pytestmark = pytest.mark.stack

BASE_ID = 9_300_000_000  # far from the challenge's product ids


@pytest.fixture()
def test_products(lake, split):
    """Real held-out products, loaded as unlabelled `test` products of the lake."""
    from rakuten_mlops.storage import connect

    _, x_test, _, y_test = split
    run_id = f"serving-test-{uuid.uuid4().hex[:8]}"
    rows = x_test.iloc[:40]
    ids = [BASE_ID + i for i in range(len(rows))]
    with connect(lake) as conn, conn.transaction():
        batch_id = conn.execute(
            "INSERT INTO load_batches (run_id, source_dir, slice_spec, status)"
            " VALUES (%s, 'tests/serving', 'all', 'succeeded') RETURNING batch_id",
            (run_id,),
        ).fetchone()[0]
        for productid, (index, row) in zip(ids, rows.iterrows(), strict=True):
            conn.execute(
                "INSERT INTO products (productid, imageid, source_split, source_row,"
                " source_line, designation, description, batch_id)"
                " VALUES (%s, %s, 'test', %s, %s, %s, %s, %s)",
                (
                    productid,
                    productid,
                    -productid,  # no clash with real challenge rows
                    int(index) + 2,
                    row.designation,
                    row.description if isinstance(row.description, str) else None,
                    batch_id,
                ),
            )
    yield dict(zip(ids, y_test.iloc[:40], strict=True))
    with connect(lake) as conn, conn.transaction():
        conn.execute("DELETE FROM products WHERE productid = ANY(%s)", (ids,))
        conn.execute("DELETE FROM load_batches WHERE batch_id = %s", (batch_id,))


def test_batch_predictions_are_written_with_the_model_version(
    lake, registered, pipelines, test_products
):
    from rakuten_mlops.serving.batch import predict_lake
    from rakuten_mlops.storage import connect

    settings = lake.model_copy(update={"model_name": registered["name"]})
    ids = list(test_products)
    first = predict_lake(settings, chunk_size=16)
    assert (first["model_name"], first["model_version"]) == (registered["name"], "1")
    assert first["model_source"] == "registry" and first["rows_predicted"] >= len(ids)
    again = predict_lake(settings, chunk_size=16)  # same version: replaces, no duplicates
    with connect(lake) as conn:
        rows = conn.execute(
            "SELECT productid, prdtypecode, confidence, top_k, run_id FROM batch_predictions"
            " WHERE productid = ANY(%s) AND model_name = %s AND model_version = '1'",
            (ids, registered["name"]),
        ).fetchall()
        run = conn.execute(
            "SELECT model_version, source_split, rows_predicted, finished_at IS NOT NULL"
            " FROM batch_prediction_runs WHERE run_id = %s",
            (again["run_id"],),
        ).fetchone()
    # The second run found every prediction unchanged and rewrote none of them.
    assert len(rows) == len(ids) and {row[4] for row in rows} == {first["run_id"]}
    assert run == ("1", "test", again["rows_predicted"], True)
    # The same answers as the model in-process, and mostly right on real products.
    import pandas as pd

    with connect(lake) as conn:
        texts = conn.execute(
            "SELECT productid, designation, description FROM products WHERE productid = ANY(%s)"
            " ORDER BY productid",
            (ids,),
        ).fetchall()
    frame = pd.DataFrame(texts, columns=["productid", "designation", "description"])
    expected = dict(zip(frame.productid, pipelines["1"].predict(frame), strict=True))
    predicted = {row[0]: row[1] for row in rows}
    assert predicted == {pid: int(code) for pid, code in expected.items()}
    assert all(0 < row[2] <= 1 and row[3][0]["prdtypecode"] == row[1] for row in rows)
    correct = sum(predicted[pid] == truth for pid, truth in test_products.items())
    assert correct / len(ids) > 0.5
    for run_id in (first["run_id"], again["run_id"]):
        with connect(lake) as conn, conn.transaction():
            conn.execute("DELETE FROM batch_predictions WHERE run_id = %s", (run_id,))
            conn.execute("DELETE FROM batch_prediction_runs WHERE run_id = %s", (run_id,))


def test_demo_predict_prints_answers_for_real_products(api, lake, test_products):
    from pydantic import SecretStr

    from rakuten_mlops.serving.client import demo_predict

    port = int(api.base_url.rsplit(":", 1)[1])
    settings = lake.model_copy(
        update={
            "api_port": port,
            "api_client_key": SecretStr(CLIENT_KEY),
            "api_admin_key": SecretStr(ADMIN_KEY),
        }
    )
    lines: list[str] = []
    answers = demo_predict(settings, count=3, echo=lines.append)
    assert len(answers) == 3 and all(len(a["predictions"]) == 3 for a in answers)
    assert lines[0].startswith(f"POST {api.base_url}/predict  model ")
    assert sum("%" in line for line in lines) == 9
