"""Weight sources: Hugging Face folders (safetensors, sharded or not) and GGUF files.

A GGUF file (a path to the .gguf, or a folder holding exactly one .gguf and no safetensors) is imported once
through transformers + gguf (dequantized), rebuilt without its `quantization_config` (save_pretrained refuses
otherwise) and stored in bfloat16 as safetensors + config + tokenizer files in a cache folder keyed by a hash of the
source: `<cache dir>/<hash>/` (mindie_like.paths.cache_dir: MINDIE_LIKE_CACHE_DIR, else <home>/cache). Later loads
read that folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from ..paths import cache_dir as default_cache_dir
from ..paths import find_gguf  # noqa: F401 - the weights API (runner, quant, tests)

log = logging.getLogger(__name__)

IMPORT_VERSION = 1          # bump when the import format changes, so old caches are rebuilt


def source_key(gguf: Path) -> str:
    """Hash of the source: absolute path, size, mtime, and the first and last MiB of content."""
    st = gguf.stat()
    h = hashlib.sha256()
    h.update(f"v{IMPORT_VERSION}|{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    with open(gguf, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:24]


_READERS: dict = {}


def gguf_reader(gguf: Path):
    """The tensor index of a GGUF file (gguf_index.GGUFIndex: tensors and scalar metadata, the vocabulary
    skipped), one per process and file: a load reads it several times (formats, float tensors, blocks).
    `release_gguf_readers()` drops it (the tensors built from it are copies)."""
    st = gguf.stat()
    key = (str(gguf.resolve()), st.st_size, st.st_mtime_ns)
    r = _READERS.get(key)
    if r is None:
        from .gguf_index import GGUFIndex
        _READERS.clear()
        r = _READERS[key] = GGUFIndex(gguf)
    return r


def release_gguf_readers() -> None:
    _READERS.clear()


def resolve_model_dir(path: str | os.PathLike, trust_remote_code: bool = False,
                      cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """A folder with config.json + safetensors (+ tokenizer) for `path`, importing a GGUF once if needed."""
    gguf = find_gguf(path)
    if gguf is None:
        p = Path(path)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p}: no config.json and no .gguf file")
        return p
    dest = Path(cache_dir or default_cache_dir()) / source_key(gguf)
    if (dest / "mindie_like_import.json").is_file():
        log.info("GGUF %s: using the imported copy in %s", gguf, dest)
        return dest
    import_gguf(gguf, dest, trust_remote_code=trust_remote_code)
    return dest


def import_gguf(gguf: Path, dest: Path, trust_remote_code: bool = False) -> Path:
    """Dequantizes `gguf` through transformers and saves a bfloat16 safetensors folder at `dest` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t0 = time.time()
    log.info("importing GGUF %s into %s: once, dequantizing every tensor (about a minute for a 0.5B model on 2 "
             "cores, silent until the weights are saved)", gguf, dest)
    folder, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16,
                                                 trust_remote_code=trust_remote_code)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.dtype = torch.bfloat16
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, trust_remote_code=trust_remote_code)
    fresh.load_state_dict(model.state_dict(), assign=True)
    if getattr(cfg, "tie_word_embeddings", False):
        fresh.tie_weights()
    tmp = dest.parent / f".{dest.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    try:
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
    except Exception as e:  # generation config is optional
        log.debug("no generation config saved: %s", e)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    tok.save_pretrained(tmp)
    (tmp / "mindie_like_import.json").write_text(json.dumps(
        {"source": str(gguf.resolve()), "size": gguf.stat().st_size, "version": IMPORT_VERSION,
         "seconds": round(time.time() - t0, 1)}, indent=1))
    del model, fresh
    if dest.exists():            # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    log.info("GGUF import done in %.1f s", time.time() - t0)
    return dest


def safetensors_files(model_dir: Path) -> list[Path]:
    idx = model_dir / "model.safetensors.index.json"
    if idx.is_file():
        names = sorted(set(json.loads(idx.read_text())["weight_map"].values()))
        return [model_dir / n for n in names]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no .safetensors files")
    return files


@dataclass
class LoadStats:
    """What a load read: `loaded_bytes` of tensor data copied out of `checkpoint_bytes` in the files."""
    loaded_bytes: int = 0
    checkpoint_bytes: int = 0


WeightSlice = Callable[[str], Optional[object]]     # (dim, start, length), a MultiSlice, or None


def iter_safetensors(model_dir: Path, progress: bool = True, *, wanted: Optional[Callable[[str], bool]] = None,
                     slicer: Optional[WeightSlice] = None,
                     stats: Optional[LoadStats] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor in the folder's safetensors, with a tqdm progress bar.

    `wanted(name)` False: the tensor is skipped unread. `slicer(name)` -> (dim, start, length) or a MultiSlice
    (several parts, concatenated): only that part is read (a tensor-parallel rank's shard: safetensors' `get_slice` copies just those bytes out of the mapped
    file), None: the whole tensor. `stats` counts the bytes read and the bytes in the checkpoint."""
    from safetensors import safe_open
    files = safetensors_files(model_dir)
    total = 0
    handles = []
    for f in files:
        h = safe_open(str(f), framework="pt", device="cpu")
        handles.append(h)
        total += len(list(h.keys()))
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="loading weights", unit="tensor", leave=False,
                       disable=os.environ.get("MINDIE_LIKE_NO_PROGRESS") == "1")
        except ImportError:
            bar = None
    try:
        for h in handles:
            for name in h.keys():
                if bar is not None:
                    bar.update(1)
                if stats is not None:
                    sl = h.get_slice(name)
                    stats.checkpoint_bytes += _numel(sl.get_shape()) * _DTYPE_BYTES[sl.get_dtype()]
                if wanted is not None and not wanted(name):
                    continue
                spec = slicer(name) if slicer is not None else None
                if spec is None:
                    t = h.get_tensor(name)
                elif hasattr(spec, "take"):          # several parts (layers.component.MultiSlice)
                    sl = h.get_slice(name)
                    t = spec.take(lambda index: sl[index])
                else:
                    dim, start, length = spec
                    index = (slice(None),) * dim + (slice(start, start + length),)
                    t = h.get_slice(name)[index]
                if stats is not None:
                    stats.loaded_bytes += t.numel() * t.element_size()
                yield name, t
    finally:
        if bar is not None:
            bar.close()


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
                "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
