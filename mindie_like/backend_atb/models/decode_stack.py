"""The llama-shaped decode step as one C++ call (csrc/decode_step.cpp): building the stack from the model's layers
and running it with the step's attention inputs.

What it covers: one rank, CPU, the op table's own torch path, llama's decoder layer with full half-split rotary and
a dense SwiGLU MLP (llama, mistral, qwen2, qwen3; not GLM's layers, MoE or MLA). Any other case returns a reason
and the model runs its layers from Python."""
from __future__ import annotations

from typing import Optional

import torch


def build(model, kv_caches) -> tuple[Optional[object], str]:
    """(stack, "") or (None, why not)."""
    from .llama import MLP, Attention, DecoderLayer
    if len(kv_caches) != len(model.layers):
        return None, "no KV cache allocated"
    if model.par.size > 1:
        return None, "tensor parallel (all-reduce between layers)"
    if model.device.type != "cpu":
        return None, f"device {model.device.type}"
    switches = getattr(model.ops, "decode_stack_kernels", None)
    found = switches() if switches is not None else None
    if found is None:
        return None, f"op table {model.ops.name} has no C++ decode step here"
    mod, own_f32, gemv, dot_isa, dot_rows = found
    for layer in model.layers:
        if type(layer) is not DecoderLayer or type(layer.self_attn) is not Attention:
            return None, f"{type(layer).__name__} / {type(layer.self_attn).__name__} layers"
        if not layer.self_attn.rotary.full:
            return None, "partial or interleaved rotary"
        if type(layer.mlp) is not MLP:
            return None, f"{type(layer.mlp).__name__} is not a dense MLP"
    windows = sorted({a.window for a in model.attention_layers()}, key=lambda w: -1 if w is None else w)
    fused = model.fused_decode_attention
    stack = mod.DecodeStack(model.num_heads, model.num_kv_heads, model.head_dim, model.eps, model.scale_value,
                            own_f32, gemv, dot_isa, dot_rows, fused, [k for k, _ in kv_caches],
                            [v for _, v in kv_caches])
    for layer in model.layers:
        at, mlp = layer.self_attn, layer.mlp
        stack.add_layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                        at.q_norm.weight if at.q_norm is not None else None,
                        at.k_norm.weight if at.k_norm is not None else None,
                        windows.index(at.attn.window), at.attn.window or 0,
                        at.qkv_proj.weight, at.qkv_proj.bias, at.o_proj.weight, at.o_proj.bias,
                        mlp.gate_up_proj.weight, mlp.gate_up_proj.bias, mlp.down_proj.weight, mlp.down_proj.bias)
    return DecodeStep(stack, windows, fused), ""


class DecodeStep:
    """The C++ stack with what the step's call needs from Python: the windows' mask order, the attention route."""

    def __init__(self, stack, windows: list, fused: bool):
        self.stack, self.windows, self.fused = stack, windows, fused


_NONE = torch.empty(0, dtype=torch.int64)


def run(model, step: DecodeStep, ctx, h: torch.Tensor):
    """The step's decoder layers -> (h, residual)."""
    meta = ctx.meta
    rotary = model.layers[0].self_attn.rotary
    if step.fused:
        pos, slots, tables, lens = model.ops.own_decode_args(meta, ctx.positions)
        return step.stack.run(h, pos, slots, tables, lens, rotary.cos_sin, None, None, None, [])
    cos, sin = ctx.rope_tables(rotary)
    masks = [meta.decode_window_masks[w] for w in step.windows]
    return step.stack.run(h, _NONE, meta.slot_mapping, _NONE, _NONE, rotary.cos_sin, cos, sin, meta.decode_slots, masks)
