// The trainer settings as they cross from TS (already validated there) into native code, as one JSON document.
#pragma once
#include <nlohmann/json.hpp>

#include "dpo_loss.h"
#include "fused_logps.h"
#include "kto_loss.h"
#include "preference_trainer.h"
#include "reward_head.h"

namespace tdpo {

struct TrainerConfig {
  bool kto_enabled = false;  // "kto" present: the trainer takes unpaired KTO batches (accumulateKto); default false
  KTOLossConfig kto;         // "kto": {"beta", "desirableWeight", "undesirableWeight", "referenceFree"}
  DPOLossConfig loss;         // loss terms, β, ε, reference-free
  OptimizerConfig optimizer;  // adamw | sgd and its hyper-parameters
  FusedLogpsOptions fused;    // lm-head chunking
  bool padding_free = false;  // "paddingFree"?: pack sequences for the policy forward (packing.h); default false
  // "activationCheckpointing"?: recompute the policy's blocks in backward instead of keeping their activations
  // (activation_checkpoint.h); default false
  bool activation_checkpointing = false;
  // "reward"?: {"centerRewardsCoefficient", "margin"?}: train the policy's score head with the Bradley–Terry loss (reward_head.h)
  // instead of `loss`; absent = not a reward model.
  bool reward = false;
  RewardLossOptions reward_options;
};

// {"loss": {"terms": [{"type", "weight"}], "beta", "labelSmoothing", "referenceFree", "discopopTau"?, "simpoGamma"?},
//  "optimizer": {"type", "weightDecay", "beta1", "beta2", "eps", "momentum"}, "chunkRows", "paddingFree"?,
//  "activationCheckpointing"?}
// Every field is required except those marked '?'; errors name the field.
TrainerConfig parse_trainer_config(const nlohmann::json& j);

}  // namespace tdpo
