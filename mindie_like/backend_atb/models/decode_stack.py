"""The decode step's decoder layers as one C++ call (csrc/decode_step.cpp): deciding whether a model's layers are
covered, building the stack from them, and running it with the step's attention inputs.

Covered: one rank, CPU, the op table's own torch path (TorchOps), and layers built from
* llama's decoder layer (llama, mistral, qwen2, qwen3 and the MoE / GLM families' attention), with any rotary
  layout: whole-head half-split (the own fused rope + attention kernel where the op table uses it), partial or
  interleaved (GLM; the op-by-op attention route, as the Python layer takes it);
* GLM-4's decoder layer (norms on the attention and MLP outputs);
* DeepSeek V3's MLA attention (the absorbed decode over the latent cache), with either rotary layout;
* a dense SwiGLU MLP or a sparse MoE block (router, top-k routing of any RoutingSpec, this rank's experts, a shared
  expert with or without its sigmoid gate: Qwen2-MoE, Qwen3-MoE, GLM-4.5, DeepSeek V3).
Not covered, with the reason logged by `CausalLM.decode_stack` (the model runs its layers from Python): tensor
parallelism (an all-reduce between layers), other devices and op tables."""
from __future__ import annotations

from typing import Optional

import torch

ROPE_FULL, ROPE_PARTIAL, ROPE_INTERLEAVED = 0, 1, 2     # csrc/step_ops.cpp RopeKind


def _rope_kind(rotary) -> int:
    if not rotary.is_neox_style:
        return ROPE_INTERLEAVED
    return ROPE_FULL if rotary.full else ROPE_PARTIAL


def _torch_op(ops, name: str) -> bool:
    """`ops.name` is TorchOps' own (not another table's, nor one replaced on the instance): what the C++ mirrors."""
    from ..ops.torch_ops import TorchOps
    own = getattr(ops, name, None)
    return getattr(own, "__func__", own) is getattr(TorchOps, name)


def _mlp_kind(mlp, ops) -> tuple[Optional[str], str]:
    """("dense" | "moe", "") or (None, why the stack cannot run this MLP)."""
    from ..layers.moe import FusedMoE, SharedExpertGate, SparseMoeBlock, TopKRouter
    from .llama import MLP
    if isinstance(mlp, MLP) and type(mlp).forward is MLP.forward:
        return "dense", ""
    if type(mlp) is not SparseMoeBlock:
        return None, f"{type(mlp).__name__} MLP"
    if type(mlp.gate) is not TopKRouter or type(mlp.experts) is not FusedMoE:
        return None, f"{type(mlp.gate).__name__} / {type(mlp.experts).__name__} MoE parts"
    if not (_torch_op(ops, "moe_experts") and _torch_op(ops, "moe_select")):
        return None, "the op table's MoE ops are not TorchOps'"
    if mlp.gate.spec.scoring not in ("softmax", "sigmoid"):
        return None, f"MoE scoring {mlp.gate.spec.scoring!r}"
    if not isinstance(mlp.gate.weight, torch.Tensor):
        return None, "a quantized router"
    shared = mlp.shared
    if shared is not None and not (isinstance(shared, MLP) and type(shared).forward is MLP.forward
                                   and shared.gate_up_proj.bias is None and shared.down_proj.bias is None):
        return None, f"shared expert {type(shared).__name__} (with biases)"
    if mlp.shared_gate is not None and (type(mlp.shared_gate) is not SharedExpertGate
                                        or not isinstance(mlp.shared_gate.weight, torch.Tensor)):
        return None, f"shared expert gate {type(mlp.shared_gate).__name__}"
    return "moe", ""


def _attention_kind(layer, ops) -> tuple[Optional[str], str]:
    """("gqa" | "mla", "") or (None, why the stack cannot run this layer's attention)."""
    from ..layers.mla import MLAAttention
    from .deepseek_v3 import MLADecoderLayer
    from .glm import Glm4DecoderLayer
    from .llama import Attention, DecoderLayer
    at = layer.self_attn
    if type(at) is Attention and type(layer) in (DecoderLayer, Glm4DecoderLayer):
        return "gqa", ""
    if type(at) is MLAAttention and type(layer) is MLADecoderLayer:
        if not (_torch_op(ops, "mla_write_cache") and _torch_op(ops, "mla_attention_decode")):
            return None, "the op table's MLA ops are not TorchOps'"
        if not isinstance(at.kv_b_proj.weight, torch.Tensor):
            return None, "a quantized kv_b_proj"
        return "mla", ""
    return None, f"{type(layer).__name__} / {type(at).__name__} layers"


def refusal(model, kv_caches) -> tuple[Optional[str], list]:
    """(None, each layer's (attention kind, MLP kind)) when the stack runs `model`'s layers, else (why not, [])."""
    if len(kv_caches) != len(model.layers):
        return "no KV cache allocated", []
    if model.par.size > 1:
        return "tensor parallel (all-reduce between layers)", []
    if model.device.type != "cpu":
        return f"device {model.device.type}", []
    kinds = []
    for layer in model.layers:
        attention, why = _attention_kind(layer, model.ops)
        if attention is None:
            return why, []
        mlp, why = _mlp_kind(layer.mlp, model.ops)
        if mlp is None:
            return why, []
        kinds.append((attention, mlp))
    if len({id(layer.self_attn.rotary) for layer in model.layers}) != 1:
        return "layers with different rotary embeddings", []
    if len({a for a, _ in kinds}) != 1:
        return "layers with different attention kinds", []
    return None, kinds


def build(model, kv_caches) -> tuple[Optional[object], str]:
    """(stack, "") or (None, why not)."""
    from .glm import Glm4DecoderLayer
    why, kinds = refusal(model, kv_caches)
    if why:
        return None, why
    switches = getattr(model.ops, "decode_stack_kernels", None)
    found = switches() if switches is not None else None
    if found is None:
        return None, f"op table {model.ops.name} has no C++ decode step here"
    mod, own_f32, gemv, dot_isa, dot_rows = found
    rotary = model.layers[0].self_attn.rotary
    kind = _rope_kind(rotary)
    windows = sorted({a.window for a in model.attention_layers()}, key=lambda w: -1 if w is None else w)
    caches = [k for k, _ in kv_caches], [v for _, v in kv_caches]
    mla = kinds[0][0] == "mla"
    if mla:
        m = model.mla
        fused = False
        stack = mod.DecodeStack(m.heads, 1, m.qk_dim, model.eps, m.scale, own_f32, gemv, dot_isa, dot_rows, False,
                                kind, m.rope, *caches)
    else:
        fused = model.fused_decode_attention and kind == ROPE_FULL     # the layer loop's choice (llama.Attention)
        stack = mod.DecodeStack(model.num_heads, model.num_kv_heads, model.head_dim, model.eps, model.scale_value,
                                own_f32, gemv, dot_isa, dot_rows, fused, kind, rotary.rotary_dim, *caches)
    for layer, (_, mlp_kind) in zip(model.layers, kinds):
        if mla:
            _add_mla_layer(stack, layer)
        else:
            at = layer.self_attn
            stack.add_layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                            at.q_norm.weight if at.q_norm is not None else None,
                            at.k_norm.weight if at.k_norm is not None else None,
                            windows.index(at.attn.window), at.attn.window or 0,
                            at.qkv_proj.weight, at.qkv_proj.bias, at.o_proj.weight, at.o_proj.bias)
        if type(layer) is Glm4DecoderLayer:
            stack.set_output_norms(layer.post_self_attn_layernorm.weight, layer.post_mlp_layernorm.weight)
        if mlp_kind == "dense":
            mlp = layer.mlp
            stack.set_dense_mlp(mlp.gate_up_proj.weight, mlp.gate_up_proj.bias, mlp.down_proj.weight,
                                mlp.down_proj.bias)
        else:
            _add_moe(stack, layer.mlp)
    return DecodeStep(stack, rotary, windows, fused), ""


def _add_mla_layer(stack, layer) -> None:
    at = layer.self_attn
    m = at.m
    lora = at.q_proj is None
    stack.add_mla_layer(layer.input_layernorm.weight, layer.post_attention_layernorm.weight, m.heads, m.kv_lora_rank,
                        m.nope, m.rope, m.v_dim, None if lora else at.q_proj.weight,
                        at.q_a_proj.weight if lora else None, at.q_a_proj.bias if lora else None,
                        at.q_a_layernorm.weight if lora else None, at.q_b_proj.weight if lora else None,
                        at.kv_a_proj_with_mqa.weight, at.kv_a_proj_with_mqa.bias, at.kv_a_layernorm.weight,
                        at.kv_b_proj.weight, at.o_proj.weight, at.o_proj.bias)


def _add_moe(stack, block) -> None:
    spec, experts = block.gate.spec, block.experts
    w13, w2 = experts.expert_weights()
    stack.set_moe(block.gate.weight, block.gate.e_score_correction_bias, spec.top_k, spec.scoring == "sigmoid",
                  spec.norm_topk_prob, spec.n_group, spec.topk_group, spec.routed_scaling_factor, spec.renorm_eps,
                  experts.first, w13, w2)
    if block.shared is not None:
        gate = block.shared_gate.weight if block.shared_gate is not None else None
        stack.set_shared_expert(block.shared.gate_up_proj.weight, block.shared.down_proj.weight, gate)


class DecodeStep:
    """The C++ stack with what the step's call needs from Python: the rotary embedding, the windows' mask order,
    the attention route."""

    def __init__(self, stack, rotary, windows: list, fused: bool):
        self.stack, self.rotary, self.windows, self.fused = stack, rotary, windows, fused


_NONE = torch.empty(0, dtype=torch.int64)


def run(model, step: DecodeStep, ctx, h: torch.Tensor):
    """The step's decoder layers -> (h, residual)."""
    meta, ops = ctx.meta, model.ops
    # TorchOps.moe_experts' split of a step's experts
    workers = torch.get_num_threads() if getattr(ops, "moe_expert_threads", False) else 1
    if step.fused:
        pos, slots, tables, lens = ops.own_decode_args(meta, ctx.positions)
        return step.stack.run(h, pos, slots, tables, lens, step.rotary.cos_sin, None, None, None, [], workers)
    cos, sin = ctx.rope_tables(step.rotary)
    masks = [meta.decode_window_masks[w] for w in step.windows]
    return step.stack.run(h, _NONE, meta.slot_mapping, _NONE, _NONE, step.rotary.cos_sin, cos, sin,
                          meta.decode_slots, masks, workers)
