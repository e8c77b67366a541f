"""Parser wiring through HTTP: every family's tool calls come out right over mutual TLS, streaming and not.
In-process (no daemon subprocess, no model): an integration test of the assembled server.

The daemon's own assembly runs in-process around a test backend: the repo's conf/config.json (loaded by
mindie_like.config, with `models.<model_type>.tool_call_options.tool_call_parser` set per family) →
`assembly.build_context` → `server.Server` with the daemon's route table and TLS factory, on free ports. The
backend is the real Qwen2.5 tokenizer with the families' special tokens added, an hf_config with the family's
model_type, and a FakeEngine (tests/support/serving_fakes.py) that replays what a model of that family writes (the
table in tests/support/family_scripts.py, which tests/unit/serving replays through ChatServing), one token per
step, detokenizing as the request's skip_special_tokens / the serving layer's keep list say.
Requests go through the official `openai` client (raw bodies read as well, so the wire format is checked exactly).
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("mindie_like.reasoning", reason="needs the tool-call branch")
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

from mindie_like import guided as guided_pkg  # noqa: E402
from mindie_like.config import load_config, to_engine_config  # noqa: E402
from mindie_like.assembly import ROUTES, build_context, ssl_factory  # noqa: E402
from mindie_like.server import Backend, Server  # noqa: E402
from mindie_like.server.tls import client_ssl_context  # noqa: E402
from tests.support.family_scripts import (CALLS, CONTENT, DS_B, DS_CB, DS_CE, DS_E, DS_S, FAMILIES,  # noqa: E402
                                          MARKER_RE, MESSAGES, THOUGHT, TOOLS, check_clean, deepseek_v3_calls,
                                          hermes_calls)
from tests.support.serving_fakes import QWEN_TOKENIZER, FakeEngine, load_test_tokenizer  # noqa: E402
from tests.support.serving_fakes import reassemble as reassemble_choice  # noqa: E402

from tests.e2e.conftest import free_ports, gen_certs, make_config  # noqa: E402

# DeepSeek-R1 style: no reasoning in the config, the request asks for it (separate_reasoning: true)
R1_SCRIPT = (f"<think>\nTwo lookups. {DS_B}{DS_CB}function{DS_S}get_time\n```json\n{{\"tz\": \"UTC\"}}\n```{DS_CE}"
             f"{DS_E} is only a thought.\n</think>\n\n" + deepseek_v3_calls())


# ------------------------------------------------------------------------------------------------ the servers
class LoopThread:
    """An asyncio loop in a thread: the in-process daemon serves there while the test drives it synchronously."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wiring-http", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class FamilyServer:
    def __init__(self, name: str, server: Server, engine: FakeEngine, ca: Path, certs: dict):
        self.name, self.server, self.ctx, self.engine = name, server, server.ctx, engine
        listener = next(ls for ls in server.listeners if "business" in ls.planes)
        self.model_type, self.parser, self.reasoning, self.eos, self.script, self.content = FAMILIES[name]
        self.ssl = client_ssl_context(ca, certs["client_cert"], certs["client_key"])
        self.client = openai.OpenAI(base_url=f"https://{listener.host}:{listener.port}/v1", api_key="unused",
                                    max_retries=0, timeout=60, http_client=openai.DefaultHttpxClient(verify=self.ssl))

    @property
    def family(self) -> str:
        return self.ctx.servings.chat.family

    def say(self, text: str) -> "FamilyServer":
        self.engine.script = text
        return self

    def create(self, **kw) -> tuple[dict, ChatCompletion]:
        raw = self.client.chat.completions.with_raw_response.create(**request(self.ctx.model_name, **kw))
        assert raw.status_code == 200, raw.text
        return raw.http_response.json(), raw.parse()

    def stream(self, **kw) -> list:
        """The SSE events as sent (dicts, then "[DONE]"); every chunk must also parse as the client's type."""
        events = []
        with self.client.chat.completions.with_streaming_response.create(
                stream=True, **request(self.ctx.model_name, **kw)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if not line:
                    continue
                assert line.startswith("data: "), line
                payload = line[len("data: "):]
                events.append("[DONE]" if payload == "[DONE]" else json.loads(payload))
        for ev in events[:-1]:
            assert ev != "[DONE]", "[DONE] before the end"
            ChatCompletionChunk.model_validate(ev)
        return events


def request(model: str, **kw) -> dict:
    extra = kw.pop("extra_body", None) or {}
    for k in ("skip_special_tokens", "separate_reasoning"):
        if k in kw:
            extra[k] = kw.pop(k)
    d = dict(model=model, messages=MESSAGES, tools=TOOLS)
    d.update(kw)
    if extra:
        d["extra_body"] = extra
    return d


@pytest.fixture(scope="module")
def wiring(tmp_path_factory):
    """servers(name) -> a FamilyServer, built once per module per family case."""
    home = tmp_path_factory.mktemp("wiring_home")
    certs = gen_certs(home, in_process=True)
    tok = load_test_tokenizer()
    real_guided = guided_pkg.GuidedDecoding
    shared: dict = {}

    def one_guided_per_tokenizer(hf, **kw):  # ~4 s to build: the daemon builds one, this module would build 14
        if id(hf) not in shared:
            shared[id(hf)] = real_guided(hf, **kw)
        return shared[id(hf)]

    mp = pytest.MonkeyPatch()
    mp.setattr(guided_pkg, "GuidedDecoding", one_guided_per_tokenizer)
    lt = LoopThread()
    servers: dict[str, FamilyServer] = {}

    def get(name: str) -> FamilyServer:
        if name in servers:
            return servers[name]
        model_type, parser, reasoning, eos, script, _ = FAMILIES[name]
        model_dir = home / "models" / model_type
        model_dir.mkdir(parents=True, exist_ok=True)
        hf_config = {"model_type": model_type, "vocab_size": len(tok)}
        (model_dir / "config.json").write_text(json.dumps(hf_config))
        cfg = make_config(model_dir, ports=free_ports(3), model={
            "modelName": f"wiring-{name}".replace("_", "-"),
            "models": {model_type: {"tool_call_options": {"tool_call_parser": parser},
                                    "enable_reasoning": reasoning}}})
        assert cfg["ServerConfig"]["httpsEnabled"] is True
        path = home / "conf" / f"{name}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(cfg, ensure_ascii=False))
        loaded = load_config(str(path), env={"MINDIE_LLM_HOME_PATH": str(home)})
        engine = FakeEngine(tok, script, eos=eos)
        backend = Backend(tokenizer=tok, hf_config=hf_config, model_type=model_type, model_path=model_dir,
                          tokenizer_dir=str(QWEN_TOKENIZER), engine=engine)
        server = Server(build_context(loaded, backend, to_engine_config(loaded)), ROUTES, ssl_factory(loaded))
        lt.run(server.start())
        servers[name] = FamilyServer(name, server, engine, certs["ca"], certs)
        return servers[name]

    yield get
    for s in servers.values():
        s.client.close()
        lt.run(s.server.stop())
    lt.close()
    mp.undo()


# ------------------------------------------------------------------------------------------------ checks
def check_calls(calls: list[dict], family: str, expected=CALLS) -> None:
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == list(expected)
    for c in calls:
        assert c["type"] == "function"
        pattern = {"mistral": r"[A-Za-z0-9]{9}", "kimi_k2": r"functions\.[a-z_]+:[0-9]+"}.get(family,
                                                                                          r"call_[A-Za-z0-9]{8}")
        assert re.fullmatch(pattern, c["id"]), c["id"]
        assert "\\u" not in c["function"]["arguments"]   # Unicode kept as is


def reassemble(events: list) -> dict:
    """The SSE events of one choice → {role, content, reasoning_content, tool_calls, finish_reason}, checking
    the stream's shape on the way: one id, role first, finish_reason in the last choice chunk only, `[DONE]`
    last (ids and names sent once: serving_fakes.reassemble)."""
    assert events[-1] == "[DONE]"
    chunks = [ev for ev in events[:-1] if ev["choices"]]
    assert all(ev["object"] == "chat.completion.chunk" for ev in events[:-1])
    assert len({ev["id"] for ev in events[:-1]}) == 1
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert all(ch["choices"][0]["delta"].get("role") is None for ch in chunks[1:])
    assert [ch["choices"][0]["finish_reason"] is not None for ch in chunks] == [False] * (len(chunks) - 1) + [True]
    assert all(ch["choices"][0]["index"] == 0 for ch in chunks)
    return reassemble_choice(events)


def functions(calls) -> list[dict]:
    return [c["function"] for c in calls]


# ------------------------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("skip_special", [True, False], ids=["skip_special", "keep_special"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_calls_streaming_and_not(wiring, name, skip_special):
    srv = wiring(name)
    srv.say(srv.script)
    assert srv.family == {"hermes": "qwen3", "llama3_python_tag": "llama3", "llama3_json": "llama3"}.get(name, name)
    body, parsed = srv.create(skip_special_tokens=skip_special)
    ch = body["choices"][0]
    assert ch["finish_reason"] == "tool_calls", ch
    msg = ch["message"]
    assert msg["role"] == "assistant" and msg["content"] == srv.content, msg
    check_calls(msg["tool_calls"], srv.family)
    check_clean(msg["content"])
    assert not MARKER_RE.search(msg["content"])
    assert body["usage"]["completion_tokens"] > 0
    if srv.reasoning:
        assert "only a thought" in msg["reasoning_content"]
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    else:
        assert msg.get("reasoning_content") is None
    # the official client reads the same answer
    pmsg = parsed.choices[0].message
    assert parsed.choices[0].finish_reason == "tool_calls" and pmsg.content == srv.content
    assert [(c.id, c.function.name, c.function.arguments) for c in pmsg.tool_calls] == \
        [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]]

    smsg = reassemble(srv.stream(skip_special_tokens=skip_special))
    assert smsg["finish_reason"] == "tool_calls"
    assert functions(smsg["tool_calls"]) == functions(msg["tool_calls"])   # the same arguments strings
    check_calls(smsg["tool_calls"], srv.family)
    assert smsg["content"] == msg["content"]
    assert smsg["reasoning_content"] == msg.get("reasoning_content")
    check_clean(smsg["content"])
    check_clean(smsg["reasoning_content"])


def test_the_official_client_streams_the_calls(wiring):
    """The client's own stream iterator (not just our SSE reader) reassembles the same calls."""
    srv = wiring("deepseek_v3")
    srv.say(srv.script)
    body, _ = srv.create()
    calls: dict[int, dict] = {}
    content, finish = "", None
    for chunk in srv.client.chat.completions.create(**request(srv.ctx.model_name, stream=True)):
        for ch in chunk.choices:
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                c["name"] += (tc.function.name or "") if tc.function else ""
                c["arguments"] += (tc.function.arguments or "") if tc.function else ""
    assert finish == "tool_calls" and content == CONTENT
    assert [calls[i] for i in sorted(calls)] == functions(body["choices"][0]["message"]["tool_calls"])


def plain_text(tok, script: str, skip_special: bool) -> str:
    """What the client must see when the call is not parsed: the text, less the special tokens when skipped."""
    return tok.decode(tok.encode(script, add_special_tokens=False), skip_special_tokens=skip_special)


@pytest.mark.parametrize("skip_special", [True, False], ids=["skip_special", "keep_special"])
@pytest.mark.parametrize("name", [n for n in FAMILIES if not FAMILIES[n].reasoning])
def test_tool_choice_none_is_plain_content(wiring, name, skip_special):
    srv = wiring(name)
    srv.say(srv.script)
    expected = plain_text(srv.engine.tok, srv.script, skip_special)
    if not skip_special:
        assert expected == srv.script      # the markers as text, exactly what the model wrote
    body, parsed = srv.create(tool_choice="none", skip_special_tokens=skip_special)
    ch = body["choices"][0]
    assert ch["finish_reason"] == "stop" and ch["message"]["tool_calls"] == [] and not parsed.choices[0].message.tool_calls
    assert ch["message"]["content"] == expected
    assert "get_weather" in ch["message"]["content"]
    check_clean(ch["message"]["content"])
    smsg = reassemble(srv.stream(tool_choice="none", skip_special_tokens=skip_special))
    assert smsg["finish_reason"] == "stop" and smsg["tool_calls"] == []
    assert smsg["content"] == expected


def test_tool_choice_none_with_reasoning(wiring):
    srv = wiring("qwen3")
    srv.say(srv.script)
    body, _ = srv.create(tool_choice="none")
    msg = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "stop" and msg["tool_calls"] == []
    assert msg["reasoning_content"].strip() == THOUGHT
    assert msg["content"].strip() == CONTENT + "\n" + hermes_calls()   # the call after </think>, as text
    smsg = reassemble(srv.stream(tool_choice="none"))
    assert (smsg["content"], smsg["reasoning_content"], smsg["tool_calls"]) == (msg["content"],
                                                                                msg["reasoning_content"], [])


@pytest.mark.parametrize("case", ["qwen3_config", "deepseek_r1_request"])
def test_reasoning_then_tools(wiring, case):
    """Reasoning first: the think text is reasoning_content; a call written inside it is not parsed (here
    get_time with tz UTC), the calls after </think> are; reasoning tokens are counted."""
    if case == "qwen3_config":   # enable_reasoning in the config's models.qwen3 block
        srv, kw, content = wiring("qwen3").say(FAMILIES["qwen3"].text), {}, CONTENT
    else:                        # DeepSeek-R1 style: reasoning asked for by the request
        srv, kw, content = wiring("deepseek_v3").say(R1_SCRIPT), {"separate_reasoning": True}, ""
    for include_usage in (False, True):
        body, parsed = srv.create(**kw)
        msg = body["choices"][0]["message"]
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        assert "is only a thought" in msg["reasoning_content"] and "UTC" in msg["reasoning_content"]
        check_calls(msg["tool_calls"], srv.family)             # not the UTC one
        assert msg["content"] == content
        check_clean(msg["reasoning_content"])
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] > 10
        assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] < body["usage"]["completion_tokens"]
        assert parsed.choices[0].message.model_extra["reasoning_content"] == msg["reasoning_content"]

        events = srv.stream(stream_options={"include_usage": include_usage}, **kw)
        smsg = reassemble(events)
        assert smsg["reasoning_content"] == msg["reasoning_content"]
        assert functions(smsg["tool_calls"]) == functions(msg["tool_calls"])
        assert smsg["content"] == msg["content"] and smsg["finish_reason"] == "tool_calls"
        if include_usage:
            assert events[-2]["choices"] == [] and events[-2]["usage"] == body["usage"]
        else:
            assert all("usage" not in ev or ev["usage"] is None for ev in events[:-1])


def test_reasoning_off_by_request_leaves_think_in_content(wiring):
    """separate_reasoning: false on a reasoning model: no reasoning_content; the calls are still parsed."""
    srv = wiring("qwen3")
    srv.say(srv.script)
    body, _ = srv.create(separate_reasoning=False)
    msg = body["choices"][0]["message"]
    assert msg.get("reasoning_content") is None
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    assert "only a thought" in msg["content"]
    smsg = reassemble(srv.stream(separate_reasoning=False))
    assert functions(smsg["tool_calls"]) == functions(msg["tool_calls"]) and smsg["content"] == msg["content"]


@pytest.mark.parametrize("name", ["qwen2_5", "llama3_python_tag", "deepseek_v31", "glm4", "mistral"])
def test_end_of_turn_tokens_never_reach_content(wiring, name):
    """A plain answer ending with the family's end-of-turn token, special tokens kept or not."""
    srv = wiring(name)
    srv.say("The weather is fine.")
    for skip in (True, False):
        body, _ = srv.create(skip_special_tokens=skip)
        ch = body["choices"][0]
        assert ch["message"]["content"] == "The weather is fine." and ch["finish_reason"] == "stop"
        smsg = reassemble(srv.stream(skip_special_tokens=skip))
        assert smsg["content"] == "The weather is fine." and smsg["finish_reason"] == "stop"
