"""What the OpenAI Responses and Anthropic Messages request models share: strict field types, text content parts
and one message format for their validation errors (`param: what is wrong`, as the chat models write it), with
status 400 as both APIs answer an invalid request."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import INPUT_VALIDATION_ERROR, ValidationFailure
from .requests import _loc_text, fmt_value

# the kinds of PydanticCustomError raised by this package's own checks: their text is the whole message
OWN_KINDS = frozenset({"unsupported", "content", "tool_choice", "tools", "input", "signature", "range", "pattern",
                       "stop"})


class Lenient(BaseModel):
    """Unknown fields are ignored (both APIs grow fields faster than any server follows)."""
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def invalid_request(message: str) -> ValidationFailure:
    return ValidationFailure(400, message, INPUT_VALIDATION_ERROR)


# discriminated-union tags that pydantic writes into an error's location after a list index
UNION_TAGS = frozenset({"message", "function_call", "function_call_output", "reasoning", "function", "text",
                        "tool_use", "tool_result", "thinking", "redacted_thinking"})


def _loc(loc: tuple) -> str:
    parts = [p for i, p in enumerate(loc) if not (p in UNION_TAGS and i and isinstance(loc[i - 1], int))]
    return _loc_text(tuple(parts))


def _rank(err: dict) -> tuple:
    """Our own checks first, then the deepest location: in `str | list[item]` the list's complaint about an item
    says more than "Input should be a valid string"."""
    kind = err.get("type", "")
    return (kind in OWN_KINDS or kind.startswith("union_tag"), len(err.get("loc", ())), kind != "string_type")


def _message(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = max(errors, key=_rank)
    kind = err.get("type", "")
    loc = _loc(err.get("loc", ()))
    if loc == "request" and kind in OWN_KINDS:
        return err["msg"] if kind == "unsupported" else f"{kind}: {err['msg']}"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        tag = ctx.get("tag", err.get("input"))
        return f"{loc}.type: {fmt_value(tag)} is not supported here (expected one of {ctx.get('expected_tags', '')})"
    if kind == "union_tag_not_found":
        return f"{loc}: an object with a 'type' is expected, got {fmt_value(err.get('input'))}"
    if kind in OWN_KINDS:
        return f"{loc}: {err['msg']}"
    if kind == "missing":
        return f"{loc}: field required"
    if kind == "too_short":
        return f"{loc}: must not be empty"
    return f"{loc}: {err['msg']}, got {fmt_value(err.get('input'))}"


def parse_request(cls: type[BaseModel], data: Any) -> Any:
    """`cls.model_validate(data)`, any problem a ValidationFailure(400) naming the parameter."""
    if not isinstance(data, dict):
        raise invalid_request("request: the body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise invalid_request(_message(e)) from None
    except ValidationFailure:
        raise
    except Exception as e:  # noqa: BLE001 - never a traceback to the client
        raise invalid_request(f"request: {e}") from None


def param_of(message: str) -> str | None:
    """The parameter an error message names (`input[0].type: ...` → `input[0].type`)."""
    head, sep, _ = message.partition(": ")
    return head if sep and " " not in head else None
