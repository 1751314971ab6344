"""The model store's errors: each message is one line that says what failed and what to do."""

from __future__ import annotations

from shared.core.errors import AppError


class SourceUnreachable(AppError):
    """The source did not answer (network, DNS, emulator stopped); the holder reports it in health."""


class StoreError(AppError):
    """The model store refused or failed an operation; the message says which and why."""


class StoreUnreachable(StoreError, SourceUnreachable):
    """No answer from the store (network, DNS, emulator stopped)."""


class StoreConflict(StoreError):
    """The pointer kept changing under us."""


class VersionCorrupt(StoreError):
    """A version's files do not match its manifest, or its manifest does not match the pointer."""
