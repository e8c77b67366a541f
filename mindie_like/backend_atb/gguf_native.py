"""A quantized GGUF served straight from the file: no float import.

The default for a GGUF whose linears are quantized (no `quantization` key, or a scheme built from the file's blocks
with `quant_from_gguf` on): the model's config, generation config and tokenizer are written once into a small
cache folder (`<cache dir>/<source key>-meta/`, no weights: transformers' own GGUF readers, so they are the files
the float import would have written), the own architecture is built with its linear weights deferred (meta
tensors: no dense float memory), the few float tensors (norms, biases, an untied embedding table) are widened one
by one from the file, and the linears and the lm_head are built from the file's blocks by `quant/gguf.py`
(`load_gguf_weights`).

Not served this way (the float import of `weights.resolve_model_dir` is used, as before): `"quantization":
"none"` (the widened float model), `quant_from_gguf` false, a float GGUF with no key, the generic transformers
path and MoE layers. With tensor parallelism every rank builds its part of each block weight (quant/gguf_shard.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ..engine.types import NO_QUANTIZATION, EngineConfig
from ..paths import cache_dir as default_cache_dir
from ..paths import find_gguf
from .weights import gguf_reader, source_key

log = logging.getLogger(__name__)

META_VERSION = 1        # bump when the folder's content changes, so old ones are rebuilt
META_MARKER = "mindie_like_gguf_meta.json"
IMPORT_MARKER = "mindie_like_import.json"


class NotNative(Exception):
    """This GGUF cannot be served from its blocks here (the float import serves it); the message says why."""


def native_source(config: EngineConfig) -> Optional[Path]:
    """The GGUF file to serve from its blocks, or None (not a GGUF, or a case the float import serves)."""
    gguf = find_gguf(config.model_path)
    if gguf is None:
        return None
    scheme = str(config.quant.scheme or "").strip().lower()
    why = None
    if scheme in NO_QUANTIZATION:
        why = f'"quantization": "{scheme}" widens the weights to float'
    elif not config.quant.from_gguf:
        why = "quant_from_gguf false: the float import is quantized"
    elif config.force_generic:
        why = "the generic transformers path is forced"
    elif not scheme and not quantized_linears(gguf):
        why = "a float GGUF"
    if why:
        log.info("GGUF %s: loaded through the float import (%s)", gguf.name, why)
        return None
    return gguf


def quantized_linears(gguf: Path) -> list[str]:
    """The block formats of the file's 2-D tensors other than float ones (empty: a float GGUF)."""
    kinds = {t.tensor_type.name for t in gguf_reader(gguf).tensors if len(t.shape) > 1}
    return sorted(kinds - {"F32", "F16", "BF16"})


# ---- config + tokenizer -------------------------------------------------------------------------------------
def metadata_dir(gguf: Path, cache_dir=None, trust_remote_code: bool = False) -> Path:
    """A folder with the model's config.json, generation config and tokenizer files (no weights), written once.

    A float import of the same file already in the cache holds the same files and is used as is."""
    root = Path(cache_dir or default_cache_dir())
    key = source_key(gguf)
    if (root / key / IMPORT_MARKER).is_file():
        log.info("GGUF %s: config and tokenizer from the imported copy in %s (weights from the file)", gguf.name,
                 root / key)
        return root / key
    dest = root / f"{key}-meta"
    marker = dest / META_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("version") == META_VERSION:
                return dest
        except (OSError, ValueError):
            pass
        shutil.rmtree(dest, ignore_errors=True)
    t0 = time.time()
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    folder, name = str(gguf.parent), gguf.name
    with _one_reader(gguf):
        cfg = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    # what the float import's save_pretrained writes: no quantization_config, bfloat16, the class's name
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.bfloat16
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(cfg.model_type)
    if arch and not getattr(cfg, "architectures", None):
        cfg.architectures = [arch]
    tmp = root / f".{dest.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg.save_pretrained(tmp)
    try:
        GenerationConfig.from_model_config(cfg).save_pretrained(tmp)
    except Exception as e:      # a generation config is optional
        log.debug("no generation config saved: %s", e)
    tok.save_pretrained(tmp)
    marker_of_tmp = tmp / META_MARKER
    marker_of_tmp.write_text(json.dumps({"source": str(gguf.resolve()), "size": gguf.stat().st_size,
                                         "version": META_VERSION, "seconds": round(time.time() - t0, 1)}, indent=1))
    if dest.exists():           # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    log.info("GGUF %s: config and tokenizer written to %s in %.1f s (no weights)", gguf.name, dest, time.time() - t0)
    return dest


def tokenizer_dir(path, cache_dir=None, trust_remote_code: bool = False) -> Path:
    """The folder with the model's tokenizer and config: a Hugging Face folder as is, a GGUF's metadata folder
    (written once, no weights) for a .gguf (tools that need only the tokenizer)."""
    gguf = find_gguf(path)
    return Path(path) if gguf is None else metadata_dir(gguf, cache_dir, trust_remote_code)


@contextlib.contextmanager
def _one_reader(gguf: Path):
    """transformers parses the file's metadata once per call (config, then the tokenizer twice), seconds each for
    a 150k-token vocabulary: inside, `gguf.GGUFReader` of this file answers with one parsed reader."""
    import gguf as gguf_module
    real = gguf_module.GGUFReader
    target = str(gguf.resolve())
    parsed: list = []

    def shared(path, *args, **kwargs):
        if args or kwargs or str(Path(path).resolve()) != target:
            return real(path, *args, **kwargs)
        if not parsed:
            parsed.append(real(path))
        return parsed[0]
    gguf_module.GGUFReader = shared
    try:
        yield
    finally:
        gguf_module.GGUFReader = real


# ---- weights -------------------------------------------------------------------------------------------------
def build_model(cfg, dtype, device, ops, parallel, act_dtype, gguf: Path):
    """The own model with its linears (and a tied embedding) deferred and every float tensor read from `gguf`;
    the quantization hook then builds the deferred weights from the blocks. Raises NotNative before reading
    anything when the model's layers are not the dense ones `load_gguf_weights` fills."""
    from .layers.component import deferred_dense
    from .models import build_model as build_own
    with deferred_dense():
        model = build_own(cfg, dtype, device, ops, parallel, act_dtype=act_dtype)
    dense = all(hasattr(L, "self_attn") and hasattr(L.self_attn, "qkv_proj") and hasattr(L, "mlp")
                and hasattr(L.mlp, "gate_up_proj") for L in model.layers)
    if not dense:
        raise NotNative(f"{type(model).__name__} has layers other than dense attention + MLP")
    if not model.tied:          # an untied embedding table is widened from the file (the lm_head is built)
        model.embed_tokens.weight = torch.zeros(model.embed_tokens.weight.shape, dtype=dtype, device=device)
    deferred = {f"{src}.{leaf}" for c in model.components() for src, _ in c.source_prefixes()
                for leaf in c.leaves() if getattr(getattr(c, leaf, None), "is_meta", False)}
    names = hf_names(gguf, model)
    model.external_weights |= deferred
    model.load_weights(float_tensors(gguf, names, skip=deferred, dtype=dtype,
                                     heads=(model.num_heads_total, model.num_kv_heads_total)))
    return model


def hf_names(gguf: Path, model) -> dict[str, str]:
    """GGUF tensor name -> the checkpoint name the model reads (gguf's own name table for the architecture)."""
    import gguf as g
    r = gguf_reader(gguf)
    arch_name = _field_str(r, "general.architecture")
    arch = {v: k for k, v in g.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None:
        raise NotNative(f"GGUF architecture {arch_name!r} has no tensor name table in gguf")
    table = g.get_tensor_name_map(arch, model.num_layers)
    out, missing = {}, []
    expected = model.expected_weight_names()
    for name in expected + _optional_names(model):
        prefix, _, leaf = name.rpartition(".")
        gname = table.get_name(prefix)
        if gname is not None:
            out[f"{gname}.{leaf}"] = name
        elif name in expected:
            missing.append(name)
    if missing:
        raise NotNative(f"no GGUF name for {', '.join(missing[:4])}")
    return out


def _optional_names(model) -> list[str]:
    return [f"{src}.{leaf}" for c in model.components() for src, _ in c.source_prefixes()
            for leaf in c.optional_leaves()]


def float_tensors(gguf: Path, names: dict[str, str], skip: set[str], dtype: torch.dtype,
                  heads: tuple[int, int]) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) for the file's tensors the model reads that are not in `skip`, each dequantized
    on its own: 1-D ones (norms, biases) in float32, exact; 2-D ones (an untied embedding table) in the weights'
    `dtype`, a slab of rows at a time, so no float32 copy of a large table is held. llama's q/k rows are put back
    in Hugging Face order, as the float import does."""
    r = gguf_reader(gguf)
    llama_rows = _field_str(r, "general.architecture") == "llama"
    for t in r.tensors:
        name = names.get(t.name)
        if name is None or name in skip:
            continue
        w = _widen(t, torch.float32 if len(t.shape) == 1 else dtype)
        if llama_rows and (".attn_q." in t.name or ".attn_k." in t.name):
            from .quant.gguf import _unpermute_rows
            w = _unpermute_rows(w, heads[0] if ".attn_q." in t.name else heads[1])
        yield name, w


_SLAB_ROWS = 4096


def _widen(t, dtype: torch.dtype) -> torch.Tensor:
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize
    shape = [int(d) for d in reversed(t.shape)]
    data = np.asarray(t.data)
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    out = torch.empty(rows.shape[0], int(np.prod(shape)) // rows.shape[0], dtype=dtype)
    for lo in range(0, rows.shape[0], _SLAB_ROWS):
        part = rows[lo:lo + _SLAB_ROWS]
        a = part if t.tensor_type in (T.F32, T.F16) else dequantize(part, t.tensor_type)
        out[lo:lo + part.shape[0]] = torch.from_numpy(np.array(a, dtype=np.float32))     # a copy: the file is read-only
    return out.reshape(shape)


def check_built(model) -> None:
    """Every deferred weight was built (a component left on the meta device would fail at the first step)."""
    left = [f"{c.prefix}.{leaf}" for c in model.components() for leaf in c.leaves()
            if getattr(getattr(c, leaf, None), "is_meta", False)]
    if left:
        raise RuntimeError(f"GGUF weights not built from the file's blocks: {left[:4]}")


def _field_str(reader, key: str) -> str:
    f = reader.fields[key]
    return bytes(f.parts[f.data[0]]).decode()
