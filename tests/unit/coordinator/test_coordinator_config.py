"""conf/ms_coordinator.json: the refusal lines of bad files, the algorithm mapping onto the gateway's policies, and
what the TLS front's generated config enforces (client certificates, CRLs, the predict port without /workers)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from mindie_like.config.loader import ConfigError
from mindie_like.coordinator.config import load_coordinator_config
from mindie_like.coordinator.launch import find_nginx, gateway_argv, nginx_conf
from mindie_like.server import certgen

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("coord_home")
    certgen.generate(h)
    return h


def write(home: Path, cfg: dict) -> Path:
    (home / "conf").mkdir(exist_ok=True)
    p = home / "conf" / "ms_coordinator.json"
    p.write_text(json.dumps(cfg))
    p.chmod(0o640)
    return p


def default() -> dict:
    return json.loads((REPO / "conf" / "ms_coordinator.json").read_text())


def refusals(home: Path, cfg: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_coordinator_config(str(write(home, cfg)))
    return e.value.lines


def test_the_shipped_file_is_valid(home):
    loaded = load_coordinator_config(str(write(home, default())))
    assert loaded.config.policy == "round_robin"
    assert loaded.tls_files("mindie_client").cert == home / "security/client/client.pem"


@pytest.mark.parametrize("algorithm,policy", [("round_robin", "round_robin"), ("load_balance", "power_of_two"),
                                              ("cache_affinity", "cache_aware")])
def test_algorithms_map_onto_gateway_policies(home, algorithm, policy):
    cfg = default()
    cfg["digs_scheduler_config"]["algorithm_type"] = algorithm
    cfg["instances"]["urls"].append("https://127.0.0.1:1125")
    loaded = load_coordinator_config(str(write(home, cfg)))
    argv = gateway_argv("smg", loaded, 4000, "k", 4001)
    assert argv[argv.index("--policy") + 1] == policy
    assert argv[argv.index("--worker-urls") + 1] == "https://127.0.0.1:1025"
    assert argv[argv.index("--client-cert-path") + 1] == str(home / "security/client/client.pem")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"        # the gateway itself is reachable on loopback only
    assert argv[argv.index("--prometheus-host") + 1] == "127.0.0.1"


def test_refusal_lines(home):
    cfg = default()
    cfg["http_config"].update(predict_port="80")
    cfg["digs_scheduler_config"]["algorithm_type"] = "fastest"
    cfg["exception_config"]["max_retry"] = -1
    cfg["request_limit"]["body_limit"] = "ten"
    cfg["instances"]["urls"] = ["127.0.0.1:1025", "https://127.0.0.1:1025/v1"]
    assert refusals(home, cfg) == [
        'http_config.predict_port: 80 is not in [1024, 65535]',
        'request_limit.body_limit: "ten" is not an integer',
        'exception_config.max_retry: -1 is not in [0, 100]',
        'digs_scheduler_config.algorithm_type: "fastest" is not one of "round_robin", "load_balance", '
        '"cache_affinity"',
        'instances.urls[0]: "127.0.0.1:1025" is not a URL of the form https://<host>:<business port>',
        'instances.urls[1]: "https://127.0.0.1:1025/v1" is not a URL of the form https://<host>:<business port>',
    ]
    cfg = default()
    cfg["http_config"]["manage_ip"] = "0.0.0.0"
    assert refusals(home, cfg) == ["http_config.manage_ip: 0.0.0.0 listens on every address; set "
                                   "allow_all_zero_ip_listening to true to allow it"]


def test_tls_refusals(home):
    cfg = default()
    cfg["tls_config"]["request_server_tls_items"]["ca_cert"] = "security/ca/nope.pem"
    cfg["tls_config"]["controller_server_tls_items"]["tls_key"] = "../outside.pem"
    lines = refusals(home, cfg)
    assert lines == ['tls_config.request_server_tls_items.ca_cert: "security/ca/nope.pem": file not found',
                     f'tls_config.controller_server_tls_items.tls_key: "../outside.pem" climbs out of the home '
                     f'directory {home.resolve()}']
    cfg = default()
    cfg["tls_config"]["mindie_client_tls_items"]["tls_crl"] = "security/certs/server_crl.pem"
    cfg["tls_config"]["controller_server_tls_items"]["tls_cert"] = ""
    assert refusals(home, cfg) == [
        "tls_config.controller_server_tls_items.tls_cert: missing; controller_server_tls_enable is true"]
    cfg["tls_config"]["controller_server_tls_items"]["tls_cert"] = "security/certs/management/server.pem"
    assert refusals(home, cfg) == [
        "tls_config.mindie_client_tls_items.tls_crl: the gateway cannot check instance certificates against a CRL; "
        "leave it empty and revoke by reissuing the instances' CA"]
    cfg = default()
    cfg["tls_config"]["mindie_client_tls_items"]["tls_passwd"] = "security/pass/key_pwd.txt"
    assert refusals(home, cfg) == [
        "tls_config.mindie_client_tls_items.tls_passwd: the gateway reads an unencrypted client key only; leave it "
        "empty and keep the key file private (mode 600)"]
    cfg = default()
    cfg["tls_config"]["mindie_client_tls_enable"] = False
    assert refusals(home, cfg) == ['instances.urls[0]: "https://127.0.0.1:1025" must start with http:// '
                                   '(tls_config.mindie_client_tls_enable is false)']
    cfg = default()
    cfg["digs_scheduler_config"]["algorithm_type"] = "load_balance"       # smg refuses power_of_two with one
    assert refusals(home, cfg) == ['digs_scheduler_config.algorithm_type: "load_balance" (the gateway\'s '
                                   'power_of_two) needs at least 2 instances in instances.urls; use "round_robin" '
                                   'for one']
    cfg = default()
    cfg["digs_scheduler_config"]["deploy_mode"] = "pd_separate"
    assert refusals(home, cfg) == ['digs_scheduler_config.deploy_mode: "pd_separate" (prefill/decode '
                                   'disaggregation) is not supported; use "single_node"']


def test_bin_ms_coordinator_prints_the_refusals_and_exits_2(home):
    cfg = default()
    cfg["http_config"]["manage_port"] = cfg["http_config"]["predict_port"]
    p = subprocess.run([str(REPO / "bin" / "ms_coordinator"), "--config-file", str(write(home, cfg))],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "http_config.manage_port: 1035 is the predict port too; the manage port must be its own"]
    p = subprocess.run([str(REPO / "bin" / "ms_coordinator"), "--config-file", str(write(home, default())),
                        "127.0.0.1", "99999", "127.0.0.1", "1036"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["http_config.predict_port: 99999 is not in [1024, 65535]"]


def test_the_tls_front_requires_client_certificates_and_keeps_workers_off_the_predict_port(home, tmp_path):
    loaded = load_coordinator_config(str(write(home, default())))
    conf = nginx_conf(loaded, tmp_path, 4000, "secret-admin-key", 4001)
    predict, manage = conf.split("    server {")[1:]
    for block, side in ((predict, ""), (manage, "management/")):
        assert "ssl_verify_client on;" in block
        assert f"ssl_client_certificate {home / 'security/ca'}/" in block
        assert "ssl_crl " in block
    assert "location /workers" not in predict and "secret-admin-key" not in predict
    assert 'proxy_set_header Authorization "Bearer secret-admin-key";' in manage
    nginx = find_nginx()
    if nginx is None:
        pytest.skip("nginx is not installed: the generated file was not syntax-checked")
    (tmp_path / "nginx.conf").write_text(conf)
    p = subprocess.run([nginx, "-t", "-q", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
