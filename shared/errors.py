"""The product's error types. Each message says what was wrong and, where there is one, the limit."""

from __future__ import annotations


class ClassifierError(Exception):
    """Base class: `str(error)` is safe to show to a user (no traceback, no payload, no secret)."""


class BundleError(ClassifierError):
    """A model bundle cannot be served: missing files, unreadable JSON, or a model that is not a classifier."""


class ImageError(ClassifierError):
    """One image cannot be classified: unreadable, undecodable, or outside a limit."""


class SettingsError(ClassifierError):
    """An app setting has a bad value; the message names the setting."""
