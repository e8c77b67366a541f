// A whole decode step's decoder layers in one C++ call (the dense llama-shaped families: llama, mistral, qwen2,
// qwen3). Python builds a DecodeStack once (the layers' weights, caches and switches) and calls `run` once per step,
// so the per-layer, per-op Python dispatch (~15 ops x layers) is paid once per step.
//
// The stack calls exactly what the op table's Python path calls (the own float32 kernels of this module where the
// table uses them, else the same ATen ops in the same order), so the result is the same as the op-by-op path.
// Weights that are not plain tensors (quantized weights with their own kernels) are called back through their
// Python `linear` method, with the GIL taken only for that call: everything else runs without the GIL, so the
// server's event loop is not held off during a step.
#include <torch/extension.h>
#include <pybind11/stl.h>
#include <vector>

namespace {

struct StepLinear {
  torch::Tensor w;                      // dense weight (undefined when `fn` is used)
  c10::optional<torch::Tensor> b;
  py::object fn;                        // weight.linear(x, bias) for non-tensor weights
  bool dense = true;
  bool bias_after = false;              // row-parallel: linear without bias, then + bias
};

struct StepLayer {
  torch::Tensor in_norm, post_norm;
  c10::optional<torch::Tensor> q_norm, k_norm;
  int64_t window_index = 0;             // which mask of the step's list
  int64_t window = 0;                   // 0: full attention
  StepLinear qkv, o, gate_up, down;
};

}  // namespace

class DecodeStack {
 public:
  // dot_isa: the bf16 dot-product kernel's ISA (bf16dot::Isa) for bf16 weights of up to dot_rows rows, or -1
  DecodeStack(int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, double eps, double scale, bool own_f32,
              bool gemv, int64_t dot_isa, int64_t dot_rows, bool fused_attention,
              std::vector<torch::Tensor> k_caches, std::vector<torch::Tensor> v_caches)
      : Hq_(num_heads), Hk_(num_kv_heads), D_(head_dim), eps_(eps), scale_(scale), own_f32_(own_f32), gemv_(gemv),
        dot_isa_(dot_isa), dot_rows_(dot_rows), fused_attention_(fused_attention), k_caches_(std::move(k_caches)),
        v_caches_(std::move(v_caches)) {}

  void add_layer(torch::Tensor in_norm, torch::Tensor post_norm, c10::optional<torch::Tensor> q_norm,
                 c10::optional<torch::Tensor> k_norm, int64_t window_index, int64_t window, py::object qkv,
                 c10::optional<torch::Tensor> qkv_b, py::object o, c10::optional<torch::Tensor> o_b,
                 py::object gate_up, c10::optional<torch::Tensor> gate_up_b, py::object down,
                 c10::optional<torch::Tensor> down_b) {
    TORCH_CHECK(layers_.size() < k_caches_.size(), "more layers than KV caches");
    StepLayer L;
    L.in_norm = in_norm;
    L.post_norm = post_norm;
    L.q_norm = q_norm;
    L.k_norm = k_norm;
    L.window_index = window_index;
    L.window = window;
    L.qkv = make_linear(qkv, qkv_b, false);
    L.o = make_linear(o, o_b, true);
    L.gate_up = make_linear(gate_up, gate_up_b, false);
    L.down = make_linear(down, down_b, true);
    layers_.push_back(std::move(L));
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // h [B, H] (the embedded tokens, one row per sequence) -> (h, residual) after the last layer.
  // fused attention: positions, slots int64 [B], tables int32 [B, max_blocks], lens int64 [B], cos_sin the rotary
  // cache. Otherwise: cos / sin [B, 1, D] in the activation dtype, slots int64 [B] for the cache write, decode_slots
  // [B, L] int64 for the gather, masks[window_index] the step's attention mask (or None).
  std::tuple<torch::Tensor, torch::Tensor> run(torch::Tensor h, torch::Tensor positions, torch::Tensor slots,
                                               torch::Tensor tables, torch::Tensor lens, torch::Tensor cos_sin,
                                               c10::optional<torch::Tensor> cos, c10::optional<torch::Tensor> sin,
                                               c10::optional<torch::Tensor> decode_slots,
                                               std::vector<c10::optional<torch::Tensor>> masks) {
    TORCH_CHECK(layers_.size() == k_caches_.size(), "the stack has ", layers_.size(), " layers for ",
                k_caches_.size(), " KV caches");
    py::gil_scoped_release no_gil;
    torch::Tensor residual;
    const int64_t T = h.size(0);
    const int64_t q_size = Hq_ * D_, kv_size = Hk_ * D_;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const StepLayer& L = layers_[i];
      torch::Tensor x;
      if (!residual.defined()) {
        residual = h;
        x = rms_norm(h, L.in_norm);
      } else {
        std::tie(x, residual) = add_rms_norm(h, residual, L.in_norm);
      }
      torch::Tensor qkv = linear(L.qkv, x);
      torch::Tensor v = qkv.narrow(1, q_size + kv_size, kv_size).view({T, Hk_, D_});
      torch::Tensor& kc = k_caches_[i];
      torch::Tensor& vc = v_caches_[i];
      torch::Tensor o;
      if (fused_attention_) {
        torch::Tensor q = qkv.narrow(1, 0, q_size).view({T, Hq_, D_});
        torch::Tensor k = qkv.narrow(1, q_size, kv_size).view({T, Hk_, D_});
        if (L.q_norm) {
          q = at::rms_norm(q, {D_}, *L.q_norm, eps_);
          k = at::rms_norm(k, {D_}, *L.k_norm, eps_);
        }
        o = kc.scalar_type() == at::kBFloat16
                ? rope_attention_decode_bf16(q, k, v, kc, vc, cos_sin, positions, slots, tables, lens, L.window,
                                             scale_)
                : rope_attention_decode_f32(q, k, v, kc, vc, cos_sin, positions, slots, tables, lens, L.window,
                                            scale_);
      } else {
        TORCH_CHECK(cos && sin && decode_slots, "the op path needs cos, sin and decode_slots");
        torch::Tensor q, k;
        if (L.q_norm) {
          q = rope(at::rms_norm(qkv.narrow(1, 0, q_size).view({T, Hq_, D_}), {D_}, *L.q_norm, eps_), *cos, *sin);
          k = rope(at::rms_norm(qkv.narrow(1, q_size, kv_size).view({T, Hk_, D_}), {D_}, *L.k_norm, eps_), *cos,
                   *sin);
        } else {
          torch::Tensor qk = rope(qkv.narrow(1, 0, q_size + kv_size).view({T, Hq_ + Hk_, D_}), *cos, *sin);
          q = qk.narrow(1, 0, Hq_);
          k = qk.narrow(1, Hq_, Hk_);
        }
        kc.view({-1, Hk_, D_}).index_copy_(0, slots, k);
        vc.view({-1, Hk_, D_}).index_copy_(0, slots, v);
        o = attention(q, kc, vc, *decode_slots, masks.at(L.window_index));
      }
      h = linear(L.o, o);
      std::tie(x, residual) = add_rms_norm(h, residual, L.post_norm);
      h = linear(L.down, silu_and_mul(linear(L.gate_up, x)));
    }
    return {h, residual};
  }

 private:
  StepLinear make_linear(py::object w, c10::optional<torch::Tensor> b, bool bias_after) {
    StepLinear L;
    L.b = b;
    L.bias_after = bias_after;
    if (THPVariable_Check(w.ptr())) {
      L.w = w.cast<torch::Tensor>();
    } else {
      L.fn = w.attr("linear");
      L.dense = false;
    }
    return L;
  }

  // the op table's `linear` (TorchOps.linear), then the bias of a row-parallel layer
  torch::Tensor linear(const StepLinear& L, const torch::Tensor& x) const {
    c10::optional<torch::Tensor> b = L.bias_after ? c10::nullopt : L.b;
    torch::Tensor y;
    if (!L.dense) {
      py::gil_scoped_acquire gil;
      y = L.fn(x, b ? py::cast(*b) : py::none()).cast<torch::Tensor>();
    } else if (gemv_ && x.size(0) <= 8 && L.w.scalar_type() == at::kBFloat16) {
      y = bf16_linear(x, L.w, b);
    } else if (dot_isa_ >= 0 && x.size(0) <= dot_rows_ && L.w.scalar_type() == at::kBFloat16 &&
               L.w.is_contiguous()) {
      y = bf16_dot_linear(x, L.w, b, dot_isa_, false);
    } else if (x.scalar_type() != L.w.scalar_type()) {
      y = at::linear(x.to(L.w.scalar_type()), L.w).to(x.scalar_type());
      if (b) y = y + *b;
    } else {
      y = at::linear(x, L.w, b);
    }
    if (L.bias_after && L.b) y = y + *L.b;
    return y;
  }

  bool own_norm(const torch::Tensor& x, const torch::Tensor& w) const {
    return own_f32_ && x.dim() == 2 && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
           x.is_contiguous();
  }

  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
    if (own_norm(x, w)) return rms_norm_f32(x, w, eps_);
    return at::rms_norm(x, {x.size(-1)}, w, eps_);
  }

  std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                                        const torch::Tensor& w) const {
    if (own_norm(x, w) && residual.is_contiguous() && residual.scalar_type() == at::kFloat)
      return add_rms_norm_f32(x, residual, w, eps_);
    torch::Tensor r = x + residual;
    return {rms_norm(r, w), r};
  }

  torch::Tensor silu_and_mul(const torch::Tensor& x) const {
    if (own_f32_ && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous()) return silu_mul_f32(x);
    const int64_t half = x.size(-1) / 2;
    return at::silu(x.narrow(-1, 0, half)) * x.narrow(-1, half, half);
  }

  // TorchOps.rope_heads
  static torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
    const int64_t half = x.size(-1) / 2;
    return at::addcmul(x * cos, at::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1), sin);
  }

  // TorchOps.attention_decode
  torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& kc, const torch::Tensor& vc,
                          const torch::Tensor& decode_slots, const c10::optional<torch::Tensor>& mask) const {
    const int64_t B = q.size(0), L = decode_slots.size(1);
    torch::Tensor flat = decode_slots.view({-1});
    torch::Tensor k = kc.view({-1, Hk_, D_}).index_select(0, flat).view({B, L, Hk_, D_}).transpose(1, 2);
    torch::Tensor v = vc.view({-1, Hk_, D_}).index_select(0, flat).view({B, L, Hk_, D_}).transpose(1, 2);
    torch::Tensor o = at::scaled_dot_product_attention(q.view({B, Hk_, Hq_ / Hk_, D_}), k, v, mask, 0.0, false,
                                                       scale_);
    return o.reshape({B, Hq_ * D_});
  }

  int64_t Hq_, Hk_, D_;
  double eps_, scale_;
  bool own_f32_, gemv_;
  int64_t dot_isa_, dot_rows_;
  bool fused_attention_;
  std::vector<torch::Tensor> k_caches_, v_caches_;
  std::vector<StepLayer> layers_;
};

void register_decode_step(py::module& m) {
  py::class_<DecodeStack>(m, "DecodeStack")
      .def(py::init<int64_t, int64_t, int64_t, double, double, bool, bool, int64_t, int64_t, bool,
                    std::vector<torch::Tensor>, std::vector<torch::Tensor>>())
      .def("add_layer", &DecodeStack::add_layer)
      .def("num_layers", &DecodeStack::num_layers)
      .def("run", &DecodeStack::run, "a decode step's decoder layers -> (h, residual)");
}
