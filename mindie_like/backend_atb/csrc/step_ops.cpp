// What the C++ decode step (decode_step.cpp, step_moe.cpp) calls for one op: the op table's Python path
// (ops/torch_ops.py TorchOps, layers/rotary.py, layers/interleaved_rope.py) op for op, so the stack's result is the
// layer loop's. The own float32 kernels of this module run where the table uses them, else the same ATen ops in
// the same order.
//
// Weights that are not plain tensors (quantized weights with their own kernels) are called back through their
// Python `linear` method, with the GIL taken only for that call.
#include <torch/extension.h>

namespace step {

struct Linear {
  torch::Tensor w;                      // dense weight (undefined when `fn` is used)
  c10::optional<torch::Tensor> b;
  py::object fn;                        // weight.linear(x, bias) for non-tensor weights
  bool dense = true;
  bool bias_after = false;              // row-parallel: linear without bias, then + bias
};

inline Linear make_linear(py::object w, c10::optional<torch::Tensor> b, bool bias_after) {
  Linear L;
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

// rotary layouts (layers/rotary.py): half-split over the whole head, half-split over the first rotary_dim dims,
// interleaved pairs (GPT-J) over the first rotary_dim dims
enum RopeKind : int64_t { kRopeFull = 0, kRopePartial = 1, kRopeInterleaved = 2 };

struct Ops {
  double eps = 1e-6;
  bool own_f32 = false, gemv = false;
  int64_t dot_isa = -1, dot_rows = 0;   // the bf16 dot-product kernel (bf16dot::Isa) for up to dot_rows rows

  // TorchOps.linear, then the bias of a row-parallel layer
  torch::Tensor linear(const Linear& L, const torch::Tensor& x) const {
    c10::optional<torch::Tensor> b = L.bias_after ? c10::nullopt : L.b;
    torch::Tensor y;
    if (!L.dense) {
      py::gil_scoped_acquire gil;
      y = L.fn(x, b ? py::cast(*b) : py::none()).cast<torch::Tensor>();
    } else {
      y = dense_linear(x, L.w, b);
    }
    if (L.bias_after && L.b) y = y + *L.b;
    return y;
  }

  torch::Tensor dense_linear(const torch::Tensor& x, const torch::Tensor& w,
                             const c10::optional<torch::Tensor>& b) const {
    if (gemv && x.size(0) <= 8 && w.scalar_type() == at::kBFloat16) return bf16_linear(x, w, b);
    if (dot_isa >= 0 && x.dim() == 2 && x.size(0) <= dot_rows && w.scalar_type() == at::kBFloat16 &&
        w.is_contiguous())
      return bf16_dot_linear(x, w, b, dot_isa, false);
    if (x.scalar_type() != w.scalar_type()) {
      torch::Tensor y = at::linear(x.to(w.scalar_type()), w).to(x.scalar_type());
      return b ? y + *b : y;
    }
    return at::linear(x, w, b);
  }

  bool own_norm(const torch::Tensor& x, const torch::Tensor& w) const {
    return own_f32 && x.dim() == 2 && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
           x.is_contiguous();
  }

  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
    if (own_norm(x, w)) return rms_norm_f32(x, w, eps);
    return at::rms_norm(x, {x.size(-1)}, w, eps);
  }

  std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& residual,
                                                        const torch::Tensor& w) const {
    if (own_norm(x, w) && residual.is_contiguous() && residual.scalar_type() == at::kFloat)
      return add_rms_norm_f32(x, residual, w, eps);
    torch::Tensor r = x + residual;
    return {rms_norm(r, w), r};
  }

  torch::Tensor silu_and_mul(const torch::Tensor& x) const {
    if (own_f32 && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous()) return silu_mul_f32(x);
    const int64_t half = x.size(-1) / 2;
    return at::silu(x.narrow(-1, 0, half)) * x.narrow(-1, half, half);
  }
};

// TorchOps.rope_heads: x [T, N, D] with the step's full-width (cos, signed sin) [T, 1, D]
inline torch::Tensor rope_half(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  return at::addcmul(x * cos, at::cat({x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1), sin);
}

// interleaved_rope.apply_interleaved: cos / sin [T, 1, rotary_dim/2]; dims past rotary_dim pass through
inline torch::Tensor rope_interleaved(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t rd = 2 * cos.size(-1), D = x.size(-1);
  torch::Tensor xr = x.narrow(-1, 0, rd).unflatten(-1, {-1, 2});
  torch::Tensor x0 = xr.select(-1, 0), x1 = xr.select(-1, 1);
  torch::Tensor rot = at::stack({x0 * cos - x1 * sin, x1 * cos + x0 * sin}, -1).flatten(-2);
  if (rd == D) return rot;
  return at::cat({rot, x.narrow(-1, rd, D - rd)}, -1);
}

// RotaryEmbedding.apply_heads with the step's tables (rotary.tables)
inline torch::Tensor rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                          int64_t kind, int64_t rotary_dim) {
  if (kind == kRopeInterleaved) return rope_interleaved(x, cos, sin);
  if (kind == kRopeFull) return rope_half(x, cos, sin);
  const int64_t D = x.size(-1);
  return at::cat({rope_half(x.narrow(-1, 0, rotary_dim).contiguous(), cos, sin),
                  x.narrow(-1, rotary_dim, D - rotary_dim)}, -1);
}

// TorchOps.attention_decode: q [B, Hq, D] over the keys / values the step's slot table gathers -> [B, Hq*D]
inline torch::Tensor attention_decode(const torch::Tensor& q, const torch::Tensor& kc, const torch::Tensor& vc,
                                      const torch::Tensor& decode_slots, const c10::optional<torch::Tensor>& mask,
                                      double scale) {
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hk = kc.size(-2), L = decode_slots.size(1);
  torch::Tensor flat = decode_slots.view({-1});
  torch::Tensor k = kc.view({-1, Hk, D}).index_select(0, flat).view({B, L, Hk, D}).transpose(1, 2);
  torch::Tensor v = vc.view({-1, Hk, D}).index_select(0, flat).view({B, L, Hk, D}).transpose(1, 2);
  torch::Tensor o = at::scaled_dot_product_attention(q.view({B, Hk, Hq / Hk, D}), k, v, mask, 0.0, false, scale);
  return o.reshape({B, Hq * D});
}

}  // namespace step
