"""The failures the data-quality job expects (a command ends on them with one line)."""

from __future__ import annotations


class QualityError(RuntimeError):
    """The job cannot run as asked: a bad thresholds file or `--date`, an unusable
    champion, an unknown load batch. Not for bugs: those keep their traceback."""
