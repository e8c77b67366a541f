"""Finding, reading and validating the config file.

    cfg = load_config(path_arg)          # raises ConfigError(lines) on any problem
    cfg.config    -> MindIEConfig (validated, defaults filled, env overrides applied)
    cfg.home      -> Path (MINDIE_LLM_HOME_PATH, else the folder that holds conf/)
    cfg.path      -> Path of the file that was read
    cfg.resolve(value, key)  -> absolute Path (relative paths resolve against home and may not climb out: TLS files,
                                the weights, chat templates, the log file alike)

Every refusal is one line `<key path>: <value and what is allowed>`; the daemon prints the lines and exits 2.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from .schema import MindIEConfig, ModelEntry, TOP_LEVEL_MOVABLE, _show

log = logging.getLogger("mindie_like.config")

MAX_CONFIG_BYTES = 10 * 1024 * 1024
from ..paths import ENV_HOME, INSTALL_ROOT, find_gguf

ENV_CONFIG = "MIES_CONFIG_JSON_PATH"
ENV_IP = "MIES_CONTAINER_IP"
ENV_MGMT_IP = "MIES_CONTAINER_MANAGEMENT_IP"


class ConfigError(Exception):
    """An invalid config: `lines` are the one-line refusals to print (exit code 2)."""

    def __init__(self, lines: list[str] | str):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


@dataclass
class LoadedConfig:
    config: MindIEConfig
    path: Path
    home: Path
    warnings: list[str] = field(default_factory=list)
    strict_permissions: bool = False     # --strict-permissions: loose modes on the config or key files refuse

    def resolve(self, value: str, key: str) -> Path:
        return resolve_path(self.home, value, key)

    @property
    def model_path(self) -> Path:
        return self.resolve(self.config.model.modelWeightPath, MODEL_KEY + ".modelWeightPath")


# MindIE scheduler knobs this engine has no counterpart for: validated, then ignored (said once at start)
ACCEPTED_WITHOUT_EFFECT = ("ScheduleConfig.maxPreemptCount, maxQueueDelayMicroseconds and maxFirstTokenWaitTime are "
                           "accepted without effect: the scheduler forms a batch every step without waiting, and "
                           "preempts (recompute) whenever the KV cache is short, without a per-request limit")
MODEL_KEY = "BackendConfig.ModelDeployConfig.ModelConfig[0]"


def resolve_path(home: Path, value: str, key: str) -> Path:
    """Absolute paths are the operator's choice; relative ones resolve against `home` and may not climb out of it,
    by `..` or through a symbolic link (MindIE's rule for TLS paths, applied to every path the config names)."""
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return p
    home = Path(home).resolve()
    full = (home / p).resolve()
    if not full.is_relative_to(home):
        raise ConfigError(f"{key}: {_show(value)} climbs out of the home directory {home}")
    return full


def find_config_path(cli_path: Optional[str] = None, env: Optional[dict] = None) -> Path:
    """--config-file → MIES_CONFIG_JSON_PATH → $MINDIE_LLM_HOME_PATH/conf/config.json → the install's conf/."""
    env = os.environ if env is None else env
    if cli_path:
        return Path(cli_path).expanduser().resolve()
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser().resolve()
    if env.get(ENV_HOME):
        cand = Path(env[ENV_HOME]).expanduser() / "conf" / "config.json"
        if cand.is_file():
            return cand.resolve()
    return INSTALL_ROOT / "conf" / "config.json"


def home_dir(config_path: Path, env: Optional[dict] = None) -> Path:
    env = os.environ if env is None else env
    if env.get(ENV_HOME):
        return Path(env[ENV_HOME]).expanduser().resolve()
    if config_path.parent.name == "conf":
        return config_path.parent.parent.resolve()
    return INSTALL_ROOT


def read_config_file(path: Path, *, strict_permissions: bool = False) -> tuple[dict, list[str]]:
    warnings: list[str] = []
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config: {path}: file not found") from None
    except OSError as e:
        raise ConfigError(f"config: {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config: {path}: not a regular file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config: {path}: {st.st_size} bytes is more than the 10 MB limit")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        msg = f"config: {path}: group or others may write it (mode {stat.S_IMODE(st.st_mode):o}); use chmod 640"
        if strict_permissions:
            raise ConfigError(msg)
        warnings.append(msg)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config: {path}: {e.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config: {path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path}: the top level must be a JSON object")
    return data, warnings


def _loc_str(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "an object", "model_type": "an object", "float_type": "a number",
    "model_attributes_type": "an object",
}


def format_validation_error(e: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in e.errors(include_url=False):
        path = _loc_str(err["loc"])
        typ = err["type"]
        if typ == "value_error":
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
            if msg.startswith("@"):
                key, _, msg = msg[1:].partition(": ")
                path = f"{path}.{key}" if path else key
        elif typ == "missing":
            msg = "missing (required)"
        elif typ in _TYPE_WORDS:
            msg = f"{_show(err.get('input'))} is not {_TYPE_WORDS[typ]}"
        elif typ == "too_short":
            msg = f"{_show(err.get('input'))} is too short (at least {err['ctx'].get('min_length')} required)"
        elif typ == "too_long":
            msg = (f"{len(err.get('input') or [])} entries; this daemon serves exactly one model"
                   if path.endswith("ModelConfig") else f"{_show(err.get('input'))} is too long")
        else:
            msg = f"{_show(err.get('input'))}: {err['msg']}"
        lines.append(f"{path or 'config'}: {msg}")
    return lines


# ModelConfig keys the backend reads from EngineConfig.extra (anything else there is passed along unread)
def _known_keys(model: BaseModel) -> list[str]:
    cls = type(model)
    keys = [f.alias or name for name, f in cls.model_fields.items()]
    return keys


def _closest(key: str, known: list[str]) -> Optional[str]:
    """The known key `key` is most likely a typo of (case and separators ignored), or None."""
    def norm(k: str) -> str:
        return k.lower().replace("_", "").replace("-", "")
    by_norm = {norm(k): k for k in known}
    if norm(key) in by_norm:
        return by_norm[norm(key)]
    match = difflib.get_close_matches(norm(key), list(by_norm), n=1, cutoff=0.8)
    return by_norm[match[0]] if match else None


def _unknown_keys(obj: Any, path: str, out_warn: list[str], out_debug: list[str]) -> None:
    if isinstance(obj, BaseModel):
        extra = obj.model_extra or {}
        known = _known_keys(obj) if extra else []
        for k in extra:
            where = f"{path}.{k}" if path else k
            guess = _closest(k, known)
            if isinstance(obj, ModelEntry) and guess is None:
                out_debug.append(f"{where}: accepted, not used")
            elif isinstance(obj, ModelEntry):
                out_warn.append(f"{where}: unknown key (did you mean {guess!r}?), accepted, not used")
            else:
                out_warn.append(f"{where}: unknown key, ignored" + (f" (did you mean {guess!r}?)" if guess else ""))
        for name in type(obj).model_fields:
            _unknown_keys(getattr(obj, name), f"{path}.{name}" if path else name, out_warn, out_debug)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _unknown_keys(v, f"{path}[{i}]", out_warn, out_debug)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _unknown_keys(v, f"{path}.{k}", out_warn, out_debug)


def _unsupported(cfg: MindIEConfig) -> list[str]:
    s, b = cfg.ServerConfig, cfg.BackendConfig
    out = []
    if s.inferMode != "standard":
        out.append(f"ServerConfig.inferMode: {s.inferMode!r} (prefill/decode disaggregation) is not implemented; "
                   f"serving in standard mode")
    if s.distDPServerEnabled:
        out.append("ServerConfig.distDPServerEnabled: distributed data-parallel serving is not implemented")
    if b.modelInstanceNumber > 1:
        out.append(f"BackendConfig.modelInstanceNumber: {b.modelInstanceNumber} instances requested; one is served")
    if cfg.model.modelInstanceType == "StandardMock":
        out.append(f"{MODEL_KEY}.modelInstanceType: StandardMock (a fake model) is not implemented; the real "
                   f"weights are loaded")
    return out


def normalize_raw(data: dict, env: Optional[dict] = None) -> dict:
    """Moves a top-level ModelDeployConfig/ScheduleConfig into BackendConfig and applies env overrides."""
    env = os.environ if env is None else env
    data = dict(data)
    backend = data.get("BackendConfig")
    for key in TOP_LEVEL_MOVABLE:
        if key in data:
            if backend is None:
                backend = {}
            if not isinstance(backend, dict):
                break
            if key in backend:
                raise ConfigError(f"{key}: given both at the top level and in BackendConfig: keep one")
            backend = {**backend, key: data.pop(key)}
    if backend is not None:
        data["BackendConfig"] = backend
    server = data.get("ServerConfig", {})
    if isinstance(server, dict):
        server = dict(server)
        if env.get(ENV_IP):
            server["ipAddress"] = env[ENV_IP]
        if env.get(ENV_MGMT_IP):
            server["managementIpAddress"] = env[ENV_MGMT_IP]
        data["ServerConfig"] = server
    return data


def validate_config(data: dict, env: Optional[dict] = None) -> tuple[MindIEConfig, list[str], list[str]]:
    """Validates a raw dict: returns (config, warnings, debug lines) or raises ConfigError."""
    data = normalize_raw(data, env)
    try:
        cfg = MindIEConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    warn: list[str] = []
    debug: list[str] = []
    _unknown_keys(cfg, "", warn, debug)
    warn += _unsupported(cfg)
    return cfg, warn, debug


def path_problems(home: Path, weight_path: Any, chat_templates: dict) -> list[str]:
    """Files the config names must exist: the weights folder (config.json or one .gguf) and the configured chat
    templates. Works on raw values too (strings are checked, anything else is the schema's to refuse)."""
    errors = []
    if isinstance(weight_path, str) and weight_path:
        try:
            mp = resolve_path(home, weight_path, f"{MODEL_KEY}.modelWeightPath")
        except ConfigError as e:
            errors += e.lines
        else:
            if not mp.exists():
                errors.append(f"{MODEL_KEY}.modelWeightPath: {mp} does not exist")
            else:
                try:
                    gguf = find_gguf(mp)
                except ValueError as e:          # several .gguf files
                    errors.append(f"{MODEL_KEY}.modelWeightPath: {e}")
                else:
                    if gguf is None and not (mp / "config.json").is_file():
                        errors.append(f"{MODEL_KEY}.modelWeightPath: {mp} holds neither config.json nor a .gguf "
                                      f"file")
    for mt, template in chat_templates.items():
        if isinstance(template, str) and template:
            key = f"{MODEL_KEY}.models.{mt}.chat_template"
            try:
                p = resolve_path(home, template, key)
            except ConfigError as e:
                errors += e.lines
                continue
            if not p.is_file():
                errors.append(f"{key}: {p} is not a readable file")
    return errors


def _raw_model_entry(data: Any) -> dict:
    try:
        entry = data["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
    except (KeyError, IndexError, TypeError):
        return {}
    return entry if isinstance(entry, dict) else {}


def _raw_chat_templates(entry: dict) -> dict:
    models = entry.get("models")
    if not isinstance(models, dict):
        return {}
    return {mt: o.get("chat_template") for mt, o in models.items() if isinstance(o, dict)}


def check_paths(loaded: LoadedConfig) -> None:
    """Raises ConfigError with every path_problems line of a validated config."""
    m = loaded.config.model
    errors = path_problems(loaded.home, m.modelWeightPath, {mt: o.chat_template for mt, o in m.models.items()})
    if errors:
        raise ConfigError(errors)


def load_config(cli_path: Optional[str] = None, *, env: Optional[dict] = None, strict_permissions: bool = False,
                check_files: bool = True) -> LoadedConfig:
    """Finds, reads and validates the config; logs the warnings. Raises ConfigError."""
    env = os.environ if env is None else env
    path = find_config_path(cli_path, env)
    data, warnings = read_config_file(path, strict_permissions=strict_permissions)
    home = home_dir(path, env)
    try:
        cfg, warn, debug = validate_config(data, env)
    except ConfigError as e:
        if not check_files:
            raise
        # the files named by the raw values too, so one run reports every problem
        try:
            raw = normalize_raw(data, env) if isinstance(data, dict) else data
        except ConfigError:
            raw = data
        entry = _raw_model_entry(raw)
        raise ConfigError(e.lines + path_problems(home, entry.get("modelWeightPath"), _raw_chat_templates(entry))
                          ) from None
    loaded = LoadedConfig(config=cfg, path=path, home=home, warnings=warnings + warn,
                          strict_permissions=strict_permissions)
    for w in loaded.warnings:
        log.warning("%s", w)
    for d in debug:
        log.debug("%s", d)
    if check_files:
        check_paths(loaded)
    return loaded


def effective_config(cfg: MindIEConfig) -> dict:
    """The config with every default filled in, as JSON-ready data (for --check-config and /v1/config)."""
    return cfg.model_dump(mode="json")
