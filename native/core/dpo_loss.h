// The DPO loss family on sequence log-probabilities (plain autograd on (P) tensors), following HF TRL's DPOTrainer.
#pragma once
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace tdpo {

struct LossTerm {
  std::string type;     // one of dpo_loss_types()
  double weight = 1.0;  // the term's coefficient in the weighted sum
};

// TRL's RunningMoments as used by bco_pair: running mean of the per-batch mean reward, updated once per batch
// (count = number of batches seen). Passed in and out explicitly; there is no hidden state.
struct BCORunningMean {
  double mean = 0.0;
  double count = 0.0;
};

struct DPOLossConfig {
  std::vector<LossTerm> terms{{"sigmoid", 1.0}};  // weighted sum of per-pair means, e.g. {{"sigmoid",1},{"sft",0.2}}
  double beta = 0.1;              // β (> 0); TRL default 0.1
  double label_smoothing = 0.0;   // ε in [0, 0.5): sigmoid (cDPO), robust, exo_pair (0 -> 1e-3 as TRL), aot, aot_unpaired
  bool reference_free = false;    // πref ≡ 1: reference log-probs are taken as 0 (refs may then be left undefined)
  double discopop_tau = 0.05;     // τ of discopop's modulation σ(βh/τ); TRL default 0.05
  double simpo_gamma = 0.5;       // γ >= 0, SimPO's target reward margin; TRL CPOConfig default 0.5
};

struct DPOLossInputs {  // P pairs
  at::Tensor policy_chosen, policy_rejected;  // (P) summed log-probs (differentiable), float32 or float64
  at::Tensor ref_chosen, ref_rejected;        // (P) (ignored when reference_free)
  at::Tensor chosen_counts, rejected_counts;  // (P) token counts; needed by ipo, sigmoid_norm, sft, orpo, simpo
  BCORunningMean bco_state;                   // bco_pair: running mean before this batch
};

struct DPOLossOutput {
  at::Tensor loss;                              // () scalar: Σ_k weight_k · mean_p loss_k(p)
  // (P) detached TRL rewards/chosen, rewards/rejected: β·Δ; when the first non-sft term is reference-free by definition
  // they follow TRL's ORPO/CPO trainers instead: β·log π(y)/n (orpo, simpo) or β·log π(y) (cpo).
  at::Tensor chosen_rewards, rejected_rewards;
  at::Tensor reward_accuracies;                 // (P) detached, 1 where chosen reward > rejected reward
  at::Tensor reward_margins;                    // (P) detached chosen − rejected reward
  at::Tensor term_losses;                       // (K) detached unweighted mean loss of each term, in cfg.terms order
  BCORunningMean bco_state;                     // updated running mean (input copied when no bco_pair term)
};

DPOLossOutput dpo_loss(const DPOLossInputs& in, const DPOLossConfig& cfg);

// Accepted `type` names, in a fixed order.
const std::vector<std::string>& dpo_loss_types();

// True when a pair's loss depends on that pair only (so a batch can be split by pairs); throws on unknown types.
bool is_pair_separable(const std::string& type);

// Validates cfg (β, ε, τ, γ, term names and weights); throws c10::Error naming the field. Called by dpo_loss.
void check_dpo_config(const DPOLossConfig& cfg);

}  // namespace tdpo
