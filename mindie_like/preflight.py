"""Everything the daemon refuses at start that the files can tell, checked in one pass: what `--check-config`
reports and what the daemon checks before it loads the model. One line per problem (the key path first), all
problems of a run together; the caller exits 2 when there is any.

    loaded, problems = preflight(config_file, strict_permissions=False)

The passes: the config file (schema, the files it names); the TLS files of every plane; with
multiNodesInferEnabled, the node layout from the environment; the model's own files where they can be read
without loading it (a folder with config.json): worldSize against the model's heads, MoE expert split, a
pre-quantized checkpoint's refusals, `quantization: gguf` without a .gguf file. A GGUF model's config is only
known after its import, so worldSize on a GGUF model is checked at load (still exit 2).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .config import ConfigError, LoadedConfig, load_config, to_engine_config
from .config.loader import MODEL_KEY
from .engine.types import QUANT_SCHEME_ALIASES, EngineConfig
from .paths import find_gguf

log = logging.getLogger("mindie_like.preflight")


def tls_problems(loaded: LoadedConfig) -> list[str]:
    if not loaded.config.ServerConfig.httpsEnabled:
        return []
    from .server.tls import PlaneFiles, check_plane_files
    lines: list[str] = []
    seen: set[str] = set()      # planes share files by default: one line per file problem, under the first key
    for plane in ("business", "management", "metrics"):
        try:
            check_plane_files(PlaneFiles(loaded, plane))
        except ConfigError as e:
            for line in e.lines:
                what = line.split(": ", 1)[-1]
                if what not in seen:
                    seen.add(what)
                    lines.append(line)
    return lines


def model_problems(config: EngineConfig) -> list[str]:
    """What ModelRunner.load would refuse, read from the weights' files without loading them."""
    lines: list[str] = []
    model_dir = Path(config.model_path)
    try:
        gguf = find_gguf(model_dir)
    except ValueError:
        return lines                  # the config pass reported it
    scheme = QUANT_SCHEME_ALIASES.get(str(config.quant.scheme or "").lower().strip())
    if scheme == "gguf" and gguf is None:
        lines.append(f'{MODEL_KEY}.quantization: "gguf" keeps a GGUF model\'s own formats, but {model_dir} is not a '
                     f".gguf model")
    from .backend_atb.parallel import TPConfigError, moe_expert_parallel, total_world_size, world_layout
    world = 1
    try:
        world = world_layout(config).size if config.world_size > 1 or config.multi_nodes else 1
    except TPConfigError as e:
        lines.append(str(e))
    if gguf is not None or not (model_dir / "config.json").is_file():
        return lines
    from .backend_atb.quant import checkpoint as quant_checkpoint
    from .backend_atb.quant.checkpoint import CheckpointRefused
    try:
        prequantized = quant_checkpoint.detect(model_dir)
        if prequantized is not None:
            own, why = _own_path(config)
            quant_checkpoint.check_serving(prequantized, config, world_size=total_world_size(config),
                                           own_path=own and not config.force_generic,
                                           why_not_own=why or "forced generic")
    except CheckpointRefused as e:
        lines.append(f"{MODEL_KEY}.{e.key}: {e}" if e.key else f"{MODEL_KEY}: {e}")
    except TPConfigError as e:
        lines.append(str(e))
    if world > 1:
        from .backend_atb.tp_runner import check_model
        try:
            check_model(config, world)
            moe_expert_parallel(config, world)
        except TPConfigError as e:
            lines.append(str(e))
    return lines


def _own_path(config: EngineConfig) -> tuple[bool, Optional[str]]:
    from transformers import AutoConfig

    from .backend_atb.models import own_path_supports
    cfg = AutoConfig.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code)
    return own_path_supports(cfg)


def preflight(config_file: Optional[str] = None, *, strict_permissions: bool = False
              ) -> tuple[Optional[LoadedConfig], list[str]]:
    """(the loaded config or None, every problem found)."""
    try:
        loaded = load_config(config_file, strict_permissions=strict_permissions)
    except ConfigError as e:
        return None, list(e.lines)
    problems = tls_problems(loaded)
    try:
        problems += model_problems(to_engine_config(loaded))
    except Exception as e:  # noqa: BLE001 - an unreadable model config is the load's to report (exit 1)
        log.debug("model files not checked before the load: %s", e)
    return loaded, problems
