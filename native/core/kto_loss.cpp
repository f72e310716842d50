#include "kto_loss.h"

#include <cmath>

namespace tdpo {

void check_kto_config(const KTOLossConfig& cfg) {
  TORCH_CHECK(std::isfinite(cfg.beta) && cfg.beta > 0, "kto: Expected a finite number > 0 for beta but received ",
              cfg.beta);
  TORCH_CHECK(std::isfinite(cfg.desirable_weight) && cfg.desirable_weight > 0,
              "kto: Expected a finite number > 0 for desirableWeight but received ", cfg.desirable_weight);
  TORCH_CHECK(std::isfinite(cfg.undesirable_weight) && cfg.undesirable_weight > 0,
              "kto: Expected a finite number > 0 for undesirableWeight but received ", cfg.undesirable_weight);
}

namespace {

void check_vector(const char* field, const at::Tensor& t, int64_t N) {
  TORCH_CHECK(t.defined(), "kto: expected ", field, " of shape (", N, ") but it is undefined");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == N, "kto: expected ", field, " of shape (", N, ") but received ", t.sizes());
}

void check_finite(const char* field, const at::Tensor& t) {
  auto bad = ~at::isfinite(t.detach().to(at::kDouble));  // (N) bool
  if (bad.any().item<bool>()) {
    const int64_t i = bad.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "kto: expected finite ", field, " but received ", t[i].item<double>(), " at index ", i);
  }
}

}  // namespace

at::Tensor kto_kl_mean(const at::Tensor& kl_policy, const at::Tensor& kl_ref) {
  TORCH_CHECK(kl_policy.dim() == 1 && kl_policy.size(0) >= 1, "kto: expected KL log-probs of shape (N >= 1) but received ",
              kl_policy.sizes());
  check_vector("KL reference log-probs", kl_ref, kl_policy.size(0));
  check_finite("KL policy log-probs", kl_policy);
  check_finite("KL reference log-probs", kl_ref);
  return (kl_policy.detach().to(at::kDouble) - kl_ref.detach().to(kl_policy.device(), at::kDouble)).mean();  // ()
}

KTOLossOutput kto_loss(const KTOLossInputs& in, const KTOLossConfig& cfg) {
  check_kto_config(cfg);
  TORCH_CHECK(in.policy_logps.defined() && in.policy_logps.dim() == 1 && in.policy_logps.size(0) >= 1,
              "kto: expected policy log-probs of shape (N >= 1) but received ",
              in.policy_logps.defined() ? in.policy_logps.sizes() : at::IntArrayRef{});
  TORCH_CHECK(in.policy_logps.is_floating_point(), "kto: expected floating-point policy log-probs but received ",
              in.policy_logps.scalar_type());
  const int64_t N = in.policy_logps.size(0);
  check_vector("desirable labels", in.desirable, N);
  check_finite("policy log-probs", in.policy_logps);
  TORCH_CHECK(std::isfinite(in.z0) && in.z0 >= 0, "kto: expected a finite z0 >= 0 but received ", in.z0);
  const auto dev = in.policy_logps.device();
  const auto dt = in.policy_logps.scalar_type();
  at::Tensor delta = in.policy_logps;  // (N)
  if (!cfg.reference_free) {
    check_vector("reference log-probs", in.ref_logps, N);
    check_finite("reference log-probs", in.ref_logps);
    delta = delta - in.ref_logps.to(dev, dt);
  }
  auto good = in.desirable.to(dev).ne(0);                                          // (N) bool
  auto z = cfg.beta * (delta - in.z0);                                             // (N) β(Δ − z0)
  // desirable: 1 − σ(β(Δ − z0)); undesirable: 1 − σ(β(z0 − Δ)) = 1 − σ(−z)
  auto per = at::where(good, cfg.desirable_weight * (1 - at::sigmoid(z)),
                       cfg.undesirable_weight * (1 - at::sigmoid(-z)));            // (N)
  KTOLossOutput out;
  out.loss = per.mean();
  out.rewards = (cfg.beta * delta).detach();
  return out;
}

}  // namespace tdpo
