"""conf/ms_coordinator.json: MindIE MS's coordinator sections, validated, plus our `instances` extension.

    cfg = load_coordinator_config(path)      # raises ConfigError(lines): one line per refusal, `<key>: <why>`
    cfg.config -> CoordinatorConfig, cfg.home -> Path (relative TLS paths resolve against it)

MindIE's own keys that the gateway has no counterpart for (alarm/external/status ports, thread counts, metrics and
log-file settings, the digs tuning numbers) are accepted and ignored, as MindIE's sample files carry them.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from pydantic import model_validator

from ..config.loader import ConfigError, format_validation_error, read_config_file, resolve_path
from ..config.schema import _show, in_range, one_of

ENV_CONFIG = "MINDIE_MS_COORDINATOR_CONFIG_FILE_PATH"     # MindIE's own variable for this file
INSTALL_ROOT = Path(__file__).resolve().parents[2]

ALGORITHMS = {"round_robin": "round_robin", "load_balance": "power_of_two", "cache_affinity": "cache_aware"}


def _port_value(v):
    """MindIE writes ports as strings ("1025"); numbers are taken too."""
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{_show(v)} is not a port number")
    return v


Port = Annotated[int, BeforeValidator(_port_value), in_range(1024, 65535)]


def _ip(v):
    if not isinstance(v, str):
        raise ValueError(f"{_show(v)} is not an IP address")
    try:
        ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(f"{_show(v)} is not an IP address") from None
    return v


IP = Annotated[str, BeforeValidator(_ip)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class HttpConfig(_Section):
    allow_all_zero_ip_listening: StrictBool = False
    predict_ip: IP = "127.0.0.1"
    predict_port: Port = 1025
    manage_ip: IP = "127.0.0.1"
    manage_port: Port = 1026
    http_timeout_seconds: Annotated[StrictInt, in_range(1, 3600)] = 600
    keep_alive_seconds: Annotated[StrictInt, in_range(1, 3600)] = 180

    @model_validator(mode="after")
    def _addresses(self):
        for key in ("predict_ip", "manage_ip"):
            if ipaddress.ip_address(getattr(self, key)).is_unspecified and not self.allow_all_zero_ip_listening:
                raise ValueError(f"@{key}: {getattr(self, key)} listens on every address; set "
                                 f"allow_all_zero_ip_listening to true to allow it")
        if (self.predict_ip, self.predict_port) == (self.manage_ip, self.manage_port):
            raise ValueError(f"@manage_port: {self.manage_port} is the predict port too; the manage port must be "
                             f"its own")
        return self


class RequestLimit(_Section):
    single_node_max_requests: Annotated[StrictInt, in_range(1, 100000)] = 1000
    max_requests: Annotated[StrictInt, in_range(1, 100000)] = 10000
    body_limit: Annotated[StrictInt, in_range(1, 100)] = 10          # MB


class ExceptionConfig(_Section):
    max_retry: Annotated[StrictInt, in_range(0, 100)] = 5
    schedule_timeout: Annotated[StrictInt, in_range(1, 3600)] = 600
    first_token_timeout: Annotated[StrictInt, in_range(1, 3600)] = 600
    infer_timeout: Annotated[StrictInt, in_range(1, 65535)] = 600
    tokenizer_timeout: Annotated[StrictInt, in_range(1, 3600)] = 300


class DigsSchedulerConfig(_Section):
    deploy_mode: Annotated[StrictStr, one_of("single_node", "pd_separate")] = "single_node"
    algorithm_type: Annotated[StrictStr, one_of(*ALGORITHMS)] = "load_balance"

    @model_validator(mode="after")
    def _mode(self):
        if self.deploy_mode == "pd_separate":
            raise ValueError("@deploy_mode: \"pd_separate\" (prefill/decode disaggregation) is not supported; "
                             "use \"single_node\"")
        return self


class TlsItems(_Section):
    ca_cert: StrictStr = ""
    tls_cert: StrictStr = ""
    tls_key: StrictStr = ""
    tls_passwd: StrictStr = ""
    tls_crl: StrictStr = ""


class TlsConfig(_Section):
    request_server_tls_enable: StrictBool = True          # clients -> predict port
    request_server_tls_items: TlsItems = Field(default_factory=TlsItems)
    controller_server_tls_enable: StrictBool = True       # operators / a controller -> manage port
    controller_server_tls_items: TlsItems = Field(default_factory=TlsItems)
    mindie_client_tls_enable: StrictBool = True           # coordinator -> instances
    mindie_client_tls_items: TlsItems = Field(default_factory=TlsItems)

    @model_validator(mode="after")
    def _items(self):
        for side in ("request_server", "controller_server", "mindie_client"):
            if not getattr(self, f"{side}_tls_enable"):
                continue
            items: TlsItems = getattr(self, f"{side}_tls_items")
            for key in ("ca_cert", "tls_cert", "tls_key"):
                if not getattr(items, key):
                    raise ValueError(f"@{side}_tls_items.{key}: missing; {side}_tls_enable is true")
        if self.mindie_client_tls_enable and self.mindie_client_tls_items.tls_passwd:
            raise ValueError("@mindie_client_tls_items.tls_passwd: the gateway reads an unencrypted client key "
                             "only; leave it empty and keep the key file private (mode 600)")
        if self.mindie_client_tls_enable and self.mindie_client_tls_items.tls_crl:
            raise ValueError("@mindie_client_tls_items.tls_crl: the gateway cannot check instance certificates "
                             "against a CRL; leave it empty and revoke by reissuing the instances' CA")
        return self


def _instance_url(v):
    if not isinstance(v, str):
        raise ValueError(f"{_show(v)} is not a URL")
    u = urlsplit(v)
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme not in ("http", "https") or not u.hostname or not port or u.path not in ("", "/"):
        raise ValueError(f"{_show(v)} is not a URL of the form https://<host>:<business port>")
    return v.rstrip("/")


class KubernetesDiscovery(_Section):
    """The gateway's pod discovery: instances are the pods whose labels match `selector`."""
    selector: dict[StrictStr, StrictStr] = Field(min_length=1)
    namespace: Optional[StrictStr] = None
    port: Port = 1025


class Instances(_Section):
    """Our extension: MindIE's controller registers instances; here they are listed (or discovered)."""
    urls: list[Annotated[str, BeforeValidator(_instance_url)]] = Field(default_factory=list)
    health_check_interval_seconds: Annotated[StrictInt, in_range(1, 3600)] = 10
    health_check_timeout_seconds: Annotated[StrictInt, in_range(1, 600)] = 5
    health_failure_threshold: Annotated[StrictInt, in_range(1, 100)] = 3
    kubernetes: Optional[KubernetesDiscovery] = None
    shutdown_grace_seconds: Annotated[StrictInt, in_range(1, 3600)] = 30


class LogInfo(_Section):
    log_level: Annotated[StrictStr, one_of("DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL")] = "INFO"


class CoordinatorConfig(_Section):
    http_config: HttpConfig = Field(default_factory=HttpConfig)
    request_limit: RequestLimit = Field(default_factory=RequestLimit)
    exception_config: ExceptionConfig = Field(default_factory=ExceptionConfig)
    digs_scheduler_config: DigsSchedulerConfig = Field(default_factory=DigsSchedulerConfig)
    tls_config: TlsConfig = Field(default_factory=TlsConfig)
    log_info: LogInfo = Field(default_factory=LogInfo)
    instances: Instances = Field(default_factory=Instances)

    @model_validator(mode="after")
    def _instances(self):
        scheme = "https" if self.tls_config.mindie_client_tls_enable else "http"
        for i, url in enumerate(self.instances.urls):
            if not url.startswith(scheme + "://"):
                raise ValueError(f"@instances.urls[{i}]: {_show(url)} must start with {scheme}:// "
                                 f"(tls_config.mindie_client_tls_enable is "
                                 f"{str(self.tls_config.mindie_client_tls_enable).lower()})")
        if self.policy == "power_of_two" and len(self.instances.urls) < 2 and self.instances.kubernetes is None:
            raise ValueError("@digs_scheduler_config.algorithm_type: \"load_balance\" (the gateway's power_of_two) "
                             "needs at least 2 instances in instances.urls; use \"round_robin\" for one")
        return self

    @property
    def policy(self) -> str:
        return ALGORITHMS[self.digs_scheduler_config.algorithm_type]


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    passwd: Optional[Path] = None
    crl: Optional[Path] = None


@dataclass
class LoadedCoordinatorConfig:
    config: CoordinatorConfig
    path: Path
    home: Path
    tls: dict = field(default_factory=dict)      # side -> TlsFiles, for the enabled sides
    warnings: list = field(default_factory=list)  # e.g. a config file that others may write

    def tls_files(self, side: str) -> Optional[TlsFiles]:
        return self.tls.get(side)


def find_path(cli_path: Optional[str], env: Optional[dict] = None) -> Path:
    """--config-file → MINDIE_MS_COORDINATOR_CONFIG_FILE_PATH → the install's conf/ms_coordinator.json."""
    env = os.environ if env is None else env
    if cli_path:
        return Path(cli_path).expanduser().resolve()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser().resolve()
    return INSTALL_ROOT / "conf" / "ms_coordinator.json"


def _resolve_tls(cfg: CoordinatorConfig, home: Path) -> tuple[dict, list[str]]:
    out, errors = {}, []
    t = cfg.tls_config
    for side in ("request_server", "controller_server", "mindie_client"):
        if not getattr(t, f"{side}_tls_enable"):
            continue
        items: TlsItems = getattr(t, f"{side}_tls_items")
        paths = {}
        for key in ("ca_cert", "tls_cert", "tls_key", "tls_passwd", "tls_crl"):
            value = getattr(items, key)
            if not value:
                continue
            where = f"tls_config.{side}_tls_items.{key}"
            try:
                p = resolve_path(home, value, where)
            except ConfigError as e:
                errors += e.lines
                continue
            if not p.is_file():
                errors.append(f"{where}: {_show(value)}: file not found")
            paths[key] = p
        if len(paths) >= 3 and all(k in paths for k in ("ca_cert", "tls_cert", "tls_key")):
            out[side] = TlsFiles(paths["ca_cert"], paths["tls_cert"], paths["tls_key"], paths.get("tls_passwd"),
                                 paths.get("tls_crl"))
    return out, errors


def load_coordinator_config(cli_path: Optional[str] = None, *, env: Optional[dict] = None) -> LoadedCoordinatorConfig:
    path = find_path(cli_path, env)
    data, warnings = read_config_file(path)
    try:
        cfg = CoordinatorConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    home = path.parent.parent if path.parent.name == "conf" else path.parent
    tls, errors = _resolve_tls(cfg, home.resolve())
    if errors:
        raise ConfigError(errors)
    return LoadedCoordinatorConfig(cfg, path, home.resolve(), tls, warnings)
