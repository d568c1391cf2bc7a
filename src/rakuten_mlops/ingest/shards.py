"""A batch's image phase in shards: product-id ranges of at most `shard_size` products
of the batch, each loaded by its own call (`load_images(..., product_range=...)`): one
mapped task each in the prepare_data DAG, one after the other in `run_ingest`."""

from __future__ import annotations

from rakuten_mlops.ingest.lake import lake_connect
from rakuten_mlops.settings import Settings

# [first, last] product ids of each run of at most %(size)s of the batch's products.
_RANGES = """
SELECT min(productid), max(productid) FROM (
    SELECT productid, (row_number() OVER (ORDER BY productid) - 1) / %(size)s AS shard
    FROM products WHERE batch_id = %(batch)s
) AS numbered GROUP BY shard ORDER BY shard
"""


def plan_image_shards(settings: Settings, batch_id: int, shard_size: int) -> list[list[int]]:
    """The batch's product-id ranges, in id order (empty when the batch has no product)."""
    if shard_size < 1:
        raise ValueError(f"image shard size must be at least 1, got {shard_size}")
    with lake_connect(settings) as conn:
        rows = conn.execute(_RANGES, {"size": shard_size, "batch": batch_id}).fetchall()
    return [[int(first), int(last)] for first, last in rows]
