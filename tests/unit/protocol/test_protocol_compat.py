"""The compat routes' request models: what each body becomes (GenerateSpec) and how bad bodies are refused."""
from __future__ import annotations

import pytest

from mindie_like.protocol import ValidationFailure
from mindie_like.protocol.compat import (DEFAULT_MAX_NEW_TOKENS, DEFAULT_PRIORITY, InferRequest, StopInferRequest,
                                         TgiRequest, TokenizerRequest, TritonRequest, VllmRequest, parse_compat,
                                         spec_of)


def test_tgi_spec_defaults_and_fields():
    spec = spec_of(parse_compat(TgiRequest, {"inputs": "hi"}), False)
    assert spec.prompt == "hi" and spec.max_new_tokens == DEFAULT_MAX_NEW_TOKENS and spec.do_sample is None
    assert not spec.details and not spec.watermark and spec.stop == [] and not spec.stream
    spec = spec_of(parse_compat(TgiRequest, {"inputs": "hi", "parameters": {
        "max_new_tokens": 7, "do_sample": False, "temperature": 0.5, "top_k": 3, "top_p": 0.9, "typical_p": 0.8,
        "repetition_penalty": 1.1, "seed": 2**64 - 1, "stop": "\n", "details": True, "watermark": True,
        "truncate": 5, "return_full_text": True}}), True)
    assert (spec.max_new_tokens, spec.do_sample, spec.temperature, spec.top_k, spec.top_p, spec.typical_p,
            spec.repetition_penalty, spec.seed) == (7, False, 0.5, 3, 0.9, 0.8, 1.1, 2**64 - 1)
    assert spec.stop == ["\n"] and spec.details and spec.watermark and spec.truncate == 5
    assert spec.return_full_text and spec.stream


def test_vllm_spec():
    spec = parse_compat(VllmRequest, {"prompt": "p", "max_tokens": 9, "top_k": -1, "stop_token_ids": [3],
                                      "ignore_eos": True, "skip_special_tokens": False, "stream": True}).to_spec()
    assert spec.max_new_tokens == 9 and spec.top_k is None and spec.stop_token_ids == [3]
    assert spec.ignore_eos and not spec.skip_special_tokens and spec.stream
    assert parse_compat(VllmRequest, {"prompt": "p"}).to_spec().max_new_tokens is None   # the engine's cap


def test_infer_and_triton_scheduling_fields():
    spec = parse_compat(InferRequest, {"inputs": "x", "parameters": {"priority": 1, "timeout": 30}}).to_spec()
    assert spec.priority == 1 and spec.timeout_s == 30
    spec = spec_of(parse_compat(TritonRequest, {"id": "a-1_b", "text_input": "x"}), False)
    assert spec.user_id == "a-1_b" and spec.priority == DEFAULT_PRIORITY and spec.timeout_s is None


@pytest.mark.parametrize("cls,body,message", [
    (TgiRequest, {"inputs": "x", "parameters": {"temperature": -0.1}}, "parameters.temperature: -0.1 is not in [0, inf)"),
    (TgiRequest, {"inputs": "x", "parameters": {"top_k": 0}}, "parameters.top_k: 0 is not in [1, 2147483647]"),
    (TgiRequest, {"inputs": "x", "parameters": {"max_new_tokens": 1.5}}, "parameters.max_new_tokens"),
    (TgiRequest, {"inputs": "x", "parameters": {"stop": [""]}}, "parameters.stop: stop strings may not be empty"),
    (TgiRequest, {"inputs": "x", "parameters": {"do_sample": "no"}}, "parameters.do_sample: Input should be a valid boolean"),
    (TgiRequest, {"inputs": "x", "parameters": {"truncate": 0}}, "parameters.truncate: 0 is not in [1, 2147483647]"),
    (TgiRequest, {"parameters": {}}, "inputs: field required"),
    (VllmRequest, {"prompt": ["a", "b"]}, "prompt: Input should be a valid string"),
    (VllmRequest, {"prompt": "a", "presence_penalty": 3}, "presence_penalty: 3 is not in [-2, 2]"),
    (VllmRequest, {"prompt": "a", "best_of": 2}, "best_of: 2 is not in [1, 1]"),
    (InferRequest, {"inputs": "x", "parameters": {"repetition_penalty": 0}}, "parameters.repetition_penalty: 0 is not in (0, 2]"),
    (TritonRequest, {"text_input": "x", "id": "x" * 257}, "id: "),
    (StopInferRequest, {"id": ""}, "id: \"\" is not a valid id"),
    (TokenizerRequest, {"inputs": ""}, "inputs: must not be empty"),
    (TokenizerRequest, "text", "request: the body must be a JSON object"),
])
def test_refusals(cls, body, message):
    with pytest.raises(ValidationFailure) as e:
        parse_compat(cls, body)
    assert e.value.status == 422 and e.value.error_type == "Input Validation Error"
    assert message in e.value.message, e.value.message


def test_stream_with_decoder_input_details_is_refused():
    req = parse_compat(TgiRequest, {"inputs": "x", "parameters": {"decoder_input_details": True}})
    assert spec_of(req, False).decoder_input_details
    with pytest.raises(ValidationFailure) as e:
        spec_of(req, True)
    assert e.value.message == ("parameters.decoder_input_details: decoder_input_details must not be true when "
                               "streaming")
