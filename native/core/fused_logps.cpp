#include "fused_logps.h"

#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace tdpo {

namespace detail {

void check_fused_inputs(const char* fn, const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                        const at::Tensor& labels, int64_t chunk_rows) {
  TORCH_CHECK(chunk_rows >= 1, fn, ": expected chunk_rows >= 1 but received ", chunk_rows);
  TORCH_CHECK(hidden.defined() && hidden.dim() == 3, fn, ": expected hidden of shape (N, T, H) but received ",
              hidden.defined() ? hidden.sizes() : at::IntArrayRef{});
  TORCH_CHECK(weight.defined() && weight.dim() == 2, fn, ": expected weight of shape (V, H) but received ",
              weight.defined() ? weight.sizes() : at::IntArrayRef{});
  const auto st = hidden.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kDouble, fn,
              ": expected hidden dtype float32/bfloat16/float16/float64 but received ", st);
  TORCH_CHECK(weight.scalar_type() == st, fn, ": expected weight dtype ", st, " (same as hidden) but received ",
              weight.scalar_type());
  TORCH_CHECK(weight.size(1) == hidden.size(2), fn, ": expected weight (V, H) with H = ", hidden.size(2),
              " (hidden's last size) but received ", weight.sizes());
  TORCH_CHECK(weight.size(0) >= 1, fn, ": expected a vocabulary of at least 1 row in weight but received ",
              weight.sizes());
  TORCH_CHECK(weight.device() == hidden.device(), fn, ": expected weight on ", hidden.device(), " (hidden's device) but received ",
              weight.device());
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == weight.size(0), fn, ": expected bias of shape (", weight.size(0),
                ") but received ", bias.sizes());
    TORCH_CHECK(bias.scalar_type() == st, fn, ": expected bias dtype ", st, " but received ", bias.scalar_type());
    TORCH_CHECK(bias.device() == hidden.device(), fn, ": expected bias on ", hidden.device(), " but received ",
                bias.device());
  }
  TORCH_CHECK(labels.defined() && labels.dim() == 2 && labels.size(0) == hidden.size(0) &&
                  labels.size(1) == hidden.size(1),
              fn, ": expected labels of shape (", hidden.size(0), ", ", hidden.size(1), ") matching hidden ",
              hidden.sizes(), " but received ", labels.defined() ? labels.sizes() : at::IntArrayRef{});
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool, fn,
              ": expected integer labels but received dtype ", labels.scalar_type());
  TORCH_CHECK(labels.device() == hidden.device(), fn, ": expected labels on ", hidden.device(), " but received ",
              labels.device());
  // Every label is -100 or in [0, V); report the first offending position.
  const int64_t V = weight.size(0);
  auto lab = labels.to(at::kLong);                                         // (N, T)
  auto bad = (lab != kIgnoreIndex) & ((lab < 0) | (lab >= V));             // (N, T) bool
  if (bad.any().item<bool>()) {
    auto pos = bad.nonzero()[0].cpu();                                     // (2)
    const int64_t n = pos[0].item<int64_t>(), t = pos[1].item<int64_t>();
    TORCH_CHECK(false, fn, ": expected labels in [0, ", V, ") or -100 but received ", lab[n][t].item<int64_t>(),
                " at labels[", n, "][", t, "]");
  }
}

void counted_rows(const at::Tensor& labels, at::Tensor& rows, at::Tensor& targets) {
  auto flat = labels.reshape({-1}).to(at::kLong);                          // (N*T)
  rows = (flat != kIgnoreIndex).nonzero().reshape({-1});                   // (M)
  targets = flat.index_select(0, rows);                                    // (M)
}

at::Tensor chunk_logits(const at::Tensor& h_rows, const at::Tensor& weight, const at::Tensor& bias) {
  // (C, H) @ (H, V) in the inputs' dtype (as the model's lm-head would), then float32 for the softmax.
  at::Tensor logits = bias.defined() ? at::addmm(bias, h_rows, weight.t()) : at::mm(h_rows, weight.t());  // (C, V)
  return logits.scalar_type() == at::kDouble ? logits : logits.to(at::kFloat);
}

void check_finite_logps(const char* fn, const at::Tensor& logps, const at::Tensor& hidden, const at::Tensor& weight,
                        const at::Tensor& bias) {
  auto bad = ~at::isfinite(logps);                                         // (N) bool
  if (!bad.any().item<bool>()) return;
  const int64_t n = bad.nonzero()[0][0].item<int64_t>();
  std::string where;
  if (!at::isfinite(hidden[n]).all().item<bool>()) where += " hidden[" + std::to_string(n) + "] holds inf/NaN;";
  if (!at::isfinite(weight).all().item<bool>()) where += " weight holds inf/NaN;";
  if (bias.defined() && !at::isfinite(bias).all().item<bool>()) where += " bias holds inf/NaN;";
  if (where.empty()) where = " logits overflowed;";
  TORCH_CHECK(false, fn, ": expected finite inputs but the log-prob of sequence ", n, " is ",
              logps[n].item<double>(), ":", where);
}

}  // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Sum of per-token values (M) into their sequences (N); rows are flat indices n*T + t.
at::Tensor per_sequence(const at::Tensor& tok, const at::Tensor& rows, int64_t N, int64_t T) {
  auto out = at::zeros({N}, tok.options());                                // (N)
  if (rows.numel() > 0) out.index_add_(0, at::div(rows, T, "floor"), tok);
  return out;
}

class FusedLogpsFunction : public torch::autograd::Function<FusedLogpsFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias_opt, const at::Tensor& labels,
                               int64_t chunk_rows) {
    const at::Tensor bias = bias_opt.has_value() ? *bias_opt : at::Tensor();
    const int64_t N = hidden.size(0), T = hidden.size(1), H = hidden.size(2);
    const auto acc = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    auto h2 = hidden.reshape({N * T, H});                                  // (N*T, H)
    at::Tensor rows, targets;                                              // (M), (M)
    detail::counted_rows(labels, rows, targets);
    const int64_t M = rows.numel();
    auto tok_logp = at::empty({M}, hidden.options().dtype(acc));           // (M)
    auto tok_mean = at::empty({M}, hidden.options().dtype(acc));           // (M) mean logit over V
    auto lse = at::empty({M}, hidden.options().dtype(acc));                // (M) kept for backward
    for (int64_t s = 0; s < M; s += chunk_rows) {
      const int64_t e = std::min(M, s + chunk_rows);
      auto r = rows.slice(0, s, e);                                        // (C)
      auto logits = detail::chunk_logits(h2.index_select(0, r), weight, bias);  // (C, V)
      auto l = at::logsumexp(logits, 1);                                   // (C)
      auto picked = logits.gather(1, targets.slice(0, s, e).unsqueeze(1)).squeeze(1);  // (C)
      lse.slice(0, s, e).copy_(l);
      tok_logp.slice(0, s, e).copy_(picked - l);
      tok_mean.slice(0, s, e).copy_(logits.mean(1));
    }
    auto logps = per_sequence(tok_logp, rows, N, T);                       // (N)
    auto counts = per_sequence(at::ones({M}, rows.options()), rows, N, T); // (N) int64
    auto logits_sum = per_sequence(tok_mean, rows, N, T);                  // (N)
    detail::check_finite_logps("fused_sequence_logps", logps, hidden, weight, bias);
    ctx->save_for_backward({hidden, weight, bias, rows, targets, lse});
    ctx->saved_data["chunk_rows"] = chunk_rows;
    ctx->saved_data["need_h"] = hidden.requires_grad();
    ctx->saved_data["need_w"] = weight.requires_grad();
    ctx->saved_data["need_b"] = bias.defined() && bias.requires_grad();
    ctx->mark_non_differentiable({counts, logits_sum});
    return {logps, counts, logits_sum};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &hidden = saved[0], &weight = saved[1], &bias = saved[2], &rows = saved[3], &targets = saved[4],
                     &lse = saved[5];
    const int64_t chunk_rows = ctx->saved_data["chunk_rows"].toInt();
    const bool need_h = ctx->saved_data["need_h"].toBool(), need_w = ctx->saved_data["need_w"].toBool(),
               need_b = ctx->saved_data["need_b"].toBool();
    const int64_t N = hidden.size(0), T = hidden.size(1), H = hidden.size(2), V = weight.size(0);
    const int64_t M = rows.numel();
    const auto acc = lse.scalar_type();
    at::Tensor g_seq = grads[0];                                           // (N) dL/dlogps
    at::Tensor gh, gw, gb;
    if (need_h) gh = at::zeros({N * T, H}, hidden.options());              // (N*T, H)
    if (need_w) gw = at::zeros({V, H}, weight.options().dtype(acc));       // (V, H) float32 accumulator
    if (need_b) gb = at::zeros({V}, weight.options().dtype(acc));          // (V)
    if (g_seq.defined() && M > 0 && (need_h || need_w || need_b)) {
      auto g_tok = g_seq.to(acc).index_select(0, at::div(rows, T, "floor"));  // (M) per-token upstream grad
      auto h2 = hidden.reshape({N * T, H});                                // (N*T, H)
      for (int64_t s = 0; s < M; s += chunk_rows) {
        const int64_t e = std::min(M, s + chunk_rows);
        auto r = rows.slice(0, s, e);                                      // (C)
        auto hc = h2.index_select(0, r);                                   // (C, H)
        auto logits = detail::chunk_logits(hc, weight, bias);              // (C, V)
        auto gc = g_tok.slice(0, s, e).unsqueeze(1);                       // (C, 1)
        // dL/dlogits = g * (onehot(target) - softmax): built in place on the logits buffer.
        auto G = logits.sub_(lse.slice(0, s, e).unsqueeze(1)).exp_().mul_(gc).neg_();  // (C, V)
        G.scatter_add_(1, targets.slice(0, s, e).unsqueeze(1), gc);
        if (need_h) gh.index_copy_(0, r, at::mm(G.to(weight.scalar_type()), weight));  // (C, H)
        if (need_w) gw.addmm_(G.t(), hc.to(acc));                          // (V, H) += (V, C) @ (C, H)
        if (need_b) gb.add_(G.sum(0));                                     // (V)
      }
    }
    return {need_h ? gh.reshape({N, T, H}) : at::Tensor(), need_w ? gw.to(weight.scalar_type()) : at::Tensor(),
            need_b ? gb.to(bias.scalar_type()) : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

FusedLogps fused_sequence_logps(const at::Tensor& hidden, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& labels,
                                const FusedLogpsOptions& opt) {
  const at::Tensor b = bias.has_value() ? *bias : at::Tensor();
  detail::check_fused_inputs("fused_sequence_logps", hidden, weight, b, labels, opt.chunk_rows);
  auto out = FusedLogpsFunction::apply(hidden.contiguous(), weight.contiguous(),
                                       b.defined() ? c10::optional<at::Tensor>(b.contiguous()) : c10::nullopt,
                                       labels, opt.chunk_rows);
  return FusedLogps{out[0], out[1], out[2]};
}

}  // namespace tdpo
