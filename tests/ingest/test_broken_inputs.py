"""Every kind of bad input is recorded in rejects with its reason; the good rows load.

The input is the shipped sample (2,306 good products, 280 images) with broken rows,
labels and image files added, so the default reject limits still hold.
"""

from __future__ import annotations

import pytest

from rakuten_mlops.ingest import run_ingest
from tests.support.lake import SAMPLE, expected_from, jpeg_bytes, png_bytes

pytestmark = pytest.mark.stack

X, Y = "X_train_update.csv", "Y_train_CVw08PX.csv"
TRAIN, TEST = "images/image_train", "images/image_test"
GOOD_JPEG = jpeg_bytes((64, 48))

# (index, X_train text, Y_train line or None). Indices 900000+ are free in the sample.
BROKEN_ROWS = {
    "missing_id": "900001,Sans productid,,,5001\n",
    "invalid_id": "900002,Productid texte,,12ab,5002\n",
    "empty_designation": '900003,"   ",description sans titre,90000003,5003\n',
    "duplicate_product": "900004,Doublon du produit 90000010,,90000010,5004\n",
    "duplicate_row_index": "900005,Index repete (1/2),,90000051,5051\n"
                           "900005,Index repete (2/2),,90000052,5052\n",
    "missing_label": "900006,Produit sans etiquette,,90000006,5006\n",
    "malformed_row": "900007,trop,de,champs,90000007,5007\n",
    "stray_quote": '900008,"guillemet jamais ferme,,90000008,5008\n',
}
# Good rows with images that are bad, and one whose image file is missing.
IMAGE_ROWS = {
    "empty_image": (90000011, 6011),
    "not_jpeg": (90000012, 6012),
    "corrupt_image": (90000013, 6013),
    "truncated": (90000014, 6014),
    "missing_image": (90000015, 6015),
    "good": (90000010, 5010),
}


def append(path, text: str | bytes) -> None:
    with path.open("ab") as handle:
        handle.write(text if isinstance(text, bytes) else text.encode())


def line_count(path) -> int:
    return path.read_bytes().count(b"\n")


@pytest.fixture()
def broken(sample_dir):
    """The sample with one broken input of every kind; returns where each one is."""
    x, y = sample_dir / X, sample_dir / Y
    where = {}
    index = 900100
    for kind, (productid, imageid) in IMAGE_ROWS.items():
        where[kind] = line_count(x) + 1
        append(x, f"{index},Produit {kind},,{productid},{imageid}\n")
        append(y, f"{index},10\n")
        index += 1
    for kind, text in BROKEN_ROWS.items():
        where[kind] = line_count(x) + 1
        append(x, text)
        # Labels for the rows whose index is readable (not for the label-less one).
        if kind not in ("missing_label", "malformed_row", "stray_quote"):
            append(y, f"{text.split(',')[0]},10\n")
    where["good_after_stray_quote"] = line_count(x) + 1
    append(x, "900009,Produit apres le guillemet,,90000009,5009\n")
    append(y, "900009,2583\n")
    where["invalid_utf8"] = line_count(x) + 1
    append(x, b"900010,Caf\xe9 cass\xe9,,90000020,5020\n")
    append(y, "900010,10\n")

    where["label_without_product"] = line_count(y) + 1
    append(y, "950000,10\n")
    where["bad_label_row"] = line_count(x) + 1
    append(x, "900011,Etiquette non entiere,,90000021,5021\n")
    where["bad_label"] = line_count(y) + 1
    append(y, "900011,dix\n")
    where["unknown_category_row"] = line_count(x) + 1
    append(x, "900012,Etiquette inconnue,,90000022,5022\n")
    where["unknown_category"] = line_count(y) + 1
    append(y, "900012,99999\n")
    where["duplicate_label"] = line_count(y) + 1
    append(y, "900009,10\n")  # a second label for index 900009

    images = sample_dir / TRAIN

    def image(kind: str) -> str:
        productid, imageid = IMAGE_ROWS[kind]
        return f"image_{imageid}_product_{productid}.jpg"

    (images / image("good")).write_bytes(GOOD_JPEG)
    (images / image("empty_image")).write_bytes(b"")
    (images / image("not_jpeg")).write_bytes(png_bytes())
    (images / image("corrupt_image")).write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 500)
    (images / image("truncated")).write_bytes(GOOD_JPEG[: len(GOOD_JPEG) // 2])
    (images / "image_7001_product_99999999.jpg").write_bytes(GOOD_JPEG)  # no such product
    (images / "photo.jpg").write_bytes(GOOD_JPEG)
    # The image of a product whose row is rejected (empty designation).
    (images / "image_5003_product_90000003.jpg").write_bytes(GOOD_JPEG)
    where.update(images={kind: image(kind) for kind in IMAGE_ROWS})
    return where


def test_each_broken_input_is_rejected_with_its_reason_and_good_rows_load(lake, broken):
    summary = run_ingest(lake.settings, "broken", "all")
    assert summary["status"] == "succeeded"
    rejects = set(lake.rows("SELECT source_file, locator, reason FROM rejects"
                            " WHERE reason <> 'missing_image' OR locator LIKE '%%_product_9000%%'"))
    x_line = {kind: f"line {number}" for kind, number in broken.items() if kind != "images"}
    images = broken["images"]
    assert rejects == {
        (X, x_line["missing_id"], "missing_id"),
        (X, x_line["invalid_id"], "invalid_id"),
        (X, x_line["empty_designation"], "empty_designation"),
        (X, x_line["duplicate_product"], "duplicate_product"),
        (X, f"line {broken['duplicate_row_index'] + 1}", "duplicate_row_index"),
        (X, x_line["missing_label"], "missing_label"),
        (X, x_line["malformed_row"], "malformed_row"),
        (X, x_line["stray_quote"], "malformed_row"),
        (X, x_line["invalid_utf8"], "invalid_utf8"),
        # A product whose label line is rejected has no label: both are recorded.
        (X, x_line["bad_label_row"], "missing_label"),
        (Y, f"line {broken['bad_label']}", "bad_label"),
        (X, x_line["unknown_category_row"], "missing_label"),
        (Y, f"line {broken['unknown_category']}", "unknown_category"),
        (Y, f"line {broken['label_without_product']}", "label_without_product"),
        (Y, f"line {broken['duplicate_label']}", "duplicate_row_index"),
        (TRAIN, images["empty_image"], "empty_image"),
        (TRAIN, images["not_jpeg"], "not_jpeg"),
        (TRAIN, images["corrupt_image"], "corrupt_image"),
        (TRAIN, images["truncated"], "corrupt_image"),
        (TRAIN, images["missing_image"], "missing_image"),
        # Loaded products without an image file (no image was made for them).
        (TRAIN, "image_5009_product_90000009.jpg", "missing_image"),
        (TRAIN, "image_5051_product_90000051.jpg", "missing_image"),
        (TRAIN, "image_7001_product_99999999.jpg", "orphan_image"),
        (TRAIN, "photo.jpg", "bad_image_name"),
        (TRAIN, "image_5003_product_90000003.jpg", "product_rejected"),
    }
    # Nothing is recorded twice, and every reject says why.
    assert not lake.rows("SELECT source_file, locator, reason FROM rejects"
                         " GROUP BY 1, 2, 3 HAVING count(*) > 1")
    assert lake.scalar("SELECT count(*) FROM rejects WHERE reason <> 'missing_image'"
                       " AND coalesce(detail, '') = ''") == 0

    # The good rows are loaded: the sample, the row after the stray quote, the first of
    # the duplicate index, and the products whose images were bad or missing.
    expected = expected_from(SAMPLE)
    loaded = {r[0] for r in lake.rows("SELECT productid FROM products")}
    sample_ids = {int(r["productid"]) for r in [*expected.train.values(),
                                                  *expected.test.values()]}
    extra = {90000009, 90000051, *(pid for pid, _ in IMAGE_ROWS.values())}
    assert loaded == sample_ids | extra
    assert lake.scalar("SELECT count(*) FROM products") == 2306 + len(extra)
    assert lake.scalar("SELECT count(*) FROM labels WHERE productid = 90000009") == 1
    assert lake.rows("SELECT prdtypecode FROM labels WHERE productid = 90000009") == [(2583,)]

    # Images: the 280 of the sample and the good one; no bad file reached the bucket.
    keys = set(lake.objects())
    assert len(keys) == lake.scalar("SELECT count(*) FROM images") == 281
    assert "image_train/90000010/5010.jpg" in keys
    assert not any(key.split("/")[1] in {"90000011", "90000012", "90000013", "90000014",
                                         "99999999", "90000003"} for key in keys)

    # The run summary counts them.
    assert summary["text_rejects"] == 11
    assert summary["image_rejects"] == 4
    assert summary["rejects_by_reason"]["malformed_row"] == 2
    assert summary["rejects_by_reason"]["orphan_image"] == 1
