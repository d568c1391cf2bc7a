"""The train/validation/test split: deterministic, stratified, stable as batches arrive."""

from __future__ import annotations

from collections import Counter

import pytest

from rakuten_mlops.ingest.split import SUBSETS, assign_subsets, fractions

SHARES = fractions(0.15, 0.15)


def products(classes: dict[int, int], start: int = 0) -> list[tuple[int, int]]:
    pairs, productid = [], start
    for code, count in classes.items():
        for _ in range(count):
            pairs.append((productid, code))
            productid += 1
    return pairs


def per_class(assigned: dict[int, str], pairs: list[tuple[int, int]]) -> dict[int, Counter]:
    result: dict[int, Counter] = {}
    for productid, code in pairs:
        result.setdefault(code, Counter())[assigned[productid]] += 1
    return result


def test_each_class_gets_70_15_15():
    pairs = products({10: 1000, 40: 20, 50: 7})
    counts = per_class(assign_subsets(pairs, {}, 42, SHARES), pairs)
    assert counts[10] == {"train": 700, "validation": 150, "test": 150}
    assert counts[40] == {"train": 14, "validation": 3, "test": 3}
    assert sum(counts[50].values()) == 7 and counts[50]["train"] == 5


def test_same_input_same_split_whatever_the_order():
    pairs = products({10: 300, 40: 120})
    assert assign_subsets(pairs, {}, 7, SHARES) == assign_subsets(pairs[::-1], {}, 7, SHARES)


def test_the_seed_chooses_which_products_are_held_out():
    pairs = products({10: 300})
    first, second = assign_subsets(pairs, {}, 1, SHARES), assign_subsets(pairs, {}, 2, SHARES)
    assert Counter(first.values()) == Counter(second.values())
    assert first != second


def test_batches_never_move_earlier_products_and_the_class_stays_stratified():
    first = products({10: 101, 40: 13})
    assigned = assign_subsets(first, {}, 42, SHARES)
    existing: dict[int, dict[str, int]] = {}
    for code, counts in per_class(assigned, first).items():
        existing[code] = dict(counts)
    second = products({10: 250, 40: 31}, start=10_000)
    later = assign_subsets(second, existing, 42, SHARES)
    assert not set(later) & set(assigned)  # only new products are assigned
    total = per_class({**assigned, **later}, first + second)
    for code, size in ((10, 351), (40, 44)):
        for subset, share in SHARES.items():  # each within one product of its quota
            assert abs(total[code][subset] - share * size) < 1, (code, subset, total[code])


def test_one_product_at_a_time_converges_too():
    existing: dict[int, dict[str, int]] = {10: {}}
    for productid in range(200):
        subset = assign_subsets([(productid, 10)], existing, 42, SHARES)[productid]
        existing[10][subset] = existing[10].get(subset, 0) + 1
    assert existing[10] == {"train": 140, "validation": 30, "test": 30}


def test_fractions_must_leave_a_train_set():
    with pytest.raises(ValueError):
        fractions(0.5, 0.5)
    assert set(fractions(0.1, 0.2)) == set(SUBSETS)
