"""Errors the serving layer raises and the HTTP layer turns into MindIE-style bodies.

Body: ``{"error": "<message>", "error_type": "<type>"}``. MindIE uses 422 for every validation failure.
"""
from __future__ import annotations

INPUT_VALIDATION_ERROR = "Input Validation Error"
GENERATION_ERROR = "Generation Error"
INCOMPLETE_GENERATION = "Incomplete Generation"
SERVICE_UNAVAILABLE = "Service Unavailable"

_DEFAULT_TYPES = {
    400: INPUT_VALIDATION_ERROR,
    413: INPUT_VALIDATION_ERROR,
    422: INPUT_VALIDATION_ERROR,
    424: GENERATION_ERROR,
    500: INCOMPLETE_GENERATION,
    503: SERVICE_UNAVAILABLE,
}


class ValidationFailure(Exception):
    """A request the service will not (or could not) answer normally.

    `status` is the HTTP status, `message` the human text (never a traceback), `error_type` MindIE's
    spelling of the category. Raised before any byte of a response is sent.
    """

    def __init__(self, status: int = 422, message: str = "", error_type: str | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.error_type = error_type or _DEFAULT_TYPES.get(self.status, INCOMPLETE_GENERATION)

    def to_body(self) -> dict:
        return {"error": self.message, "error_type": self.error_type}

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ValidationFailure({self.status}, {self.message!r}, {self.error_type!r})"


def invalid(message: str) -> ValidationFailure:
    return ValidationFailure(422, message, INPUT_VALIDATION_ERROR)
