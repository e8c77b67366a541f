"""Security of the real daemon, beyond tests/e2e/test_daemon.py (no certificate, another CA, revoked): expired,
not-yet-valid and server-purpose client certificates, clients that offer only TLS 1.0/1.1, hostile chat templates,
config paths that try to leave the home directory, loose private-key permissions, and prompts/outputs kept out
of INFO logs."""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid

import pytest

from mindie_like.server import certgen

from .conftest import daemon_env, new_daemon

CANARY = "canary-" + uuid.uuid4().hex           # in the daemon's environment: must never reach a client
NORMAL = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# What a hostile template does, picked by the last user message (one daemon serves them all)
ATTACKS = {
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.environ }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].environ }}",
    "template reference": "{{ self._TemplateReference__context }}",
    "attr filter": "{{ (messages|attr('__class__')).__init__.__globals__ }}",
    "format string": "{{ '{0.__class__.__init__.__globals__}'.format(messages) }}",
    "include a file": "{% include '/etc/passwd' %}",
    "import os": "{% import 'os' as os %}{{ os.environ }}",
    "environ global": "{{ environ }}{{ os }}{{ config }}{{ request }}",
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string bomb": "{{ 'x' * 10000000000 }}",
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
}


def hostile_template() -> str:
    branches = "".join(f"{{% elif messages[-1].content == {json.dumps(name)} %}}{body}"
                       for name, body in ATTACKS.items())
    return "{% if false %}" + branches + "{% else %}" + NORMAL + "{% endif %}"


@pytest.fixture(scope="module")
def d(daemon_factory, tiny_model, tmp_path_factory):
    template = tmp_path_factory.mktemp("tpl") / "hostile.jinja"
    template.write_text(hostile_template())
    return daemon_factory(tiny_model("qwen2"), schedule={"maxIterTimes": 16},
                          model={"models": {"qwen2": {"chat_template": str(template)}}},
                          env={"MINDIE_LOG_LEVEL": "INFO", "MINDIE_LIKE_CANARY": CANARY})


def refused(d, ctx: ssl.SSLContext) -> str:
    """'' when the request went through; "tls" when the connection ended before any HTTP byte came back (the
    handshake failed, or the server closed it right after: TLS 1.3 checks the client certificate then); else
    what came back instead."""
    try:
        with socket.create_connection((d.host, d.port), timeout=30) as s:
            with ctx.wrap_socket(s, server_hostname=d.host) as t:
                t.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
                data = t.recv(4096)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return "tls"
    except OSError as e:                   # a timeout, a refused connection: not a TLS refusal
        return f"{type(e).__name__}: {e}"
    if data.startswith(b"HTTP/1.1 200"):
        return ""
    return "tls" if data == b"" else f"answered {data[:40]!r}"


def client_ctx(d, tmp_path, issued: certgen.Issued) -> ssl.SSLContext:
    cert = certgen.write_cert(tmp_path / "c.pem", issued.cert)
    key = certgen.write_key(tmp_path / "c.key.pem", issued.key)
    ctx = ssl.create_default_context(cafile=str(d.certs["ca"]))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def dev_ca(d) -> certgen.Issued:
    """The dev CA that signed the daemon's client certificates (bin/gen_certs keeps its key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    sec = d.home / "security"
    return certgen.Issued(x509.load_pem_x509_certificate((sec / "ca/ca.pem").read_bytes()),
                          serialization.load_pem_private_key((sec / "ca/private/ca.key.pem").read_bytes(), None))


# -- mutual TLS ------------------------------------------------------------------------------------------------
def test_the_good_client_certificate_gets_through(d):
    assert refused(d, d.ssl_context()) == ""


@pytest.mark.parametrize("kind", ["expired", "not yet valid", "server purpose only"])
def test_bad_client_certificates_from_the_right_ca_are_refused(d, tmp_path, kind):
    now = dt.datetime.now(dt.timezone.utc)
    ca = dev_ca(d)
    if kind == "expired":
        issued = certgen.issue_cert(ca, "old client", server=False, not_before=now - dt.timedelta(days=30),
                                    not_after=now - dt.timedelta(days=1))
    elif kind == "not yet valid":
        issued = certgen.issue_cert(ca, "future client", server=False, not_before=now + dt.timedelta(days=1),
                                    not_after=now + dt.timedelta(days=30))
    else:   # extendedKeyUsage serverAuth: not a client certificate
        issued = certgen.issue_cert(ca, "a server", server=True)
    assert refused(d, client_ctx(d, tmp_path, issued)) == "tls"
    assert refused(d, d.ssl_context()) == ""


def test_a_client_limited_to_tls_1_0_or_1_1_is_refused(d):
    """Through the ssl module: OpenSSL 3 may refuse to offer these versions at all; either way no connection."""
    ctx = d.ssl_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert refused(d, ctx) == "tls"


def _client_hello(version: tuple[int, int]) -> bytes:
    """A minimal ClientHello offering only `version` (and ciphers that exist there)."""
    ciphers = bytes.fromhex("c009c00ac013c014002f0035000a")   # ECDHE-ECDSA/RSA-AES-SHA, AES-SHA, 3DES
    body = bytes(version) + os.urandom(32) + b"\x00" + struct.pack(">H", len(ciphers)) + ciphers + b"\x01\x00"
    handshake = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(handshake)) + handshake


@pytest.mark.parametrize("version", [(3, 1), (3, 2)], ids=["TLS 1.0", "TLS 1.1"])
def test_raw_tls_1_0_and_1_1_hellos_get_a_protocol_version_alert(d, version):
    """A hand-written ClientHello, so the old version really is offered whatever the local OpenSSL allows."""
    with socket.create_connection((d.host, d.port), timeout=30) as s:
        s.sendall(_client_hello(version))
        answer = b""
        try:
            while len(answer) < 7 and (chunk := s.recv(64)):
                answer += chunk
        except ConnectionResetError:
            pass
    print(f"answer to a {version} hello: {answer.hex()}")
    assert not answer.startswith(b"\x16"), "the daemon answered with a ServerHello"
    if answer:       # an alert record: level fatal (2), description protocol_version (70); asyncio's TLS layer
        # usually closes without flushing the alert, so an empty answer is what a client mostly sees
        assert answer[0] == 0x15 and answer[5:7] == b"\x02\x46", answer.hex()


# -- hostile chat templates ------------------------------------------------------------------------------------
def _leaks(text: str) -> list[str]:
    needles = [CANARY, "root:x:0", "<class", "subclasses", "__globals__", "environ(", "PATH=", "/usr/bin",
               "Traceback", "os.py", "<module"]
    return [n for n in needles if n in text]


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a != "nested loops"])   # that one: the next test
def test_hostile_template_fails_safely(d, attack):
    body = {"model": d.model_name, "messages": [{"role": "user", "content": attack}], "max_tokens": 4}
    t0 = time.perf_counter()
    status, raw = d.request("POST", "/v1/chat/completions", body, timeout=120)
    print(f"MEASURE template attack {attack!r}: {status} in {time.perf_counter() - t0:.2f} s")
    text = raw.decode("utf-8", "replace")
    assert status == 422, text[:300]       # the template was stopped, or what it rendered is no usable prompt
    assert not _leaks(text), (_leaks(text), text[:500])
    err = json.loads(raw)
    assert err["error_type"] == "Input Validation Error"
    assert err["error"].startswith(("messages: the chat template", "prompt: ")), err
    assert d.proc.poll() is None
    assert refused(d, d.ssl_context()) == ""
    assert CANARY not in d.output


def test_the_daemon_keeps_answering_while_a_template_burns_its_budget(d):
    """The render runs off the event loop: other requests are answered while a hostile one spins."""
    body = {"model": d.model_name, "messages": [{"role": "user", "content": "nested loops"}], "max_tokens": 4}
    result = {}
    spinner = threading.Thread(target=lambda: result.update(r=d.request("POST", "/v1/chat/completions", body)))
    spinner.start()
    time.sleep(1.0)                     # the render is under way (it runs for MAX_RENDER_SECONDS = 10 s)
    answered = []
    for _ in range(3):
        status, _ = d.request("GET", "/v1/models")
        answered.append((status, spinner.is_alive()))
    spinner.join()
    assert answered == [(200, True)] * 3
    status, raw = result["r"]
    assert status == 422 and json.loads(raw)["error"].startswith("messages: the chat template")


# -- prompts and outputs stay out of INFO logs -----------------------------------------------------------------
def test_prompts_and_outputs_never_reach_info_logs(d):
    marker = "prompt-marker-" + uuid.uuid4().hex
    outputs = []
    for stream in (False, True):
        with d.openai_client() as client:
            if stream:
                chunks = client.chat.completions.create(model=d.model_name, stream=True, max_tokens=16, messages=[
                    {"role": "user", "content": f"say {marker}"}])
                outputs.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
            else:
                r = client.chat.completions.create(model=d.model_name, max_tokens=16, messages=[
                    {"role": "system", "content": marker}, {"role": "user", "content": f"say {marker}"}])
                outputs.append(r.choices[0].message.content)
            c = client.completions.create(model=d.model_name, prompt=f"complete {marker}", max_tokens=16)
            outputs.append(c.choices[0].text)
    status, _ = d.request("POST", "/v1/chat/completions", {"model": d.model_name, "temperature": -1, "messages": [
        {"role": "user", "content": marker}]})
    assert status == 422
    time.sleep(0.5)                     # let the log pump catch up
    log = d.output
    assert "[INFO]" in log and marker not in log
    for out in outputs:
        if len(out.strip()) >= 12:      # a distinctive output; tiny random models write short junk too
            assert out not in log, out


# -- config paths stay in the home directory -------------------------------------------------------------------
def check_config(h, *args, env=None) -> subprocess.CompletedProcess:
    conf = h.home / "conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "config.json").write_text(json.dumps(h.config))
    (conf / "config.json").chmod(0o640)
    return subprocess.run([sys.executable, "-m", "mindie_like.daemon", "--check-config", *args], cwd=str(h.home),
                          env=daemon_env(h.home, env), capture_output=True, text=True, timeout=120)


@pytest.fixture
def configured(tmp_path, tiny_model):
    return new_daemon(tmp_path / "home", tiny_model("qwen2"), in_process_certs=True)


@pytest.mark.parametrize("where,key", [
    ("model", "modelWeightPath"), ("template", "chat_template"), ("log", "logPath"), ("tls", "tlsCert"),
    ("env", "MINDIE_LOG_PATH"), ("symlink", "modelWeightPath"),
])
def test_relative_config_paths_cannot_leave_the_home_dir(configured, tmp_path, where, key):
    h, env = configured, None
    model = h.config["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
    if where == "model":
        model["modelWeightPath"] = "../../etc"
    elif where == "template":
        model["models"] = {"qwen2": {"chat_template": "../outside.jinja"}}
    elif where == "log":
        h.config["LogConfig"]["logPath"] = "../../outside.log"
        env = {"MINDIE_LOG_TO_FILE": "1"}
    elif where == "tls":
        h.config["ServerConfig"]["tlsCert"] = "security/../../server.pem"
    elif where == "env":
        env = {"MINDIE_LOG_TO_FILE": "1", "MINDIE_LOG_PATH": "../logs"}
    else:       # a relative path inside home that is a symbolic link to a folder outside
        (h.home / "models").symlink_to(model["modelWeightPath"], target_is_directory=True)
        model["modelWeightPath"] = "models"
    r = check_config(h, env=env)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    assert key in line and "climbs out of the home directory" in line, r.stderr


def test_absolute_paths_are_the_operators_choice(configured):
    assert os.path.isabs(configured.config["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]["modelWeightPath"])
    r = check_config(configured)
    assert r.returncode == 0, r.stderr


# -- private key permissions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("secret,key", [("keys/server.key.pem", "tlsPk"),
                                        pytest.param("pass/key_pwd.txt", "tlsPkPwd", marks=pytest.mark.exhaustive),
                                        pytest.param("keys/metrics/server.key.pem", "metricsTlsPk",
                                                     marks=pytest.mark.exhaustive)])
def test_loose_private_key_permissions_warn_and_strict_refuses(configured, secret, key):
    path = configured.home / "security" / secret
    path.chmod(0o644)
    r = check_config(configured)
    assert r.returncode == 0, r.stderr
    assert f"ServerConfig.{key}: {path} is readable by group or others (mode 644)" in r.stderr
    r = check_config(configured, "--strict-permissions")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"ServerConfig.{key}: {path} is readable by group or others "
                                             f"(mode 644); use chmod 600"]
    path.chmod(0o600)
    assert check_config(configured, "--strict-permissions").returncode == 0
