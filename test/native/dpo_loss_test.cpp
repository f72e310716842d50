// dpo_loss against float64 formulas written here from the papers / TRL definitions (scalar loops, no ATen ops),
// hand-derived values, and finite-difference gradients w.r.t. the policy log-probs.
#include <gtest/gtest.h>

#include "error_expect.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "dpo_loss.h"

namespace {

using Vec = std::vector<double>;

struct Data {
  Vec pc, pr, rc, rr, nw, nl;  // policy/ref chosen/rejected log-probs, token counts
};

double logsig(double x) { return x >= 0 ? -std::log1p(std::exp(-x)) : x - std::log1p(std::exp(x)); }
double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// log(p / (1 − p)) of p = exp(x), written plainly (the implementation uses log1p/expm1 branches instead).
double odds(double x) {
  const double p = std::exp(x);
  return std::log(p / (1.0 - p));
}

// Reference loss (mean over pairs) of one type, computed pair by pair in double. bco_delta: the running mean to use;
// gamma: SimPO's margin.
double reference_loss(const std::string& type, const Data& d, double beta, double eps, double tau, double bco_delta,
                      double gamma = 0.5) {
  const size_t P = d.pc.size();
  Vec sorted_a, sorted_b;
  if (type == "aot" || type == "aot_unpaired") {
    for (size_t i = 0; i < P; ++i) {
      if (type == "aot") {
        sorted_a.push_back(d.pc[i] - d.pr[i]);
        sorted_b.push_back(d.rc[i] - d.rr[i]);
      } else {
        sorted_a.push_back(d.pc[i] - d.rc[i]);
        sorted_b.push_back(d.pr[i] - d.rr[i]);
      }
    }
    std::sort(sorted_a.begin(), sorted_a.end());
    std::sort(sorted_b.begin(), sorted_b.end());
  }
  double sft_num = 0, sft_den = 0;
  for (size_t i = 0; i < P; ++i) {
    sft_num -= d.pc[i];
    sft_den += d.nw[i];
  }
  double total = 0;
  for (size_t i = 0; i < P; ++i) {
    const double a = d.pc[i] - d.rc[i], b = d.pr[i] - d.rr[i], z = beta * (a - b);
    const double nw = std::max(d.nw[i], 1.0), nl = std::max(d.nl[i], 1.0);
    double l;
    if (type == "sigmoid") l = -(1 - eps) * logsig(z) - eps * logsig(-z);
    else if (type == "robust") l = (-(1 - eps) * logsig(z) + eps * logsig(-z)) / (1 - 2 * eps);
    else if (type == "hinge") l = std::max(0.0, 1 - z);
    else if (type == "ipo") l = std::pow(a / nw - b / nl - 1 / (2 * beta), 2);
    else if (type == "exo_pair") {
      const double e = eps == 0 ? 1e-3 : eps;
      l = sig(z) * (logsig(z) - std::log(1 - e)) + sig(-z) * (logsig(-z) - std::log(e));
    } else if (type == "nca_pair") l = -logsig(beta * a) - 0.5 * logsig(-beta * a) - 0.5 * logsig(-beta * b);
    else if (type == "bco_pair") l = -logsig(beta * a - bco_delta) - logsig(bco_delta - beta * b);
    else if (type == "sppo_hard") l = std::pow(a - 1 / (2 * beta), 2) + std::pow(b + 1 / (2 * beta), 2);
    else if (type == "apo_zero") l = (1 - sig(beta * a)) + sig(beta * b);
    else if (type == "apo_down") l = sig(beta * a) + (1 - sig(z));
    else if (type == "discopop") {
      const double m = sig(z / tau);
      l = -logsig(z) * (1 - m) + std::exp(-z) * m;
    } else if (type == "aot" || type == "aot_unpaired") {
      const double y = beta * (sorted_a[i] - sorted_b[i]);
      l = -(1 - eps) * logsig(y) - eps * logsig(-y);
    } else if (type == "sigmoid_norm") l = -logsig(beta * (a / nw - b / nl));
    else if (type == "sft") l = sft_num / std::max(sft_den, 1.0);
    else if (type == "orpo") l = -beta * logsig(odds(d.pc[i] / nw) - odds(d.pr[i] / nl));
    else if (type == "simpo") {
      const double y = beta * (d.pc[i] / nw - d.pr[i] / nl) - gamma;
      l = -(1 - eps) * logsig(y) - eps * logsig(-y);
    } else if (type == "cpo") {
      const double y = beta * (d.pc[i] - d.pr[i]);
      l = -(1 - eps) * logsig(y) - eps * logsig(-y);
    } else throw std::runtime_error("no reference for " + type);
    total += l;
  }
  return total / P;
}

at::Tensor as_tensor(const Vec& v) { return at::tensor(v, at::kDouble); }

Data make_pairs(int64_t P, uint64_t seed) {
  at::manual_seed(seed);
  auto to_vec = [](const at::Tensor& t) {
    auto c = t.contiguous();
    return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  Data d;
  d.pc = to_vec(-30 + 6 * at::randn({P}, at::kDouble));
  d.pr = to_vec(-32 + 6 * at::randn({P}, at::kDouble));
  d.rc = to_vec(-31 + 6 * at::randn({P}, at::kDouble));
  d.rr = to_vec(-31 + 6 * at::randn({P}, at::kDouble));
  d.nw = to_vec(at::randint(0, 30, {P}, at::kLong).to(at::kDouble));
  d.nl = to_vec(at::randint(1, 30, {P}, at::kLong).to(at::kDouble));
  d.nw[0] = 0;  // an empty completion: counts clamp to 1 where they divide
  return d;
}

tdpo::DPOLossInputs inputs(const Data& d, bool grad = false) {
  tdpo::DPOLossInputs in;
  in.policy_chosen = as_tensor(d.pc).requires_grad_(grad);
  in.policy_rejected = as_tensor(d.pr).requires_grad_(grad);
  in.ref_chosen = as_tensor(d.rc);
  in.ref_rejected = as_tensor(d.rr);
  in.chosen_counts = as_tensor(d.nw).to(at::kLong);
  in.rejected_counts = as_tensor(d.nl).to(at::kLong);
  return in;
}

tdpo::DPOLossConfig config(const std::string& type, double beta, double eps) {
  tdpo::DPOLossConfig cfg;
  cfg.terms = {{type, 1.0}};
  cfg.beta = beta;
  cfg.label_smoothing = eps;
  return cfg;
}

}  // namespace

TEST(DPOLoss, EveryTypeMatchesFloat64Formulas) {
  const Data d = make_pairs(7, 11);
  ASSERT_EQ(tdpo::dpo_loss_types().size(), 18u);
  for (const auto& type : tdpo::dpo_loss_types()) {
    for (double beta : {0.1, 0.7}) {
      for (double eps : {0.0, 0.2}) {
        auto cfg = config(type, beta, eps);
        cfg.discopop_tau = 0.3;
        auto in = inputs(d);
        in.bco_state = {0.25, 2.0};
        // bco_pair's running mean after this batch: (2·0.25 + batch mean of β·Δ over both completions) / 3.
        double batch = 0;
        for (size_t i = 0; i < d.pc.size(); ++i) batch += beta * ((d.pc[i] - d.rc[i]) + (d.pr[i] - d.rr[i]));
        batch /= 2.0 * d.pc.size();
        const double delta = (2 * 0.25 + batch) / 3.0;
        auto out = tdpo::dpo_loss(in, cfg);
        const double want = reference_loss(type, d, beta, eps, 0.3, delta);
        EXPECT_NEAR(out.loss.item<double>(), want, 1e-10 * std::max(1.0, std::abs(want)))
            << type << " beta " << beta << " eps " << eps;
        EXPECT_EQ(out.loss.dim(), 0);
        if (type == "bco_pair") {
          EXPECT_NEAR(out.bco_state.mean, delta, 1e-12);
          EXPECT_EQ(out.bco_state.count, 3.0);
        } else {
          EXPECT_EQ(out.bco_state.mean, 0.25);
        }
      }
    }
  }
}

TEST(DPOLoss, HandDerivedValues) {
  // One pair with Δw = Δl: h = 0 -> sigmoid loss ln 2 for every ε; apo_zero 1 − ½ + ½ = 1 at Δ = 0.
  Data d{{-5}, {-7}, {-5}, {-7}, {4}, {2}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(d), config("sigmoid", 0.1, 0.0)).loss.item<double>(), std::log(2.0), 1e-15);
  EXPECT_NEAR(tdpo::dpo_loss(inputs(d), config("sigmoid", 0.1, 0.3)).loss.item<double>(), std::log(2.0), 1e-15);
  EXPECT_NEAR(tdpo::dpo_loss(inputs(d), config("apo_zero", 0.1, 0.0)).loss.item<double>(), 1.0, 1e-15);
  // cDPO: βh = ln 3 so σ(βh) = 3/4: −0.9 ln(3/4) − 0.1 ln(1/4).
  Data c{{std::log(3.0)}, {0}, {0}, {0}, {1}, {1}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(c), config("sigmoid", 1.0, 0.1)).loss.item<double>(),
              -0.9 * std::log(0.75) - 0.1 * std::log(0.25), 1e-15);
  // hinge: β = 0.5, h = 1 -> 1 − 0.5 = 0.5; h = 3 -> 0.
  Data g{{1}, {0}, {0}, {0}, {1}, {1}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(g), config("hinge", 0.5, 0.0)).loss.item<double>(), 0.5, 1e-15);
  Data g3{{3}, {0}, {0}, {0}, {1}, {1}};
  EXPECT_EQ(tdpo::dpo_loss(inputs(g3), config("hinge", 0.5, 0.0)).loss.item<double>(), 0.0);
  // ipo: Δw/n_w − Δl/n_l = 8/4 − (−0)/2 = 2 and 1/(2β) = 2 at β = 0.25 -> 0; at β = 0.5 -> (2 − 1)² = 1.
  Data i{{8}, {0}, {0}, {0}, {4}, {2}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(i), config("ipo", 0.25, 0.0)).loss.item<double>(), 0.0, 1e-15);
  EXPECT_NEAR(tdpo::dpo_loss(inputs(i), config("ipo", 0.5, 0.0)).loss.item<double>(), 1.0, 1e-15);
  // sppo_hard: Δw = 1/(2β) = 5, Δl = −5 -> 0.
  Data s{{-1}, {-11}, {-6}, {-6}, {1}, {1}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(s), config("sppo_hard", 0.1, 0.0)).loss.item<double>(), 0.0, 1e-15);
  // sft: two pairs, chosen log-probs −6 and −4 over 2 + 3 tokens -> 10 / 5 = 2 nats per token.
  Data f{{-6, -4}, {-1, -1}, {0, 0}, {0, 0}, {2, 3}, {1, 1}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(f), config("sft", 0.1, 0.0)).loss.item<double>(), 2.0, 1e-15);
}

TEST(DPOLoss, GradientsMatchFiniteDifferences) {
  const Data d = make_pairs(6, 12);
  const double e = 1e-6;
  for (const auto& type : tdpo::dpo_loss_types()) {
    if (type == "bco_pair") continue;  // its running mean is detached: checked analytically below
    auto cfg = config(type, 0.3, 0.1);
    auto in = inputs(d, true);
    auto out = tdpo::dpo_loss(in, cfg);
    out.loss.backward();
    for (int side = 0; side < 2; ++side) {
      at::Tensor g = side == 0 ? in.policy_chosen.grad() : in.policy_rejected.grad();
      if (!g.defined()) g = at::zeros({(int64_t)d.pc.size()}, at::kDouble);  // sft does not use rejected log-probs
      for (size_t i = 0; i < d.pc.size(); ++i) {
        Data p = d, m = d;
        (side == 0 ? p.pc : p.pr)[i] += e;
        (side == 0 ? m.pc : m.pr)[i] -= e;
        const double fd = (tdpo::dpo_loss(inputs(p), cfg).loss.item<double>() -
                           tdpo::dpo_loss(inputs(m), cfg).loss.item<double>()) / (2 * e);
        EXPECT_NEAR(g[i].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd)))
            << type << (side == 0 ? " chosen " : " rejected ") << i;
      }
    }
  }
}

TEST(DPOLoss, BcoPairGradientAndRunningMeanAcrossBatches) {
  const Data d = make_pairs(5, 13);
  const double beta = 0.2;
  auto cfg = config("bco_pair", beta, 0.0);
  auto in = inputs(d, true);
  auto out = tdpo::dpo_loss(in, cfg);
  out.loss.backward();
  const double delta = out.bco_state.mean;
  const double P = d.pc.size();
  for (size_t i = 0; i < d.pc.size(); ++i) {
    const double a = d.pc[i] - d.rc[i], b = d.pr[i] - d.rr[i];
    // d/dpc −log σ(βa − δ) = −β(1 − σ(βa − δ)); d/dpr −log σ(δ − βb) = β σ(βb − δ); both over P pairs.
    EXPECT_NEAR(in.policy_chosen.grad()[i].item<double>(), -beta * (1 - sig(beta * a - delta)) / P, 1e-14);
    EXPECT_NEAR(in.policy_rejected.grad()[i].item<double>(), beta * sig(beta * b - delta) / P, 1e-14);
  }
  // Second batch: the state is the mean of the two batch means.
  const Data d2 = make_pairs(5, 14);
  auto in2 = inputs(d2);
  in2.bco_state = out.bco_state;
  auto out2 = tdpo::dpo_loss(in2, cfg);
  auto batch_mean = [&](const Data& x) {
    double s = 0;
    for (size_t i = 0; i < x.pc.size(); ++i) s += beta * ((x.pc[i] - x.rc[i]) + (x.pr[i] - x.rr[i]));
    return s / (2.0 * x.pc.size());
  };
  EXPECT_NEAR(out.bco_state.mean, batch_mean(d), 1e-12);
  EXPECT_NEAR(out2.bco_state.mean, (batch_mean(d) + batch_mean(d2)) / 2, 1e-12);
  EXPECT_EQ(out2.bco_state.count, 2.0);
  EXPECT_NEAR(out2.loss.item<double>(), reference_loss("bco_pair", d2, beta, 0, 0.05, out2.bco_state.mean), 1e-12);
}

TEST(DPOLoss, ReferenceFreeTakesReferenceAsZero) {
  const Data d = make_pairs(4, 15);
  Data zero = d;
  std::fill(zero.rc.begin(), zero.rc.end(), 0.0);
  std::fill(zero.rr.begin(), zero.rr.end(), 0.0);
  for (const std::string type : {"sigmoid", "ipo", "apo_zero", "aot_unpaired"}) {
    auto cfg = config(type, 0.05, 0.0);
    cfg.reference_free = true;
    auto in = inputs(d);
    in.ref_chosen = at::Tensor();  // undefined refs are fine in reference-free mode
    in.ref_rejected = at::Tensor();
    auto out = tdpo::dpo_loss(in, cfg);
    EXPECT_NEAR(out.loss.item<double>(), reference_loss(type, zero, 0.05, 0, 0.05, 0), 1e-12) << type;
    EXPECT_NEAR(out.chosen_rewards[1].item<double>(), 0.05 * d.pc[1], 1e-14);
  }
}

TEST(DPOLoss, WeightedCombinationAndMetrics) {
  const Data d = make_pairs(5, 16);
  tdpo::DPOLossConfig cfg;
  cfg.terms = {{"sigmoid", 1.0}, {"sft", 0.2}};
  cfg.beta = 0.1;
  auto in = inputs(d, true);
  auto out = tdpo::dpo_loss(in, cfg);
  const double sig_l = reference_loss("sigmoid", d, 0.1, 0, 0.05, 0), sft_l = reference_loss("sft", d, 0.1, 0, 0.05, 0);
  EXPECT_NEAR(out.loss.item<double>(), sig_l + 0.2 * sft_l, 1e-12);
  ASSERT_EQ(out.term_losses.numel(), 2);
  EXPECT_NEAR(out.term_losses[0].item<double>(), sig_l, 1e-12);
  EXPECT_NEAR(out.term_losses[1].item<double>(), sft_l, 1e-12);
  out.loss.backward();
  double total_n = 0;
  for (double n : d.nw) total_n += n;
  for (size_t i = 0; i < d.pc.size(); ++i) {
    const double z = 0.1 * ((d.pc[i] - d.rc[i]) - (d.pr[i] - d.rr[i]));
    // d/dpc: −β(1 − σ(z))/P from sigmoid, −0.2/Σn_w from sft; d/dpr: +β(1 − σ(z))/P.
    EXPECT_NEAR(in.policy_chosen.grad()[i].item<double>(), -0.1 * (1 - sig(z)) / 5 - 0.2 / total_n, 1e-14);
    EXPECT_NEAR(in.policy_rejected.grad()[i].item<double>(), 0.1 * (1 - sig(z)) / 5, 1e-14);
    const double rw = 0.1 * (d.pc[i] - d.rc[i]), rl = 0.1 * (d.pr[i] - d.rr[i]);
    EXPECT_NEAR(out.chosen_rewards[i].item<double>(), rw, 1e-14);
    EXPECT_NEAR(out.rejected_rewards[i].item<double>(), rl, 1e-14);
    EXPECT_NEAR(out.reward_margins[i].item<double>(), rw - rl, 1e-14);
    EXPECT_EQ(out.reward_accuracies[i].item<double>(), rw > rl ? 1.0 : 0.0);
  }
  EXPECT_FALSE(out.chosen_rewards.requires_grad());
}

TEST(DPOLoss, PairSeparability) {
  for (const std::string t : {"sigmoid", "robust", "hinge", "ipo", "exo_pair", "nca_pair", "sppo_hard", "apo_zero",
                              "apo_down", "discopop", "sigmoid_norm", "orpo", "simpo", "cpo"})
    EXPECT_TRUE(tdpo::is_pair_separable(t)) << t;
  for (const std::string t : {"bco_pair", "aot", "aot_unpaired", "sft"}) EXPECT_FALSE(tdpo::is_pair_separable(t)) << t;
  expect_error([] { tdpo::is_pair_separable("kto"); }, "Expected one of sigmoid, robust, hinge");
  // Separable types really are: the loss of a batch is the mean of the losses of its pairs taken alone.
  const Data d = make_pairs(4, 17);
  for (const auto& type : tdpo::dpo_loss_types()) {
    if (!tdpo::is_pair_separable(type)) continue;
    auto cfg = config(type, 0.2, 0.1);
    double sum = 0;
    for (size_t i = 0; i < 4; ++i) {
      Data one{{d.pc[i]}, {d.pr[i]}, {d.rc[i]}, {d.rr[i]}, {d.nw[i]}, {d.nl[i]}};
      sum += tdpo::dpo_loss(inputs(one), cfg).loss.item<double>();
    }
    EXPECT_NEAR(tdpo::dpo_loss(inputs(d), cfg).loss.item<double>(), sum / 4, 1e-12) << type;
  }
}

TEST(DPOLoss, RejectsBadInput) {
  const Data d = make_pairs(3, 18);
  expect_error([&] { tdpo::dpo_loss(inputs(d), config("kto", 0.1, 0)); },
               "Expected one of sigmoid, robust, hinge, ipo, exo_pair, nca_pair, bco_pair, sppo_hard, apo_zero, "
               "apo_down, discopop, aot, aot_unpaired, sigmoid_norm, sft, orpo, simpo, cpo for terms[0].type but received "
               "\"kto\"");
  expect_error([&] { tdpo::dpo_loss(inputs(d), config("sigmoid", 0.0, 0)); }, "expected beta > 0 but received 0");
  expect_error([&] { tdpo::dpo_loss(inputs(d), config("sigmoid", -1, 0)); }, "expected beta > 0 but received -1");
  expect_error([&] { tdpo::dpo_loss(inputs(d), config("robust", 0.1, 0.5)); }, "label_smoothing in [0, 0.5)");
  auto cfg = config("sigmoid", 0.1, 0);
  cfg.terms.clear();
  expect_error([&] { tdpo::dpo_loss(inputs(d), cfg); }, "at least one loss term");
  cfg = config("sigmoid", 0.1, 0);
  cfg.terms[0].weight = NAN;
  expect_error([&] { tdpo::dpo_loss(inputs(d), cfg); }, "finite weight for terms[0]");
  auto in = inputs(d);
  in.policy_rejected = in.policy_rejected.slice(0, 0, 2);
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)); }, "expected policy_rejected of shape (3)");
  in = inputs(d);
  in.ref_chosen = in.ref_chosen.unsqueeze(0);
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)); }, "expected ref_chosen of shape (3)");
  in = inputs(d);
  in.ref_rejected = at::Tensor();
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)); }, "ref_rejected of shape (3) but it is undefined");
  in = inputs(d);
  in.policy_rejected[2] = NAN;
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)); }, "finite policy_rejected but received nan at index 2");
  in = inputs(d);
  in.ref_chosen[0] = -INFINITY;
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)); }, "finite ref_chosen but received -inf at index 0");
  in = inputs(d);
  in.chosen_counts = at::Tensor();
  expect_error([&] { tdpo::dpo_loss(in, config("ipo", 0.1, 0)); }, "chosen_counts of shape (3) but it is undefined");
  EXPECT_NO_THROW(tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)));  // counts are only needed by ipo/sigmoid_norm/sft
  in = inputs(d);
  in.rejected_counts[1] = -2;
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid_norm", 0.1, 0)); }, "non-negative");
  in = inputs(d);
  in.policy_chosen = in.policy_chosen.to(at::kLong);
  expect_error([&] { tdpo::dpo_loss(in, config("sigmoid", 0.1, 0)); }, "floating-point policy_chosen");
}

// ---- Reference-free preference losses: orpo, simpo, cpo ----

TEST(DPOLoss, ReferenceFreeTypesIgnoreTheReferenceAndMatchFloat64) {
  const Data d = make_pairs(6, 21);
  Data other = d;  // a different reference must not change these losses
  for (auto& v : other.rc) v += 3.5;
  for (auto& v : other.rr) v -= 1.25;
  for (const std::string type : {"orpo", "simpo", "cpo"}) {
    for (double gamma : {0.0, 0.5, 2.0}) {
      auto cfg = config(type, 0.4, 0.15);
      cfg.simpo_gamma = gamma;
      const double want = reference_loss(type, d, 0.4, 0.15, 0.05, 0, gamma);
      EXPECT_NEAR(tdpo::dpo_loss(inputs(d), cfg).loss.item<double>(), want, 1e-12 * std::max(1.0, std::abs(want))) << type;
      EXPECT_NEAR(tdpo::dpo_loss(inputs(other), cfg).loss.item<double>(), want, 1e-12 * std::max(1.0, std::abs(want)))
          << type;
      cfg.reference_free = true;
      auto in = inputs(d);
      in.ref_chosen = at::Tensor();
      in.ref_rejected = at::Tensor();
      EXPECT_NEAR(tdpo::dpo_loss(in, cfg).loss.item<double>(), want, 1e-12 * std::max(1.0, std::abs(want))) << type;
    }
  }
}

TEST(DPOLoss, ReferenceFreeTypesHandDerivedValues) {
  // orpo: ℓ̄_w = ln(1/2) over 2 tokens (p = 1/2, odds 1, log odds 0); ℓ̄_l = ln(1/4) (odds 1/3, log odds −ln 3).
  // Ratio term: −β log σ(ln 3) = −β ln(3/4).
  Data o{{2 * std::log(0.5)}, {3 * std::log(0.25)}, {0}, {0}, {2}, {3}};
  EXPECT_NEAR(tdpo::dpo_loss(inputs(o), config("orpo", 0.1, 0.0)).loss.item<double>(), -0.1 * std::log(0.75), 1e-14);
  // orpo + sft (ORPO's full loss): NLL per chosen token = −2 ln(1/2) / 2 = ln 2.
  auto cfg = config("orpo", 0.25, 0.0);
  cfg.terms.push_back({"sft", 1.0});
  EXPECT_NEAR(tdpo::dpo_loss(inputs(o), cfg).loss.item<double>(), -0.25 * std::log(0.75) + std::log(2.0), 1e-14);
  // simpo: ℓ̄_w − ℓ̄_l = −4/2 − (−9/3) = 1; β = 2, γ = 2 -> z = 0 -> ln 2 for every ε.
  Data s{{-4}, {-9}, {0}, {0}, {2}, {3}};
  auto sc = config("simpo", 2.0, 0.2);
  sc.simpo_gamma = 2.0;
  EXPECT_NEAR(tdpo::dpo_loss(inputs(s), sc).loss.item<double>(), std::log(2.0), 1e-15);
  // γ = 2 − ln 3 -> z = ln 3, σ(z) = 3/4; ε = 0.2: −0.8 ln(3/4) − 0.2 ln(1/4).
  sc.simpo_gamma = 2.0 - std::log(3.0);
  EXPECT_NEAR(tdpo::dpo_loss(inputs(s), sc).loss.item<double>(), -0.8 * std::log(0.75) - 0.2 * std::log(0.25), 1e-14);
  // cpo: log π_w − log π_l = −4 + 9 = 5; β = ln 3 / 5 -> z = ln 3 -> −ln(3/4) with ε = 0.
  EXPECT_NEAR(tdpo::dpo_loss(inputs(s), config("cpo", std::log(3.0) / 5, 0.0)).loss.item<double>(), -std::log(0.75),
              1e-14);
}

TEST(DPOLoss, OrpoLogOddsIsStableNearProbabilityOne) {
  // ℓ̄ close to 0 (p ≈ 1): log odds ≈ −log(−ℓ̄) is large but finite; a plain log(1 − exp(ℓ̄)) loses all digits.
  for (double x : {-1e-3, -1e-8, -1e-11}) {
    Data d{{x}, {-2.0}, {0}, {0}, {1}, {1}};
    const double lo_w = x - std::log(-std::expm1(x)), lo_l = -2.0 - std::log1p(-std::exp(-2.0));
    auto in = inputs(d, true);
    auto out = tdpo::dpo_loss(in, config("orpo", 1.0, 0.0));
    EXPECT_NEAR(out.loss.item<double>(), -logsig(lo_w - lo_l), 1e-12) << x;
    out.loss.backward();
    // d/dx of −log σ(lo_w − lo_l) = −σ(−(lo_w − lo_l)) · dlo_w/dx, dlo_w/dx = 1/(1 − e^x).
    const double g = -sig(-(lo_w - lo_l)) / (-std::expm1(x));
    EXPECT_NEAR(in.policy_chosen.grad()[0].item<double>(), g, 1e-9 * std::abs(g)) << x;
  }
  // Probability exactly 1 (an empty completion: log-prob 0): finite loss and gradient (ℓ̄ capped at −1e-12).
  Data z{{0.0}, {-2.0}, {0}, {0}, {0}, {1}};
  auto in = inputs(z, true);
  auto out = tdpo::dpo_loss(in, config("orpo", 1.0, 0.0));
  out.loss.backward();
  EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
  EXPECT_TRUE(at::isfinite(in.policy_chosen.grad()).all().item<bool>());
  // float32 inputs work and agree with float64.
  const Data d = make_pairs(5, 22);
  auto in32 = inputs(d);
  in32.policy_chosen = in32.policy_chosen.to(at::kFloat);
  in32.policy_rejected = in32.policy_rejected.to(at::kFloat);
  EXPECT_NEAR(tdpo::dpo_loss(in32, config("orpo", 0.1, 0)).loss.item<double>(), reference_loss("orpo", d, 0.1, 0, 0.05, 0),
              1e-5);
}

TEST(DPOLoss, ReferenceFreeTypesRewardsFollowTrl) {
  const Data d = make_pairs(4, 23);
  for (const std::string type : {"orpo", "simpo", "cpo"}) {
    tdpo::DPOLossConfig cfg;
    cfg.terms = {{"sft", 1.0}, {type, 1.0}};  // the first non-sft term decides
    cfg.beta = 0.2;
    auto out = tdpo::dpo_loss(inputs(d), cfg);
    for (size_t i = 0; i < d.pc.size(); ++i) {
      const double nw = type == "cpo" ? 1.0 : std::max(d.nw[i], 1.0), nl = type == "cpo" ? 1.0 : std::max(d.nl[i], 1.0);
      EXPECT_NEAR(out.chosen_rewards[i].item<double>(), 0.2 * d.pc[i] / nw, 1e-13) << type;
      EXPECT_NEAR(out.rejected_rewards[i].item<double>(), 0.2 * d.pr[i] / nl, 1e-13) << type;
    }
  }
}

TEST(DPOLoss, SimpoGammaIsValidated) {
  const Data d = make_pairs(2, 24);
  auto cfg = config("simpo", 0.1, 0);
  cfg.simpo_gamma = -0.5;
  expect_error([&] { tdpo::dpo_loss(inputs(d), cfg); }, "expected simpo_gamma >= 0 but received -0.5");
  cfg.simpo_gamma = NAN;
  expect_error([&] { tdpo::dpo_loss(inputs(d), cfg); }, "expected simpo_gamma >= 0 but received nan");
  auto in = inputs(d);
  in.rejected_counts = at::Tensor();
  expect_error([&] { tdpo::dpo_loss(in, config("orpo", 0.1, 0)); }, "rejected_counts of shape (2) but it is undefined");
}
