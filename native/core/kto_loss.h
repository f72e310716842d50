// KTO (Ethayarajh et al. 2024) on sequence log-probabilities of unpaired examples, following HF TRL's KTOTrainer:
// each completion is desirable or undesirable; the reference point z0 is a detached batch estimate of
// KL(πθ‖πref) from mismatched prompt/completion pairs, clamped at 0.
#pragma once
#include <ATen/ATen.h>

namespace tdpo {

struct KTOLossConfig {
  double beta = 0.1;                // β (> 0); TRL KTOConfig default 0.1
  double desirable_weight = 1.0;    // w_d (> 0), weight of desirable examples' losses; default 1
  double undesirable_weight = 1.0;  // w_u (> 0), weight of undesirable examples' losses; default 1
  bool reference_free = false;      // πref ≡ 1: reference log-probs are taken as 0; default false
};

// z0 = max(0, mean_i(kl_policy[i] − kl_ref[i])), detached: the per-rank estimate (data parallel averages it over
// the ranks before the clamp, as TRL does). kl_policy, kl_ref: (N) log-probs of the mismatched pairs.
at::Tensor kto_kl_mean(const at::Tensor& kl_policy, const at::Tensor& kl_ref);  // () unclamped mean, detached

struct KTOLossInputs {  // N examples
  at::Tensor policy_logps;  // (N) summed completion log-probs (differentiable), float32 or float64
  at::Tensor ref_logps;     // (N) (ignored when reference_free)
  at::Tensor desirable;     // (N) bool / integer, 1 = desirable
  double z0 = 0.0;          // the clamped KL estimate (a constant)
};

struct KTOLossOutput {
  at::Tensor loss;     // () mean over the N examples of w·(1 − σ(β(Δ − z0))) (desirable) / w·(1 − σ(β(z0 − Δ)))
  at::Tensor rewards;  // (N) detached β·Δ, Δ = log πθ(y|x) − log πref(y|x)
};

KTOLossOutput kto_loss(const KTOLossInputs& in, const KTOLossConfig& cfg);

// Validates cfg; throws c10::Error naming the field.
void check_kto_config(const KTOLossConfig& cfg);

}  // namespace tdpo
