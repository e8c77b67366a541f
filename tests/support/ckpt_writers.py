"""Writers of pre-quantized checkpoints (GPTQ v1/v2, AWQ GEMM, msmodelslim W8A16/W4A16) made from a tiny float
model folder, and reference dequantizations quoted from the tools that define each layout.

The packers follow the published layouts (written here from those descriptions, not from the loader under test):
  * GPTQ (AutoGPTQ `QuantLinear.pack`): qweight int32 [K/8, N], value of input row 8i+j in bits 4j of word i;
    qzeros int32 [G, N/8], column 8c+j in bits 4j; v1 stores zero - 1; scales fp16 [G, N]; g_idx int32 [K].
  * AWQ (AutoAWQ `WQLinear_GEMM.from_linear`): qweight int32 [K, N/8], word c holds columns 8c + order_map[p] in
    nibble p with order_map = [0, 2, 4, 6, 1, 3, 5, 7]; qzeros [G, N/8] the same; scales fp16 [G, N].
  * msmodelslim (MindIE atb_models W8A16LinearStatic / W4A16LinearStatic inputs): weight int8 [N, K] (W4A16: one
    value in [-8, 7] per byte), weight_scale / weight_offset [N, 1] (W8A16) or [N, K/g] (W4A16),
    w = (q - offset) * scale; quant_model_description_<type>.json lists every tensor's type.

Each writer also returns the reference float weights of the checkpoint ({module: [N, K] float32}) computed with
the quoted reference formula, so a test can write the float model "run on the dequantized weights".
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def linear_modules(state: dict) -> list[str]:
    return sorted(n[:-len(".weight")] for n in state if n.endswith(".weight") and any(x in n for x in LINEARS))


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 words in [0, 2^32) -> the same bits as int32."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(q: torch.Tensor) -> torch.Tensor:
    """[R, C] 0..15 -> [R/8, C] int32, row 8i+j in bits 4j (GPTQ qweight)."""
    R, C = q.shape
    q = q.to(torch.int64).reshape(R // 8, 8, C)
    return _to_int32(sum(q[:, j] << (4 * j) for j in range(8))).contiguous()


def pack_cols(q: torch.Tensor, order=None) -> torch.Tensor:
    """[R, C] 0..15 -> [R, C/8] int32; nibble p holds column 8c + order[p] (identity order: GPTQ qzeros)."""
    R, C = q.shape
    order = order or list(range(8))
    q = q.to(torch.int64).reshape(R, C // 8, 8)
    return _to_int32(sum(q[:, :, order[p]] << (4 * p) for p in range(8))).contiguous()


def quantize_groups(w: torch.Tensor, g_idx: torch.Tensor, groups: int, sym: bool):
    """GPTQ-style round-to-nearest per (group, output): q [K, N] 0..15, zero [G, N] int, scale [G, N] fp16."""
    N, K = w.shape
    wt = w.t().float()                                    # [K, N]
    scale = torch.empty(groups, N)
    zero = torch.empty(groups, N, dtype=torch.int64)
    for gi in range(groups):
        rows = wt[g_idx == gi]
        mn, mx = rows.amin(0).clamp(max=0), rows.amax(0).clamp(min=0)
        if sym:
            amax = torch.maximum(mn.abs(), mx)
            scale[gi] = (2 * amax / 15).clamp_min(1e-6)
            zero[gi] = 8
        else:
            scale[gi] = ((mx - mn) / 15).clamp_min(1e-6)
            zero[gi] = torch.round(-mn / scale[gi]).clamp(0, 15).to(torch.int64)
    scale = scale.half()
    s, z = scale.float()[g_idx], zero[g_idx]
    q = torch.clamp(torch.round(wt / s) + z, 0, 15).to(torch.int64)
    return q, zero, scale


# ---- reference dequantizations (quoted) ---------------------------------------------------------------------
def gptq_reference(qweight, qzeros, scales, g_idx, v1: bool, bits: int = 4) -> torch.Tensor:
    """AutoGPTQ's torch dequantization (qlinear_cuda_old / transformers' GPTQ fallback), returned as [N, K]:

        zeros = torch.bitwise_right_shift(torch.unsqueeze(qzeros, 2).expand(-1, -1, 32 // bits), wf.unsqueeze(0))
        zeros = torch.bitwise_and(zeros, (2 ** bits) - 1)
        zeros = zeros + 1                       # v1 checkpoints only (GPTQModel: v2 stores the zero itself)
        zeros = zeros.reshape(-1, zeros.shape[1] * zeros.shape[2])
        weight = torch.bitwise_right_shift(torch.unsqueeze(qweight, 1).expand(-1, 32 // bits, -1), wf.unsqueeze(-1))
        weight = torch.bitwise_and(weight, (2 ** bits) - 1)
        weight = weight.reshape(-1, weight.shape[2])
        weight = scales[g_idx.long()] * (weight - zeros[g_idx.long()])
    """
    wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
    zeros = torch.bitwise_right_shift(torch.unsqueeze(qzeros, 2).expand(-1, -1, 32 // bits), wf.unsqueeze(0))
    zeros = torch.bitwise_and(zeros, (2 ** bits) - 1)
    if v1:
        zeros = zeros + 1
    zeros = zeros.reshape(-1, zeros.shape[1] * zeros.shape[2])
    weight = torch.bitwise_right_shift(torch.unsqueeze(qweight, 1).expand(-1, 32 // bits, -1), wf.unsqueeze(-1))
    weight = torch.bitwise_and(weight, (2 ** bits) - 1)
    weight = weight.reshape(-1, weight.shape[2])
    weight = scales.float()[g_idx.long()] * (weight - zeros[g_idx.long()]).float()
    return weight.t().contiguous()


def awq_reference(qweight, qzeros, scales, group_size: int, bits: int = 4) -> torch.Tensor:
    """AutoAWQ's `dequantize_gemm` (awq/utils/packing_utils.py), returned as [N, K]:

        shifts = torch.arange(0, 32, bits)
        iweights = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8)
        iweights = iweights.view(iweights.shape[0], -1)          # and the same for izeros
        reverse_order_tensor = torch.arange(iweights.shape[-1]).view(-1, 32 // bits)
        reverse_order_tensor = reverse_order_tensor[:, AWQ_REVERSE_ORDER].view(-1)
        iweights, izeros = iweights[:, reverse_order_tensor], izeros[:, reverse_order_tensor]
        iweight = torch.bitwise_and(iweight, (2**bits) - 1); izeros likewise
        scales = scales.repeat_interleave(group_size, dim=0); izeros likewise
        iweight = (iweight - izeros) * scales
    """
    awq_reverse_order = [0, 4, 1, 5, 2, 6, 3, 7]
    shifts = torch.arange(0, 32, bits)
    iweights = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8)
    iweights = iweights.view(iweights.shape[0], -1)
    izeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8)
    izeros = izeros.view(izeros.shape[0], -1)
    reverse_order_tensor = torch.arange(iweights.shape[-1]).view(-1, 32 // bits)
    reverse_order_tensor = reverse_order_tensor[:, awq_reverse_order].view(-1)
    iweights, izeros = iweights[:, reverse_order_tensor], izeros[:, reverse_order_tensor]
    iweights = torch.bitwise_and(iweights, (2 ** bits) - 1)
    izeros = torch.bitwise_and(izeros, (2 ** bits) - 1)
    scales = scales.float().repeat_interleave(group_size, dim=0)
    izeros = izeros.repeat_interleave(group_size, dim=0)
    return ((iweights - izeros).float() * scales).t().contiguous()


def msmodelslim_reference(weight, weight_scale, weight_offset) -> torch.Tensor:
    """MindIE atb_models W8A16LinearStatic / W4A16LinearStatic: the NPU op gets antiquant_offset = -weight_offset and
    computes (w + antiquant_offset) * antiquant_scale, i.e. w = (q - weight_offset) * weight_scale, the scale and
    offset [N, 1] per channel or [N, K/g] per group."""
    N, K = weight.shape
    g = K // weight_scale.shape[1]
    s = weight_scale.float().repeat_interleave(g, dim=1)
    o = weight_offset.float().repeat_interleave(g, dim=1)
    return (weight.float() - o) * s


# ---- writers -------------------------------------------------------------------------------------------------
def _copy_folder(src: Path, dest: Path) -> tuple[dict, dict]:
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dest / f.name)
    state = {}
    for f in sorted(src.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state, json.loads((src / "config.json").read_text())


def _wanted(modules: list[str], only: Optional[set]) -> list[str]:
    return [m for m in modules if only is None or any(m.endswith(x) for x in only)]


def write_gptq(src: Path, dest: Path, *, group_size: int = 32, sym: bool = True, v1: bool = True,
               act_order: bool = False, seed: int = 0, split_perms: bool = False, lm_head: bool = False) -> dict:
    """A GPTQ checkpoint of the float model in `src`. act_order: input channels grouped by a random permutation
    (one per input: q/k/v share one, gate/up share one, as AutoGPTQ's shared Hessian gives; `split_perms`: k_proj
    gets its own, which cannot be fused). lm_head: quantize it too (GPTQModel's `lm_head: true`). Returns
    {module: reference float weight [N, K]}."""
    state, cfg = _copy_folder(src, dest)
    out, ref = {}, {}
    gen = torch.Generator().manual_seed(seed)
    perms: dict = {}
    for m in linear_modules(state) + (["lm_head"] if lm_head else []):
        w = state.pop(m + ".weight")
        N, K = w.shape
        G = K // group_size
        if act_order:
            layer, leaf = (m.split("layers.")[1].split(".")[0] if "layers." in m else m), m.rsplit(".", 1)[-1]
            shared_input = {"q_proj": "attn", "k_proj": "k" if split_perms else "attn", "v_proj": "attn",
                            "gate_proj": "mlp", "up_proj": "mlp"}.get(leaf, leaf)
            key = (layer, shared_input)
            perm = perms.setdefault(key, torch.randperm(K, generator=gen))
            g_idx = torch.empty(K, dtype=torch.int64)
            g_idx[perm] = torch.arange(K) // group_size      # AutoGPTQ: g_idx[perm[i]] = i // group_size
        else:
            g_idx = torch.arange(K) // group_size
        q, zero, scale = quantize_groups(w, g_idx, G, sym)
        stored = (zero - 1) & 0xF if v1 else zero
        out[m + ".qweight"] = pack_rows(q)
        out[m + ".qzeros"] = pack_cols(stored)
        out[m + ".scales"] = scale
        out[m + ".g_idx"] = g_idx.to(torch.int32)
        ref[m] = gptq_reference(out[m + ".qweight"], out[m + ".qzeros"], scale, g_idx.to(torch.int32), v1)
    out.update(state)
    save_file(out, str(dest / "model.safetensors"))
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size, "sym": sym,
                                  "desc_act": act_order, "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    return ref


def write_awq(src: Path, dest: Path, *, group_size: int = 32) -> dict:
    state, cfg = _copy_folder(src, dest)
    out, ref = {}, {}
    for m in linear_modules(state):
        w = state.pop(m + ".weight")
        K = w.shape[1]
        q, zero, scale = quantize_groups(w, torch.arange(K) // group_size, K // group_size, sym=False)
        out[m + ".qweight"] = pack_cols(q, AWQ_ORDER)
        out[m + ".qzeros"] = pack_cols(zero, AWQ_ORDER)
        out[m + ".scales"] = scale
        ref[m] = awq_reference(out[m + ".qweight"], out[m + ".qzeros"], scale, group_size)
    out.update(state)
    save_file(out, str(dest / "model.safetensors"))
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                                  "version": "gemm"}
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    return ref


def write_msmodelslim(src: Path, dest: Path, kind: str, *, group_size: int = 32, sym: bool = False,
                      float_modules: tuple = ()) -> dict:
    """kind "W8A16" | "W4A16"; modules ending with one of `float_modules` stay FLOAT."""
    state, cfg = _copy_folder(src, dest)
    out, ref = {}, {}
    desc = {"model_quant_type": kind, "version": "1.0.0"}
    for m in linear_modules(state):
        if any(m.endswith(x) for x in float_modules):
            desc[m + ".weight"] = "FLOAT"
            continue
        w = state.pop(m + ".weight").float()
        N, K = w.shape
        g = K if kind == "W8A16" else group_size
        lo, hi = (-128, 127) if kind == "W8A16" else (-8, 7)
        wg = w.reshape(N, K // g, g)
        mn, mx = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
        if sym:
            scale = (torch.maximum(mn.abs(), mx) / hi).clamp_min(1e-6)
            offset = torch.zeros_like(scale)
        else:
            scale = ((mx - mn) / (hi - lo)).clamp_min(1e-6)
            offset = torch.round(lo - mn / scale)
        q = torch.clamp(torch.round(wg / scale[..., None]) + offset[..., None], lo, hi).reshape(N, K).to(torch.int8)
        out[m + ".weight"], out[m + ".weight_scale"], out[m + ".weight_offset"] = q, scale, offset
        for leaf in ("weight", "weight_scale", "weight_offset"):
            desc[f"{m}.{leaf}"] = kind
        ref[m] = msmodelslim_reference(q, scale, offset)
    for name in state:
        desc[name] = "FLOAT"
    out.update(state)
    save_file(out, str(dest / f"quant_model_weight_{kind.lower()}.safetensors"))
    (dest / f"quant_model_description_{kind.lower()}.json").write_text(json.dumps(desc, indent=1))
    cfg["quantize"] = kind.lower()
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    return ref


def write_dequantized(src: Path, dest: Path, ref: dict) -> Path:
    """The float model of `src` with its linears replaced by the reference dequantized weights."""
    state, cfg = _copy_folder(src, dest)
    for m, w in ref.items():
        state[m + ".weight"] = w.to(state[m + ".weight"].dtype).contiguous()
    save_file(state, str(dest / "model.safetensors"))
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    return dest
