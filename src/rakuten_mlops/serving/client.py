"""`rakuten-mlops demo-predict`: the end of `make demo`, a client of the running API.

Asks the API to pick up the current champion (admin reload), then classifies a few real
products (the lake's unlabelled test products, else raw_data/X_test_update.csv) and
prints the answers.
"""

from __future__ import annotations

import csv
import time

import httpx

from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

READY_TIMEOUT = 30.0


class DemoError(RuntimeError):
    pass


def sample_products(settings: Settings, count: int) -> list[dict]:
    """A few real products: from the lake if it holds some, else from raw_data/."""
    try:
        with connect(settings, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT designation, description FROM products"
                " ORDER BY source_split = 'test' DESC, productid LIMIT %s",
                (count,),
            ).fetchall()
        if rows:
            return [{"designation": d, "description": desc} for d, desc in rows]
    except Exception:  # noqa: BLE001 - fall back to the raw file
        pass
    for name in ("X_test_update.csv", "X_train_update.csv"):
        path = settings.path(settings.raw_data_dir) / name
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                return [
                    {"designation": row["designation"], "description": row["description"] or None}
                    for _, row in zip(range(count), reader, strict=False)
                ]
    raise DemoError("no products: the lake is empty and raw_data/ has no X_*.csv")


def demo_predict(settings: Settings, count: int = 5, echo=print) -> list[dict]:
    base = f"http://{settings.bind_host}:{settings.api_port}"
    client_key = settings.api_client_key.get_secret_value() if settings.api_client_key else ""
    admin_key = settings.api_admin_key.get_secret_value() if settings.api_admin_key else ""
    with httpx.Client(base_url=base, timeout=30) as http:
        try:
            http.get("/health").raise_for_status()
        except httpx.HTTPError as exc:
            raise DemoError(f"the API is not running at {base} (`make up` starts it)") from exc
        # Pick up a champion registered since the API started, without waiting for the
        # poll. The reload waits for a load in progress, so afterwards the API either
        # serves a model or knows why it cannot.
        reload = http.post("/admin/reload", headers={"X-API-Key": admin_key}, timeout=300)
        if reload.status_code in (401, 403):
            raise DemoError(f"the API refused the admin key from settings: {reload.text}")
        deadline = time.monotonic() + READY_TIMEOUT
        while (ready := http.get("/ready")).status_code != 200:
            if reload.status_code == 503 or time.monotonic() > deadline:
                raise DemoError(
                    f"the API has no model: {ready.json().get('detail')} "
                    "(train and register one first)"
                )
            time.sleep(1)
        model = ready.json()["model"]
        echo(
            f"POST {base}/predict  model {model['name']} v{model['version']} "
            f"(from the {model['source']})"
        )
        answers = []
        for product in sample_products(settings, count):
            response = http.post(
                "/predict",
                json={**product, "top_k": 3},
                headers={"X-API-Key": client_key},
            )
            response.raise_for_status()
            answer = response.json()
            answers.append(answer)
            title = product["designation"]
            echo(f"\n  {title[:90]}{'...' if len(title) > 90 else ''}")
            for guess in answer["predictions"]:
                echo(
                    f"    {guess['probability']:6.1%}  {guess['prdtypecode']:>5}  "
                    f"{guess['category'] or ''}"
                )
    return answers
