// KTO: the loss against a plain double-precision evaluation of its formula, finite-difference gradients, and one
// trainer step against an independent autograd path (full logits + log_softmax instead of the fused lm-head).
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <vector>

#include "causal_lm.h"
#include "error_expect.h"
#include "kto_loss.h"
#include "packing.h"
#include "preference_trainer.h"
#include "tiny_config.h"

using namespace tdpo;

namespace {

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The KTO loss written out in doubles: mean_i w_i (1 − σ(±β(Δ_i − z0))).
double kto_by_hand(const std::vector<double>& pol, const std::vector<double>& ref, const std::vector<int>& good,
                   double z0, const KTOLossConfig& c) {
  double s = 0;
  for (size_t i = 0; i < pol.size(); ++i) {
    const double d = pol[i] - (c.reference_free ? 0.0 : ref[i]);
    s += good[i] ? c.desirable_weight * (1 - sig(c.beta * (d - z0))) : c.undesirable_weight * (1 - sig(c.beta * (z0 - d)));
  }
  return s / pol.size();
}

at::Tensor vec(const std::vector<double>& v) { return at::tensor(v, at::kDouble); }


// N examples of random lengths (prompt 2..3 tokens, completion 2..4) and their mismatched pairs (completion of
// example i-1), right padded: the layout the TS trainer sends.
KTOBatch random_kto_batch(int64_t N, uint64_t seed, int64_t T = 7) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<std::vector<int64_t>> prompts, comps;
  for (int64_t i = 0; i < N; ++i) {
    auto lp = 2 + at::randint(0, 2, {1}, g, at::kLong).item<int64_t>();
    auto lc = 2 + at::randint(0, 3, {1}, g, at::kLong).item<int64_t>();
    auto t = at::randint(0, 39, {lp + lc}, g, at::kLong);
    auto a = t.accessor<int64_t, 1>();
    prompts.emplace_back(a.data(), a.data() + lp);
    comps.emplace_back(a.data() + lp, a.data() + lp + lc);
  }
  const int64_t rows = 2 * N;
  KTOBatch b;
  b.input_ids = at::zeros({rows, T}, at::kLong);
  b.attention_mask = at::zeros({rows, T}, at::kLong);
  b.labels = at::full({rows, T}, -100, at::kLong);
  for (int64_t r = 0; r < rows; ++r) {
    const auto& p = prompts[r % N];
    const auto& c = r < N ? comps[r] : comps[(r - N + N - 1) % N];
    std::vector<int64_t> ids(p);
    ids.insert(ids.end(), c.begin(), c.end());
    for (size_t t = 0; t < ids.size(); ++t) {
      b.input_ids[r][t] = ids[t];
      b.attention_mask[r][t] = 1;
      if (t + 1 >= p.size() && t + 1 < ids.size()) b.labels[r][t] = ids[t + 1];
    }
  }
  b.ref_logps = at::randn({rows}, g, at::kDouble) * 2 - 12;
  b.desirable = at::randint(0, 2, {N}, g, at::kLong);
  b.desirable[0] = 1;
  b.desirable[1] = 0;
  return b;
}

// Summed log-probs of the scored tokens of each row through full (rows, T, V) logits.
at::Tensor logps_by_full_logits(CausalLM& m, const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& labels) {
  auto lsm = at::log_softmax(m.logits(ids, mask), -1);                        // (R, T, V)
  auto scored = labels.ne(-100);                                              // (R, T)
  auto tok = lsm.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1);   // (R, T)
  return (tok * scored.to(tok.scalar_type())).sum(1);                         // (R)
}

}  // namespace

TEST(KTOLoss, MatchesTheFormulaInDoubles) {
  const std::vector<double> pol = {-12.5, -8.25, -20.0, -3.0, -15.75}, ref = {-13.0, -8.0, -18.5, -3.5, -15.0};
  const std::vector<int> good = {1, 0, 1, 0, 0};
  for (double z0 : {0.0, 0.37, 2.5}) {
    for (auto [wd, wu, rf] : std::vector<std::tuple<double, double, bool>>{{1, 1, false}, {1.5, 0.7, false}, {1, 2, true}}) {
      KTOLossConfig c;
      c.beta = 0.3;
      c.desirable_weight = wd;
      c.undesirable_weight = wu;
      c.reference_free = rf;
      KTOLossInputs in{vec(pol), vec(ref), at::tensor(std::vector<int64_t>(good.begin(), good.end())), z0};
      auto out = kto_loss(in, c);
      EXPECT_NEAR(out.loss.item<double>(), kto_by_hand(pol, ref, good, z0, c), 1e-14) << "z0 " << z0 << " wd " << wd;
      for (size_t i = 0; i < pol.size(); ++i)
        EXPECT_NEAR(out.rewards[i].item<double>(), 0.3 * (pol[i] - (rf ? 0 : ref[i])), 1e-14);
    }
  }
  // hand value: one desirable example, Δ = 1, z0 = 0, β = 1: 1 − σ(1) = 0.2689414213699951
  KTOLossConfig c1;
  c1.beta = 1;
  EXPECT_NEAR(kto_loss({vec({-1.0}), vec({-2.0}), at::ones({1}, at::kLong), 0.0}, c1).loss.item<double>(),
              0.2689414213699951, 1e-15);
}

TEST(KTOLoss, FiniteDifferenceGradient) {
  std::vector<double> pol = {-4.0, -6.5, -2.25, -9.0}, ref = {-5.0, -6.0, -3.0, -7.5};
  const std::vector<int> good = {0, 1, 1, 0};
  KTOLossConfig c;
  c.beta = 0.7;
  c.desirable_weight = 1.3;
  c.undesirable_weight = 0.6;
  auto p = vec(pol).requires_grad_(true);
  kto_loss({p, vec(ref), at::tensor(std::vector<int64_t>{0, 1, 1, 0}), 0.4}, c).loss.backward();
  const double h = 1e-6;
  for (size_t i = 0; i < pol.size(); ++i) {
    auto up = pol, dn = pol;
    up[i] += h;
    dn[i] -= h;
    const double fd = (kto_by_hand(up, ref, good, 0.4, c) - kto_by_hand(dn, ref, good, 0.4, c)) / (2 * h);
    EXPECT_NEAR(p.grad()[i].item<double>(), fd, 1e-9) << i;
  }
}

TEST(KTOLoss, RejectsBadInput) {
  KTOLossConfig c;
  auto p = vec({-1.0, -2.0});
  expect_error([&] { kto_loss({p, vec({-1.0}), at::ones({2}, at::kLong), 0}, c); }, "reference log-probs of shape (2)");
  expect_error([&] { kto_loss({p, vec({-1.0, -1.0}), at::ones({3}, at::kLong), 0}, c); }, "desirable labels of shape (2)");
  expect_error([&] { kto_loss({vec({-1.0, NAN}), vec({-1.0, -1.0}), at::ones({2}, at::kLong), 0}, c); },
               "expected finite policy log-probs but received nan at index 1");
  KTOLossConfig bad;
  bad.undesirable_weight = 0;
  expect_error([&] { check_kto_config(bad); }, "Expected a finite number > 0 for undesirableWeight but received 0");
  expect_error([&] { kto_loss({p, vec({-1.0, -1.0}), at::ones({2}, at::kLong), -0.5}, c); }, "z0 >= 0");
}

// One SGD step (lr 1) of PreferenceTrainer::accumulate_kto equals minus the gradient of the KTO loss computed from
// full logits (a second implementation of the log-probs), with z0 computed independently from the KL rows.
TEST(KTOTrainer, SgdStepEqualsIndependentGradient) {
  for (double z_shift : {-8.0, 6.0}) {  // −8 raises the KL reference log-probs (z0 clamped to 0), 6 lowers them (z0 > 0)
    const int64_t N = 4;
    auto b = random_kto_batch(N, 7);
    b.ref_logps.slice(0, N, 2 * N).sub_(z_shift);
    auto model = make_causal_lm(tiny_config("llama"), c10::kCPU, at::kDouble, 21);
    auto twin = make_causal_lm(tiny_config("llama"), c10::kCPU, at::kDouble, 21);
    KTOLossConfig kc;
    kc.beta = 0.5;
    kc.desirable_weight = 1.25;
    kc.undesirable_weight = 0.8;

    // the independent gradient on `twin`
    double z0;
    {
      c10::NoGradGuard ng;
      auto kl = logps_by_full_logits(*twin, b.input_ids.slice(0, N), b.attention_mask.slice(0, N), b.labels.slice(0, N));
      z0 = std::max(0.0, (kl - b.ref_logps.slice(0, N)).mean().item<double>());
    }
    if (z_shift > 0) EXPECT_GT(z0, 0.5);
    else EXPECT_EQ(z0, 0.0);
    auto lp = logps_by_full_logits(*twin, b.input_ids.slice(0, 0, N), b.attention_mask.slice(0, 0, N), b.labels.slice(0, 0, N));
    auto delta = lp - b.ref_logps.slice(0, 0, N);
    auto good = b.desirable.ne(0);
    auto per = at::where(good, kc.desirable_weight * (1 - at::sigmoid(kc.beta * (delta - z0))),
                         kc.undesirable_weight * (1 - at::sigmoid(kc.beta * (z0 - delta))));
    auto loss = per.mean();
    loss.backward();

    OptimizerConfig sgd;
    sgd.type = "sgd";
    PreferenceTrainer tr(model, DPOLossConfig{}, sgd);
    tr.set_kto(kc);
    auto r = tr.accumulate_kto(b, 1.0);
    EXPECT_NEAR(r.loss, loss.item<double>(), 1e-12);
    EXPECT_NEAR(r.kl, z0, 1e-12);
    EXPECT_EQ(r.rewards.size(0), N);
    for (int64_t i = 0; i < N; ++i) EXPECT_NEAR(r.rewards[i].item<double>(), kc.beta * delta[i].item<double>(), 1e-10);
    auto before = model->named_parameters();
    std::vector<at::Tensor> copies;
    for (auto& [n, p] : before) copies.push_back(p.detach().clone());
    tr.step(1.0, 0.0);
    auto twin_params = twin->named_parameters();
    double max_err = 0, max_g = 0;
    for (size_t i = 0; i < before.size(); ++i) {
      auto g = twin_params[i].second.grad();
      ASSERT_TRUE(g.defined()) << twin_params[i].first;
      auto step = copies[i] - before[i].second.detach();  // = lr * grad
      max_err = std::max(max_err, (step - g).abs().max().item<double>());
      max_g = std::max(max_g, g.abs().max().item<double>());
    }
    EXPECT_GT(max_g, 1e-4);
    EXPECT_LT(max_err, 1e-10 * std::max(1.0, max_g)) << "z_shift " << z_shift;
  }
}

TEST(KTOTrainer, RejectsBadBatches) {
  auto model = make_causal_lm(tiny_config("llama"), c10::kCPU, at::kDouble, 3);
  PreferenceTrainer tr(model, DPOLossConfig{}, OptimizerConfig{});
  auto b = random_kto_batch(2, 1);
  expect_error([&] { tr.accumulate_kto(b, 1.0); }, "not created for KTO");
  tr.set_kto(KTOLossConfig{});
  auto odd = b;
  odd.input_ids = b.input_ids.slice(0, 0, 3);
  expect_error([&] { tr.accumulate_kto(odd, 1.0); }, "2N rows");
  auto nodes = b;
  nodes.desirable = at::ones({3}, at::kLong);
  expect_error([&] { tr.accumulate_kto(nodes, 1.0); }, "desirable must be (2)");
  auto noref = b;
  noref.ref_logps = at::Tensor();
  expect_error([&] { tr.accumulate_kto(noref, 1.0); }, "KTO needs reference log-probs");
}

// Padding-free packing changes neither the KL estimate, the loss nor the update (float64).
TEST(KTOTrainer, PaddingFreeEqualsPadded) {
  const int64_t N = 4;
  auto b = random_kto_batch(N, 11, 14);       // rows of 4..7 tokens padded to 14: packing merges them
  b.ref_logps.slice(0, N, 2 * N).sub_(6.0);  // z0 > 0
  EXPECT_LT(plan_packing(b.attention_mask.slice(0, 0, N)).rows, N);
  EXPECT_LT(plan_packing(b.attention_mask.slice(0, N, 2 * N)).rows, N);
  OptimizerConfig sgd;
  sgd.type = "sgd";
  std::vector<std::vector<at::Tensor>> after;
  std::vector<KTOMicroStepResult> res;
  for (bool packed : {false, true}) {
    auto model = make_causal_lm(tiny_config("llama"), c10::kCPU, at::kDouble, 5);
    PreferenceTrainer tr(model, DPOLossConfig{}, sgd);
    tr.set_kto(KTOLossConfig{});
    tr.set_padding_free(packed);
    res.push_back(tr.accumulate_kto(b, 1.0));
    tr.step(1.0, 0.0);
    std::vector<at::Tensor> w;
    for (auto& [n, p] : model->named_parameters()) w.push_back(p.detach().clone());
    after.push_back(w);
  }
  EXPECT_GT(res[0].kl, 0.0);
  EXPECT_NEAR(res[1].kl, res[0].kl, 1e-10);
  EXPECT_NEAR(res[1].loss, res[0].loss, 1e-12);
  double max_err = 0;
  for (size_t i = 0; i < after[0].size(); ++i) max_err = std::max(max_err, (after[0][i] - after[1][i]).abs().max().item<double>());
  EXPECT_LT(max_err, 1e-10);
}
