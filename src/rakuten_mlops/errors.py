"""The failures the project expects, by domain: the CLI turns these into one clear line.

Anything else (a pandas or scikit-learn bug, a typo) is not caught and keeps its
traceback. Each error says what was wrong and, where it helps, what to do.
"""

from __future__ import annotations


class RakutenError(Exception):
    """Base of every expected failure."""


class LakeError(RakutenError):
    """The lake cannot give what was asked: no labelled products, no split, no dataset."""


class ProfileError(RakutenError):
    """A training profile is missing or invalid (the message names the key)."""


class TrainingError(RakutenError):
    """Training cannot start or finish on this input (no training rows, unknown family)."""


class EvaluationError(RakutenError):
    """A run cannot be evaluated (no test rows, no logged model)."""


class PromotionError(RakutenError):
    """A run cannot be promoted (not evaluated, no champion to export)."""


class ExportError(RakutenError):
    """The exported model in models/ is missing or unreadable."""


class ConfigurationError(RakutenError):
    """A setting the command needs is missing or contradicts another (the message names it)."""
