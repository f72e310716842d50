// fused_dpo_loss (both the precomputed-gradient path for pair-separable losses and the general path) against the
// naive path: full (2P, T, V) logits -> log_softmax -> gather -> masked sum -> dpo_loss, ordinary autograd.
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include "error_expect.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

#include "fused_dpo.h"

namespace {

struct Batch {
  at::Tensor hidden, weight, bias, labels, ref;  // (2P, T, H), (V, H), (V), (2P, T), (2P)
};

Batch make_batch(int64_t P, int64_t T, int64_t H, int64_t V, at::ScalarType dt, uint64_t seed) {
  at::manual_seed(seed);
  Batch b;
  b.hidden = at::randn({2 * P, T, H}, at::kDouble).to(dt);
  b.weight = (at::randn({V, H}, at::kDouble) / std::sqrt((double)H) * 2).to(dt);
  b.bias = (at::randn({V}, at::kDouble) * 0.5).to(dt);
  b.labels = at::randint(V, {2 * P, T}, at::kLong);
  for (int64_t n = 0; n < 2 * P; ++n) {  // prompt prefix and right padding of varying lengths
    const int64_t prompt = 1 + (n * 5) % (T / 2), len = T - (n * 3) % (T / 3 + 1);
    for (int64_t t = 0; t < T; ++t)
      if (t < prompt || t >= len) b.labels[n][t] = -100;
  }
  // reference log-probs near the policy's so that β·h is O(1)
  auto mask = (b.labels != -100).to(at::kDouble);
  b.ref = (-std::log((double)V) * mask.sum(1) + at::randn({2 * P}, at::kDouble) * 3).to(at::kFloat);
  return b;
}

at::Tensor naive_logps(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                       const at::Tensor& labels) {
  auto logits = at::matmul(hidden, weight.t()) + bias;                     // (N, T, V)
  auto lp = at::log_softmax(logits.to(at::kFloat), -1);                    // (N, T, V)
  auto mask = labels != -100;                                              // (N, T)
  auto tok = lp.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1);  // (N, T)
  return (tok * mask.to(at::kFloat)).sum(1);                               // (N)
}

// Loss from the naive path with ordinary autograd.
at::Tensor naive_loss(const Batch& b, const at::Tensor& h, const at::Tensor& w, const at::Tensor& bias,
                      const tdpo::DPOLossConfig& cfg, const tdpo::BCORunningMean& bco = {}) {
  const int64_t P = b.hidden.size(0) / 2;
  auto lp = naive_logps(h, w, bias, b.labels);                             // (2P)
  auto counts = (b.labels != -100).sum(1);                                 // (2P)
  tdpo::DPOLossInputs in;
  in.policy_chosen = lp.slice(0, 0, P);
  in.policy_rejected = lp.slice(0, P, 2 * P);
  in.ref_chosen = b.ref.slice(0, 0, P);
  in.ref_rejected = b.ref.slice(0, P, 2 * P);
  in.chosen_counts = counts.slice(0, 0, P);
  in.rejected_counts = counts.slice(0, P, 2 * P);
  in.bco_state = bco;
  return tdpo::dpo_loss(in, cfg).loss;
}

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  auto g = got.to(at::kDouble), w = want.to(at::kDouble);
  return (g - w).abs().max().item<double>() / std::max(w.abs().max().item<double>(), 1e-30);
}

tdpo::DPOLossConfig cfg_of(std::vector<tdpo::LossTerm> terms, double beta = 0.1, double eps = 0.0) {
  tdpo::DPOLossConfig c;
  c.terms = std::move(terms);
  c.beta = beta;
  c.label_smoothing = eps;
  return c;
}

void compare_with_naive(const Batch& b, const tdpo::DPOLossConfig& cfg, int64_t chunk, bool precompute,
                        const std::string& what) {
  auto h0 = b.hidden.clone().requires_grad_(true), w0 = b.weight.clone().requires_grad_(true),
       b0 = b.bias.clone().requires_grad_(true);
  auto want = naive_loss(b, h0, w0, b0, cfg);
  want.backward();
  auto h = b.hidden.clone().requires_grad_(true), w = b.weight.clone().requires_grad_(true),
       bb = b.bias.clone().requires_grad_(true);
  tdpo::FusedLogpsOptions opt;
  opt.chunk_rows = chunk;
  opt.precompute_grads = precompute;
  auto out = tdpo::fused_dpo_loss(h, w, bb, b.labels, b.ref, cfg, opt);
  ASSERT_EQ(out.loss.dim(), 0) << what;
  ASSERT_TRUE(out.loss.requires_grad()) << what;
  EXPECT_LT(rel_err(out.loss, want), 1e-5) << what << " loss " << out.loss.item<double>() << " vs " << want.item<double>();
  out.loss.backward();
  EXPECT_LT(rel_err(h.grad(), h0.grad()), 1e-5) << what << " grad hidden";
  EXPECT_LT(rel_err(w.grad(), w0.grad()), 1e-5) << what << " grad weight";
  EXPECT_LT(rel_err(bb.grad(), b0.grad()), 1e-5) << what << " grad bias";
  EXPECT_LT(rel_err(out.policy_logps, naive_logps(b.hidden, b.weight, b.bias, b.labels)), 1e-5) << what;
  EXPECT_FALSE(out.policy_logps.requires_grad());
  EXPECT_TRUE(at::equal(out.counts, (b.labels != -100).sum(1))) << what;
}

}  // namespace

TEST(FusedDPO, SeparableLossesMatchNaivePathAcrossChunkSizes) {
  const auto b = make_batch(5, 12, 16, 61, at::kFloat, 21);
  const std::vector<tdpo::DPOLossConfig> cfgs = {
      cfg_of({{"sigmoid", 1.0}}), cfg_of({{"sigmoid", 1.0}}, 0.1, 0.1), cfg_of({{"ipo", 1.0}}, 0.5),
      cfg_of({{"robust", 1.0}}, 0.2, 0.2), cfg_of({{"sigmoid", 1.0}, {"sft", 0.2}}), cfg_of({{"sft", 1.0}}),
      cfg_of({{"discopop", 1.0}}), cfg_of({{"nca_pair", 0.5}, {"hinge", 2.0}, {"sigmoid_norm", 1.0}}),
      cfg_of({{"exo_pair", 1.0}, {"apo_zero", 1.0}, {"apo_down", 1.0}, {"sppo_hard", 0.01}}),
      cfg_of({{"orpo", 0.5}, {"simpo", 1.0}, {"cpo", 1.0}, {"sft", 0.3}}, 0.3, 0.1)};
  for (size_t i = 0; i < cfgs.size(); ++i)
    for (int64_t chunk : {1, 9, 23, 4096})  // 1: one pair per chunk; 4096: all pairs in one chunk
      for (bool pre : {true, false})
        compare_with_naive(b, cfgs[i], chunk, pre,
                           "config " + std::to_string(i) + " chunk " + std::to_string(chunk) + (pre ? " precomputed" : " general"));
}

TEST(FusedDPO, NonSeparableLossesUseTheGeneralPath) {
  const auto b = make_batch(4, 10, 8, 37, at::kFloat, 22);
  for (const std::string t : {"aot", "aot_unpaired"})
    for (int64_t chunk : {3, 1000}) compare_with_naive(b, cfg_of({{t, 1.0}}, 0.2, 0.1), chunk, true, t);
  // bco_pair: the running mean goes in and out explicitly.
  auto cfg = cfg_of({{"bco_pair", 1.0}, {"sigmoid", 0.5}});
  tdpo::BCORunningMean st{0.1, 3.0};
  auto h0 = b.hidden.clone().requires_grad_(true);
  auto want = naive_loss(b, h0, b.weight, b.bias, cfg, st);
  want.backward();
  auto h = b.hidden.clone().requires_grad_(true);
  tdpo::FusedLogpsOptions opt;
  opt.chunk_rows = 7;
  auto out = tdpo::fused_dpo_loss(h, b.weight, b.bias, b.labels, b.ref, cfg, opt, st);
  EXPECT_LT(rel_err(out.loss, want), 1e-5);
  out.loss.backward();
  EXPECT_LT(rel_err(h.grad(), h0.grad()), 1e-5);
  EXPECT_EQ(out.parts.bco_state.count, 4.0);
  EXPECT_NE(out.parts.bco_state.mean, 0.1);
}

TEST(FusedDPO, ReferenceFreeMetricsAndNoGrad) {
  const auto b = make_batch(3, 9, 8, 29, at::kFloat, 23);
  auto cfg = cfg_of({{"sigmoid", 1.0}}, 0.05);
  cfg.reference_free = true;
  Batch zero_ref = b;
  zero_ref.ref = at::zeros_like(b.ref);
  for (bool pre : {true, false}) {
    auto h0 = b.hidden.clone().requires_grad_(true);
    auto want = naive_loss(zero_ref, h0, b.weight, b.bias, cfg);
    want.backward();
    auto h = b.hidden.clone().requires_grad_(true);
    tdpo::FusedLogpsOptions opt;
    opt.chunk_rows = 8;
    opt.precompute_grads = pre;
    auto out = tdpo::fused_dpo_loss(h, b.weight, b.bias, b.labels, at::Tensor(), cfg, opt);
    EXPECT_LT(rel_err(out.loss, want), 1e-5);
    out.loss.backward();
    EXPECT_LT(rel_err(h.grad(), h0.grad()), 1e-5);
    // metrics: rewards β·logp (reference-free), accuracies, margins, per-term loss
    auto lp = naive_logps(b.hidden, b.weight, b.bias, b.labels);
    EXPECT_LT(rel_err(out.parts.chosen_rewards, 0.05 * lp.slice(0, 0, 3)), 1e-5);
    EXPECT_LT(rel_err(out.parts.rejected_rewards, 0.05 * lp.slice(0, 3, 6)), 1e-5);
    EXPECT_TRUE(at::equal(out.parts.reward_accuracies,
                          (out.parts.chosen_rewards > out.parts.rejected_rewards).to(at::kFloat)));
    EXPECT_NEAR(out.parts.term_losses[0].item<double>(), want.item<double>(), 1e-5);
    EXPECT_EQ(out.logits_sum.sizes(), (at::IntArrayRef{6}));
  }
  // Without grad: a plain value, same number.
  c10::NoGradGuard no_grad;
  auto out = tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels, at::Tensor(), cfg);
  EXPECT_FALSE(out.loss.requires_grad());
  EXPECT_LT(rel_err(out.loss, naive_loss(zero_ref, b.hidden, b.weight, b.bias, cfg)), 1e-5);
}

TEST(FusedDPO, Float64AndBFloat16) {
  // float64 end to end: the fused path agrees with the naive path run in float64 to ~1e-12.
  const auto b = make_batch(3, 8, 6, 19, at::kDouble, 24);
  auto cfg = cfg_of({{"sigmoid", 1.0}, {"sft", 0.2}}, 0.3);
  Batch b64 = b;
  b64.ref = b.ref.to(at::kDouble);
  auto h0 = b.hidden.clone().requires_grad_(true);
  auto lp = [&](const at::Tensor& h) {
    auto logits = at::matmul(h, b.weight.t()) + b.bias;                    // (N, T, V) float64
    auto l = at::log_softmax(logits, -1);
    auto mask = b.labels != -100;
    return (l.gather(-1, b.labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1) * mask).sum(1);
  }(h0);
  auto counts = (b.labels != -100).sum(1);
  tdpo::DPOLossInputs in{lp.slice(0, 0, 3), lp.slice(0, 3, 6), b64.ref.slice(0, 0, 3), b64.ref.slice(0, 3, 6),
                         counts.slice(0, 0, 3), counts.slice(0, 3, 6), {}};
  auto want = tdpo::dpo_loss(in, cfg).loss;
  want.backward();
  for (bool pre : {true, false}) {
    auto h = b.hidden.clone().requires_grad_(true);
    tdpo::FusedLogpsOptions opt;
    opt.chunk_rows = 5;
    opt.precompute_grads = pre;
    auto out = tdpo::fused_dpo_loss(h, b.weight, b.bias, b.labels, b64.ref, cfg, opt);
    EXPECT_EQ(out.loss.scalar_type(), at::kDouble);
    EXPECT_NEAR(out.loss.item<double>(), want.item<double>(), 1e-12);
    out.loss.backward();
    EXPECT_LT(rel_err(h.grad(), h0.grad()), 1e-11);
  }
  // bfloat16 hidden/weight: gradients come back in bfloat16 and agree with float32 on the same values to bf16 precision.
  const auto bb = make_batch(3, 8, 16, 41, at::kBFloat16, 25);
  auto w = bb.weight.clone().requires_grad_(true);
  auto out = tdpo::fused_dpo_loss(bb.hidden, w, bb.bias, bb.labels, bb.ref, cfg_of({{"sigmoid", 1.0}}));
  out.loss.backward();
  EXPECT_EQ(w.grad().scalar_type(), at::kBFloat16);
  Batch b32{bb.hidden.to(at::kFloat), bb.weight.to(at::kFloat), bb.bias.to(at::kFloat), bb.labels, bb.ref};
  auto w32 = b32.weight.clone().requires_grad_(true);
  auto want32 = naive_loss(b32, b32.hidden, w32, b32.bias, cfg_of({{"sigmoid", 1.0}}));
  want32.backward();
  EXPECT_LT(rel_err(out.loss, want32), 2e-2);
  EXPECT_LT(rel_err(w.grad(), w32.grad()), 5e-2);
}

TEST(FusedDPO, RejectsBadInput) {
  const auto b = make_batch(2, 6, 4, 11, at::kFloat, 26);
  const auto cfg = cfg_of({{"sigmoid", 1.0}});
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden.slice(0, 0, 3), b.weight, b.bias, b.labels.slice(0, 0, 3), b.ref, cfg); },
               "hidden of shape (2P, T, H)");
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels, b.ref.slice(0, 0, 3), cfg); },
               "ref_logps of shape (4)");
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels, at::Tensor(), cfg); },
               "ref_logps of shape (4)");
  auto ref = b.ref.clone();
  ref[3] = NAN;
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels, ref, cfg); },
               "finite ref_logps but received nan at index 3 (rejected)");
  auto lab = b.labels.clone();
  lab[2][5] = 11;
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, lab, b.ref, cfg); }, "received 11 at labels[2][5]");
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels.slice(1, 0, 5), b.ref, cfg); },
               "labels of shape (4, 6)");
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels, b.ref, cfg_of({{"dpo", 1.0}})); },
               "for terms[0].type but received \"dpo\"");
  expect_error([&] { tdpo::fused_dpo_loss(b.hidden, b.weight, b.bias, b.labels, b.ref, cfg_of({{"sigmoid", 1.0}}, 0)); },
               "beta > 0");
  auto lab_all = b.labels.clone().fill_(1);
  for (bool pre : {true, false}) {
    auto h = b.hidden.clone();
    h[3][1][2] = INFINITY;
    auto hr = h.requires_grad_(true);
    tdpo::FusedLogpsOptions opt;
    opt.precompute_grads = pre;
    expect_error([&] { tdpo::fused_dpo_loss(hr, b.weight, b.bias, lab_all, b.ref, cfg, opt); }, "hidden[3] holds inf/NaN");
  }
}

// Timing of the two paths on one batch (printed, not asserted: the machine is shared). The precomputed path computes
// each chunk's logits once (3 matmuls per token) where the general path recomputes them in backward (4 matmuls).
TEST(FusedDPO, PrecomputedPathTiming) {
  const int64_t P = 2, T = 128, H = 64, V = 16000;
  const auto b = make_batch(P, T, H, V, at::kFloat, 27);
  const auto cfg = cfg_of({{"sigmoid", 1.0}, {"sft", 0.2}});
  std::printf("\n  fused_dpo_loss forward+backward, P=%ld T=%ld H=%ld V=%ld chunk_rows=128\n", (long)P, (long)T, (long)H,
              (long)V);
  double loss[2];
  at::Tensor gw[2];
  for (int pre = 1; pre >= 0; --pre) {
    double best = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
      auto h = b.hidden.clone().requires_grad_(true), w = b.weight.clone().requires_grad_(true);
      tdpo::FusedLogpsOptions opt;
      opt.chunk_rows = 128;
      opt.precompute_grads = pre;
      auto t0 = std::chrono::steady_clock::now();
      auto out = tdpo::fused_dpo_loss(h, w, b.bias, b.labels, b.ref, cfg, opt);
      out.loss.backward();
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      loss[pre] = out.loss.item<double>();
      gw[pre] = w.grad();
    }
    std::printf("  %-28s %8.3f s\n", pre ? "precomputed gradients" : "general (recompute in bwd)", best);
  }
  EXPECT_NEAR(loss[0], loss[1], 1e-5 * std::abs(loss[1]));
  EXPECT_LT(rel_err(gw[1], gw[0]), 1e-5);
}
