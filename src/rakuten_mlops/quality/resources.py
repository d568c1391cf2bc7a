"""What checking windows needs once per process: an S3 client, background uploads, the
language guesser and stopwords (`QualityResources`).

Creating one reads the stopword corpus and opens an S3 client (about 0.1 s); a job, a
DAG task or a benchmark creates one and passes it to every window it checks. Uploads
run on a small thread pool while the job goes on computing; `finish` waits for them.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from rakuten_mlops.ml.text import LanguageGuesser, stopword_set
from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import ensure_buckets, get_bytes, put_bytes, s3_client

UPLOAD_WORKERS = 4


class QualityResources:
    """S3, language and stopwords for building profiles and publishing reports."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.s3 = s3_client(settings)
        nltk_data = settings.path(settings.nltk_data_dir)
        self.guesser = LanguageGuesser(nltk_data)
        self.stopwords = stopword_set(nltk_data)
        self._uploads: list[Future] = []
        self._buckets: set[str] = set()
        self._pool: ThreadPoolExecutor | None = None

    def fetch(self, bucket: str, key: str) -> bytes:
        """One object's bytes (S3Error when it is missing)."""
        return get_bytes(self.s3, bucket, key)

    def upload(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        """Put an object in the background (the job goes on computing); see `finish`."""
        if bucket not in self._buckets:
            ensure_buckets(self.s3, [bucket])
            self._buckets.add(bucket)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(UPLOAD_WORKERS, thread_name_prefix="quality-s3")
        self._uploads.append(self._pool.submit(put_bytes, self.s3, bucket, key, body, content_type))

    def finish(self) -> None:
        """Wait for every upload; the first failure is raised (the task then retries)."""
        uploads, self._uploads = self._uploads, []
        for upload in uploads:
            upload.result()
