"""Issue 12, the ingest's faults: no single bad record or file stops a load.

Each test builds a raw folder (the shipped sample plus the fault) and loads it into a
lake of its own (tests/support/lake.py: a test database and bucket, emptied first)
on the real PostgreSQL and S3 of the local stack. Which item each test proves:

* item 3  `test_nul_byte_and_oversized_fields_are_rejects_while_the_rest_loads`
* item 4  `test_bomb_jpeg_and_odd_file_names_are_one_reject_each_and_the_batch_ends_done`
* item 8  `test_load_killed_in_a_long_statement_is_rerun_within_10s_and_ends_exactly_once`
* item 9  `test_s3_down_fails_the_batch_with_its_error_and_the_cli_says_it_in_one_line`,
          `test_s3_lost_mid_load_fails_the_batch_and_leaves_no_object_uncatalogued`,
          `test_data_quality_with_s3_down_says_it_in_one_line`,
          `test_bad_date_values_end_with_one_line_naming_them`,
          `test_a_date_with_an_offset_is_honoured`
* item 11 `test_rows_reusing_loaded_indices_are_rejected_or_reported`, and no reject
          text holds a memory address (the item 4 test)
(item 7 is a benchmark: bench/bench_image_phase.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rakuten_mlops.ingest import IngestError, run_ingest  # noqa: E402
from tests.support.lake import PROJECT, expected_from, jpeg_bytes, sha256

pytestmark = pytest.mark.stack

X, Y, TRAIN = "X_train_update.csv", "Y_train_CVw08PX.csv", "images/image_train"
SAMPLE_PRODUCTS, SAMPLE_IMAGES = 2306, 280


def add_product(raw: Path, index: int, productid: int, imageid: int,
                designation: str = "Produit de test", description: str = "") -> int:
    """Append a labelled product to X_train (raw bytes, so any character goes through
    as it is); its line number."""
    x = raw / X
    line = x.read_bytes().count(b"\n") + 1
    with x.open("ab") as handle:
        handle.write(f'{index},"{designation}","{description}",{productid},{imageid}\n'
                     .encode())
    with (raw / Y).open("ab") as handle:
        handle.write(f"{index},10\n".encode())
    return line


def image_path(raw: Path, productid: int, imageid: int) -> Path:
    return raw / TRAIN / f"image_{imageid}_product_{productid}.jpg"


def bomb_jpeg(width: int = 60000, height: int = 60000) -> bytes:
    """A valid tiny JPEG whose frame header declares width x height (a few hundred bytes)."""
    data = bytearray(jpeg_bytes((8, 8)))
    sof = data.index(b"\xff\xc0")  # baseline frame: length(2) precision(1) height width
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_loaded_exactly_once(lake, extra_products: int = 0, extra_images: int = 0) -> None:
    expected = expected_from(lake.settings.raw_data_dir)
    products = SAMPLE_PRODUCTS + extra_products
    assert lake.scalar("SELECT count(*) FROM products") == products
    assert lake.scalar("SELECT count(DISTINCT productid) FROM products") == products
    catalogue = dict(lake.rows("SELECT s3_key, sha256 FROM images"))
    objects = lake.objects()
    # every stored object has its catalogue row and the other way round, once each
    assert set(catalogue) == set(objects)
    assert len(catalogue) == SAMPLE_IMAGES + extra_images
    assert all(catalogue[key] == sha256(path) for key, path in expected.images.items()
               if key in catalogue)
    assert not lake.rows("SELECT source_file, locator, reason FROM rejects"
                         " GROUP BY 1, 2, 3 HAVING count(*) > 1")


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


# --------------------------------------------------------------------------- item 3


def test_nul_byte_and_oversized_fields_are_rejects_while_the_rest_loads(lake, sample_dir):
    nul_title = add_product(sample_dir, 900001, 90000001, 5001, designation="Tasse\x00 bleue")
    nul_text = add_product(sample_dir, 900002, 90000002, 5002, description="grande\x00tasse")
    too_long = add_product(sample_dir, 900003, 90000003, 5003, description="x" * 50_001)
    add_product(sample_dir, 900004, 90000004, 5004, designation="Tasse rouge")
    image_path(sample_dir, 90000004, 5004).write_bytes(jpeg_bytes())

    summary = run_ingest(lake.settings, "nul", "all")

    assert summary["status"] == "succeeded"
    text_rejects = lake.rows("SELECT locator, reason, detail FROM rejects"
                             " WHERE source_file = %s ORDER BY locator", X)
    assert [(locator, reason) for locator, reason, _ in text_rejects] == sorted([
        (f"line {nul_title}", "nul_character"), (f"line {nul_text}", "nul_character"),
        (f"line {too_long}", "field_too_long")])
    details = {locator: detail for locator, _, detail in text_rejects}
    assert details[f"line {nul_title}"].startswith("designation contains a NUL byte")
    assert details[f"line {nul_text}"].startswith("description contains a NUL byte")
    assert "50,001 characters, above INGEST_MAX_FIELD_CHARS=50,000" in details[f"line {too_long}"]
    # Their images are accounted for (product_rejected), the rest of the batch loaded.
    assert summary["text_rejects"] == 3
    assert_loaded_exactly_once(lake, extra_products=1, extra_images=1)
    assert lake.rows("SELECT designation FROM products WHERE productid = 90000004") == [
        ("Tasse rouge",)]
    # A re-run of the folder loads nothing again and rejects nothing twice.
    again = run_ingest(lake.settings, "nul-again", "all")
    assert again["rows_read"] == 0 and again["rejects"] == 0
    assert lake.scalar("SELECT count(*) FROM rejects WHERE source_file = %s", X) == 3


# --------------------------------------------------------------------------- item 4


ODD_NAMES = ["tab\tin name.jpg", "new\nline.jpg", "back\\slash.jpg"]


def test_bomb_jpeg_and_odd_file_names_are_one_reject_each_and_the_batch_ends_done(
        lake, sample_dir):
    add_product(sample_dir, 900010, 90000010, 5010)
    add_product(sample_dir, 900011, 90000011, 5011)
    add_product(sample_dir, 900012, 90000012, 5012)
    bomb = bomb_jpeg()
    assert len(bomb) < 1000
    bomb_file = image_path(sample_dir, 90000010, 5010)
    bomb_file.write_bytes(bomb)
    corrupt_file = image_path(sample_dir, 90000011, 5011)  # unidentifiable by Pillow
    corrupt_file.write_bytes(b"\xff\xd8\xff\xe0" + b"\x13" * 500)
    image_path(sample_dir, 90000012, 5012).write_bytes(jpeg_bytes())  # good
    folder = sample_dir / TRAIN
    for name in ODD_NAMES:
        (folder / name).write_bytes(jpeg_bytes())
    # A file name that is not UTF-8: created from bytes, as any program could.
    with open(os.path.join(os.fsencode(folder), b"caf\xe9 cr\xe8me.jpg"), "wb") as handle:
        handle.write(jpeg_bytes())

    summary = run_ingest(lake.settings, "odd-images", "all")

    assert summary["status"] == "succeeded", summary["error"]
    assert lake.rows("SELECT status, error FROM load_batches") == [("succeeded", None)]
    rejects = lake.rows("SELECT locator, reason, detail FROM rejects WHERE source_file = %s"
                        " AND reason <> 'missing_image'", TRAIN)
    assert sorted((locator, reason) for locator, reason, _ in rejects) == sorted([
        (bomb_file.name, "decompression_bomb"),
        (corrupt_file.name, "corrupt_image"),
        *((name, "bad_image_name") for name in ODD_NAMES),
        ("caf\\xe9 cr\\xe8me.jpg", "bad_image_name"),
    ])
    details = {locator: detail for locator, _, detail in rejects}
    assert "3600000000 pixels" in details[bomb_file.name]
    assert "not valid UTF-8" in details["caf\\xe9 cr\\xe8me.jpg"]
    # Item 11: reject texts are for people: no `<object at 0x7f...>` in any of them.
    assert not lake.rows("SELECT detail FROM rejects WHERE detail ~ ' at 0x[0-9a-f]+'")
    assert summary["image_rejects"] == 2
    # The rest of the batch loaded; every object stored has its catalogue row.
    assert_loaded_exactly_once(lake, extra_products=3, extra_images=1)
    assert "image_train/90000010/5010.jpg" not in lake.objects()
    # A re-run records none of these files again.
    run_ingest(lake.settings, "odd-images-again", "all")
    assert lake.scalar("SELECT count(*) FROM rejects WHERE reason = 'bad_image_name'") == 4


# --------------------------------------------------------------------------- item 9


def test_s3_down_fails_the_batch_with_its_error_and_the_cli_says_it_in_one_line(lake):
    port = closed_port()
    result = lake.cli("ingest", "--run-id", "s3-down", env={"S3_PORT": str(port)})

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = stderr_lines(result)[-1]
    assert last.startswith("ingest failed: batch 1: image phase failed: S3 at 127.0.0.1:")
    assert f":{port} is unreachable" in last and "0x" not in last
    status, error = lake.rows("SELECT status, error FROM load_batches")[0]
    assert status == "failed"
    assert error == last.removeprefix("ingest failed: ")
    assert lake.objects() == {}

    # With S3 back, the same run finishes the batch: everything once.
    result = lake.cli("ingest", "--run-id", "s3-down")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert lake.rows("SELECT status, error FROM load_batches") == [("succeeded", None)]
    assert_loaded_exactly_once(lake)


class CuttableRelay:
    """A TCP relay on loopback to the real S3: `cut()` closes its port and every open
    connection, as S3 going down mid-load does (what follows is a real network error).
    Each chunk it relays is held 50 ms, so a load can be caught part-way."""

    def __init__(self, port: int):
        self.target = port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            except OSError:
                return
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.server.close()
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def test_s3_lost_mid_load_fails_the_batch_and_leaves_no_object_uncatalogued(lake):
    relay = CuttableRelay(lake.settings.s3_port)
    through_relay = lake.settings.model_copy(update={
        "s3_port": relay.port, "ingest_image_workers": 2, "ingest_image_chunk": 5})

    def cut_after_some_uploads() -> None:
        deadline = time.monotonic() + 120
        while len(lake.objects()) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        relay.cut()

    cutter = threading.Thread(target=cut_after_some_uploads, daemon=True)
    cutter.start()
    try:
        with pytest.raises(IngestError, match=r"^batch 1: image phase failed: S3 "):
            run_ingest(through_relay, "s3-lost", "all", bar=False)
    finally:
        relay.cut()
        cutter.join(timeout=130)
    status, error = lake.rows("SELECT status, error FROM load_batches")[0]
    assert status == "failed" and error.startswith("batch 1: image phase failed: S3 ")
    catalogue = {row[0] for row in lake.rows("SELECT s3_key FROM images")}
    stored = set(lake.objects())
    print(f"S3 cut with {len(stored)} objects stored, {len(catalogue)} catalogued")
    assert 40 <= len(stored) < SAMPLE_IMAGES
    # Every upload that completed was catalogued; at most the requests in flight when
    # the connection was cut (one per worker) may have reached S3 unacknowledged.
    assert catalogue <= stored and len(stored - catalogue) <= 2

    result = lake.cli("ingest", "--run-id", "s3-lost")  # S3 reachable again
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["status"] == "succeeded"
    assert_loaded_exactly_once(lake)


def test_data_quality_with_s3_down_says_it_in_one_line(lake):
    from rakuten_mlops import schema

    with lake.connect() as conn:
        schema.migrate(conn)  # as stack start-up does: the job itself never migrates
    port = closed_port()
    result = lake.cli("data-quality", env={"S3_PORT": str(port)}, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = stderr_lines(result)[-1]
    assert last.startswith("data-quality: S3 at 127.0.0.1:"), last
    assert f":{port} is unreachable" in last


@pytest.mark.parametrize("value", ["garbage", "2025-02-30", "2025-13-01T00:00+01:00"])
def test_bad_date_values_end_with_one_line_naming_them(lake, value):
    result = lake.cli("data-quality", "--date", value, timeout=120)
    assert result.returncode == 1
    assert stderr_lines(result) == [stderr_lines(result)[0]]  # one line, no traceback
    assert stderr_lines(result)[0].startswith(f"data-quality: --date {value!r} is not a valid")


def test_a_date_with_an_offset_is_honoured():
    from rakuten_mlops.quality.windows import interval_of

    now = datetime(2025, 3, 1, 12, tzinfo=UTC)
    start, end = interval_of("2025-02-03T00:00+02:00", now)
    assert (start, end) == (datetime(2025, 2, 2, 22, tzinfo=UTC),
                            datetime(2025, 2, 3, 22, tzinfo=UTC))
    assert interval_of("2025-02-03", now) == (datetime(2025, 2, 3, tzinfo=UTC),
                                              datetime(2025, 2, 4, tzinfo=UTC))
    assert interval_of(None, now) == (datetime(2025, 3, 1, tzinfo=UTC), now)


# --------------------------------------------------------------------------- item 8


SLEEPING = ("FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND query LIKE 'SELECT pg_sleep(3600)%%'")


def backends_sleeping(lake) -> int:
    from rakuten_mlops.storage import connect

    with connect(lake.settings, database="postgres", autocommit=True) as conn:
        return conn.execute(f"SELECT count(*) {SLEEPING}",
                            (lake.settings.postgres_db,)).fetchone()[0]


@pytest.fixture()
def no_stalled_backend_left(lake):
    """Whatever happens, no stalled session of the killed run outlives the test."""
    yield
    from rakuten_mlops.storage import connect

    with connect(lake.settings, database="postgres", autocommit=True) as conn:
        conn.execute(f"SELECT pg_terminate_backend(pid) {SLEEPING}",
                     (lake.settings.postgres_db,))


def test_load_killed_in_a_long_statement_is_rerun_within_10s_and_ends_exactly_once(
        lake, no_stalled_backend_left):
    # The image phase stalls in one long statement on its locked session, as the
    # 7-minute `_record_missing` did, while its workers store every image.
    stall = {**lake.env, "RAKUTEN_TEST_STALL_POINT": "images_before_missing"}
    process = subprocess.Popen(
        [sys.executable, "-m", "rakuten_mlops", "ingest", "--run-id", "killed"],
        env=stall, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not backends_sleeping(lake):
            assert process.poll() is None, "the load ended before it could be killed"
            assert time.monotonic() < deadline, "the load never reached its image phase"
            time.sleep(0.1)
        while len(lake.objects()) < SAMPLE_IMAGES and time.monotonic() < deadline:
            time.sleep(0.1)  # its workers stored the images it will never catalogue
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert lake.scalar("SELECT count(*) FROM images") == 0

    # The dead client's session (and its lock) is gone within seconds...
    while backends_sleeping(lake):
        assert time.monotonic() - killed < 10, "the dead run's session outlived it by 10 s"
        time.sleep(0.2)
    gone = time.monotonic() - killed
    print(f"dead run's session ended {gone:.1f}s after the kill")
    # ...so the re-run, started at once, takes the batch and finishes it.
    result = lake.cli("ingest", "--run-id", "killed", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming its images" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded"
    assert summary["images_skipped"] == SAMPLE_IMAGES  # stored before the kill, not re-sent
    assert lake.scalar("SELECT count(*) FROM load_batches") == 1
    assert_loaded_exactly_once(lake)


# --------------------------------------------------------------------------- item 11


def test_rows_reusing_loaded_indices_are_rejected_or_reported(lake, sample_dir, tmp_path):
    assert run_ingest(lake.settings, "first", "all")["status"] == "succeeded"

    # The same folder again: nothing new, and the summary says why.
    result = lake.cli("ingest", "--run-id", "same-again")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["rows_read"] == 0
    assert summary["already_loaded"] == {"1": SAMPLE_PRODUCTS}
    assert summary["note"] == (f"{SAMPLE_PRODUCTS} records skipped: their indices were already"
                               f" loaded ({SAMPLE_PRODUCTS} in batch 1); nothing new to load")
    assert f"ingest: {summary['note']}" in result.stderr

    # Another folder whose rows reuse those indices for other products: index_reused
    # rejects (not a silent skip), over the reject limit, so the batch fails saying so.
    other = tmp_path / "other"
    shutil.copytree(sample_dir, other)
    x = other / X
    header, *rows = x.read_text(encoding="utf-8").splitlines(keepends=True)
    x.write_text(header + "".join(rows[:2]), encoding="utf-8")
    reused = int(rows[2].partition(",")[0])  # loaded from the sample, not in this file
    add_product(other, reused, 777000001, 8001)  # the same index, another productid
    with pytest.raises(IngestError, match=r"1 of 1 product records rejected .*index_reused x1"):
        run_ingest(lake.with_raw(other).settings, "reused", "all")
    detail = lake.scalar("SELECT detail FROM rejects WHERE reason = 'index_reused'")
    assert detail.startswith(f"index {reused} of {X} was loaded in batch 1 as productid ")
    assert detail.endswith("this record has productid 777000001")
