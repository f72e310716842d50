// Bradley–Terry reward models: the scalar score head read at the last non-pad token, and the pairwise reward loss
// −log σ(r_w − r_l − m) (+ TRL's optional reward centering), as in TRL's RewardTrainer.
#pragma once
#include <ATen/ATen.h>

#include "causal_lm.h"

namespace tdpo {

// rewards (N) = score · hidden[n, last non-pad token of row n]. hidden (N, T, H) any float dtype; score (1, H);
// mask (N, T) 0/1, right padded (every row: ones then zeros, at least one token). Computed in float32 (float64 for
// float64 inputs): both operands are cast; differentiable w.r.t. hidden and score.
at::Tensor last_token_rewards(const at::Tensor& hidden, const at::Tensor& score, const at::Tensor& mask);

struct RewardLossOptions {
  // TRL RewardConfig.center_rewards_coefficient: adds coef · mean((r_w + r_l)^2) (0 = off, the default).
  double center_rewards_coefficient = 0.0;
  // The margin m of every pair when a batch carries no per-pair margins (0 = plain Bradley–Terry, the default).
  double margin = 0.0;
};

struct RewardLossOutput {
  at::Tensor loss;                                 // () float32: mean_p −log σ(r_w − r_l − m_p) + centering term
  at::Tensor chosen_rewards, rejected_rewards;     // (P) detached
};

// chosen / rejected (P) rewards; margins (P) or undefined (= opt.margin for every pair).
RewardLossOutput reward_loss(const at::Tensor& chosen, const at::Tensor& rejected, const at::Tensor& margins,
                             const RewardLossOptions& opt = {});

// Rewards (N) float32 on the CPU of a right-padded (N, T) batch under a score-head model, without gradients.
at::Tensor sequence_rewards_nograd(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask);

}  // namespace tdpo
