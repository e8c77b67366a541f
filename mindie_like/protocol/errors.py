"""MindIE's error body and the one table of its `error_type` per HTTP status, used by the serving layer
(ValidationFailure) and the HTTP layer (server/errors.ApiError) alike.

Body: ``{"error": "<message>", "error_type": "<type>"}``. MindIE answers 422 for every validation failure.
"""
from __future__ import annotations

INPUT_VALIDATION_ERROR = "Input Validation Error"
GENERATION_ERROR = "Generation Error"
INCOMPLETE_GENERATION = "Incomplete Generation"
SERVICE_UNAVAILABLE = "Service Unavailable"

# MindIE's error_type for each status it answers with
ERROR_TYPES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    422: INPUT_VALIDATION_ERROR,
    424: GENERATION_ERROR,
    429: "Too Many Requests",
    500: INCOMPLETE_GENERATION,
    503: SERVICE_UNAVAILABLE,
}


def error_type_for(status: int) -> str:
    return ERROR_TYPES.get(status, "Internal Server Error" if status >= 500 else "Bad Request")


def error_body(message: str, error_type: str) -> dict:
    return {"error": message, "error_type": error_type}


class ValidationFailure(Exception):
    """A request the service will not (or could not) answer normally.

    `status` is the HTTP status, `message` the human text (never a traceback), `error_type` MindIE's
    spelling of the category (from the status unless given). Raised before any byte of a response is sent.
    """

    def __init__(self, status: int = 422, message: str = "", error_type: str | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.error_type = error_type or error_type_for(self.status)

    def to_body(self) -> dict:
        return error_body(self.message, self.error_type)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ValidationFailure({self.status}, {self.message!r}, {self.error_type!r})"


def invalid(message: str) -> ValidationFailure:
    return ValidationFailure(422, message, INPUT_VALIDATION_ERROR)
