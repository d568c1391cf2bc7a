"""The train/validation/test split of labelled products that every later stage uses.

Deterministic, stratified and stable as batches arrive:

* a product gets its subset once, when its label is loaded, and never changes it;
* within each class, new products are taken in the order of a seeded hash of their
  productid (blake2b, so the order is the same in every process and on every machine);
* each one goes to the subset furthest below its quota for that class, counting every
  product of the class already assigned (quota = fraction x class size after adding it;
  ties go to train, then validation, then test).

So each class converges on 70/15/15 (the settings' fractions) whatever the batch sizes,
a batch of one product is assigned like any other, and the same data loaded in the
same batches with the same seed always gives the same split.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping

import psycopg

from rakuten_mlops.storage import copy_rows

SUBSETS = ("train", "validation", "test")


def fractions(validation: float, test: float) -> dict[str, float]:
    if validation < 0 or test < 0 or validation + test >= 1:
        raise ValueError(f"split fractions validation={validation}, test={test} leave no train set")
    return {"train": 1.0 - validation - test, "validation": validation, "test": test}


def seeded_rank(seed: int, productid: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{productid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def assign_subsets(
    new: Iterable[tuple[int, int]],
    existing: Mapping[int, Mapping[str, int]],
    seed: int,
    shares: Mapping[str, float],
) -> dict[int, str]:
    """productid -> subset for `new` (productid, prdtypecode) pairs.

    `existing` holds, per class, how many products each subset already has.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for productid, code in new:
        by_class[code].append(productid)
    train_share, validation_share, test_share = (shares[s] for s in SUBSETS)
    result: dict[int, str] = {}
    for code, productids in by_class.items():
        have = existing.get(code, {})
        train, validation, test = (have.get(s, 0) for s in SUBSETS)
        for _, productid in sorted((seeded_rank(seed, pid), pid) for pid in productids):
            size = train + validation + test + 1
            # The subset furthest below its quota; ties go to train, then validation.
            gap_train = train_share * size - train
            gap_validation = validation_share * size - validation
            gap_test = test_share * size - test
            if gap_train >= gap_validation and gap_train >= gap_test:
                train += 1
                result[productid] = "train"
            elif gap_validation >= gap_test:
                validation += 1
                result[productid] = "validation"
            else:
                test += 1
                result[productid] = "test"
    return result


def assign_pending(
    conn: psycopg.Connection, seed: int, validation: float, test: float
) -> dict[str, int]:
    """Give every labelled product without a subset its subset; return counts of new ones.

    Idempotent. Run inside the caller's transaction (the load's, under its lock), so
    products, labels and their subsets become visible together. Products are taken
    batch by batch, so a late call assigns exactly as the batches' own calls would have.
    """
    shares = fractions(validation, test)
    existing: dict[int, dict[str, int]] = defaultdict(dict)
    for code, subset, count in conn.execute(
        "SELECT l.prdtypecode, s.subset, count(*) FROM dataset_split s"
        " JOIN labels l USING (productid) GROUP BY 1, 2"
    ):
        existing[code][subset] = count
    pending: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for batch_id, productid, code in conn.execute(
        "SELECT l.batch_id, l.productid, l.prdtypecode FROM labels l"
        " WHERE NOT EXISTS (SELECT 1 FROM dataset_split s WHERE s.productid = l.productid)"
    ):
        pending[batch_id].append((productid, code))
    new_counts = dict.fromkeys(SUBSETS, 0)
    rows = []
    for batch_id in sorted(pending):
        assigned = assign_subsets(pending[batch_id], existing, seed, shares)
        codes = dict(pending[batch_id])
        for productid, subset in assigned.items():
            existing[codes[productid]][subset] = existing[codes[productid]].get(subset, 0) + 1
            new_counts[subset] += 1
            rows.append((productid, subset, seed))
    if rows:
        with conn.cursor() as cur:
            copy_rows(cur, "COPY dataset_split (productid, subset, seed) FROM STDIN", rows)
    return new_counts
