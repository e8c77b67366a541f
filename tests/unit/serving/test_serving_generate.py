"""GenerateServing (the compat routes' one pipeline) with each route's renderer, through the scripted fake engine.

The per-token event rule (serving/generate.py): one event per generated token id; an output's text belongs to
its last id; the concatenated event texts equal the generated text; the last event carries the result.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from mindie_like.engine.types import EngineOverloaded, RequestOutput
from mindie_like.protocol import ValidationFailure
from mindie_like.serving import GenerateServing, InflightRegistry, ServingOptions
from mindie_like.serving.generate import TypicalMask, finish_reason_of
from mindie_like.server.compat import InferRenderer, TgiRenderer, TritonRenderer, VllmRenderer
from tests.support.serving_fakes import FakeEngine

MODEL = "qwen-test"
SCRIPT = " héllo wörld, and more."   # non-ASCII: byte-level tokens hold text back until a character completes


def run(coro):
    return asyncio.run(coro)


def make(hf_tok, renderer, script=SCRIPT, options=None, registry=None, **kw):
    engine = FakeEngine(hf_tok, script, **kw)
    return GenerateServing(engine, hf_tok, MODEL, renderer, options=options, registry=registry), engine


async def _collect(agen) -> list[bytes]:
    return [c async for c in agen]


def sse_events(chunks: list[bytes]) -> list[dict]:
    text = b"".join(chunks).decode()
    return [json.loads(block[len("data: "):]) for block in text.split("\n\n") if block.strip()]


def tgi(hf_tok, mode="generate"):
    return TgiRenderer(mode, GenerateServing(None, hf_tok, MODEL, VllmRenderer(MODEL)).tokenizer)


def test_tgi_non_streaming_details(hf_tok):
    serving, engine = make(hf_tok, tgi(hf_tok))
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 50, "do_sample": False, "temperature": 0.7,
                                           "details": True, "seed": 7}}
    resp = run(serving.create(body, "r1"))
    assert resp["generated_text"] == SCRIPT
    d = resp["details"]
    assert d["finish_reason"] == "eos_token" and d["seed"] == 7
    assert d["prompt_tokens"] == len(hf_tok.encode("Hi")) and d["prefill"] == []
    assert d["generated_tokens"] == len(d["tokens"]) == len(hf_tok.encode(SCRIPT)) + 1   # + the EOS token
    assert all(set(t) == {"id", "text", "logprob", "special"} for t in d["tokens"])
    assert d["tokens"][-1]["special"] is True and d["tokens"][0]["logprob"] == -0.25
    params = engine.calls[0][1]
    assert params.temperature == 0.0 and params.logprobs == 0 and params.max_tokens == 50   # do_sample false: greedy


def test_tgi_default_max_new_tokens_and_generated_seed(hf_tok):
    serving, engine = make(hf_tok, tgi(hf_tok), script=" a" * 40)
    resp = run(serving.create({"inputs": "Hi", "parameters": {"details": True, "do_sample": True}}, "r1"))
    assert resp["details"]["generated_tokens"] == 20 and resp["details"]["finish_reason"] == "length"
    seed = resp["details"]["seed"]
    assert isinstance(seed, int) and engine.calls[0][1].seed == seed     # the seed reported is the one used


def test_tgi_stream_one_event_per_token_even_with_multi_token_outputs(hf_tok):
    # 3 ids per engine output, and non-ASCII text the detokenizer holds back
    serving, _ = make(hf_tok, tgi(hf_tok, "stream"), tokens_per_step=3)
    chunks = run(_collect(serving.stream({"inputs": "Hi", "parameters": {"details": True,
                                                                          "max_new_tokens": 100}}, "r1")))
    events = sse_events(chunks)
    ids = hf_tok.encode(SCRIPT) + [hf_tok.convert_tokens_to_ids("<|im_end|>")]
    assert [e["token"]["id"] for e in events] == ids
    assert "".join(e["token"]["text"] for e in events) == SCRIPT
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    assert events[-1]["generated_text"] == SCRIPT
    assert events[-1]["details"]["generated_tokens"] == len(ids) and events[-1]["details"]["finish_reason"] == "eos_token"


def test_tgi_root_list_and_return_full_text_and_truncate(hf_tok):
    serving, engine = make(hf_tok, tgi(hf_tok, "root"))
    resp = run(serving.create({"inputs": "one two three four", "parameters": {
        "return_full_text": True, "truncate": 2, "decoder_input_details": True}}, "r1"))
    assert isinstance(resp, list) and len(resp) == 1
    assert resp[0]["generated_text"] == "one two three four" + SCRIPT
    prompt = engine.calls[0][0]
    assert prompt == hf_tok.encode("one two three four")[-2:]
    assert [t["id"] for t in resp[0]["details"]["prefill"]] == prompt
    assert serving.wants_stream({"inputs": "x", "stream": True}) and not serving.wants_stream({"inputs": "x"})


def test_tgi_stop_strings_end_generation(hf_tok):
    serving, engine = make(hf_tok, tgi(hf_tok))
    resp = run(serving.create({"inputs": "Hi", "parameters": {"stop": [","], "details": True}}, "r1"))
    assert resp["generated_text"] == " héllo wörld" and engine.calls[0][1].stop == [","]


@pytest.mark.parametrize("reason,stop_reason,expected", [
    ("length", None, "length"), ("stop", None, "eos_token"), ("stop", ",", "stop_sequence"),
    ("stop", 42, "stop_sequence"), ("abort", None, "abort")])
def test_finish_reason_vocabulary(reason, stop_reason, expected):
    out = RequestOutput("r", [], "", finished=True, finish_reason=reason, stop_reason=stop_reason)
    assert finish_reason_of(out) == expected


def test_vllm_text_and_nul_framed_stream(hf_tok):
    serving, engine = make(hf_tok, VllmRenderer(MODEL))
    resp = run(serving.create({"prompt": "Hi", "max_tokens": 100, "temperature": 0}, "r1"))
    assert resp == {"text": ["Hi" + SCRIPT]}
    assert engine.calls[0][1].max_tokens == 100
    chunks = run(_collect(serving.stream({"prompt": "Hi", "stream": True}, "r2")))
    raw = b"".join(chunks)
    assert raw.endswith(b"\0")
    objs = [json.loads(p) for p in raw.split(b"\0")[:-1]]
    assert len(objs) == len(hf_tok.encode(SCRIPT)) + 1
    assert "".join(o["text"][0] for o in objs) == SCRIPT


def test_infer_stream_timing_and_last_event(hf_tok):
    serving, _ = make(hf_tok, InferRenderer())
    body = {"inputs": "Hi", "stream": True, "parameters": {"details": True, "priority": 1, "timeout": 30}}
    events = sse_events(run(_collect(serving.stream(body, "r1"))))
    assert events[0]["prefill_time"] == 12 and events[0]["decode_time"] is None
    assert all(e["decode_time"] == 3 and e["prefill_time"] is None for e in events[1:])
    assert all(set(e["token"]) == {"id", "text"} for e in events)
    last = events[-1]
    assert last["generated_text"] == SCRIPT
    assert last["details"]["generated_token_ids"] == [e["token"]["id"] for e in events]
    assert "generated_text" not in events[0]


def test_triton_details_and_stream_ids(hf_tok):
    serving, _ = make(hf_tok, TritonRenderer(MODEL, False))
    resp = run(serving.create({"id": "req-1", "text_input": "Hi", "parameters": {"details": True}}, "r1"))
    assert resp["id"] == "req-1" and resp["model_name"] == MODEL and resp["model_version"] is None
    assert resp["text_output"] == SCRIPT
    d = resp["details"]
    assert d["finish_reason"] == "eos_token" and d["first_token_cost"] == 12
    assert d["decode_cost"] == 3 * (d["generated_tokens"] - 1)
    assert d["batch_size"] is None and d["queue_wait_time"] is None
    stream, _ = make(hf_tok, TritonRenderer(MODEL, True))
    events = sse_events(run(_collect(stream.stream({"text_input": "Hi", "parameters": {"details": True}}, "r2"))))
    assert {e["id"] for e in events} == {"r2"}          # no `id` given: the generated request id
    assert [e["details"]["generated_tokens"] for e in events] == list(range(1, len(events) + 1))
    assert "".join(e["text_output"] for e in events) == SCRIPT and events[-1]["details"]["finish_reason"] == "eos_token"


def test_request_timeout_caps_e2e_timeout(hf_tok):
    serving, _ = make(hf_tok, InferRenderer(), script=" a" * 400, options=ServingOptions(e2e_timeout_s=600),
                      step_delay=0.05)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"inputs": "Hi", "parameters": {"timeout": 1, "max_new_tokens": 1000}}, "r1"))
    assert e.value.status == 500 and e.value.message == "Engine callback timeout"


@pytest.mark.parametrize("renderer,body,needle", [
    (VllmRenderer(MODEL), {"prompt": 3}, "prompt"),
    (VllmRenderer(MODEL), {"prompt": "x", "n": 2}, "n: 2 is not in [1, 1]"),
    (VllmRenderer(MODEL), {"prompt": "x", "model": "other"}, 'model: Model not found: "other"'),
    (InferRenderer(), {"inputs": "x", "parameters": {"priority": 6}}, "parameters.priority: 6 is not in [1, 5]"),
    (InferRenderer(), {"inputs": "x", "parameters": {"timeout": 0}}, "parameters.timeout"),
    (InferRenderer(), {"inputs": ""}, "inputs: must not be empty"),
    (TritonRenderer(MODEL, False), {"id": "a b", "text_input": "x"}, "id:"),
    (TritonRenderer(MODEL, False), {"text_input": "x", "parameters": {"top_p": 1.5}}, "parameters.top_p: 1.5"),
    (TritonRenderer(MODEL, False), {"text_input": "x", "parameters": {"temperature": "hot"}}, "temperature"),
])
def test_validation_errors(hf_tok, renderer, body, needle):
    serving, engine = make(hf_tok, renderer)
    with pytest.raises(ValidationFailure) as e:
        run(serving.create(body, "r1"))
    assert e.value.status == 422 and needle in e.value.message and not engine.calls


def test_tgi_stream_refuses_decoder_input_details(hf_tok):
    serving, _ = make(hf_tok, tgi(hf_tok, "stream"))
    with pytest.raises(ValidationFailure) as e:
        run(_collect(serving.stream({"inputs": "x", "parameters": {"decoder_input_details": True}}, "r1")))
    assert e.value.status == 422 and "decoder_input_details" in e.value.message


def test_engine_refusal_and_error_after_start(hf_tok):
    serving, _ = make(hf_tok, VllmRenderer(MODEL), refuse=EngineOverloaded("full"))
    with pytest.raises(ValidationFailure) as e:
        run(serving.create({"prompt": "x"}, "r1"))
    assert e.value.status == 503
    serving, _ = make(hf_tok, VllmRenderer(MODEL), finish_error_after=2)
    raw = b"".join(run(_collect(serving.stream({"prompt": "x", "stream": True}, "r1"))))
    last = json.loads(raw.split(b"\0")[-2])
    assert last == {"error": "step failed", "error_type": "Generation Error"}


def test_stop_infer_registry(hf_tok):
    registry = InflightRegistry()
    serving, engine = make(hf_tok, TritonRenderer(MODEL, True), registry=registry, step_delay=0.02)

    async def scenario():
        agen = serving.stream({"id": "job-7", "text_input": "Hi", "parameters": {"max_new_tokens": 500}}, "eng-1")
        first = await agen.__anext__()
        assert registry.by_id == {"job-7": "eng-1"}
        with pytest.raises(ValidationFailure):   # one running request per id
            await serving.create({"id": "job-7", "text_input": "Hi"}, "eng-2")
        await serving.stop("job-7")
        await agen.aclose()
        with pytest.raises(ValidationFailure) as e:
            await serving.stop("job-7")
        return first, e.value

    first, missing = run(scenario())
    assert json.loads(first[len(b"data: "):])["id"] == "job-7"
    assert "eng-1" in engine.aborted and registry.by_id == {} and registry.stopped == set()
    assert missing.status == 404 and missing.message == "RequestId is job-7 not found."


class ScriptedOutputs(FakeEngine):
    """Replays exact RequestOutputs: (ids, text delta) per step, the last one finished by EOS."""

    def __init__(self, hf_tok, steps):
        super().__init__(hf_tok)
        self.steps = steps

    async def generate(self, prompt_ids, params, request_id):
        n = 0
        for i, (ids, text) in enumerate(self.steps):
            n += len(ids)
            last = i == len(self.steps) - 1
            yield RequestOutput(request_id, ids, text, finished=last, finish_reason="stop" if last else None,
                                num_prompt_tokens=len(prompt_ids), num_output_tokens=n,
                                prefill_time_ms=5.0 if i == 0 else None, decode_time_ms=None if i == 0 else 2.0)


def test_event_rule_held_back_text_and_multi_token_steps(hf_tok):
    # step 1: one token whose text the detokenizer holds back; step 2: two tokens releasing "é!" ;
    # step 3: a token with "ab"; step 4: EOS (no text)
    steps = [([10], ""), ([11, 12], "é!"), ([13], "ab"), ([14], "")]
    serving = GenerateServing(ScriptedOutputs(hf_tok, steps), hf_tok, MODEL, tgi(hf_tok, "stream"))
    events = sse_events(run(_collect(serving.stream({"inputs": "Hi", "parameters": {"details": True}}, "r1"))))
    assert [(e["token"]["id"], e["token"]["text"]) for e in events] == [
        (10, ""), (11, ""), (12, "é!"), (13, "ab"), (14, "")]
    assert events[-1]["generated_text"] == "é!ab" and events[-1]["details"]["generated_tokens"] == 5
    infer = GenerateServing(ScriptedOutputs(hf_tok, steps), hf_tok, MODEL, InferRenderer())
    ev = sse_events(run(_collect(infer.stream({"inputs": "Hi", "stream": True}, "r2"))))
    # a step's timing goes to its first token; the other tokens of that step carry none
    assert [(e["prefill_time"], e["decode_time"]) for e in ev] == [(5, None), (None, 2), (None, None), (None, 2),
                                                                  (None, 2)]
    resp = run(GenerateServing(ScriptedOutputs(hf_tok, steps), hf_tok, MODEL, tgi(hf_tok)).create(
        {"inputs": "Hi", "parameters": {"details": True}}, "r3"))
    assert [t["text"] for t in resp["details"]["tokens"]] == ["", "", "é!", "ab", ""]


def test_aborted_on_purpose_ends_with_a_token_less_event(hf_tok):
    class StoppingEngine(FakeEngine):
        async def generate(self, prompt_ids, params, request_id):
            yield RequestOutput(request_id, [5], "x", num_prompt_tokens=1, num_output_tokens=1, prefill_time_ms=1.0)
            yield RequestOutput(request_id, [], "", finished=True, finish_reason="abort", num_prompt_tokens=1,
                                num_output_tokens=1)

    registry = InflightRegistry()
    registry.stopped.add("r1")
    serving = GenerateServing(StoppingEngine(hf_tok), hf_tok, MODEL, tgi(hf_tok, "stream"), registry=registry)
    events = sse_events(run(_collect(serving.stream({"inputs": "Hi", "parameters": {"details": True}}, "r1"))))
    assert events[0]["token"]["id"] == 5
    assert events[-1]["token"] is None and events[-1]["details"]["finish_reason"] == "abort"
    assert events[-1]["generated_text"] == "x"


def test_typical_mask_keeps_the_typical_set():
    torch = pytest.importorskip("torch")
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, -8.0])
    mask = TypicalMask(0.5, 1.0)
    out = logits.clone()
    mask.apply(out)
    kept = torch.isfinite(out).nonzero().flatten().tolist()
    # transformers' TypicalLogitsWarper keeps the same set
    from transformers.generation.logits_process import TypicalLogitsWarper
    ref = TypicalLogitsWarper(mass=0.5, min_tokens_to_keep=1)(None, logits.clone().unsqueeze(0))[0]
    assert kept == torch.isfinite(ref).nonzero().flatten().tolist() and len(kept) < 5
