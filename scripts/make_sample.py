#!/usr/bin/env python3
"""Regenerate raw_data/ (the sample shipped in the repository) from ../shared/data/rakuten.

Deterministic: the same input always gives byte-identical output. Records are copied
verbatim (their original bytes, quoting and line breaks), never re-serialised.

    python scripts/make_sample.py [--source ../shared/data/rakuten] [--target raw_data]

What it writes (see raw_data/README.md):
* X_test_update.csv: a fixed ~10% of the sample's rows (chosen by a hash of productid),
  with their original challenge index; their labels are left out, as in the challenge.
* X_train_update.csv / Y_train_CVw08PX.csv: the other rows and their labels.
* images/image_train, images/image_test: the real images of some of those rows
  (at most TRAIN_IMAGES and TEST_IMAGES, chosen by the same hash), to keep raw_data
  under about 10 MB.
* category_names.csv: copied.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rakuten_mlops.ingest.sources import (  # noqa: E402
    CATEGORIES,
    IMAGE_DIRS,
    X_HEADER,
    X_INT_COLUMNS,
    X_TEST,
    X_TRAIN,
    Y_HEADER,
    Y_INT_COLUMNS,
    Y_TRAIN,
    image_name,
    read_csv,
)

TEST_FRACTION = 0.10
TRAIN_IMAGES = 250
TEST_IMAGES = 30
SALT = b"rakuten-sample-v1:"


def rank(productid: str) -> bytes:
    return hashlib.sha256(SALT + productid.encode()).digest()


def lines_of(path: Path) -> list[str]:
    return io.StringIO(path.read_text(encoding="utf-8"), newline="").readlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/rakuten")
    parser.add_argument("--target", type=Path, default=ROOT / "raw_data")
    args = parser.parse_args()
    source, target = args.source.resolve(), args.target.resolve()
    x_path, y_path = source / "X_train_sample.csv", source / "Y_train_sample.csv"
    if not x_path.is_file():
        print(f"{x_path} not found: nothing to do", file=sys.stderr)
        return 1

    x_lines, y_lines = lines_of(x_path), lines_of(y_path)
    x_records = read_csv(x_path, X_HEADER, X_INT_COLUMNS)
    y_records = read_csv(y_path, Y_HEADER, Y_INT_COLUMNS)
    assert not any(r.malformed for r in x_records + y_records), "the source has malformed rows"
    label_line = {r.fields[0]: y_lines[r.line - 1] for r in y_records}

    by_rank = sorted(x_records, key=lambda r: rank(r.fields[3]))
    test_ids = {r.fields[3] for r in by_rank[: round(TEST_FRACTION * len(x_records))]}

    def text(record) -> str:
        return "".join(x_lines[record.line - 1 : record.end_line])

    target.mkdir(parents=True, exist_ok=True)
    header = x_lines[0]
    train = [r for r in x_records if r.fields[3] not in test_ids]
    test = [r for r in x_records if r.fields[3] in test_ids]
    (target / X_TRAIN).write_text(header + "".join(map(text, train)), encoding="utf-8")
    (target / X_TEST).write_text(header + "".join(map(text, test)), encoding="utf-8")
    (target / Y_TRAIN).write_text(
        y_lines[0] + "".join(label_line[r.fields[0]] for r in train), encoding="utf-8"
    )
    shutil.copyfile(source / "category_names.csv", target / CATEGORIES)

    available = {p.name for p in (source / "images/image_train").glob("*.jpg")}
    for split, records, limit in (("train", train, TRAIN_IMAGES), ("test", test, TEST_IMAGES)):
        folder = target / IMAGE_DIRS[split]
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        names = [image_name(int(r.fields[3]), int(r.fields[4])) for r in records]
        with_image = sorted((n for n in names if n in available), key=lambda n: rank(n))
        for name in with_image[:limit]:
            shutil.copyfile(source / "images/image_train" / name, folder / name)
        print(f"{split}: {len(records)} rows, {min(limit, len(with_image))} images "
              f"(of {len(with_image)} available)")

    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(f"wrote {target} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
