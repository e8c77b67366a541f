// The AVX512-VNNI panel kernel of the block weights (see block_gemm.cpp for the values, activations and offsets;
// included after it in module.cpp, one translation unit).
// ---- AVX512-VNNI panels: 16 weight rows interleaved so one vpdpbusd gives 16 outputs' partial dots --------------
// Layout (block_pack_panels): rows padded to a multiple of 16; per panel of 16 rows and block of 32 weights, PBS
// bytes: chunk c (c = 0..7) holds weights k = 4c .. 4c+3 of the block for the 16 rows, byte 4r + t = row r's weight
// 4c + t (so int32 lane r of vpdpbusd(chunk, broadcast 4 bytes of x) is row r's partial dot):
//   bits 4/5/6: 4 x 64 bytes of nibbles (vector j: chunk j in the low nibbles, chunk j + 4 in the high ones), then
//               bits - 4 planes of 8 x 8 bytes (chunk c's 64-bit mask: bit 4r + t = bit 4 (plane 0) / 5 of u);
//   bits 8:     8 x 64 bytes of u.
// Scales (and zeros) per panel as [panels, K/G, 16]: one vector of the 16 rows' scales per group.
namespace blocks {

inline int64_t panel_bytes(int64_t bits) { return bits == 8 ? 512 : 256 + 64 * (bits - 4); }

inline uint8_t panel_u(const uint8_t* pb, int64_t bits, int r, int k) {   // u of row r, weight k of a block-panel
  const int c = k / 4, t = k % 4;
  if (bits == 8) return pb[c * 64 + r * 4 + t];
  const uint8_t byte = pb[(c % 4) * 64 + r * 4 + t];
  uint8_t u = c < 4 ? (byte & 15) : (byte >> 4);
  for (int pl = 0; pl < bits - 4; ++pl) {
    uint64_t h;
    std::memcpy(&h, pb + 256 + pl * 64 + c * 8, 8);
    u |= uint8_t(((h >> (r * 4 + t)) & 1u) << (4 + pl));
  }
  return u;
}

struct PanelProblem {
  int64_t M, K, N, G, bits;
  const XQ* xq;
  const uint8_t* w;          // [N/16, K/32, PBS]
  const float* s;            // [N/16, K/G, 16]
  const float* z;            // same or null
  const float* bias;         // [N] or null
  float* y;                  // [M, N]
};

template <int MT>
TVNNI void panel_tile(const PanelProblem& p, int64_t pn, int64_t m0) {
  const int64_t K = p.K, NB = K / 32, NG = K / p.G, PBS = panel_bytes(p.bits), bits = p.bits;
  const float off = float(offset(bits));
  const uint8_t* wp = p.w + pn * NB * PBS;
  const float* sp = p.s + pn * NG * 16;
  const float* zp = p.z ? p.z + pn * NG * 16 : nullptr;
  const XQ& xq = *p.xq;
  __m512 acc[MT];
  for (int m = 0; m < MT; ++m) acc[m] = _mm512_setzero_ps();
  const __m512i lo4 = _mm512_set1_epi8(15);
  for (int64_t b = 0; b < NB; ++b) {
    const uint8_t* pb = wp + b * PBS;
    __m512i U[8];
    if (bits == 8) {
      for (int c = 0; c < 8; ++c) U[c] = _mm512_loadu_si512(pb + c * 64);
    } else {
      for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(pb + j * 64);
        U[j] = _mm512_and_si512(v, lo4);
        U[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
      }
      for (int pl = 0; pl < bits - 4; ++pl) {
        const __m512i add = _mm512_set1_epi8(char(16 << pl));
        for (int c = 0; c < 8; ++c) {
          uint64_t h;
          std::memcpy(&h, pb + 256 + pl * 64 + c * 8, 8);
          U[c] = _mm512_mask_add_epi8(U[c], __mmask64(h), U[c], add);
        }
      }
    }
    for (int m = 0; m < MT; ++m) {
      const int64_t row = m0 + m;
      const int8_t* xb = xq.q.data() + row * K + b * 32;
      const float dx = xq.d[row * NB + b];
      int32_t x4[8];
      std::memcpy(x4, xb, 32);
      if (p.G == 32) {
        __m512i d = _mm512_setzero_si512();
        for (int c = 0; c < 8; ++c) d = _mm512_dpbusd_epi32(d, U[c], _mm512_set1_epi32(x4[c]));
        const float ds = xq.dsum[row * NG + b];
        // s * (dx * dot - off * dsum) (+ z * dsum)
        const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(dx), _mm512_set1_ps(-off * ds));
        acc[m] = _mm512_fmadd_ps(t, _mm512_loadu_ps(sp + b * 16), acc[m]);
        if (zp) acc[m] = _mm512_fmadd_ps(_mm512_loadu_ps(zp + b * 16), _mm512_set1_ps(ds), acc[m]);
      } else {
        for (int h = 0; h < 2; ++h) {
          __m512i d = _mm512_setzero_si512();
          for (int c = 4 * h; c < 4 * h + 4; ++c) d = _mm512_dpbusd_epi32(d, U[c], _mm512_set1_epi32(x4[c]));
          const int64_t g = 2 * b + h;
          const float ds = xq.dsum[row * NG + g];
          const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_set1_ps(dx), _mm512_set1_ps(-off * ds));
          acc[m] = _mm512_fmadd_ps(t, _mm512_loadu_ps(sp + g * 16), acc[m]);
          if (zp) acc[m] = _mm512_fmadd_ps(_mm512_loadu_ps(zp + g * 16), _mm512_set1_ps(ds), acc[m]);
        }
      }
    }
  }
  const int64_t n0 = pn * 16, live = std::min<int64_t>(16, p.N - n0);
  const __mmask16 keep = __mmask16((1u << live) - 1);
  const __m512 bv = p.bias ? _mm512_maskz_loadu_ps(keep, p.bias + n0) : _mm512_setzero_ps();
  for (int m = 0; m < MT; ++m) _mm512_mask_storeu_ps(p.y + (m0 + m) * p.N + n0, keep, _mm512_add_ps(acc[m], bv));
}

void run_panels(const PanelProblem& p, int64_t p0, int64_t p1) {
  for (int64_t mc = 0; mc < p.M; mc += M_CHUNK) {
    const int64_t me = std::min(p.M, mc + M_CHUNK);
    for (int64_t pn = p0; pn < p1; ++pn) {
      int64_t m = mc;
      for (; m + 16 <= me; m += 16) panel_tile<16>(p, pn, m);
      if (m + 8 <= me) { panel_tile<8>(p, pn, m); m += 8; }
      if (m + 4 <= me) { panel_tile<4>(p, pn, m); m += 4; }
      if (m + 2 <= me) { panel_tile<2>(p, pn, m); m += 2; }
      if (m < me) panel_tile<1>(p, pn, m);
    }
  }
}

}  // namespace blocks

// q int8 [N, K] -> panels uint8 [ceil(N/16), K/32, PBS] (rows past N: zero weights)
torch::Tensor block_pack_panels(torch::Tensor q, int64_t bits) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == torch::kInt8, "block_pack_panels: q int8 [N, K]");
  TORCH_CHECK(bits == 4 || bits == 5 || bits == 6 || bits == 8, "block_pack_panels: bits must be 4, 5, 6 or 8");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(K % 32 == 0, "block_pack_panels: K % 32 != 0");
  auto qc = q.contiguous();
  const int64_t NP = (N + 15) / 16, NB = K / 32, PBS = blocks::panel_bytes(bits);
  const int32_t off = blocks::offset(bits), hi = (1 << bits) - 1;
  auto out = torch::zeros({NP, NB, PBS}, torch::kUInt8);
  const int8_t* qp = qc.data_ptr<int8_t>();
  uint8_t* op = out.data_ptr<uint8_t>();
  std::atomic<bool> bad_any{false};
  at::parallel_for(0, NP, 16, [&](int64_t p0, int64_t p1) {
  bool bad = false;
  for (int64_t pn = p0; pn < p1; ++pn)
    for (int64_t b = 0; b < NB; ++b) {
      uint8_t* pb = op + (pn * NB + b) * PBS;
      for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 32; ++k) {
          const int64_t n = pn * 16 + r;
          const int32_t v = n < N ? int32_t(qp[n * K + b * 32 + k]) + off : off;
          bad |= v < 0 || v > hi;
          const uint8_t u = uint8_t(v & hi);
          const int c = k / 4, t = k % 4;
          if (bits == 8) {
            pb[c * 64 + r * 4 + t] = u;
            continue;
          }
          pb[(c % 4) * 64 + r * 4 + t] |= uint8_t((u & 15) << (c < 4 ? 0 : 4));
          for (int pl = 0; pl < bits - 4; ++pl)
            if ((u >> (4 + pl)) & 1) pb[256 + pl * 64 + c * 8 + (r * 4 + t) / 8] |= uint8_t(1u << ((r * 4 + t) % 8));
        }
    }
  if (bad) bad_any = true;
  });
  const bool bad = bad_any;
  TORCH_CHECK(!bad, "block_pack_panels: values outside the signed ", bits, "-bit range");
  return out;
}

// panels -> q int8 [len(rows), K] of the rows asked for
torch::Tensor block_unpack_panels(torch::Tensor panels, int64_t bits, torch::Tensor rows) {
  TORCH_CHECK(panels.dim() == 3 && panels.scalar_type() == torch::kUInt8, "block_unpack_panels: panels [P, K/32, PBS]");
  TORCH_CHECK(panels.size(2) == blocks::panel_bytes(bits), "block_unpack_panels: bits");
  auto pc = panels.contiguous();
  auto rc = rows.to(torch::kLong).contiguous();
  const int64_t NB = pc.size(1), K = NB * 32, PBS = pc.size(2), R = rc.numel();
  const int32_t off = blocks::offset(bits);
  auto q = torch::empty({R, K}, torch::kInt8);
  const uint8_t* pp = pc.data_ptr<uint8_t>();
  const int64_t* rp = rc.data_ptr<int64_t>();
  int8_t* qp = q.data_ptr<int8_t>();
  for (int64_t i = 0; i < R; ++i) TORCH_CHECK(rp[i] >= 0 && rp[i] < pc.size(0) * 16, "block_unpack_panels: row");
  at::parallel_for(0, R, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t pn = rp[i] / 16;
      const int r = int(rp[i] % 16);
      for (int64_t b = 0; b < NB; ++b)
        for (int k = 0; k < 32; ++k)
          qp[i * K + b * 32 + k] = int8_t(int32_t(blocks::panel_u(pp + (pn * NB + b) * PBS, bits, r, k)) - off);
    }
  });
  return q;
}

// x [M, K]; panels [ceil(N/16), K/32, PBS]; s [panels, K/G, 16] float32; z the same or empty; int8 activations
// with AVX512-VNNI (the CPU must have it). Returns [M, N] in x's dtype.
torch::Tensor block_linear_panels(torch::Tensor x, torch::Tensor panels, int64_t bits, int64_t N, torch::Tensor s,
                                  torch::Tensor z, int64_t G, c10::optional<torch::Tensor> bias) {
  TORCH_CHECK(blocks::cpu_isa() >= blocks::AVX512VNNI, "block_linear_panels: this CPU has no AVX512-VNNI");
  TORCH_CHECK(x.dim() == 2 && panels.dim() == 3 && panels.scalar_type() == torch::kUInt8, "block_linear_panels: x, panels");
  TORCH_CHECK(G == 16 || G == 32, "block_linear_panels: group must be 16 or 32");
  const int64_t M = x.size(0), K = x.size(1), NP = panels.size(0);
  TORCH_CHECK(panels.size(1) * 32 == K && panels.size(2) == blocks::panel_bytes(bits) && NP == (N + 15) / 16,
              "block_linear_panels: shape");
  TORCH_CHECK(s.scalar_type() == torch::kFloat && s.numel() == NP * (K / G) * 16, "block_linear_panels: s");
  const bool has_z = z.numel() > 0;
  if (has_z) TORCH_CHECK(z.scalar_type() == torch::kFloat && z.numel() == s.numel(), "block_linear_panels: z");
  auto xf = x.to(torch::kFloat).contiguous();
  auto pc = panels.contiguous();
  auto sc = s.contiguous();
  auto zc = has_z ? z.contiguous() : z;
  torch::Tensor bf;
  if (bias.has_value() && bias->defined()) bf = bias->to(torch::kFloat).contiguous();
  auto y = torch::empty({M, N}, xf.options());
  blocks::XQ xq;
  blocks::quantize_x(xf.data_ptr<float>(), M, K, G, xq);
  blocks::PanelProblem p{M, K, N, G, bits, &xq, pc.data_ptr<uint8_t>(), sc.data_ptr<float>(),
                         has_z ? zc.data_ptr<float>() : nullptr, bf.defined() ? bf.data_ptr<float>() : nullptr,
                         y.data_ptr<float>()};
  const int64_t panel_b = K / 32 * blocks::panel_bytes(bits);
  const int64_t grain = std::max<int64_t>(1, (int64_t(32) << 10) / std::max<int64_t>(panel_b, 1));
  at::parallel_for(0, NP, grain, [&](int64_t p0, int64_t p1) { blocks::run_panels(p, p0, p1); });
  return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}
