"""Which registered model versions the API may load: a checksum recorded at promotion.

Models are pickles, so loading one runs code. Whoever can move the `champion` alias or
rewrite an artifact in storage must not be able to choose what the API runs. The
promotion step (rakuten_mlops.ml.stages.promote) hashes the version's artifacts and
records the digest in PostgreSQL (`trusted_models`) *before* it moves the alias; the API
downloads a champion, hashes what it downloaded, and unpickles it only when the digest
is the one recorded for that version.

The digest: sha256 over every artifact file in sorted relative-path order, each as
`<relative path>\\0<sha256 of its bytes>\\n`, so it is the same wherever the folder is
downloaded and changes with any byte, name, addition or removal.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from rakuten_mlops.settings import Settings
from rakuten_mlops.storage import connect

# Written by MLflow into a downloaded models:/ folder on the client side (name and
# version), not part of what was stored.
CLIENT_SIDE_FILES = frozenset({"registered_model_meta"})
CHUNK = 1 << 20


class UntrustedModel(RuntimeError):
    """A version the API must not load; the message says why."""


@dataclass(frozen=True)
class Digest:
    sha256: str
    files: int
    bytes: int


def folder_digest(folder: Path) -> Digest:
    """The deterministic digest of every file under `folder`."""
    folder = Path(folder)
    paths = sorted(
        (path.relative_to(folder).as_posix(), path)
        for path in folder.rglob("*")
        if path.is_file() and path.relative_to(folder).as_posix() not in CLIENT_SIDE_FILES
    )
    total = hashlib.sha256()
    size = 0
    for relative, path in paths:
        content = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                content.update(chunk)
                size += len(chunk)
        total.update(f"{relative}\0{content.hexdigest()}\n".encode())
    return Digest(total.hexdigest(), len(paths), size)


def download_version(settings: Settings, name: str, version: str, folder: Path) -> Path:
    """The artifacts of registered `name` `version`, downloaded into `folder`."""
    from mlflow.artifacts import download_artifacts

    uri = settings.tracking_uri
    return Path(
        download_artifacts(
            artifact_uri=f"models:/{name}/{version}",
            dst_path=str(folder),
            tracking_uri=uri,
            registry_uri=uri,
        )
    )


def version_digest(settings: Settings, name: str, version: str) -> Digest:
    with tempfile.TemporaryDirectory(prefix="rakuten-trust-") as folder:
        return folder_digest(download_version(settings, name, version, Path(folder)))


def record(
    settings: Settings, name: str, version: str, run_id: str, digest: Digest, reason: str = ""
) -> None:
    """Record (or re-record) `digest` as the trusted content of `name` `version`."""
    with connect(settings) as conn:
        conn.execute(
            """
            INSERT INTO trusted_models
                (model_name, version, run_id, artifact_sha256, files, bytes, reason)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (model_name, version) DO UPDATE SET
                run_id = EXCLUDED.run_id, artifact_sha256 = EXCLUDED.artifact_sha256,
                files = EXCLUDED.files, bytes = EXCLUDED.bytes, reason = EXCLUDED.reason,
                recorded_at = now()""",
            (name, str(version), run_id, digest.sha256, digest.files, digest.bytes, reason),
        )


def trust_version(
    settings: Settings, name: str, version: str, run_id: str, reason: str = ""
) -> Digest:
    """Hash a registered version's artifacts as stored now, and record that digest."""
    digest = version_digest(settings, name, str(version))
    record(settings, name, str(version), run_id, digest, reason)
    return digest


def recorded_sha256(settings: Settings, name: str, version: str) -> str | None:
    """The digest recorded at promotion for `name` `version`, None when there is none.

    Raises psycopg.OperationalError when PostgreSQL cannot be reached: "cannot verify"
    is not "not trusted".
    """
    with connect(settings, connect_timeout=3) as conn:
        try:
            row = conn.execute(
                "SELECT artifact_sha256 FROM trusted_models WHERE model_name = %s AND version = %s",
                (name, str(version)),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return None  # nothing was ever promoted into this database
    return row[0] if row else None


def forget(settings: Settings, name: str) -> None:
    """Drop the records of every version of `name` (when the model itself is deleted)."""
    # No table: nothing was ever promoted into this database.
    with connect(settings) as conn, contextlib.suppress(psycopg.errors.UndefinedTable):
        conn.execute("DELETE FROM trusted_models WHERE model_name = %s", (name,))


def verify(folder: Path, expected: str | None, label: str) -> Digest:
    """The digest of the downloaded `folder`; UntrustedModel unless it is `expected`."""
    if expected is None:
        raise UntrustedModel(f"{label} refused: no checksum recorded at promotion")
    digest = folder_digest(folder)
    if digest.sha256 != expected:
        raise UntrustedModel(
            f"{label} refused: checksum mismatch (artifacts hash to {digest.sha256[:12]}..., "
            f"promotion recorded {expected[:12]}...)"
        )
    return digest
