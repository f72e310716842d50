// DPO-family loss straight from hidden states and the lm-head in one call (no (2P, T, V) logits).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "dpo_loss.h"
#include "fused_logps.h"

namespace tdpo {

struct FusedDPOOutput {
  at::Tensor loss;          // () scalar, differentiable w.r.t. hidden, weight, bias
  DPOLossOutput parts;      // rewards, accuracies, margins, per-term losses, bco state (parts.loss is `loss`)
  at::Tensor policy_logps;  // (2P) detached float32: chosen then rejected
  at::Tensor counts;        // (2P) int64 counted tokens
  at::Tensor logits_sum;    // (2P) float32: sum over counted tokens of the mean logit over V
};

// hidden (2P, T, H): rows 0..P-1 chosen, P..2P-1 rejected; weight (V, H); bias (V) optional; labels (2P, T) with
// -100 = ignore; ref_logps (2P) (chosen then rejected; ignored when cfg.reference_free, may then be undefined).
// bco_state: running mean for bco_pair (returned updated in parts.bco_state).
FusedDPOOutput fused_dpo_loss(const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                              const at::Tensor& labels, const at::Tensor& ref_logps, const DPOLossConfig& cfg,
                              const FusedLogpsOptions& opt = {}, const BCORunningMean& bco_state = {});

}  // namespace tdpo
