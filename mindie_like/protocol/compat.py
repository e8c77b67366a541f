"""Pydantic models of MindIE's compatibility routes: TGI, vLLM, MindIE native (/infer), Triton.

Each request model turns into one `GenerateSpec`: the route-independent description of a generation that
`mindie_like.serving.generate.GenerateServing` runs on the engine. Ranges follow MindIE where its documentation
gives them, else the OpenAI routes' (spec section 4); messages use the format of `protocol.requests`:

    parameters.top_p: 1.5 is not in (0, 1]

`parse_compat(Model, body)` raises `ValidationFailure` (422, MindIE's error body) for any problem.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from .errors import ValidationFailure, invalid
from .requests import (INT32_MAX, MAX_STOP_LEN, MAX_STOP_STRINGS, UINT64_MAX, Range, SBool, SFloat, SInt, SStr,
                       _check_stop, _check_top_k, _err, fmt_value, format_validation_error)

# MindIE's defaults for the text routes (its TGI / native / Triton interfaces)
DEFAULT_MAX_NEW_TOKENS = 20
DEFAULT_PRIORITY = 5
MAX_TIMEOUT_S = 65535
REQUEST_ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,256}$")
ID_RULE = "only digits, letters, '_' and '-', 1 to 256 characters"


def _check_id(v):
    if v is not None and not REQUEST_ID_RE.match(v):
        raise _err("pattern", "{value} is not a valid id (" + ID_RULE + ")", value=fmt_value(v))
    return v


def _check_text(v: str) -> str:
    if v == "":
        raise _err("empty", "must not be empty")
    return v


# WithJsonSchema: the rules the validators check, for docs/openapi.yaml (tools/gen_openapi.py)
Text = Annotated[SStr, AfterValidator(_check_text), WithJsonSchema({"type": "string", "minLength": 1})]
RequestId = Annotated[SStr, AfterValidator(_check_id), WithJsonSchema({"type": "string",
                                                                        "pattern": REQUEST_ID_RE.pattern})]
_STOP_STRING = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_LEN}
StopList = Annotated[Union[SStr, list[SStr], None], AfterValidator(_check_stop), WithJsonSchema({"anyOf": [
    _STOP_STRING, {"type": "array", "maxItems": MAX_STOP_STRINGS, "items": _STOP_STRING}, {"type": "null"}]})]


@dataclass
class GenerateSpec:
    """What every compat route asks of the engine, after validation."""
    prompt: str
    max_new_tokens: Optional[int] = DEFAULT_MAX_NEW_TOKENS   # None: the engine's cap (maxIterTimes, maxSeqLen)
    do_sample: Optional[bool] = None          # False: greedy whatever the temperature; None: decided by temperature
    temperature: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    typical_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    seed: Optional[int] = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    ignore_eos: bool = False
    details: bool = False
    watermark: bool = False
    priority: int = DEFAULT_PRIORITY
    timeout_s: Optional[int] = None           # the request's end-to-end timeout (capped by e2eTimeout)
    truncate: Optional[int] = None            # keep only the last N prompt tokens
    return_full_text: bool = False
    decoder_input_details: bool = False
    user_id: Optional[str] = None             # Triton `id`: the handle for stopInfer
    stream: bool = False


_IGNORE = ConfigDict(extra="ignore")


class _Sampling(BaseModel):
    """Sampling fields the TGI, native and Triton `parameters` objects share."""
    model_config = _IGNORE
    max_new_tokens: Annotated[Optional[SInt], Range(1, INT32_MAX),
                              Field(description=f"default {DEFAULT_MAX_NEW_TOKENS}")] = None
    do_sample: Annotated[Optional[SBool], Field(description="false: greedy whatever the temperature")] = None
    temperature: Annotated[Optional[SFloat], Range(0, math.inf),
                           Field(description="0 = greedy; default from generation_config.json, else 1.0")] = None
    top_k: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None
    top_p: Annotated[Optional[SFloat], Range(0, 1, lo_open=True)] = None
    typical_p: Annotated[Optional[SFloat], Range(0, 1, lo_open=True)] = None
    repetition_penalty: Annotated[Optional[SFloat], Range(0, 2, lo_open=True)] = None
    seed: Annotated[Optional[SInt], Range(0, UINT64_MAX)] = None
    details: SBool = False
    watermark: Annotated[SBool, Field(description="true is accepted but not supported (a Warning header says "
                                                  "so)")] = False

    def sampling(self) -> dict[str, Any]:
        max_new = self.max_new_tokens if self.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS
        return dict(max_new_tokens=max_new, do_sample=self.do_sample, temperature=self.temperature,
                    top_k=self.top_k, top_p=self.top_p, typical_p=self.typical_p,
                    repetition_penalty=self.repetition_penalty, seed=self.seed, details=self.details,
                    watermark=self.watermark)


class _Scheduling(BaseModel):
    """priority and timeout (MindIE native and Triton)."""
    model_config = _IGNORE
    priority: Annotated[Optional[SInt], Range(1, 5),
                        Field(description=f"default {DEFAULT_PRIORITY}; validated, scheduling is FCFS")] = None
    timeout: Annotated[Optional[SInt], Range(1, MAX_TIMEOUT_S),
                       Field(description="seconds; capped by e2eTimeout")] = None

    def scheduling(self) -> dict[str, Any]:
        return dict(priority=self.priority if self.priority is not None else DEFAULT_PRIORITY,
                    timeout_s=self.timeout)


# ----------------------------------------------------------------------------------------------- TGI

class TgiParameters(_Sampling):
    stop: StopList = None
    return_full_text: SBool = False
    decoder_input_details: Annotated[SBool, Field(description="refused when streaming")] = False
    truncate: Annotated[Optional[SInt], Range(1, INT32_MAX),
                        Field(description="keep only the last `truncate` prompt tokens")] = None


class TgiRequest(BaseModel):
    """POST /generate (with `inputs`), /generate_stream, and / (which streams when `stream` is true)."""
    model_config = _IGNORE
    inputs: Text
    parameters: TgiParameters = Field(default_factory=TgiParameters)
    stream: Annotated[SBool, Field(description="read by POST / only")] = False

    def to_spec(self, stream: bool) -> GenerateSpec:
        p = self.parameters
        if stream and p.decoder_input_details:
            raise _err("decoder_input_details", "decoder_input_details must not be true when streaming")
        return GenerateSpec(prompt=self.inputs, stop=list(p.stop or []), return_full_text=p.return_full_text,
                            decoder_input_details=p.decoder_input_details, truncate=p.truncate, stream=stream,
                            **p.sampling())


# ----------------------------------------------------------------------------------------------- vLLM

class VllmRequest(BaseModel):
    """POST /generate with `prompt` (vLLM 0.2.x's api_server body)."""
    model_config = _IGNORE
    prompt: Text
    stream: SBool = False
    max_tokens: Annotated[Optional[SInt], Range(1, INT32_MAX)] = None
    temperature: Annotated[Optional[SFloat], Range(0, math.inf)] = None
    top_k: Annotated[Optional[SInt], AfterValidator(_check_top_k), WithJsonSchema({"anyOf": [
        {"type": "integer", "enum": [-1]}, {"type": "integer", "minimum": 1, "maximum": INT32_MAX}, {"type": "null"}],
        "description": "-1 (off) or >= 1"})] = None
    top_p: Annotated[Optional[SFloat], Range(0, 1, lo_open=True)] = None
    seed: Annotated[Optional[SInt], Range(0, UINT64_MAX)] = None
    repetition_penalty: Annotated[Optional[SFloat], Range(0, 2, lo_open=True)] = None
    presence_penalty: Annotated[Optional[SFloat], Range(-2, 2)] = None
    frequency_penalty: Annotated[Optional[SFloat], Range(-2, 2)] = None
    stop: StopList = None
    stop_token_ids: Optional[list[Annotated[SInt, Range(0, INT32_MAX)]]] = None
    include_stop_str_in_output: SBool = False
    skip_special_tokens: SBool = True
    ignore_eos: SBool = False
    n: Annotated[Optional[SInt], Range(1, 1)] = None
    best_of: Annotated[Optional[SInt], Range(1, 1)] = None
    model: Annotated[Optional[SStr], Field(description="MindIE reads it as a LoRA name: absent, \"None\" or the "
                                                      "configured modelName (there are no LoRA adapters here)")] = None

    def to_spec(self) -> GenerateSpec:
        return GenerateSpec(prompt=self.prompt, max_new_tokens=self.max_tokens, temperature=self.temperature,
                            top_k=None if self.top_k == -1 else self.top_k, top_p=self.top_p, seed=self.seed,
                            repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                            frequency_penalty=self.frequency_penalty, stop=list(self.stop or []),
                            stop_token_ids=list(self.stop_token_ids or []),
                            include_stop_str_in_output=self.include_stop_str_in_output,
                            skip_special_tokens=self.skip_special_tokens, ignore_eos=self.ignore_eos,
                            stream=self.stream)


# ----------------------------------------------------------------------------------------------- MindIE native

class InferParameters(_Sampling, _Scheduling):
    stop: StopList = None


class InferRequest(BaseModel):
    """POST /infer."""
    model_config = _IGNORE
    inputs: Text
    stream: SBool = False
    parameters: InferParameters = Field(default_factory=InferParameters)

    def to_spec(self) -> GenerateSpec:
        p = self.parameters
        return GenerateSpec(prompt=self.inputs, stop=list(p.stop or []), stream=self.stream, **p.sampling(),
                            **p.scheduling())


class TokenizerRequest(BaseModel):
    """POST /v1/tokenizer."""
    model_config = _IGNORE
    inputs: Text
    do_decode: SBool = True


# ----------------------------------------------------------------------------------------------- Triton

class TritonParameters(_Sampling, _Scheduling):
    stop: StopList = None
    batch_size: Annotated[Optional[SInt], Range(1, INT32_MAX),
                          Field(description="accepted like MindIE; it changes nothing")] = None


class TritonRequest(BaseModel):
    """POST /v2/models/{model}/generate and /generate_stream."""
    model_config = _IGNORE
    id: Optional[RequestId] = None
    text_input: Text
    parameters: TritonParameters = Field(default_factory=TritonParameters)

    def to_spec(self, stream: bool) -> GenerateSpec:
        p = self.parameters
        return GenerateSpec(prompt=self.text_input, stop=list(p.stop or []), user_id=self.id, stream=stream,
                            **p.sampling(), **p.scheduling())


class StopInferRequest(BaseModel):
    """POST /v2/models/{model}/stopInfer."""
    model_config = _IGNORE
    id: RequestId


# ----------------------------------------------------------------------------------------------- parsing

def parse_compat(cls: type[BaseModel], data: Any) -> Any:
    """`cls.model_validate(data)`, every problem (including the cross-field ones of `to_spec`) as a 422."""
    if not isinstance(data, dict):
        raise invalid("request: the body must be a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise invalid(format_validation_error(e)) from None


def spec_of(req: Any, *args) -> GenerateSpec:
    """`req.to_spec(*args)` with its cross-field checks reported like field errors."""
    try:
        return req.to_spec(*args)
    except ValidationFailure:
        raise
    except Exception as e:  # PydanticCustomError from a cross-field rule
        raise invalid(f"parameters.{getattr(e, 'type', 'request')}: {e}") from None
