"""What every command shares: expected errors end a command with one line, not a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def exits_on(label: str, *errors: type[Exception]) -> Iterator[None]:
    """The errors a command expects end it with `label: message` and exit code 1, without
    a traceback; anything else is a bug and keeps its traceback."""
    try:
        yield
    except errors as exc:
        typer.secho(f"{label}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from exc


@contextmanager
def service_down(label: str) -> Iterator[None]:
    """PostgreSQL or S3 unreachable (or refusing) ends the command with one line."""
    from rakuten_mlops.failures import describe, service_errors

    try:
        yield
    except service_errors() as exc:
        typer.secho(f"{label}: {describe(exc)}", fg="red", err=True)
        raise typer.Exit(1) from exc


def log_progress() -> None:
    """Progress lines of long commands (the library's loggers) on stderr, timestamped."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
