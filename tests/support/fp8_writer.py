"""Writes a tiny FP8 block-quantized checkpoint the way DeepSeek V3 ships one (float8_e4m3fn projection weights,
a float32 `weight_scale_inv` per tile, `quantization_config` in config.json), plus the float checkpoint the FP8
one stands for (each weight dequantized back), which is what transformers is compared against."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mindie_like.backend_atb.quant.fp8_block import dequantize, quantize

# what DeepSeek leaves unquantized: embeddings, lm_head, norms, the router (mlp.gate) and its bias
KEEP = ("embed_tokens", "lm_head", "norm", "mlp.gate.")


def _quantized(name: str, t: torch.Tensor) -> bool:
    return t.dim() == 2 and name.endswith(".weight") and not any(k in name for k in KEEP)


def write_fp8_pair(src: Path, fp8_dir: Path, ref_dir: Path, block=(128, 128), extra_tensors=None) -> int:
    """From the float model in `src`: `fp8_dir` (FP8 + scales) and `ref_dir` (the same weights dequantized).
    Returns the number of quantized tensors. `extra_tensors` are added to the FP8 checkpoint only."""
    sd = load_file(str(Path(src) / "model.safetensors"))
    fp8, ref, n = {}, {}, 0
    for name, t in sd.items():
        if _quantized(name, t):
            q, s = quantize(t, block)
            fp8[name], fp8[name + "_scale_inv"] = q, s
            ref[name] = dequantize(q, s, block, t.dtype)
            n += 1
        else:
            fp8[name] = ref[name] = t
    fp8.update(extra_tensors or {})
    for d in (fp8_dir, ref_dir):
        shutil.copytree(src, d, dirs_exist_ok=True)
    save_file(fp8, str(Path(fp8_dir) / "model.safetensors"), metadata={"format": "pt"})
    save_file(ref, str(Path(ref_dir) / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((Path(fp8_dir) / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                  "weight_block_size": list(block)}
    (Path(fp8_dir) / "config.json").write_text(json.dumps(cfg, indent=2))
    return n
