"""Windows: which ones a data interval holds, and their rows read from PostgreSQL.

A window is one load batch (`batch-<id>`: the products it loaded; checked once, and
again when a run's data interval contains the batch's end, so re-running a date replaces
it) or the inference log over a data interval (`inference-<start>`: the champion's
predictions with the features the log records). `day_interval` decides which day a run
checks, for the DAG's runs (`dag_run_interval`) and the CLI's `--date` (`interval_of`).
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from datetime import date as day

import pandas as pd

from rakuten_mlops.quality.errors import QualityError
from rakuten_mlops.quality.features import Profile, inference_profile, product_profile
from rakuten_mlops.quality.resources import QualityResources
from rakuten_mlops.quality.results import Window
from rakuten_mlops.quality.signals import measure_brightness
from rakuten_mlops.settings import Settings


def query_frame(conn, query: str, params: tuple = ()) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def image_rows(conn, where: str, params: tuple) -> pd.DataFrame:
    return query_frame(
        conn,
        "SELECT i.productid, i.width, i.height, i.size_bytes, i.bucket, i.s3_key"
        f" FROM images i {where}",
        params,
    )


def with_brightness(images: pd.DataFrame, tools: QualityResources, max_images: int) -> pd.DataFrame:
    if images.empty:
        return images
    return measure_brightness(images, tools.fetch, max_images)


def pending_batches(conn, interval_start: datetime, interval_end: datetime) -> list[int]:
    """Succeeded batches finished before the interval's end: never checked, or finished in it."""
    return [
        row[0]
        for row in conn.execute(
            """SELECT b.batch_id FROM load_batches b
           LEFT JOIN quality_windows w ON w.batch_id = b.batch_id
           WHERE b.status = 'succeeded' AND b.finished_at < %(end)s
             AND (w.window_id IS NULL OR b.finished_at >= %(start)s)
           ORDER BY b.batch_id""",
            {"start": interval_start, "end": interval_end},
        )
    ]


def batch_window(conn, batch_id: int) -> Window:
    row = conn.execute(
        "SELECT coalesce(finished_at, started_at) FROM load_batches WHERE batch_id = %s",
        (batch_id,),
    ).fetchone()
    if row is None:
        raise QualityError(f"no load batch {batch_id}")
    return Window(f"batch-{batch_id}", "load_batch", row[0], batch_id=batch_id)


def inference_window(interval_start: datetime, interval_end: datetime) -> Window:
    start = interval_start.astimezone(UTC)
    return Window(
        f"inference-{start:%Y-%m-%dT%H:%M:%SZ}",
        "inference",
        interval_start,  # plotted at the start of its interval, as time buckets are
        interval_start=interval_start,
        interval_end=interval_end,
    )


def batch_profile(conn, batch_id: int, tools: QualityResources, max_images: int) -> Profile:
    products = query_frame(
        conn,
        """
        SELECT p.productid, p.designation, p.description, l.prdtypecode
        FROM products p LEFT JOIN labels l USING (productid)
        WHERE p.batch_id = %s ORDER BY p.productid""",
        (batch_id,),
    )
    where = "JOIN products p USING (productid) WHERE p.batch_id = %s"
    images = image_rows(conn, where, (batch_id,))
    images = with_brightness(images, tools, max_images)
    if products.empty:
        return Profile(pd.DataFrame(), meta={"texts": 0})
    # A window keeps every token: the reference's top tokens are counted in it exactly.
    return product_profile(products, images, tools.guesser, tools.stopwords, keep_tokens=None)


def inference_log_profile(conn, settings: Settings, window: Window) -> Profile:
    log_rows = query_frame(
        conn,
        """
        SELECT prdtypecode, confidence, designation_chars, description_chars,
               designation_words, description_words, has_html, language, text_sha256,
               model_version
        FROM inference_log
        WHERE model_name = %s AND predicted_at >= %s AND predicted_at < %s""",
        (settings.model_name, window.interval_start, window.interval_end),
    )
    if log_rows.empty:
        return Profile(pd.DataFrame(), meta={"texts": 0})
    versions = log_rows["model_version"].value_counts().to_dict()
    return inference_profile(
        log_rows, {"model_versions": {str(k): int(v) for k, v in versions.items()}}
    )


def day_interval(at: datetime | None, now: datetime) -> tuple[datetime, datetime]:
    """The one rule for which day a run checks, the DAG's runs and the CLI alike.

    The UTC day that holds `at` (None: now), up to now if that day is not over: today
    so far for a run without a date, so the batch `prepare_data` just loaded is checked
    by the next run of either (pending batches are those finished before the end).
    """
    at = (now if at is None else at).astimezone(UTC)
    start = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return start, min(start + timedelta(days=1), now)


def dag_run_interval(
    run_type: str, logical_date: datetime | None, data_interval_start: datetime | None,
    now: datetime,
) -> tuple[datetime, datetime]:
    """What a `data_quality` DAG run checks, by `day_interval` as the CLI does.

    A scheduled run for day D (its data interval starts at D): day D. A manual run
    (the trigger button, `airflow dags test data_quality`) whose logical date is a UTC
    midnight names that day (`dags test data_quality 2025-02-03` = `data-quality --date
    2025-02-03`); any other manual run is "now" (its logical date is when it was
    triggered): today so far, like `data-quality` without `--date`.
    """
    if run_type == "scheduled" and data_interval_start is not None:
        return day_interval(data_interval_start, now)
    named_day = logical_date is not None and logical_date.astimezone(UTC).time() == time.min
    return day_interval(logical_date if named_day else None, now)


def interval_of(date: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The data interval `data-quality --date` names: [start, end), aware, in UTC.

    None: today (UTC) so far. 'YYYY-MM-DD': that UTC day (both by `day_interval`, the
    DAG's rule). An ISO time: the 24 hours from it, honouring its offset (one without
    an offset is read as UTC). Anything else, or a day that does not exist (2025-02-30),
    is a QualityError naming the value.
    """
    if date is None:
        return day_interval(None, now)
    text = date.strip()
    try:
        if len(text) == 10:  # a plain day: its own parser, so 2025-02-30 says "day"
            return day_interval(datetime.combine(day.fromisoformat(text), time.min, UTC), now)
        start = datetime.fromisoformat(text)
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    except ValueError as exc:
        raise QualityError(
            f"--date {date!r} is not a valid date ({exc}); expected YYYY-MM-DD (a UTC "
            "day) or an ISO time with an offset, e.g. 2025-02-03T00:00+01:00"
        ) from None
    return start, start + timedelta(days=1)
