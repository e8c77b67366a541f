// The decode step's sparse MoE block (layers/moe.py SparseMoeBlock), computed as the Python path computes it:
// the router through the op table's linear, the routing of ops/torch_moe.py select_experts (softmax or sigmoid
// scores, correction bias, group-limited top-k, renormalization, scaling), the experts of fused_experts (pairs
// sorted by expert, one gate/up + SwiGLU + down per active expert over exactly its rows, one batched matmul back),
// then the shared expert with its sigmoid gate.
//
// The Python path splits a step's experts over threads (a thread pool, torch_moe._run_split); here the same shares
// run under at::parallel_for on the calling thread's OpenMP team (no second team: see cpu_threads.py), each
// expert's matmuls single-threaded inside the region. Experts with a Python-side kernel (quantized weights) run
// one after another: their calls need the GIL.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <algorithm>
#include <limits>
#include <vector>

namespace step {

struct Moe {
  Linear router;                        // [E, H] in the activation dtype
  c10::optional<torch::Tensor> correction_bias;
  int64_t top_k = 1, n_group = 1, topk_group = 1, first_expert = 0;
  bool sigmoid = false, norm_topk_prob = false;
  double routed_scaling = 1.0, renorm_eps = 0.0;
  std::vector<Linear> w13, w2;          // this rank's experts
  bool all_dense = true;                // every expert weight a plain tensor (the parallel split needs no GIL)
  bool has_shared = false;
  Linear shared_gate_up, shared_down;
  c10::optional<torch::Tensor> shared_gate;     // [1, H]: sigmoid(x @ w.T) scales the shared expert
};

// (weights [T, k] float32, ids [T, k] int64), as select_experts
inline std::tuple<torch::Tensor, torch::Tensor> select_experts(const Moe& m, const torch::Tensor& router_logits) {
  torch::Tensor logits = router_logits.to(at::kFloat);
  torch::Tensor scores = m.sigmoid ? logits.sigmoid() : at::softmax(logits, -1);
  torch::Tensor choice = m.correction_bias ? scores + m.correction_bias->to(at::kFloat) : scores;
  if (m.n_group > 1) {
    const int64_t T = choice.size(0), E = choice.size(1);
    torch::Tensor grouped = choice.view({T, m.n_group, E / m.n_group});
    torch::Tensor group_scores = std::get<0>(grouped.topk(2, -1)).sum(-1);
    torch::Tensor keep = std::get<1>(at::topk(group_scores, m.topk_group, -1, true, false));
    torch::Tensor mask = at::zeros_like(group_scores, at::kBool).scatter_(1, keep, true);
    choice = choice.masked_fill(mask.logical_not().unsqueeze(2).expand_as(grouped).reshape({T, E}),
                                -std::numeric_limits<float>::infinity());
  }
  torch::Tensor weights, ids;
  if (!m.correction_bias && m.n_group == 1) {
    std::tie(weights, ids) = at::topk(scores, m.top_k, -1);
  } else {
    ids = std::get<1>(at::topk(choice, m.top_k, -1, true, false));
    weights = scores.gather(1, ids);
  }
  if (m.norm_topk_prob) weights = weights / (weights.sum(-1, true) + m.renorm_eps);
  if (m.routed_scaling != 1.0) weights = weights * m.routed_scaling;
  return {weights, ids};
}

struct Segment {
  int64_t expert, start, rows;
};

// torch_moe._run_split's shares: largest segment first onto the least loaded share
inline std::vector<std::vector<Segment>> split_segments(std::vector<Segment> segments, int64_t workers) {
  std::stable_sort(segments.begin(), segments.end(), [](const Segment& a, const Segment& b) {
    return a.rows > b.rows;
  });
  std::vector<std::vector<Segment>> shares(workers);
  std::vector<int64_t> rows(workers, 0);
  for (const Segment& s : segments) {
    const int64_t i = std::min_element(rows.begin(), rows.end()) - rows.begin();
    shares[i].push_back(s);
    rows[i] += s.rows;
  }
  return shares;
}

constexpr int64_t kMinPairsPerThread = 8;     // torch_moe.MIN_PAIRS_PER_THREAD

// fused_experts: this rank's experts over the tokens routed to them -> [T, H]
inline torch::Tensor routed_experts(const Ops& ops, const Moe& m, const torch::Tensor& x,
                                    const torch::Tensor& weights, const torch::Tensor& ids, int64_t workers) {
  const int64_t T = x.size(0), H = x.size(1), k = ids.size(1);
  const int64_t n_local = static_cast<int64_t>(m.w13.size());
  torch::Tensor local = ids.reshape({-1});
  if (m.first_expert) local = local - m.first_expert;
  torch::Tensor foreign = local.lt(0).logical_or(local.ge(n_local));
  const bool some_foreign = foreign.any().item<bool>();
  if (some_foreign) local = local.masked_fill(foreign, n_local);
  torch::Tensor pair;
  std::tie(local, pair) = at::sort(local, true, 0, false);
  torch::Tensor counts = at::bincount(local, {}, n_local + 1).contiguous();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const int64_t n_pairs = T * k - cnt[n_local];
  if (n_pairs == 0) return at::zeros({T, H}, x.options());
  pair = pair.narrow(0, 0, n_pairs);
  torch::Tensor xs = x.index_select(0, at::floor_divide(pair, k));
  torch::Tensor ys = at::empty_like(xs);
  std::vector<Segment> segments;
  int64_t end = 0;
  for (int64_t e = 0; e < n_local; ++e) {
    if (cnt[e]) {
      segments.push_back({e, end, cnt[e]});
      end += cnt[e];
    }
  }
  auto run = [&](const std::vector<Segment>& part) {
    for (const Segment& s : part) {
      torch::Tensor seg = xs.narrow(0, s.start, s.rows);
      torch::Tensor h = ops.silu_and_mul(ops.linear(m.w13[s.expert], seg));
      ys.narrow(0, s.start, s.rows).copy_(ops.linear(m.w2[s.expert], h));
    }
  };
  if (workers > 1 && m.all_dense && n_pairs >= kMinPairsPerThread * workers) {
    const auto shares = split_segments(segments, workers);
    // one share per thread of the team; ATen ops inside the region run single-threaded. The team's threads
    // take this thread's autograd / inference mode (the step's tensors are inference tensors).
    const at::ThreadLocalState state;
    at::parallel_for(0, workers, 1, [&](int64_t s0, int64_t s1) {
      at::ThreadLocalStateGuard guard(state);
      for (int64_t s = s0; s < s1; ++s) run(shares[s]);
    });
  } else {
    run(segments);
  }
  torch::Tensor per_pair = some_foreign ? at::zeros({T * k, H}, x.options()) : at::empty({T * k, H}, x.options());
  per_pair.index_copy_(0, pair, ys);
  return at::bmm(weights.to(x.scalar_type()).view({T, 1, k}), per_pair.view({T, k, H})).view({T, H});
}

// SparseMoeBlock.forward on one rank
inline torch::Tensor moe_block(const Ops& ops, const Moe& m, const torch::Tensor& x, int64_t workers) {
  torch::Tensor weights, ids;
  std::tie(weights, ids) = select_experts(m, ops.linear(m.router, x));
  torch::Tensor y = routed_experts(ops, m, x, weights, ids, workers);
  if (m.has_shared) {
    torch::Tensor s = ops.linear(m.shared_down, ops.silu_and_mul(ops.linear(m.shared_gate_up, x)));
    if (m.shared_gate) s = s * at::sigmoid(ops.dense_linear(x, *m.shared_gate, c10::nullopt));
    y = y + s;
  }
  return y;
}

}  // namespace step
