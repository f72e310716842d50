// The trainer settings as they cross from TS (already validated there) into native code, as one JSON document.
#pragma once
#include <nlohmann/json.hpp>

#include "dpo_loss.h"
#include "fused_logps.h"
#include "preference_trainer.h"

namespace tdpo {

struct TrainerConfig {
  DPOLossConfig loss;         // loss terms, β, ε, reference-free
  OptimizerConfig optimizer;  // adamw | sgd and its hyper-parameters
  FusedLogpsOptions fused;    // lm-head chunking
};

// {"loss": {"terms": [{"type", "weight"}], "beta", "labelSmoothing", "referenceFree", "discopopTau"?, "simpoGamma"?},
//  "optimizer": {"type", "weightDecay", "beta1", "beta2", "eps", "momentum"}, "chunkRows"}
// Every field is required except those marked '?'; errors name the field.
TrainerConfig parse_trainer_config(const nlohmann::json& j);

}  // namespace tdpo
