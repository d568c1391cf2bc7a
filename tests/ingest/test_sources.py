"""Reading the raw files and planning a slice: pure functions, no services."""

from __future__ import annotations

from pathlib import Path

import pytest

from rakuten_mlops.ingest.catalogue import normalize_slice, read_ahead, slice_size
from rakuten_mlops.ingest.images import BadImage, check_jpeg
from rakuten_mlops.ingest.plan import LakeState, Planner, _labels, make_plan
from rakuten_mlops.ingest.sources import (
    X_HEADER,
    X_INT_COLUMNS,
    Y_HEADER,
    Y_INT_COLUMNS,
    IngestError,
    PlainLabelRecords,
    read_csv,
    read_labels,
    read_source,
)
from tests.support.lake import jpeg_bytes, png_bytes

HEADER = ",designation,description,productid,imageid\n"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_multiline_quoted_records_keep_their_first_line(tmp_path):
    path = write(tmp_path / "x.csv", HEADER
                 + '0,Livre,"<p>a,\nb</p>\n\nc",11,21\n'
                 + '1,Jeu,"",12,22\n')
    records = read_csv(path, X_HEADER, X_INT_COLUMNS)
    assert [(r.line, r.end_line, r.fields[0]) for r in records] == [(2, 5, "0"), (6, 6, "1")]
    assert records[0].fields[2] == "<p>a,\nb</p>\n\nc"
    assert not any(r.malformed for r in records)


def test_a_stray_quote_rejects_one_line_and_reading_resumes(tmp_path):
    # Line 3 opens a quote that never closes: the csv module would swallow lines 4-5.
    path = write(tmp_path / "x.csv", HEADER
                 + "0,A,,11,21\n"
                 + '1,"B broken,,12,22\n'
                 + "2,C,,13,23\n"
                 + "3,D,,14,24\n")
    records = read_csv(path, X_HEADER, X_INT_COLUMNS)
    assert [(r.line, r.malformed is not None) for r in records] == [
        (2, False), (3, True), (4, False), (5, False)]
    assert [r.fields[1] for r in records if not r.malformed] == ["A", "C", "D"]


def test_wrong_field_count_is_malformed_with_its_line(tmp_path):
    path = write(tmp_path / "x.csv", HEADER + "0,A,,11\n1,B,,12,22\n2,C,,13,23,extra\n")
    records = read_csv(path, X_HEADER, X_INT_COLUMNS)
    assert [(r.line, r.malformed) for r in records] == [
        (2, "expected 5 fields, found 4: no imageid column"), (3, None),
        (4, "expected 5 fields, found 6: extra field after imageid (an unquoted comma in a"
            " text column?)")]


def test_invalid_utf8_is_flagged_on_its_record_only(tmp_path):
    path = write(tmp_path / "x.csv", HEADER.encode() + b"0,caf\xe9,,11,21\n1,Caf\xc3\xa9,,12,22\n")
    records = read_csv(path, X_HEADER, X_INT_COLUMNS)
    assert [r.bad_utf8 for r in records] == [True, False]
    assert records[1].fields[1] == "Café"


@pytest.mark.parametrize("body", ["1,10\n2,40\n", "1,10\n2,40", "", "007,10\n8,2905\n"])
def test_a_plain_label_file_gives_the_csv_readers_records(tmp_path, body):
    path = write(tmp_path / "y.csv", ",prdtypecode\n" + body)
    records = read_labels(path)
    assert isinstance(records, PlainLabelRecords)
    assert list(records) == read_csv(path, Y_HEADER, Y_INT_COLUMNS)
    assert len(records) == body.count(",")


@pytest.mark.parametrize("body", ["1,10\n\n2,40\n", "1,10\n\n", "1,10\r\n", '"1",10\n'])
def test_other_label_files_take_the_csv_reader(tmp_path, body):
    path = write(tmp_path / "y.csv", ",prdtypecode\n" + body)
    assert read_labels(path) == read_csv(path, Y_HEADER, Y_INT_COLUMNS)


@pytest.mark.parametrize("labels", ["0,10\n1,40\n2,10\n", "0,10\n1,40\n0,40\n", "0,10\n1,99\n"])
def test_the_labels_fast_path_decides_as_the_record_loop(tmp_path, labels):
    root = source_dir(tmp_path, "".join(f"{i},P{i},,{100 + i},{200 + i}\n" for i in range(3)),
                      labels)
    source = read_source(root)
    assert isinstance(source.y_records, PlainLabelRecords)
    fast = _labels(source)
    source.y_records = list(source.y_records)
    assert fast == _labels(source)


def test_read_ahead_yields_in_order_and_raises_the_producers_error():
    assert list(read_ahead(iter(range(50)))) == list(range(50))

    def broken():
        yield 1
        raise IngestError("bad header")

    items = read_ahead(broken())
    assert next(items) == 1
    with pytest.raises(IngestError, match="bad header"):
        next(items)


def test_closing_read_ahead_early_stops_its_thread():
    import threading

    produced = []

    def endless():
        while True:
            produced.append(len(produced))
            yield produced[-1]

    items = read_ahead(endless(), depth=2)
    assert next(items) == 0
    items.close()
    assert not [t for t in threading.enumerate() if t.name == "ingest-read-ahead"]
    assert len(produced) <= 5  # stopped a few items ahead, not run on


def test_bom_and_blank_lines_are_not_records(tmp_path):
    path = write(tmp_path / "x.csv", "\ufeff" + HEADER + "\n0,A,,11,21\n\n")
    assert [r.line for r in read_csv(path, X_HEADER, X_INT_COLUMNS)] == [3]


def test_a_wrong_header_stops_the_load(tmp_path):
    path = write(tmp_path / "x.csv", "id,title,text,productid,imageid\n0,A,,1,2\n")
    with pytest.raises(IngestError, match="header"):
        read_csv(path, X_HEADER, X_INT_COLUMNS)


def test_missing_required_files_are_named(tmp_path):
    write(tmp_path / "X_train_update.csv", HEADER)
    with pytest.raises(IngestError, match="Y_train_CVw08PX.csv, category_names.csv"):
        read_source(tmp_path)


@pytest.mark.parametrize(("spec", "expected"), [
    ("all", "all"), ("ALL", "all"), ("1", "all"), ("100%", "all"),
    ("0.2", "0.2"), ("20%", "0.2"), (" 0.20 ", "0.2"), ("0.05", "0.05"),
])
def test_slice_specs(spec, expected):
    assert normalize_slice(spec) == expected


@pytest.mark.parametrize("spec", ["0", "-0.1", "1.5", "half", "", "150%"])
def test_bad_slice_specs_are_refused(spec):
    with pytest.raises(IngestError, match="slice"):
        normalize_slice(spec)


def test_slice_size_rounds_up():
    assert slice_size("all", 2306) is None
    assert slice_size("0.2", 2306) == 462  # ceil(461.2)
    assert slice_size("0.2", 5) == 1
    assert slice_size("0.001", 10) == 1


# --------------------------------------------------------------------------- images


def test_a_real_jpeg_passes_with_its_size():
    assert check_jpeg(jpeg_bytes((40, 30))) == (40, 30)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty_image"),
    (png_bytes(), "not_jpeg"),
    (b"<html>not found</html>", "not_jpeg"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 200, "corrupt_image"),
    (jpeg_bytes()[:-300], "corrupt_image"),  # truncated
])
def test_unusable_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(BadImage) as refused:
        check_jpeg(data)
    assert refused.value.reason == reason


# --------------------------------------------------------------------------- planning


def source_dir(tmp_path: Path, x_train: str, y_train: str, x_test: str | None = None) -> Path:
    write(tmp_path / "X_train_update.csv", HEADER + x_train)
    write(tmp_path / "Y_train_CVw08PX.csv", ",prdtypecode\n" + y_train)
    write(tmp_path / "category_names.csv", "prdtypecode,category\n10,Livres\n40,Jeux\n")
    if x_test is not None:
        write(tmp_path / "X_test_update.csv", HEADER + x_test)
    return tmp_path


def test_plan_takes_slices_in_order_and_skips_what_is_done(tmp_path):
    root = source_dir(tmp_path, "".join(f"{i},P{i},,{100 + i},{200 + i}\n" for i in range(5)),
                      "".join(f"{i},10\n" for i in range(5)), "5,T,,105,205\n")
    source = read_source(root)
    first = make_plan(source, LakeState(), 2)
    assert [p.index for p in first.products] == [0, 1]
    assert (first.slice_records, first.remaining) == (2, 4)
    state = LakeState(loaded_rows={("train", 0): (100, 1), ("train", 1): (101, 1)},
                      loaded_products={100: ("train", 0, 200), 101: ("train", 1, 201)})
    second = make_plan(source, state, None)
    assert [(p.split, p.index, p.prdtypecode) for p in second.products] == [
        ("train", 2, 10), ("train", 3, 10), ("train", 4, 10), ("test", 5, None)]
    assert second.remaining == 0


def test_plan_says_which_rows_were_already_loaded_and_rejects_a_reused_index(tmp_path):
    """Issue 12 item 11: a record at a loaded index is counted as already loaded (same
    productid) or rejected as index_reused (another product), never dropped silently."""
    root = source_dir(tmp_path, "0,P0,,100,200\n1,New product,,555,201\n2,P2,,102,202\n",
                      "0,10\n1,10\n2,10\n", "")
    state = LakeState(loaded_rows={("train", 0): (100, 1), ("train", 1): (101, 1)},
                      loaded_products={100: ("train", 0, 200), 101: ("train", 1, 201)})
    planner = Planner(read_source(root), state, None)
    assert [p.index for p in planner.products()] == [2]
    assert planner.already_loaded == {1: 1}
    assert [(r.locator, r.reason, r.source_row) for r in planner.rejects] == [
        ("line 3", "index_reused", 1)]
    assert "loaded in batch 1 as productid 101" in planner.rejects[0].detail


def test_plan_verdicts(tmp_path):
    root = source_dir(
        tmp_path,
        "0,Good,,100,200\n"
        "1,Dup,,100,201\n"      # productid already claimed by line 2
        "1,Again,,102,202\n"    # index 1 repeated
        "3,   ,,103,203\n"      # empty designation
        "4,No label,,104,204\n"
        "5,Bad id,,10x,205\n"
        "6,No id,,,206\n",
        "0,10\n1,10\n3,10\n5,10\n6,40\n9,10\n3,40\n")
    plan = make_plan(read_source(root), LakeState(), None)
    assert [p.index for p in plan.products] == [0]
    assert {(r.locator, r.reason) for r in plan.rejects} == {
        ("line 3", "duplicate_product"), ("line 4", "duplicate_row_index"),
        ("line 5", "empty_designation"), ("line 6", "missing_label"),
        ("line 7", "invalid_id"), ("line 8", "missing_id")}
    assert {(r.source_file, r.locator, r.reason) for r in plan.file_rejects} == {
        ("Y_train_CVw08PX.csv", "line 7", "label_without_product"),
        ("Y_train_CVw08PX.csv", "line 8", "duplicate_row_index")}
