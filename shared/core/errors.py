"""The product's error types. Each message says what was wrong and, where there is one, the limit."""

from __future__ import annotations


class AppError(Exception):
    """Base class: `str(error)` is safe to show to a user (no traceback, no payload, no secret)."""


class BundleError(AppError):
    """A model bundle cannot be served: missing files, unreadable JSON, or a model that is not a classifier."""


class ImageError(AppError):
    """One image cannot be classified: unreadable, undecodable, or outside a limit."""


class SettingsError(AppError):
    """An app setting has a bad value; the message names the setting."""


class HttpError(AppError):
    """An error that answers a whole HTTP request; the body is `{"error": {"code", "message"}}`."""

    status = 500
    code = "InternalError"

    def headers(self) -> dict[str, str]:
        return {}


class InvalidEnvelope(HttpError):
    """The request as a whole is unusable: not JSON, no `values` list, bad recordIds, bad query parameters."""

    status = 400
    code = "InvalidRequest"


class PayloadTooLarge(HttpError):
    """The request body or its record count is over a limit."""

    status = 413
    code = "PayloadTooLarge"


class Unauthorized(HttpError):
    status = 401
    code = "Unauthorized"


class ModelNotReady(HttpError):
    """No model can serve yet; the indexer retries 503 answers."""

    status = 503
    code = "ModelNotReady"

    def __init__(self, message: str, retry_after_s: int = 30) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}
