// Two paths: (1) general: fused_sequence_logps (recomputes logits in backward) then dpo_loss with autograd;
// (2) pair-separable losses (+ sft) while training: a custom Function whose forward walks chunks of whole pairs,
// computes each chunk's logits once, the chunk's loss gradient dℓ/dlogps (via dpo_loss on the chunk's pairs, which is
// exact because the loss is a mean of per-pair terms), and right away grad_hidden / grad_W / grad_bias; backward only
// scales the stored gradients by the upstream scalar.
#include "fused_dpo.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace tdpo {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool fast_path_applies(const DPOLossConfig& cfg) {
  for (const auto& t : cfg.terms)
    if (t.type != "sft" && !is_pair_separable(t.type)) return false;
  return true;
}

class SeparableDPOFunction : public torch::autograd::Function<SeparableDPOFunction> {
 public:
  // Returns {loss (), logps (2P), counts (2P), logits_sum (2P)}; only loss is differentiable.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias_opt, const at::Tensor& labels,
                               const at::Tensor& ref_logps /*(2P) acc dtype, zeros when reference-free*/,
                               const DPOLossConfig& cfg, int64_t chunk_rows) {
    const at::Tensor bias = bias_opt.has_value() ? *bias_opt : at::Tensor();
    const int64_t N = hidden.size(0), T = hidden.size(1), H = hidden.size(2), V = weight.size(0), P = N / 2;
    const auto acc = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const auto fopts = hidden.options().dtype(acc);
    const bool need_h = hidden.requires_grad(), need_w = weight.requires_grad(),
               need_b = bias.defined() && bias.requires_grad();
    auto h2 = hidden.reshape({N * T, H});                                  // (N*T, H)
    at::Tensor rows, targets;                                              // (M), (M)
    detail::counted_rows(labels, rows, targets);
    auto seq_of_row = at::div(rows, T, "floor");                           // (M)
    auto counts = at::zeros({N}, rows.options());                          // (N) int64
    if (rows.numel() > 0) counts.index_add_(0, seq_of_row, at::ones_like(rows));
    auto counts_cpu = counts.cpu();
    auto cnt = counts_cpu.accessor<int64_t, 1>();
    std::vector<int64_t> off(N + 1, 0);                                    // row offsets of each sequence in `rows`
    for (int64_t n = 0; n < N; ++n) off[n + 1] = off[n] + cnt[n];

    // Non-separable sft term: −w Σ_p logp_chosen(p) / max(1, Σ_p n_w) has the constant gradient −w / max(1, Σ n_w).
    DPOLossConfig pair_cfg = cfg;
    pair_cfg.terms.clear();
    double sft_w = 0.0;
    for (const auto& t : cfg.terms) {
      if (t.type == "sft") sft_w += t.weight;
      else pair_cfg.terms.push_back(t);
    }
    const double sft_den = std::max<double>(1.0, (double)(off[P] - off[0]));

    auto logps = at::zeros({N}, fopts);                                    // (N)
    auto logits_sum = at::zeros({N}, fopts);                               // (N)
    at::Tensor gh, gw, gb;
    if (need_h) gh = at::zeros({N * T, H}, hidden.options());              // (N*T, H)
    if (need_w) gw = at::zeros({V, H}, weight.options().dtype(acc));       // (V, H)
    if (need_b) gb = at::zeros({V}, weight.options().dtype(acc));          // (V)
    at::Tensor loss = at::zeros({}, fopts);

    for (int64_t p0 = 0; p0 < P;) {
      int64_t p1 = p0 + 1;  // pairs [p0, p1): grow while the chunk's counted rows stay within chunk_rows
      auto chunk_len = [&](int64_t q1) { return (off[q1] - off[p0]) + (off[P + q1] - off[P + p0]); };
      while (p1 < P && chunk_len(p1 + 1) <= chunk_rows) ++p1;
      const int64_t k = p1 - p0;
      // rows of chosen p0..p1-1, then rows of rejected p0..p1-1
      auto r = at::cat({rows.slice(0, off[p0], off[p1]), rows.slice(0, off[P + p0], off[P + p1])});  // (C)
      auto tg = at::cat({targets.slice(0, off[p0], off[p1]), targets.slice(0, off[P + p0], off[P + p1])});  // (C)
      auto seq = at::div(r, T, "floor");                                   // (C) global sequence ids
      auto local = at::where(seq < P, seq - p0, seq - P - p0 + k);         // (C) in [0, 2k)
      auto hc = h2.index_select(0, r);                                     // (C, H)
      auto logits = detail::chunk_logits(hc, weight, bias);                // (C, V)
      auto lse = at::logsumexp(logits, 1);                                 // (C)
      auto tok = logits.gather(1, tg.unsqueeze(1)).squeeze(1) - lse;       // (C)
      auto lp = at::zeros({2 * k}, fopts).index_add_(0, local, tok);      // (2k): chosen k then rejected k
      auto ms = at::zeros({2 * k}, fopts).index_add_(0, local, logits.mean(1));  // (2k)
      logps.slice(0, p0, p1).copy_(lp.slice(0, 0, k));
      logps.slice(0, P + p0, P + p1).copy_(lp.slice(0, k, 2 * k));
      logits_sum.slice(0, p0, p1).copy_(ms.slice(0, 0, k));
      logits_sum.slice(0, P + p0, P + p1).copy_(ms.slice(0, k, 2 * k));
      if (!at::isfinite(lp).all().item<bool>()) detail::check_finite_logps("fused_dpo_loss", logps, hidden, weight, bias);

      // dℓ/dlogps for these pairs, scaled by k/P because the loss is the mean over all P pairs.
      at::Tensor g_c = at::zeros({k}, fopts), g_r = at::zeros({k}, fopts);  // (k), (k)
      if (!pair_cfg.terms.empty()) {
        at::AutoGradMode grad_on(true);
        DPOLossInputs in;
        in.policy_chosen = lp.slice(0, 0, k).clone().requires_grad_(true);
        in.policy_rejected = lp.slice(0, k, 2 * k).clone().requires_grad_(true);
        in.ref_chosen = ref_logps.slice(0, p0, p1);
        in.ref_rejected = ref_logps.slice(0, P + p0, P + p1);
        in.chosen_counts = counts.slice(0, p0, p1);
        in.rejected_counts = counts.slice(0, P + p0, P + p1);
        auto part = dpo_loss(in, pair_cfg).loss * ((double)k / (double)P);
        auto gs = torch::autograd::grad({part}, {in.policy_chosen, in.policy_rejected}, {}, false, false, true);
        if (gs[0].defined()) g_c = gs[0];
        if (gs[1].defined()) g_r = gs[1];
        loss += part.detach();
      }
      if (sft_w != 0.0) {
        g_c = g_c - sft_w / sft_den;
        loss += -sft_w * lp.slice(0, 0, k).sum() / sft_den;
      }
      if (need_h || need_w || need_b) {
        auto gc = at::cat({g_c, g_r}).index_select(0, local).unsqueeze(1);  // (C, 1) per-token dL/dlogp
        // dL/dlogits = g · (onehot(target) − softmax), in place on the logits buffer.
        auto G = logits.sub_(lse.unsqueeze(1)).exp_().mul_(gc).neg_();     // (C, V)
        G.scatter_add_(1, tg.unsqueeze(1), gc);
        if (need_h) gh.index_copy_(0, r, at::mm(G.to(weight.scalar_type()), weight));  // (C, H)
        if (need_w) gw.addmm_(G.t(), hc.to(acc));                          // (V, H)
        if (need_b) gb.add_(G.sum(0));                                     // (V)
      }
      p0 = p1;
    }
    ctx->save_for_backward({gh, gw, gb});
    ctx->saved_data["need_h"] = need_h;
    ctx->saved_data["need_w"] = need_w;
    ctx->saved_data["need_b"] = need_b;
    ctx->saved_data["hidden_sizes"] = hidden.sizes();
    ctx->saved_data["weight_dtype"] = weight.scalar_type();
    ctx->mark_non_differentiable({logps, counts, logits_sum});
    return {loss, logps, counts, logits_sum};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const bool need_h = ctx->saved_data["need_h"].toBool(), need_w = ctx->saved_data["need_w"].toBool(),
               need_b = ctx->saved_data["need_b"].toBool();
    const auto wdt = ctx->saved_data["weight_dtype"].toScalarType();
    auto sizes = ctx->saved_data["hidden_sizes"].toIntVector();
    at::Tensor g = grads[0];                                               // () upstream dLoss
    auto scale = [&](const at::Tensor& t, at::ScalarType dt) {
      return g.defined() ? t.mul(g.to(t.scalar_type())).to(dt) : at::zeros_like(t, t.options().dtype(dt));
    };
    return {need_h ? scale(saved[0], saved[0].scalar_type()).reshape(sizes) : at::Tensor(),
            need_w ? scale(saved[1], wdt) : at::Tensor(), need_b ? scale(saved[2], wdt) : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

FusedDPOOutput fused_dpo_loss(const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const at::Tensor& labels, const at::Tensor& ref_logps, const DPOLossConfig& cfg,
                              const FusedLogpsOptions& opt, const BCORunningMean& bco_state) {
  check_dpo_config(cfg);
  TORCH_CHECK(hidden.defined() && hidden.dim() == 3 && hidden.size(0) >= 2 && hidden.size(0) % 2 == 0,
              "fused_dpo_loss: expected hidden of shape (2P, T, H) with P >= 1 (chosen rows then rejected rows) but "
              "received ",
              hidden.defined() ? hidden.sizes() : at::IntArrayRef{});
  const int64_t P = hidden.size(0) / 2;
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  detail::check_fused_inputs("fused_dpo_loss", hidden, weight, b, labels, opt.chunk_rows);
  const auto acc = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor ref;  // (2P) in the accumulation dtype
  if (cfg.reference_free) {
    ref = at::zeros({2 * P}, hidden.options().dtype(acc));
  } else {
    TORCH_CHECK(ref_logps.defined() && ref_logps.dim() == 1 && ref_logps.size(0) == 2 * P,
                "fused_dpo_loss: expected ref_logps of shape (", 2 * P, ") (chosen then rejected) but received ",
                ref_logps.defined() ? ref_logps.sizes() : at::IntArrayRef{});
    TORCH_CHECK(ref_logps.is_floating_point(), "fused_dpo_loss: expected floating-point ref_logps but received ",
                ref_logps.scalar_type());
    auto bad = ~at::isfinite(ref_logps);                                   // (2P) bool
    if (bad.any().item<bool>()) {
      const int64_t i = bad.nonzero()[0][0].item<int64_t>();
      TORCH_CHECK(false, "fused_dpo_loss: expected finite ref_logps but received ", ref_logps[i].item<double>(),
                  " at index ", i, i < P ? " (chosen)" : " (rejected)");
    }
    ref = ref_logps.detach().to(hidden.device(), acc);
  }

  FusedDPOOutput out;
  DPOLossInputs in;
  in.ref_chosen = ref.slice(0, 0, P);                                      // (P)
  in.ref_rejected = ref.slice(0, P, 2 * P);                                // (P)
  in.bco_state = bco_state;
  const bool training = at::GradMode::is_enabled() &&
                        (hidden.requires_grad() || weight.requires_grad() || (b.defined() && b.requires_grad()));
  if (opt.precompute_grads && training && fast_path_applies(cfg)) {
    auto res = SeparableDPOFunction::apply(hidden.contiguous(), weight.contiguous(),
                                           b.defined() ? c10::optional<at::Tensor>(b.contiguous()) : c10::nullopt,
                                           labels, ref, cfg, opt.chunk_rows);
    out.loss = res[0];
    out.policy_logps = res[1];
    out.counts = res[2];
    out.logits_sum = res[3];
    // Metrics (rewards, accuracies, per-term losses) from the detached log-probs: O(P) work.
    in.policy_chosen = res[1].slice(0, 0, P);
    in.policy_rejected = res[1].slice(0, P, 2 * P);
    in.chosen_counts = res[2].slice(0, 0, P);
    in.rejected_counts = res[2].slice(0, P, 2 * P);
    c10::NoGradGuard no_grad;
    out.parts = dpo_loss(in, cfg);
    out.parts.loss = out.loss;
    return out;
  }
  FusedLogps f = fused_sequence_logps(hidden, weight, bias, labels, opt);
  in.policy_chosen = f.logps.slice(0, 0, P);                               // (P)
  in.policy_rejected = f.logps.slice(0, P, 2 * P);                         // (P)
  in.chosen_counts = f.token_counts.slice(0, 0, P);                        // (P)
  in.rejected_counts = f.token_counts.slice(0, P, 2 * P);                  // (P)
  out.parts = dpo_loss(in, cfg);
  out.loss = out.parts.loss;
  out.policy_logps = f.logps.detach();
  out.counts = f.token_counts;
  out.logits_sum = f.logits_sum;
  return out;
}

}  // namespace tdpo
