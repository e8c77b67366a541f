"""What ms_coordinator.json becomes: the gateway's command line and the TLS front's config file.

Two existing programs do the work; nothing here routes a request:
  * the SGLang Model Gateway (`smg launch`, from the `smg` wheel) routes, retries, health-checks the instances and
    reaches them over mutual TLS with the coordinator's client certificate. It listens on a loopback port only.
  * nginx terminates TLS on the predict and manage ports. The gateway's HTTPS listener cannot ask clients for a
    certificate (its rustls server config is built without a client verifier), so nginx does: `ssl_verify_client
    on` against the configured CA and CRL. nginx also keeps the planes apart: the predict port forwards the
    inference routes only; the manage port forwards everything with the gateway's admin key, which the gateway
    requires on /workers (control-plane auth). Clients never see that key.
"""
from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path
from typing import Optional

from .config import CoordinatorConfig, LoadedCoordinatorConfig, TlsFiles

ADMIN_KEY_ID = "ms_coordinator"

# Routes a client may reach on the predict port (prefix locations); the gateway answers the rest of /v1 itself.
PREDICT_PREFIXES = ("/v1/",)
PREDICT_EXACT = ("/health", "/readiness", "/liveness", "/generate")
# admin routes of the gateway under /v1 that stay off the predict port
PREDICT_DENIED = ("/v1/loads", "/v1/tokenizers", "/v1/rl")


def find_smg() -> Optional[str]:
    import sys
    cand = Path(sys.executable).parent / "smg"
    return str(cand) if cand.is_file() else shutil.which("smg")


def find_nginx() -> Optional[str]:
    for cand in ("nginx", "/usr/sbin/nginx"):
        p = shutil.which(cand) or (cand if Path(cand).is_file() else None)
        if p:
            return p
    return None


def gateway_argv(smg: str, loaded: LoadedCoordinatorConfig, port: int, admin_key: str, metrics_port: int) -> list[str]:
    """The gateway on loopback ports only: `port` for requests, `metrics_port` for its Prometheus metrics (nginx
    serves them on the manage port as /metrics)."""
    c: CoordinatorConfig = loaded.config
    ex, inst = c.exception_config, c.instances
    argv = [smg, "launch", "--host", "127.0.0.1", "--port", str(port),
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--policy", c.policy,
            "--max-payload-size", str(c.request_limit.body_limit * 1024 * 1024),
            "--max-concurrent-requests", str(c.request_limit.max_requests),
            "--queue-timeout-secs", str(ex.schedule_timeout),
            "--request-timeout-secs", str(ex.infer_timeout),
            "--health-check-endpoint", "/health",
            "--health-check-interval-secs", str(inst.health_check_interval_seconds),
            "--health-check-timeout-secs", str(inst.health_check_timeout_seconds),
            "--health-failure-threshold", str(inst.health_failure_threshold),
            "--shutdown-grace-period-secs", str(inst.shutdown_grace_seconds),
            "--log-level", {"WARNING": "warn", "CRITICAL": "error"}.get(c.log_info.log_level,
                                                                        c.log_info.log_level.lower()),
            "--control-plane-api-keys", f"{ADMIN_KEY_ID}:ms_coordinator manage port:admin:{admin_key}"]
    argv += ["--retry-max-retries", str(ex.max_retry)] if ex.max_retry else ["--disable-retries"]
    if c.policy == "power_of_two":
        argv += ["--power-of-two-load-metric", "requests"]
    if inst.urls:
        argv += ["--worker-urls", *inst.urls]
    if inst.kubernetes is not None:
        k = inst.kubernetes
        argv += ["--service-discovery", "--service-discovery-port", str(k.port),
                 "--selector", *[f"{a}={b}" for a, b in k.selector.items()]]
        if k.namespace:
            argv += ["--service-discovery-namespace", k.namespace]
    client: Optional[TlsFiles] = loaded.tls_files("mindie_client")
    if client is not None:
        argv += ["--client-cert-path", str(client.cert), "--client-key-path", str(client.key),
                 "--ca-cert-paths", str(client.ca)]
    return argv


def _listen(ip: str, port: int, tls: bool) -> str:
    host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    return f"listen {host}:{port}{' ssl' if tls else ''};"


def _tls_block(files: Optional[TlsFiles]) -> list[str]:
    if files is None:
        return []
    out = [f"ssl_certificate {files.cert};", f"ssl_certificate_key {files.key};",
           f"ssl_client_certificate {files.ca};", "ssl_verify_client on;", "ssl_verify_depth 4;",
           "ssl_protocols TLSv1.2 TLSv1.3;", "ssl_prefer_server_ciphers on;",
           "error_page 495 496 = @certificate_refused;"]
    if files.passwd:
        out.append(f"ssl_password_file {files.passwd};")
    if files.crl:
        out.append(f"ssl_crl {files.crl};")
    return out


def _json_return(status: int, message: str, kind: str) -> str:
    return f"return {status} '{{\"error\":\"{message}\",\"error_type\":\"{kind}\"}}';"


def nginx_conf(loaded: LoadedCoordinatorConfig, run_dir: Path, gateway_port: int, admin_key: str,
               metrics_port: int) -> str:
    c = loaded.config
    h, ex = c.http_config, c.exception_config
    req_tls, mgmt_tls = loaded.tls_files("request_server"), loaded.tls_files("controller_server")
    refused = ["location @certificate_refused {", "    default_type application/json;",
               "    " + _json_return(403, "Forbidden: a client certificate signed by the configured CA is required",
                                     "Forbidden"), "}"]

    def indent(lines, n=8):
        return "\n".join(" " * n + ln for ln in lines)

    predict_locations = []
    for p in PREDICT_DENIED:
        predict_locations += [f"location {p} {{", "    default_type application/json;",
                              "    " + _json_return(404, "Not Found: managed through the manage port", "Not Found"),
                              "}"]
    for p in PREDICT_PREFIXES:
        predict_locations += [f"location {p} {{", "    proxy_pass http://gateway;", "}"]
    for p in PREDICT_EXACT:
        predict_locations += [f"location = {p} {{", "    proxy_pass http://gateway;", "}"]
    predict_locations += ["location / {", "    default_type application/json;",
                          "    " + _json_return(404, "Not Found: no such route", "Not Found"), "}"]

    return f"""# written by bin/ms_coordinator from {loaded.path}; rewritten at every start
daemon off;
master_process on;
worker_processes 1;
pid {run_dir}/nginx.pid;
error_log stderr warn;
worker_shutdown_timeout {c.instances.shutdown_grace_seconds}s;
events {{
    worker_connections {min(65535, max(1024, 2 * c.request_limit.max_requests))};
}}
http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {run_dir}/client_body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    client_max_body_size {c.request_limit.body_limit}m;
    keepalive_timeout {h.keep_alive_seconds}s;
    # streamed answers go out token by token
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_request_buffering off;
    proxy_connect_timeout 10s;
    proxy_send_timeout {h.http_timeout_seconds}s;
    proxy_read_timeout {ex.first_token_timeout}s;
    upstream gateway {{
        server 127.0.0.1:{gateway_port};
        keepalive 64;
    }}
    server {{
        {_listen(h.predict_ip, h.predict_port, req_tls is not None)}
{indent(_tls_block(req_tls))}
        proxy_set_header Authorization $http_authorization;
{indent(refused)}
{indent(predict_locations)}
    }}
    server {{
        {_listen(h.manage_ip, h.manage_port, mgmt_tls is not None)}
{indent(_tls_block(mgmt_tls))}
{indent(refused)}
        location = /metrics {{
            proxy_pass http://127.0.0.1:{metrics_port}/metrics;
        }}
        location / {{
            proxy_pass http://gateway;
            proxy_set_header Authorization "Bearer {admin_key}";
        }}
    }}
}}
"""
