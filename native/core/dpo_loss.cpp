// Notation: Δw = log πθ(y_w|x) − log πref(y_w|x), Δl likewise, h = Δw − Δl, n_w/n_l = token counts (clamped >= 1),
// σ = sigmoid, ε = label_smoothing. Every term is a per-pair loss ℓ(p) averaged over the P pairs.
// Reference-free terms (orpo, simpo, cpo) use the policy log-probs only: log π(y_w), log π(y_l), and their length
// averages ℓ̄_w = log π(y_w)/n_w, ℓ̄_l = log π(y_l)/n_l (TRL's ORPO and SimPO use length-averaged log-probs).
#include "dpo_loss.h"

#include <cmath>
#include <sstream>

namespace tdpo {

namespace {

struct TypeInfo {
  const char* name;
  bool separable;
};

const TypeInfo kTypes[] = {
    {"sigmoid", true},       {"robust", true},    {"hinge", true},         {"ipo", true},
    {"exo_pair", true},      {"nca_pair", true},  {"bco_pair", false},     {"sppo_hard", true},
    {"apo_zero", true},      {"apo_down", true},  {"discopop", true},      {"aot", false},
    {"aot_unpaired", false}, {"sigmoid_norm", true}, {"sft", false},    {"orpo", true},
    {"simpo", true},         {"cpo", true},
};

std::string accepted_list() {
  std::ostringstream os;
  const auto& names = dpo_loss_types();
  for (size_t i = 0; i < names.size(); ++i) os << (i ? ", " : "") << names[i];
  return os.str();
}

const TypeInfo* find_type(const std::string& t) {
  for (const auto& ti : kTypes)
    if (t == ti.name) return &ti;
  return nullptr;
}

// −(1−ε) log σ(z) − ε log σ(−z): the (conservative) logistic loss on a margin z.
at::Tensor smoothed_logistic(const at::Tensor& z, double eps) {
  return -(1.0 - eps) * at::log_sigmoid(z) - eps * at::log_sigmoid(-z);
}

void check_pairs(const char* field, const at::Tensor& t, int64_t P, bool floating) {
  TORCH_CHECK(t.defined(), "dpo_loss: expected ", field, " of shape (", P, ") but it is undefined");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == P, "dpo_loss: expected ", field, " of shape (", P, ") but received ",
              t.sizes());
  if (floating) {
    TORCH_CHECK(t.is_floating_point(), "dpo_loss: expected floating-point ", field, " but received ", t.scalar_type());
  }
  auto bad = ~at::isfinite(t.to(at::kDouble));                             // (P) bool
  if (bad.any().item<bool>()) {
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "dpo_loss: expected finite ", field, " but received ", t[i].item<double>(), " at index ", i);
  }
}

bool needs_counts(const std::string& type) {
  return type == "ipo" || type == "sigmoid_norm" || type == "sft" || type == "orpo" || type == "simpo";
}

// log(p / (1 − p)) for p = exp(x), x = a length-averaged log-prob (<= 0): x − log(1 − exp(x)), with log(1 − exp(x))
// as log1p(−exp(x)) for x < −ln 2 and log(−expm1(x)) otherwise (each accurate on its side; each branch gets an input
// clamped into its own side so neither produces inf/nan gradients through at::where). x is capped at −1e-12 (p at
// most 1 − 1e-12): a sequence whose probability rounded to 1 would otherwise give an infinite log odds.
at::Tensor log_odds(const at::Tensor& x_in) {
  const double ln2 = std::log(2.0);
  auto x = x_in.clamp_max(-1e-12);                                          // (P)
  auto lo = at::log1p(-at::exp(x.clamp_max(-ln2)));                        // (P) valid where x < −ln 2
  auto hi = at::log(-at::expm1(x.clamp_min(-ln2)));                        // (P) valid where x >= −ln 2
  return x - at::where(x < -ln2, lo, hi);
}

}  // namespace

const std::vector<std::string>& dpo_loss_types() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& ti : kTypes) v.emplace_back(ti.name);
    return v;
  }();
  return names;
}

bool is_pair_separable(const std::string& type) {
  const TypeInfo* ti = find_type(type);
  TORCH_CHECK(ti != nullptr, "Expected one of ", accepted_list(), " for loss type but received \"", type, "\"");
  return ti->separable;
}

void check_dpo_config(const DPOLossConfig& cfg) {
  TORCH_CHECK(std::isfinite(cfg.beta) && cfg.beta > 0, "dpo_loss: expected beta > 0 but received ", cfg.beta);
  TORCH_CHECK(std::isfinite(cfg.label_smoothing) && cfg.label_smoothing >= 0 && cfg.label_smoothing < 0.5,
              "dpo_loss: expected label_smoothing in [0, 0.5) but received ", cfg.label_smoothing);
  TORCH_CHECK(std::isfinite(cfg.discopop_tau) && cfg.discopop_tau > 0,
              "dpo_loss: expected discopop_tau > 0 but received ", cfg.discopop_tau);
  TORCH_CHECK(std::isfinite(cfg.simpo_gamma) && cfg.simpo_gamma >= 0,
              "dpo_loss: expected simpo_gamma >= 0 but received ", cfg.simpo_gamma);
  TORCH_CHECK(!cfg.terms.empty(), "dpo_loss: expected at least one loss term but received none");
  for (size_t k = 0; k < cfg.terms.size(); ++k) {
    const auto& t = cfg.terms[k];
    TORCH_CHECK(find_type(t.type) != nullptr, "Expected one of ", accepted_list(), " for terms[", k,
                "].type but received \"", t.type, "\"");
    TORCH_CHECK(std::isfinite(t.weight), "dpo_loss: expected a finite weight for terms[", k, "] (", t.type,
                ") but received ", t.weight);
  }
}

DPOLossOutput dpo_loss(const DPOLossInputs& in, const DPOLossConfig& cfg) {
  check_dpo_config(cfg);
  TORCH_CHECK(in.policy_chosen.defined() && in.policy_chosen.dim() == 1 && in.policy_chosen.size(0) >= 1,
              "dpo_loss: expected policy_chosen of shape (P) with P >= 1 but received ",
              in.policy_chosen.defined() ? in.policy_chosen.sizes() : at::IntArrayRef{});
  const int64_t P = in.policy_chosen.size(0);
  check_pairs("policy_chosen", in.policy_chosen, P, true);
  check_pairs("policy_rejected", in.policy_rejected, P, true);
  const auto opts = in.policy_chosen.options();
  TORCH_CHECK(in.policy_rejected.scalar_type() == opts.dtype().toScalarType(), "dpo_loss: expected policy_rejected dtype ",
              opts.dtype(), " (as policy_chosen) but received ", in.policy_rejected.scalar_type());
  at::Tensor rc, rr;  // (P) reference log-probs, no grad
  if (cfg.reference_free) {
    rc = at::zeros({P}, opts);
    rr = at::zeros({P}, opts);
  } else {
    check_pairs("ref_chosen", in.ref_chosen, P, true);
    check_pairs("ref_rejected", in.ref_rejected, P, true);
    rc = in.ref_chosen.detach().to(opts);
    rr = in.ref_rejected.detach().to(opts);
  }
  bool any_counts = false;
  for (const auto& t : cfg.terms) any_counts = any_counts || needs_counts(t.type);
  at::Tensor nw, nl;  // (P) counts clamped to >= 1, in the policy dtype
  if (any_counts) {
    check_pairs("chosen_counts", in.chosen_counts, P, false);
    check_pairs("rejected_counts", in.rejected_counts, P, false);
    TORCH_CHECK((in.chosen_counts >= 0).all().item<bool>() && (in.rejected_counts >= 0).all().item<bool>(),
                "dpo_loss: expected non-negative chosen_counts/rejected_counts but received ", in.chosen_counts, " and ",
                in.rejected_counts);
    nw = in.chosen_counts.to(opts).clamp_min(1.0);
    nl = in.rejected_counts.to(opts).clamp_min(1.0);
  }

  const double beta = cfg.beta, eps = cfg.label_smoothing;
  const at::Tensor& pc = in.policy_chosen;
  const at::Tensor& pr = in.policy_rejected;
  auto dw = pc - rc;                                                       // (P) Δw
  auto dl = pr - rr;                                                       // (P) Δl
  auto h = dw - dl;                                                        // (P)

  DPOLossOutput out;
  out.bco_state = in.bco_state;
  at::Tensor loss = at::zeros({}, opts);
  std::vector<at::Tensor> term_values;
  for (const auto& term : cfg.terms) {
    const std::string& t = term.type;
    at::Tensor l;  // (P) per-pair loss
    if (t == "sigmoid") {
      // −(1−ε) log σ(βh) − ε log σ(−βh)   (ε > 0: conservative DPO)
      l = smoothed_logistic(beta * h, eps);
    } else if (t == "robust") {
      // (−(1−ε) log σ(βh) + ε log σ(−βh)) / (1 − 2ε)   (unbiased under label noise ε)
      l = (-(1.0 - eps) * at::log_sigmoid(beta * h) + eps * at::log_sigmoid(-beta * h)) / (1.0 - 2.0 * eps);
    } else if (t == "hinge") {
      // max(0, 1 − βh)
      l = at::relu(1.0 - beta * h);
    } else if (t == "ipo") {
      // (Δw/n_w − Δl/n_l − 1/(2β))²   (length-normalised, as TRL)
      l = at::pow(dw / nw - dl / nl - 1.0 / (2.0 * beta), 2);
    } else if (t == "exo_pair") {
      // σ(βh)(log σ(βh) − log(1−ε)) + σ(−βh)(log σ(−βh) − log ε), with ε = 1e-3 when label_smoothing is 0 (as TRL)
      const double e = eps == 0.0 ? 1e-3 : eps;
      auto z = beta * h;
      l = at::sigmoid(z) * (at::log_sigmoid(z) - std::log1p(-e)) + at::sigmoid(-z) * (at::log_sigmoid(-z) - std::log(e));
    } else if (t == "nca_pair") {
      // −log σ(βΔw) − ½ log σ(−βΔw) − ½ log σ(−βΔl)
      l = -at::log_sigmoid(beta * dw) - 0.5 * at::log_sigmoid(-beta * dw) - 0.5 * at::log_sigmoid(-beta * dl);
    } else if (t == "bco_pair") {
      // δ = running mean of the batch-mean reward mean(βΔw ∪ βΔl) (this batch included);
      // −log σ(βΔw − δ) − log σ(−(βΔl − δ))
      const double batch_mean = at::cat({dw, dl}).mean().item<double>() * beta;
      BCORunningMean s = out.bco_state;
      s.count += 1.0;
      s.mean += (batch_mean - s.mean) / s.count;
      out.bco_state = s;
      l = -at::log_sigmoid(beta * dw - s.mean) - at::log_sigmoid(-(beta * dl - s.mean));
    } else if (t == "sppo_hard") {
      // (Δw − 1/(2β))² + (Δl + 1/(2β))²
      l = at::pow(dw - 0.5 / beta, 2) + at::pow(dl + 0.5 / beta, 2);
    } else if (t == "apo_zero") {
      // 1 − σ(βΔw) + σ(βΔl)
      l = 1.0 - at::sigmoid(beta * dw) + at::sigmoid(beta * dl);
    } else if (t == "apo_down") {
      // σ(βΔw) + 1 − σ(βh)
      l = at::sigmoid(beta * dw) + 1.0 - at::sigmoid(beta * h);
    } else if (t == "discopop") {
      // z = βh, m = σ(z/τ): −log σ(z)·(1 − m) + exp(−z)·m
      auto z = beta * h;
      auto m = at::sigmoid(z / cfg.discopop_tau);
      l = -at::log_sigmoid(z) * (1.0 - m) + at::exp(-z) * m;
    } else if (t == "aot") {
      // d = sort(log πθ(y_w) − log πθ(y_l)) − sort(log πref(y_w) − log πref(y_l)) (each sorted over the batch);
      // −(1−ε) log σ(βd) − ε log σ(−βd)
      auto d = std::get<0>(at::sort(pc - pr, 0)) - std::get<0>(at::sort(rc - rr, 0));
      l = smoothed_logistic(beta * d, eps);
    } else if (t == "aot_unpaired") {
      // d = sort(Δw) − sort(Δl) (each sorted over the batch); −(1−ε) log σ(βd) − ε log σ(−βd)
      auto d = std::get<0>(at::sort(dw, 0)) - std::get<0>(at::sort(dl, 0));
      l = smoothed_logistic(beta * d, eps);
    } else if (t == "sigmoid_norm") {
      // −log σ(β(Δw/n_w − Δl/n_l))
      l = -at::log_sigmoid(beta * (dw / nw - dl / nl));
    } else if (t == "sft") {
      // −Σ_p log πθ(y_w) / max(1, Σ_p n_w): NLL per chosen token over the batch, same value for every pair
      auto total = in.chosen_counts.to(opts).sum().clamp_min(1.0);
      l = (-pc.sum() / total).expand({P});
    } else if (t == "orpo") {
      // ORPO's odds-ratio term with λ = β (TRL ORPOConfig.beta): −β log σ(log odds(ℓ̄_w) − log odds(ℓ̄_l)),
      // log odds(ℓ̄) = ℓ̄ − log(1 − exp(ℓ̄)). ORPO's NLL part is the separate `sft` term.
      l = -beta * at::log_sigmoid(log_odds(pc / nw) - log_odds(pr / nl));
    } else if (t == "simpo") {
      // SimPO: z = β(ℓ̄_w − ℓ̄_l) − γ; −(1−ε) log σ(z) − ε log σ(−z)   (TRL CPOTrainer loss_type "simpo")
      l = smoothed_logistic(beta * (pc / nw - pr / nl) - cfg.simpo_gamma, eps);
    } else if (t == "cpo") {
      // CPO (reference-free sigmoid): z = β(log π(y_w) − log π(y_l)); −(1−ε) log σ(z) − ε log σ(−z)
      l = smoothed_logistic(beta * (pc - pr), eps);
    } else {
      TORCH_CHECK(false, "Expected one of ", accepted_list(), " for loss type but received \"", t, "\"");
    }
    auto mean = l.mean();
    term_values.push_back(mean.detach());
    loss = loss + term.weight * mean;
  }
  out.loss = loss;
  std::string lead;  // first non-sft term: decides which reward TRL would report
  for (const auto& term : cfg.terms)
    if (term.type != "sft") {
      lead = term.type;
      break;
    }
  if (lead == "orpo" || lead == "simpo") {  // TRL ORPO/CPO(simpo): β · average log-prob
    out.chosen_rewards = (beta * pc / nw).detach();
    out.rejected_rewards = (beta * pr / nl).detach();
  } else if (lead == "cpo") {  // TRL CPO: β · summed log-prob
    out.chosen_rewards = (beta * pc).detach();
    out.rejected_rewards = (beta * pr).detach();
  } else {
    out.chosen_rewards = (beta * dw).detach();
    out.rejected_rewards = (beta * dl).detach();
  }
  out.reward_accuracies = (out.chosen_rewards > out.rejected_rewards).to(opts);
  out.reward_margins = out.chosen_rewards - out.rejected_rewards;
  out.term_losses = at::stack(term_values);
  return out;
}

}  // namespace tdpo
