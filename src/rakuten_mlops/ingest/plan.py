"""Which source records a batch loads and which it rejects, and why: pure, no I/O.

Identity of a record. A record whose challenge index (the unnamed first column) is a
valid integer, first seen in its file, is identified by (file, index), so the same
product keeps its identity when a larger copy of the challenge files replaces the
sample. Any other record (malformed, no usable index, repeated index) is identified by
(file, line).

A record is *done* once a text-committed batch loaded it as a product or rejected it.
A batch takes the next `n` records, in challenge order (X_train, then X_test), that are
not done: that is incremental arrival, and re-running a crashed batch recomputes the
same slice because nothing of it was committed.

Checks, in order; a record gets one reject, for the first check it fails:
malformed_row, duplicate_row_index, invalid_utf8, missing_id / invalid_id,
duplicate_product (the first record with valid ids claims a productid; later ones,
and records of a productid the lake already holds from another row, are duplicates),
index_reused (the lake holds another productid at this file's index: a different file
under the same name, whose rows would otherwise be skipped as done without a word),
empty_designation, nul_character / field_too_long (text PostgreSQL cannot hold, or
longer than INGEST_MAX_FIELD_CHARS), missing_label (train rows only: no valid label row).

Records skipped because a batch already loaded them are counted per batch
(`Planner.already_loaded`), so a run that finds nothing new can say why.

Every verdict depends only on the lake state, the label file and *earlier* records, so
`Planner.products()` yields the slice's products while it reads, and the loader writes
them to the database as they come. The file-level rejects (label file, category file,
image folders) are computed once the whole source has been seen (`Planner.finish`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from rakuten_mlops.ingest.sources import (
    IMAGE_DIRS,
    IMAGE_NAME,
    X_FILES,
    X_INT_COLUMNS,
    Y_INT_COLUMNS,
    Y_TRAIN,
    PlainLabelRecords,
    Reject,
    Source,
    id_problem,
    image_name,
    parse_id,
    printable,
    unstorable,
)

# Longest designation or description stored (INGEST_MAX_FIELD_CHARS); the shipped
# sample's longest description has 9,709 characters.
MAX_FIELD_CHARS = 50_000


@dataclass(slots=True)
class Product:
    split: str
    index: int
    line: int
    productid: int
    imageid: int
    designation: str
    description: str | None
    prdtypecode: int | None  # train rows only

    def row(self) -> tuple:
        return (self.productid, self.imageid, self.split, self.index, self.line,
                self.designation, self.description, self.prdtypecode)


@dataclass
class LakeState:
    """What the lake already holds, as far as planning a slice needs."""

    loaded_rows: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    # (split, index) -> (productid, batch_id)
    loaded_products: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    # productid -> (split, index, imageid)
    rejected_rows: set[tuple[str, int]] = field(default_factory=set)  # (file, index)
    rejected_lines: set[tuple[str, str]] = field(default_factory=set)  # (file, "line N")
    file_rejects: set[tuple[str, str, str]] = field(default_factory=set)
    # (file, locator, reason) of every reject a text-committed batch recorded


@dataclass
class Plan:
    products: list[Product]
    rejects: list[Reject]  # the slice's own records (the text reject ratio counts these)
    file_rejects: list[Reject]  # label file, category file and image folders, once ever
    image_rejects: list[Reject]  # image files of products this slice rejected
    slice_records: int
    remaining: int  # records not done after this batch

    @property
    def text_reject_ratio(self) -> float:
        return len(self.rejects) / self.slice_records if self.slice_records else 0.0


def _labels(source: Source) -> tuple[dict[int, tuple[int, int]], dict[int, str], list[Reject]]:
    """Valid labels (index -> (prdtypecode, line)); why each other index has none; the
    label file's rejects.

    `label_without_product` is decided later (`Planner.finish`), once every X_train
    index is known; those labels are in the returned dict until then.
    """
    labels: dict[int, tuple[int, int]] = {}
    refused: dict[int, str] = {}
    rejects: list[Reject] = []
    plain = source.y_records
    if isinstance(plain, PlainLabelRecords):
        # Every index and code is ASCII digits: without a repeated index or an unknown
        # code, every record is a valid label (the loop below would find the same).
        indices, codes = list(map(int, plain.indices)), list(map(int, plain.codes))
        if len(set(indices)) == len(indices) and set(codes) <= source.categories.keys():
            return dict(zip(indices, zip(codes, itertools.count(2)), strict=True)), refused, rejects
    for record in source.y_records:
        index = None
        if record.malformed:
            reason, detail = "malformed_row", record.malformed
        elif record.bad_utf8:
            reason, detail = "invalid_utf8", "the line is not valid UTF-8"
        else:
            text, code_text = record.fields  # parse_id, inlined for the common case
            index = int(text) if text.isdigit() and text.isascii() else parse_id(text)
            code = (int(code_text) if code_text.isdigit() and code_text.isascii()
                    else parse_id(code_text))
            if index is None:
                reason, detail = id_problem(record.fields, Y_INT_COLUMNS)
            elif index in labels or index in refused:
                reason, detail = "duplicate_row_index", f"index {index} appears again"
                index = None
            elif code is None:
                reason = "bad_label"
                detail = f"prdtypecode {code_text[:40]!r} is not an integer"
            elif code not in source.categories:
                reason = "unknown_category"
                detail = f"prdtypecode {code} is not one of the categories"
            else:
                labels[index] = (code, record.line)
                continue
            if index is not None:
                refused[index] = f"its label (line {record.line}) was rejected: {reason}"
        rejects.append(Reject(Y_TRAIN, f"line {record.line}", reason, detail, index))
    return labels, refused, rejects


class Planner:
    """The verdicts of one slice: iterate `products()`, then call `finish()`."""

    def __init__(self, source: Source, state: LakeState, slice_size: int | None,
                 max_field_chars: int = MAX_FIELD_CHARS):
        self.source, self.state, self.slice_size = source, state, slice_size
        self.max_field_chars = max_field_chars
        self.already_loaded: dict[int, int] = {}  # batch_id -> its records met again
        self.labels, self.refused, self.label_rejects = _labels(source)
        self.rejects: list[Reject] = []
        self._rejected: list[tuple[str, str, int, int, Reject]] = []  # for image rejects
        self._pairs: dict[str, set[tuple[int, int]]] = {split: set() for split in IMAGE_DIRS}
        self._train_index: set[int] = set()
        self._accepted: set[tuple[str, int, int]] = set()
        self.slice_records = 0
        self.pending = 0
        self._finished = False

    def products(self) -> Iterator[Product]:
        """The slice's products, in source order, as soon as each is decided."""
        # The hottest loop of the load: everything it touches is a local name.
        state, labels, refused = self.state, self.labels, self.refused
        loaded_rows, loaded_products = state.loaded_rows, state.loaded_products
        rejected_rows, rejected_lines = state.rejected_rows, state.rejected_lines
        check_done = bool(loaded_rows or rejected_rows or rejected_lines)
        limit = self.slice_size
        rejects, rejected, accepted = self.rejects, self._rejected, self._accepted
        train_index = self._train_index
        already_loaded, max_chars = self.already_loaded, self.max_field_chars
        claims: dict[int, tuple[str, int]] = {}  # productid -> (file, line) of its claim
        for split, records in self.source.x_records.items():
            file = X_FILES[split]
            is_train = split == "train"
            seen_index: set[int] = set()
            pairs = self._pairs[split]
            for record in records:
                fields = record.fields
                reject = None
                index = productid = imageid = None
                if record.malformed:
                    reject = ("malformed_row", record.malformed)
                else:
                    # parse_id, inlined for the common case
                    text = fields[0]
                    index = int(text) if text.isdigit() and text.isascii() else parse_id(text)
                    text = fields[3]
                    productid = int(text) if text.isdigit() and text.isascii() else parse_id(text)
                    text = fields[4]
                    imageid = int(text) if text.isdigit() and text.isascii() else parse_id(text)
                    if productid is not None and imageid is not None:
                        pairs.add((productid, imageid))
                    if index is not None:
                        if index in seen_index:
                            reject = ("duplicate_row_index",
                                      f"index {index} appears earlier in {file}")
                            index = None  # not this record's identity
                        else:
                            seen_index.add(index)
                            if is_train:
                                train_index.add(index)
                    if reject is None:
                        if record.bad_utf8:
                            reject = ("invalid_utf8", "the record is not valid UTF-8")
                        elif index is None or productid is None or imageid is None:
                            reject = id_problem(fields, X_INT_COLUMNS)
                        else:
                            loaded = loaded_products.get(productid)
                            if loaded is not None and (loaded[0], loaded[1]) != (split, index):
                                reject = ("duplicate_product",
                                          f"productid {productid} is already loaded from "
                                          f"{X_FILES[loaded[0]]} index {loaded[1]}")
                            elif productid in claims:
                                first = claims[productid]
                                reject = ("duplicate_product",
                                          f"productid {productid} first appears at "
                                          f"{first[0]} line {first[1]}")
                            else:
                                claims[productid] = (file, record.line)
                # Skip records an earlier batch already loaded or rejected.
                if check_done:
                    if index is not None:
                        if (file, index) in rejected_rows:
                            continue
                        done = loaded_rows.get((split, index))
                        if done is not None:
                            if done[0] == productid or productid is None:
                                already_loaded[done[1]] = already_loaded.get(done[1], 0) + 1
                                continue
                            if reject is None:
                                reject = ("index_reused",
                                          f"index {index} of {file} was loaded in batch "
                                          f"{done[1]} as productid {done[0]}; this record has "
                                          f"productid {productid}")
                    elif (file, f"line {record.line}") in rejected_lines:
                        continue
                self.pending += 1
                if limit is not None and self.slice_records >= limit:
                    continue  # after the slice: only counted as remaining
                self.slice_records += 1
                if reject is None:
                    designation = fields[1].strip()
                    if not designation:
                        reject = ("empty_designation", "designation is empty")
                    elif ("\x00" in fields[1] or "\x00" in fields[2]  # rare: checks inlined
                          or len(fields[1]) > max_chars or len(fields[2]) > max_chars):
                        reject = (unstorable("designation", fields[1], max_chars)
                                  or unstorable("description", fields[2], max_chars))
                    elif is_train and index not in labels:
                        reject = ("missing_label", refused.get(
                            index, f"{Y_TRAIN} has no row with index {index}"))
                if reject is not None:
                    entry = Reject(file, f"line {record.line}", *reject, index)
                    rejects.append(entry)
                    if productid is not None and imageid is not None:
                        rejected.append((split, file, productid, imageid, entry))
                    continue
                accepted.add((split, productid, imageid))
                yield Product(split, index, record.line, productid, imageid, designation,
                              fields[2].strip() or None,
                              labels[index][0] if is_train else None)
        self._finished = True

    def finish(self) -> tuple[list[Reject], list[Reject]]:
        """(file-level rejects not recorded before, image rejects of rejected products)."""
        if not self._finished:
            raise RuntimeError("Planner.finish() before products() was exhausted")
        label_rejects = list(self.label_rejects)
        for index in sorted(set(self.labels) - self._train_index):
            label_rejects.append(Reject(Y_TRAIN, f"line {self.labels[index][1]}",
                                        "label_without_product",
                                        f"no row of X_train has index {index}", index))
        file_rejects = [
            reject
            for reject in [*label_rejects, *self.source.category_rejects, *self._orphans()]
            if (reject.source_file, reject.locator, reject.reason) not in self.state.file_rejects
        ]
        # An image file whose product record this slice rejected is accounted for too,
        # unless the same file belongs to a product that is (or is now) loaded.
        accepted = self._accepted | {
            (split, pid, iid) for pid, (split, _, iid) in self.state.loaded_products.items()
        }
        image_rejects = []
        for split, file, productid, imageid, reject in self._rejected:
            name = image_name(productid, imageid)
            if (name in self.source.image_files[split]
                    and (split, productid, imageid) not in accepted):
                image_rejects.append(Reject(
                    IMAGE_DIRS[split], name, "product_rejected",
                    f"its product record ({file} {reject.locator}) was rejected: {reject.reason}"))
        return file_rejects, image_rejects

    def _orphans(self) -> list[Reject]:
        """Image files no record of the matching X file refers to (or badly named)."""
        rejects = []
        for split, names in self.source.image_files.items():
            folder, pairs = IMAGE_DIRS[split], self._pairs[split]
            for name in sorted(names):
                match = IMAGE_NAME.fullmatch(name)
                if not match:
                    shown = printable(name)
                    rejects.append(Reject(folder, shown, "bad_image_name", (
                        "expected image_<imageid>_product_<productid>.jpg"
                        + ("; the name is not valid UTF-8 (its bytes are shown escaped)"
                           if shown != name else ""))))
                elif (int(match[2]), int(match[1])) not in pairs:
                    rejects.append(Reject(folder, name, "orphan_image",
                                          f"no row of {X_FILES[split]} has this productid "
                                          "and imageid"))
        return rejects

    @property
    def remaining(self) -> int:
        return self.pending - self.slice_records


def make_plan(source: Source, state: LakeState, slice_size: int | None,
              max_field_chars: int = MAX_FIELD_CHARS) -> Plan:
    """The whole plan at once (tests, benchmarks); the loader streams `Planner` instead."""
    planner = Planner(source, state, slice_size, max_field_chars)
    products = list(planner.products())
    file_rejects, image_rejects = planner.finish()
    return Plan(products, planner.rejects, file_rejects, image_rejects,
                planner.slice_records, planner.remaining)
