"""The challenge's raw files, read robustly: no database, no network.

Layout (the challenge's own, under `settings.raw_data_dir`)::

    X_train_update.csv   ,designation,description,productid,imageid   (required)
    Y_train_CVw08PX.csv  ,prdtypecode                                 (required)
    X_test_update.csv    ,designation,description,productid,imageid   (optional)
    category_names.csv   prdtypecode,category                         (required, shipped)
    images/image_train/image_<imageid>_product_<productid>.jpg        (optional)
    images/image_test/ ...

CSV files are decoded and split into records here rather than by pandas so that every
bad record keeps its line number: a record that is not exactly one row of the expected
columns (wrong field count, a quote that swallows the following lines) is reported as
`malformed_row` at its first line and parsing resumes at the next physical line, so a
single stray quote can never hide the rows after it.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

X_TRAIN = "X_train_update.csv"
Y_TRAIN = "Y_train_CVw08PX.csv"
X_TEST = "X_test_update.csv"
CATEGORIES = "category_names.csv"
REQUIRED_FILES = (X_TRAIN, Y_TRAIN, CATEGORIES)
X_FILES = {"train": X_TRAIN, "test": X_TEST}
IMAGE_DIRS = {"train": "images/image_train", "test": "images/image_test"}

X_HEADER = ["", "designation", "description", "productid", "imageid"]
Y_HEADER = ["", "prdtypecode"]
CATEGORY_HEADER = ["prdtypecode", "category"]
X_INT_COLUMNS = {0: "index", 3: "productid", 4: "imageid"}
Y_INT_COLUMNS = {0: "index"}

IMAGE_NAME = re.compile(r"image_(\d+)_product_(\d+)\.jpg")
_SURROGATE = re.compile("[\udc80-\udcff]")


class IngestError(RuntimeError):
    """The load cannot go on: a required file is missing or too much input is bad."""


@dataclass(slots=True)
class Record:
    """One CSV record: its fields and the physical lines it spans (1-based)."""

    line: int
    end_line: int
    fields: list[str]
    malformed: str | None = None  # why the record is not a row of the expected columns
    bad_utf8: bool = False


@dataclass(slots=True)
class Reject:
    source_file: str
    locator: str  # "line 12" for CSV records, a file name for images
    reason: str
    detail: str = ""
    source_row: int | None = None  # the challenge index, when the record has a usable one


@dataclass
class Source:
    """Everything under raw_data_dir, parsed; nothing validated against the lake yet."""

    root: Path
    x_records: dict[str, list[Record] | LazyRecords]  # "train"/"test" -> records in order
    y_records: list[Record] | PlainLabelRecords
    categories: dict[int, str]
    category_rejects: list[Reject]
    image_files: dict[str, set[str]]  # "train"/"test" -> file names in the images folder
    missing_optional: list[str] = field(default_factory=list)

    @property
    def total_records(self) -> int:
        return sum(len(records) for records in self.x_records.values())


def printable(text: str) -> str:
    """`text` as PostgreSQL text can hold it and a person can read it.

    A file name that is not valid UTF-8 reaches Python with its bad bytes as surrogates
    (os.fsdecode's surrogateescape): they are shown as `\\xNN`; a NUL as `\\x00`.
    Text that has neither comes back unchanged (so this is idempotent).
    """
    if text.isascii() and "\x00" not in text:
        return text
    try:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate surrogateescape did not make
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return shown.replace("\x00", "\\x00")


def unstorable(name: str, value: str, max_chars: int) -> tuple[str, str] | None:
    """(reason, detail) when text field `name` cannot or should not be stored, else None."""
    if "\x00" in value:
        return "nul_character", f"{name} contains a NUL byte, which PostgreSQL text cannot hold"
    if len(value) > max_chars:
        return ("field_too_long", f"{name} has {len(value):,} characters, above "
                                  f"INGEST_MAX_FIELD_CHARS={max_chars:,}")
    return None


# --------------------------------------------------------------------------- CSV


def parse_id(text: str) -> int | None:
    """A non-negative integer written with ASCII digits only (spaces around allowed)."""
    if text.isdigit() and text.isascii():
        return int(text)
    text = text.strip()
    if text.isdigit() and text.isascii():
        return int(text)
    return None


def id_problem(fields: list[str], columns: dict[int, str]) -> tuple[str, str] | None:
    """(reason, detail) for the first missing or non-integer id column, else None."""
    for position, name in columns.items():
        value = fields[position]
        if not value.strip():
            return "missing_id", f"{name} is empty"
        if parse_id(value) is None:
            return "invalid_id", f"{name} {value[:40]!r} is not a non-negative integer"
    return None


def decode(data: bytes) -> tuple[str, bool]:
    """The text, and whether it had invalid UTF-8 (kept as surrogates, line by line)."""
    try:
        text, bad = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, bad = data.decode("utf-8", errors="surrogateescape"), True
    return text.removeprefix("\ufeff"), bad


def read_csv(path: Path, header: list[str], int_columns: dict[int, str]) -> list[Record]:
    """Every record after the header, with line numbers; malformed ones flagged, not raised.

    Raises IngestError when the header is not the expected one (then no row can be
    trusted to mean what its column position says).
    """
    return list(iter_csv(path, header, int_columns))


class LazyRecords:
    """The records of one CSV file, parsed as they are iterated (so the load can write
    the first products while it reads the last) and not kept: each is freed once the
    load is done with it. Iterating again parses the file again."""

    def __init__(self, path: Path, header: list[str], int_columns: dict[int, str]):
        self._args = (path, header, int_columns)
        self._count: int | None = None

    def __iter__(self) -> Iterator[Record]:
        count = 0
        for record in iter_csv(*self._args):
            count += 1
            yield record
        self._count = count

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in iter_csv(*self._args))
        return self._count


def iter_csv(path: Path, header: list[str], int_columns: dict[int, str]) -> Iterator[Record]:
    """`read_csv`, one record at a time."""
    text, has_bad_utf8 = decode(path.read_bytes())
    lines: list[str] | None = None  # physical lines, split only if parsing must resume
    seen_header = False
    pos = 0  # index of the physical line where the current reader started
    while True:
        if pos == 0:
            reader = csv.reader(io.StringIO(text, newline=""))
        else:
            if lines is None:
                lines = io.StringIO(text, newline="").readlines()
            if pos >= len(lines):
                break
            reader = csv.reader(iter(lines[pos:]))
        consumed = 0
        restart = None
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                start = pos + consumed + 1
                yield Record(start, pos + reader.line_num, [], f"unreadable CSV: {exc}")
                restart = start
                break
            start, end = pos + consumed + 1, pos + reader.line_num
            consumed = reader.line_num
            if not fields:  # blank line
                continue
            if not seen_header:
                seen_header = True
                if [name.strip() for name in fields] != header:
                    raise IngestError(
                        f"{path.name}: header is {fields!r}, expected {header!r} "
                        "(the challenge's layout)"
                    )
                continue
            record = Record(start, end, fields)
            if has_bad_utf8 and any(_SURROGATE.search(value) for value in fields):
                record.bad_utf8 = True
            if len(fields) != len(header):
                record.malformed = _field_count_problem(header, fields)
            elif end > start and (problem := id_problem(fields, int_columns)):
                # A multi-line record with a broken id is a quote out of step with the
                # file: report it and read its other lines again as records of their own.
                record.malformed = f"{problem[1]} in a record spanning lines {start}-{end}"
            yield record
            if record.malformed and end > start:
                restart = start
                break
        if restart is None:
            break
        pos = restart
    if not seen_header:
        raise IngestError(f"{path.name}: the file is empty (no header line)")


def _field_count_problem(header: list[str], fields: list[str]) -> str:
    """What a record with the wrong number of fields lacks or has too many of, by column."""
    names = [name or "index" for name in header]
    found = f"expected {len(header)} fields, found {len(fields)}"
    if len(fields) < len(header):
        return f"{found}: no {', '.join(names[len(fields):])} column"
    return f"{found}: extra field after {names[-1]} (an unquoted comma in a text column?)"


_PLAIN_LABELS = re.compile(r"(?:\d+,\d+\n)*(?:\d+,\d+\n?)?")


class PlainLabelRecords:
    """The records of a label file whose every line after the header is exactly
    `<digits>,<digits>` (`read_labels`' fast path): the two columns as lists of strings,
    record i (from 0) on line i + 2. Iterating gives the Records the CSV reader would."""

    def __init__(self, indices: list[str], codes: list[str]):
        self.indices, self.codes = indices, codes

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Record]:
        for line, index, code in zip(itertools.count(2), self.indices, self.codes):
            yield Record(line, line, [index, code])


def read_labels(path: Path) -> list[Record] | PlainLabelRecords:
    """The label file's records: `read_csv`, with a fast path for the usual plain file.

    A label file is two integer columns; when every line after the header is exactly
    `<digits>,<digits>` (checked with one regular expression), splitting the text gives
    the same records as the CSV reader, at a fraction of the cost.
    """
    data = path.read_bytes()
    if data.isascii() and b"\r" not in data and b'"' not in data:
        head, _, body = data.decode("ascii").partition("\n")
        if [name.strip() for name in head.split(",")] == Y_HEADER and _PLAIN_LABELS.fullmatch(body):
            body = body.removesuffix("\n")
            values = body.replace("\n", ",").split(",") if body else []
            return PlainLabelRecords(values[0::2], values[1::2])
    return read_csv(path, Y_HEADER, Y_INT_COLUMNS)


def read_categories(path: Path) -> tuple[dict[int, str], list[Reject]]:
    categories: dict[int, str] = {}
    rejects: list[Reject] = []
    for record in read_csv(path, CATEGORY_HEADER, {0: "prdtypecode"}):
        locator = f"line {record.line}"
        if record.malformed or record.bad_utf8:
            reason = "malformed_row" if record.malformed else "invalid_utf8"
            rejects.append(Reject(path.name, locator, reason, record.malformed or ""))
        elif problem := id_problem(record.fields, {0: "prdtypecode"}):
            rejects.append(Reject(path.name, locator, *problem))
        elif not record.fields[1].strip():
            rejects.append(Reject(path.name, locator, "empty_category_name"))
        elif problem := unstorable("category", record.fields[1], 1000):
            rejects.append(Reject(path.name, locator, *problem))
        else:
            categories[int(record.fields[0])] = record.fields[1].strip()
    if not categories:
        raise IngestError(f"{path.name}: no valid category (prdtypecode,category) rows")
    return categories, rejects


# --------------------------------------------------------------------------- images


def list_images(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries if entry.is_file()}


def image_name(productid: int, imageid: int) -> str:
    return f"image_{imageid}_product_{productid}.jpg"


def image_key(split: str, productid: int, imageid: int) -> str:
    """The object key of a product's image: one object per (product, image)."""
    return f"image_{split}/{productid}/{imageid}.jpg"


# --------------------------------------------------------------------------- all of it


def read_source(root: Path, lazy: bool = False) -> Source:
    """Parse every input file under `root`; IngestError names any required one missing.

    lazy: the product files are parsed while the load iterates them (`LazyRecords`).
    """
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise IngestError(
            f"required input file(s) missing in {root}: {', '.join(missing)} "
            "(see raw_data/README.md for the expected layout)"
        )
    products = LazyRecords if lazy else read_csv
    x_records = {"train": products(root / X_TRAIN, X_HEADER, X_INT_COLUMNS)}
    missing_optional = []
    if (root / X_TEST).is_file():
        x_records["test"] = products(root / X_TEST, X_HEADER, X_INT_COLUMNS)
    else:
        x_records["test"] = []
        missing_optional.append(X_TEST)
    categories, category_rejects = read_categories(root / CATEGORIES)
    return Source(
        root=root,
        x_records=x_records,
        y_records=read_labels(root / Y_TRAIN),
        categories=categories,
        category_rejects=category_rejects,
        image_files={split: list_images(root / folder) for split, folder in IMAGE_DIRS.items()},
        missing_optional=missing_optional,
    )
