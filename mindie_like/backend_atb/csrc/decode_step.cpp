// A whole decode step's decoder layers in one C++ call: the llama-shaped layer (llama, mistral, qwen2, qwen3), GLM's
// (partial and/or interleaved rotary, GLM-4's norms on the attention and MLP outputs), DeepSeek V3's MLA attention
// (step_mla.cpp) and the sparse MoE MLP (Qwen2-MoE, Qwen3-MoE, GLM-4.5, DeepSeek V3: step_moe.cpp). Python builds a DecodeStack once (the layers' weights, caches and
// switches: models/decode_stack.py) and calls `run` once per step, so the per-layer, per-op Python dispatch (~15
// ops x layers) is paid once per step.
//
// Each op is what the op table's Python path calls (step_ops.cpp), so the result is the op-by-op path's.
// Everything runs without the GIL (the server's event loop is not held off during a step) except the Python
// `linear` of quantized weights, which takes it for that call.
#include <torch/extension.h>
#include <pybind11/stl.h>
#include <memory>
#include <vector>

#include "step_ops.cpp"
#include "step_moe.cpp"
#include "step_mla.cpp"

namespace step {

struct Layer {
  torch::Tensor in_norm, post_norm;
  c10::optional<torch::Tensor> q_norm, k_norm;
  c10::optional<torch::Tensor> attn_out_norm, mlp_out_norm;     // GLM-4: before each residual add
  int64_t window_index = 0;             // which mask of the step's list
  int64_t window = 0;                   // 0: full attention
  Linear qkv, o;
  std::shared_ptr<Mla> mla;             // MLA attention instead of qkv (o is its o_proj)
  bool has_mlp = false;
  Linear gate_up, down;                 // dense SwiGLU MLP
  std::shared_ptr<Moe> moe;             // or a sparse MoE block
};

}  // namespace step

class DecodeStack {
 public:
  // dot_isa: the bf16 dot-product kernel's ISA (bf16dot::Isa) for bf16 weights of up to dot_rows rows, or -1
  DecodeStack(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps, double scale, bool own_f32,
              bool gemv, int64_t dot_isa, int64_t dot_rows, bool fused_attention, int64_t rope_kind,
              int64_t rotary_dim, std::vector<torch::Tensor> k_caches, std::vector<torch::Tensor> v_caches)
      : Hq_(num_heads), Hk_(num_kv_heads), D_(head_dim), scale_(scale), fused_attention_(fused_attention),
        rope_kind_(rope_kind), rotary_dim_(rotary_dim), k_caches_(std::move(k_caches)),
        v_caches_(std::move(v_caches)) {
    TORCH_CHECK(!fused_attention || rope_kind == step::kRopeFull, "the fused attention kernel turns whole heads");
    ops_.eps = eps;
    ops_.own_f32 = own_f32;
    ops_.gemv = gemv;
    ops_.dot_isa = dot_isa;
    ops_.dot_rows = dot_rows;
  }

  void add_layer(torch::Tensor in_norm, torch::Tensor post_norm, c10::optional<torch::Tensor> q_norm,
                 c10::optional<torch::Tensor> k_norm, int64_t window_index, int64_t window, py::object qkv,
                 c10::optional<torch::Tensor> qkv_b, py::object o, c10::optional<torch::Tensor> o_b) {
    step::Layer& L = push_layer(in_norm, post_norm, o, o_b);
    L.q_norm = q_norm;
    L.k_norm = k_norm;
    L.window_index = window_index;
    L.window = window;
    L.qkv = step::make_linear(qkv, qkv_b, false);
  }

  // a layer with MLA attention (layers/mla.py): q_proj, or q_a_proj + q_a_norm + q_b_proj (q None)
  void add_mla_layer(torch::Tensor in_norm, torch::Tensor post_norm, int64_t heads, int64_t kv_lora_rank,
                     int64_t nope, int64_t rope, int64_t v_dim, py::object q, py::object q_a,
                     c10::optional<torch::Tensor> q_a_b, c10::optional<torch::Tensor> q_a_norm, py::object q_b,
                     py::object kv_a, c10::optional<torch::Tensor> kv_a_b, torch::Tensor kv_a_norm,
                     torch::Tensor kv_b, py::object o, c10::optional<torch::Tensor> o_b) {
    TORCH_CHECK(!fused_attention_, "MLA runs the op-by-op route");
    auto m = std::make_shared<step::Mla>();
    m->heads = heads;
    m->kv_lora_rank = kv_lora_rank;
    m->nope = nope;
    m->rope = rope;
    m->v_dim = v_dim;
    m->q_lora = q.is_none();
    if (m->q_lora) {
      TORCH_CHECK(q_a_norm, "the q LoRA needs its norm");
      m->q_a = step::make_linear(q_a, q_a_b, false);
      m->q_a_norm = *q_a_norm;
      m->q_b = step::make_linear(q_b, c10::nullopt, false);
    } else {
      m->q = step::make_linear(q, c10::nullopt, false);
    }
    m->kv_a = step::make_linear(kv_a, kv_a_b, false);
    m->kv_a_norm = kv_a_norm;
    m->kv_b = kv_b;
    push_layer(in_norm, post_norm, o, o_b).mla = m;
  }

  // the last layer's norms of the attention output and of the MLP output (GLM-4)
  void set_output_norms(torch::Tensor attn_out, torch::Tensor mlp_out) {
    last().attn_out_norm = attn_out;
    last().mlp_out_norm = mlp_out;
  }

  void set_dense_mlp(py::object gate_up, c10::optional<torch::Tensor> gate_up_b, py::object down,
                     c10::optional<torch::Tensor> down_b) {
    step::Layer& L = last();
    L.gate_up = step::make_linear(gate_up, gate_up_b, false);
    L.down = step::make_linear(down, down_b, true);
    L.has_mlp = true;
  }

  // the last layer's MLP is a sparse MoE block: routing as ops/torch_moe.py RoutingSpec, this rank's experts
  void set_moe(py::object router, c10::optional<torch::Tensor> correction_bias, int64_t top_k, bool sigmoid,
               bool norm_topk_prob, int64_t n_group, int64_t topk_group, double routed_scaling, double renorm_eps,
               int64_t first_expert, std::vector<py::object> w13, std::vector<py::object> w2) {
    TORCH_CHECK(w13.size() == w2.size() && !w13.empty(), "expert lists");
    auto m = std::make_shared<step::Moe>();
    m->router = step::make_linear(router, c10::nullopt, false);
    m->correction_bias = correction_bias;
    m->top_k = top_k;
    m->sigmoid = sigmoid;
    m->norm_topk_prob = norm_topk_prob;
    m->n_group = n_group;
    m->topk_group = topk_group;
    m->routed_scaling = routed_scaling;
    m->renorm_eps = renorm_eps;
    m->first_expert = first_expert;
    for (size_t e = 0; e < w13.size(); ++e) {
      m->w13.push_back(step::make_linear(w13[e], c10::nullopt, false));
      m->w2.push_back(step::make_linear(w2[e], c10::nullopt, true));
      m->all_dense = m->all_dense && m->w13.back().dense && m->w2.back().dense;
    }
    last().moe = m;
    last().has_mlp = true;
  }

  // the last layer's MoE block adds a shared expert (an MLP), scaled by sigmoid(x @ gate.T) where `gate` is given
  void set_shared_expert(py::object gate_up, py::object down, c10::optional<torch::Tensor> gate) {
    TORCH_CHECK(last().moe, "a shared expert needs an MoE block");
    step::Moe& m = *last().moe;
    m.has_shared = true;
    m.shared_gate_up = step::make_linear(gate_up, c10::nullopt, false);
    m.shared_down = step::make_linear(down, c10::nullopt, true);
    m.shared_gate = gate;
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // h [B, H] (the embedded tokens, one row per sequence) -> (h, residual) after the last layer.
  // fused attention: positions, slots int64 [B], tables int32 [B, max_blocks], lens int64 [B], cos_sin the rotary
  // cache. Otherwise: cos / sin the step's rotary tables in the activation dtype (rotary.tables), slots int64 [B]
  // for the cache write, decode_slots [B, L] int64 for the gather, masks[window_index] the step's attention mask
  // (or None). moe_workers: how many shares a step's experts split into (TorchOps.moe_experts' workers).
  std::tuple<torch::Tensor, torch::Tensor> run(torch::Tensor h, torch::Tensor positions, torch::Tensor slots,
                                               torch::Tensor tables, torch::Tensor lens, torch::Tensor cos_sin,
                                               c10::optional<torch::Tensor> cos, c10::optional<torch::Tensor> sin,
                                               c10::optional<torch::Tensor> decode_slots,
                                               std::vector<c10::optional<torch::Tensor>> masks, int64_t moe_workers) {
    TORCH_CHECK(layers_.size() == k_caches_.size(), "the stack has ", layers_.size(), " layers for ",
                k_caches_.size(), " KV caches");
    TORCH_CHECK(layers_.back().has_mlp, "the last layer has no MLP");
    py::gil_scoped_release no_gil;
    torch::Tensor residual;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const step::Layer& L = layers_[i];
      torch::Tensor x;
      if (!residual.defined()) {
        residual = h;
        x = ops_.rms_norm(h, L.in_norm);
      } else {
        std::tie(x, residual) = ops_.add_rms_norm(h, residual, L.in_norm);
      }
      torch::Tensor o = attention(L, x, i, positions, slots, tables, lens, cos_sin, cos, sin, decode_slots, masks);
      h = ops_.linear(L.o, o);
      if (L.attn_out_norm) h = ops_.rms_norm(h, *L.attn_out_norm);
      std::tie(x, residual) = ops_.add_rms_norm(h, residual, L.post_norm);
      if (L.moe) {
        h = step::moe_block(ops_, *L.moe, x, moe_workers);
      } else {
        h = ops_.linear(L.down, ops_.silu_and_mul(ops_.linear(L.gate_up, x)));
      }
      if (L.mlp_out_norm) h = ops_.rms_norm(h, *L.mlp_out_norm);
    }
    return {h, residual};
  }

 private:
  step::Layer& push_layer(torch::Tensor in_norm, torch::Tensor post_norm, py::object o,
                          c10::optional<torch::Tensor> o_b) {
    TORCH_CHECK(layers_.size() < k_caches_.size(), "more layers than KV caches");
    TORCH_CHECK(layers_.empty() || layers_.back().has_mlp, "the previous layer has no MLP");
    step::Layer L;
    L.in_norm = in_norm;
    L.post_norm = post_norm;
    L.o = step::make_linear(o, o_b, true);
    layers_.push_back(std::move(L));
    return layers_.back();
  }

  step::Layer& last() {
    TORCH_CHECK(!layers_.empty(), "no layer added");
    return layers_.back();
  }

  // llama.Attention.forward up to o_proj: qkv, q/k norms, rotary, KV cache write, attention -> [T, Hq*D]
  torch::Tensor attention(const step::Layer& L, const torch::Tensor& x, size_t i, const torch::Tensor& positions,
                          const torch::Tensor& slots, const torch::Tensor& tables, const torch::Tensor& lens,
                          const torch::Tensor& cos_sin, const c10::optional<torch::Tensor>& cos,
                          const c10::optional<torch::Tensor>& sin, const c10::optional<torch::Tensor>& decode_slots,
                          const std::vector<c10::optional<torch::Tensor>>& masks) {
    if (L.mla) {
      TORCH_CHECK(cos && sin && decode_slots, "MLA needs cos, sin and decode_slots");
      return step::mla_attention(ops_, *L.mla, x, k_caches_[i], v_caches_[i], *cos, *sin, rope_kind_, slots,
                                 *decode_slots, masks.at(L.window_index), scale_);
    }
    const int64_t T = x.size(0), q_size = Hq_ * D_, kv_size = Hk_ * D_;
    const double eps = ops_.eps;
    torch::Tensor qkv = ops_.linear(L.qkv, x);
    torch::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({T, Hk_, D_});
    torch::Tensor& kc = k_caches_[i];
    torch::Tensor& vc = v_caches_[i];
    if (fused_attention_) {
      torch::Tensor q = qkv.narrow(1, 0, q_size).view({T, Hq_, D_});
      torch::Tensor k = qkv.narrow(1, q_size, kv_size).view({T, Hk_, D_});
      if (L.q_norm) {
        q = at::rms_norm(q, {D_}, *L.q_norm, eps);
        k = at::rms_norm(k, {D_}, *L.k_norm, eps);
      }
      if (kc.scalar_type() == at::kBFloat16)
        return rope_attention_decode_bf16(q, k, v, kc, vc, cos_sin, positions, slots, tables, lens, L.window,
                                          scale_);
      return rope_attention_decode_f32(q, k, v, kc, vc, cos_sin, positions, slots, tables, lens, L.window, scale_);
    }
    TORCH_CHECK(cos && sin && decode_slots, "the op path needs cos, sin and decode_slots");
    torch::Tensor q, k;
    if (L.q_norm) {
      q = at::rms_norm(qkv.narrow(1, 0, q_size).view({T, Hq_, D_}), {D_}, *L.q_norm, eps);
      k = at::rms_norm(qkv.narrow(1, q_size, kv_size).view({T, Hk_, D_}), {D_}, *L.k_norm, eps);
      q = step::rope(q, *cos, *sin, rope_kind_, rotary_dim_);
      k = step::rope(k, *cos, *sin, rope_kind_, rotary_dim_);
    } else {      // q and k are adjacent in the qkv output: one rotary pass over both
      torch::Tensor qk = step::rope(qkv.narrow(1, 0, q_size + kv_size).view({T, Hq_ + Hk_, D_}), *cos, *sin,
                                    rope_kind_, rotary_dim_);
      q = qk.narrow(1, 0, Hq_);
      k = qk.narrow(1, Hq_, Hk_);
    }
    kc.view({-1, Hk_, D_}).index_copy_(0, slots, k);
    vc.view({-1, Hk_, D_}).index_copy_(0, slots, v);
    return step::attention_decode(q, kc, vc, *decode_slots, masks.at(L.window_index), scale_);
  }

  int64_t Hq_, Hk_, D_;
  double scale_;
  bool fused_attention_;
  int64_t rope_kind_, rotary_dim_;
  step::Ops ops_;
  std::vector<torch::Tensor> k_caches_, v_caches_;
  std::vector<step::Layer> layers_;
};

void register_decode_step(py::module& m) {
  py::class_<DecodeStack>(m, "DecodeStack")
      .def(py::init<int64_t, int64_t, int64_t, double, double, bool, bool, int64_t, int64_t, bool, int64_t,
                    int64_t, std::vector<torch::Tensor>, std::vector<torch::Tensor>>())
      .def("add_layer", &DecodeStack::add_layer)
      .def("add_mla_layer", &DecodeStack::add_mla_layer)
      .def("set_output_norms", &DecodeStack::set_output_norms)
      .def("set_dense_mlp", &DecodeStack::set_dense_mlp)
      .def("set_moe", &DecodeStack::set_moe)
      .def("set_shared_expert", &DecodeStack::set_shared_expert)
      .def("num_layers", &DecodeStack::num_layers)
      .def("run", &DecodeStack::run, "a decode step's decoder layers -> (h, residual)");
}
