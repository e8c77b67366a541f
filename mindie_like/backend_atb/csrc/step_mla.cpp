// The decode step's Multi-head Latent Attention (layers/mla.py MLAAttention on a decode step, DeepSeek V3 / Kimi
// K2): q (direct or through the q LoRA and its norm), the latent and the shared rope key, rotary on the rope parts,
// the cache write, the absorbed attention (q_nope through W_UK into the latent space, attention against the cached
// rows as they are, back through W_UV), as the Python path computes them, op for op. o_proj is the layer's.
#include <torch/extension.h>

namespace step {

struct Mla {
  int64_t heads = 0, kv_lora_rank = 0, nope = 0, rope = 0, v_dim = 0;
  bool q_lora = false;
  Linear q;                             // q_proj, or q_a_proj then q_b_proj through q_a_norm
  Linear q_a, q_b;
  torch::Tensor q_a_norm;
  Linear kv_a;                          // kv_a_proj_with_mqa: latent + rope key
  torch::Tensor kv_a_norm;
  torch::Tensor kv_b;                   // [H * (nope + v_dim), r], dense: its halves are W_UK and W_UV
};

// torch_mla_attention_decode: q_lat [B, H, r], q_pe [B, H, dr] against each sequence's cached rows -> [B, H, r]
inline torch::Tensor mla_attention_decode(const torch::Tensor& q_lat, const torch::Tensor& q_pe,
                                          const torch::Tensor& latent_cache, const torch::Tensor& rope_cache,
                                          const torch::Tensor& decode_slots, const c10::optional<torch::Tensor>& mask,
                                          double scale) {
  const int64_t B = q_lat.size(0), H = q_lat.size(1), r = q_lat.size(2), L = decode_slots.size(1);
  torch::Tensor flat = decode_slots.reshape({-1});
  torch::Tensor lat = latent_cache.view({-1, r}).index_select(0, flat).view({B, 1, L, r});
  torch::Tensor kpe = rope_cache.view({-1, rope_cache.size(-1)}).index_select(0, flat).view({B, 1, L, -1});
  torch::Tensor k = at::cat({lat, kpe}, -1).to(q_lat.scalar_type());
  torch::Tensor q = at::cat({q_lat, q_pe}, -1).view({B, 1, H, -1});     // the heads share one latent "KV head"
  torch::Tensor o = at::scaled_dot_product_attention(q, k, k.narrow(-1, 0, r), mask, 0.0, false, scale);
  return o.view({B, H, r});
}

// MLAAttention.forward up to o_proj on a decode step -> [T, H * v_dim]
inline torch::Tensor mla_attention(const Ops& ops, const Mla& m, const torch::Tensor& x, torch::Tensor& latent_cache,
                                   torch::Tensor& rope_cache, const torch::Tensor& cos, const torch::Tensor& sin,
                                   int64_t rope_kind, const torch::Tensor& slots, const torch::Tensor& decode_slots,
                                   const c10::optional<torch::Tensor>& mask, double scale) {
  const int64_t T = x.size(0), H = m.heads, r = m.kv_lora_rank, dn = m.nope, dv = m.v_dim;
  torch::Tensor q = m.q_lora ? ops.linear(m.q_b, ops.rms_norm(ops.linear(m.q_a, x), m.q_a_norm)) : ops.linear(m.q, x);
  q = q.view({T, H, dn + m.rope});
  torch::Tensor ckv = ops.linear(m.kv_a, x);
  torch::Tensor latent = ops.rms_norm(ckv.narrow(1, 0, r).contiguous(), m.kv_a_norm);
  torch::Tensor q_pe = rope(q.narrow(-1, dn, m.rope), cos, sin, rope_kind, m.rope);
  torch::Tensor k_pe = rope(ckv.narrow(1, r, m.rope).unsqueeze(1), cos, sin, rope_kind, m.rope);
  latent = latent.to(latent_cache.scalar_type());
  k_pe = k_pe.to(rope_cache.scalar_type());
  latent_cache.view({-1, latent_cache.size(-1)}).index_copy_(0, slots, latent);
  rope_cache.view({-1, rope_cache.size(-1)}).index_copy_(0, slots, k_pe.reshape({k_pe.size(0), -1}));
  torch::Tensor kvb = m.kv_b.view({H, dn + dv, r});
  torch::Tensor w_uk = kvb.narrow(1, 0, dn), w_uv = kvb.narrow(1, dn, dv);
  torch::Tensor q_lat = at::bmm(q.narrow(-1, 0, dn).transpose(0, 1), w_uk.to(q.scalar_type())).transpose(0, 1);
  torch::Tensor o_lat = mla_attention_decode(q_lat.contiguous(), q_pe.contiguous(), latent_cache, rope_cache,
                                             decode_slots, mask, scale);
  torch::Tensor o = at::bmm(o_lat.transpose(0, 1), w_uv.transpose(1, 2).to(o_lat.scalar_type())).transpose(0, 1);
  return o.reshape({T, H * dv});
}

}  // namespace step
