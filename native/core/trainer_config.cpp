#include "trainer_config.h"

#include <c10/util/Exception.h>

#include <cmath>

namespace tdpo {

namespace {

const nlohmann::json& field(const nlohmann::json& o, const char* key, const char* owner) {
  TORCH_CHECK(o.is_object() && o.contains(key), "trainer config: missing ", owner, ".", key);
  return o.at(key);
}

double number(const nlohmann::json& o, const char* key, const char* owner) {
  auto& v = field(o, key, owner);
  TORCH_CHECK(v.is_number(), "trainer config: Expected a number for ", owner, ".", key, " but received ", v.dump());
  return v.get<double>();
}

std::string string(const nlohmann::json& o, const char* key, const char* owner) {
  auto& v = field(o, key, owner);
  TORCH_CHECK(v.is_string(), "trainer config: Expected a string for ", owner, ".", key, " but received ", v.dump());
  return v.get<std::string>();
}

}  // namespace

TrainerConfig parse_trainer_config(const nlohmann::json& j) {
  TORCH_CHECK(j.is_object(), "trainer config must be a JSON object");
  TrainerConfig c;
  auto& loss = field(j, "loss", "config");
  auto& terms = field(loss, "terms", "loss");
  TORCH_CHECK(terms.is_array() && !terms.empty(), "trainer config: loss.terms must be a non-empty array");
  c.loss.terms.clear();
  for (auto& t : terms) c.loss.terms.push_back({string(t, "type", "loss.terms[]"), number(t, "weight", "loss.terms[]")});
  c.loss.beta = number(loss, "beta", "loss");
  c.loss.label_smoothing = number(loss, "labelSmoothing", "loss");
  auto& rf = field(loss, "referenceFree", "loss");
  TORCH_CHECK(rf.is_boolean(), "trainer config: Expected a boolean for loss.referenceFree");
  c.loss.reference_free = rf.get<bool>();
  if (loss.contains("discopopTau")) c.loss.discopop_tau = number(loss, "discopopTau", "loss");
  if (loss.contains("simpoGamma")) c.loss.simpo_gamma = number(loss, "simpoGamma", "loss");
  check_dpo_config(c.loss);

  if (j.contains("kto")) {
    auto& k = j.at("kto");
    c.kto_enabled = true;
    c.kto.beta = number(k, "beta", "kto");
    c.kto.desirable_weight = number(k, "desirableWeight", "kto");
    c.kto.undesirable_weight = number(k, "undesirableWeight", "kto");
    auto& krf = field(k, "referenceFree", "kto");
    TORCH_CHECK(krf.is_boolean(), "trainer config: Expected a boolean for kto.referenceFree");
    c.kto.reference_free = krf.get<bool>();
    check_kto_config(c.kto);
  }

  auto& opt = field(j, "optimizer", "config");
  c.optimizer.type = string(opt, "type", "optimizer");
  c.optimizer.weight_decay = number(opt, "weightDecay", "optimizer");
  c.optimizer.beta1 = number(opt, "beta1", "optimizer");
  c.optimizer.beta2 = number(opt, "beta2", "optimizer");
  c.optimizer.eps = number(opt, "eps", "optimizer");
  c.optimizer.momentum = number(opt, "momentum", "optimizer");
  if (opt.contains("fused")) {
    TORCH_CHECK(opt.at("fused").is_boolean(), "trainer config: Expected a boolean for optimizer.fused but received ",
                opt.at("fused").dump());
    c.optimizer.fused = opt.at("fused").get<bool>();
  }
  TORCH_CHECK(c.optimizer.type == "adamw" || c.optimizer.type == "sgd",
              "trainer config: Expected 'adamw' or 'sgd' for optimizer.type but received '", c.optimizer.type, "'");
  c.fused.chunk_rows = static_cast<int64_t>(number(j, "chunkRows", "config"));
  TORCH_CHECK(c.fused.chunk_rows >= 1, "trainer config: chunkRows must be >= 1, got ", c.fused.chunk_rows);
  if (j.contains("reward")) {
    auto& rw = j.at("reward");
    TORCH_CHECK(rw.is_object(), "trainer config: Expected an object for config.reward but received ", rw.dump());
    c.reward = true;
    const double coef = number(rw, "centerRewardsCoefficient", "reward");
    TORCH_CHECK(coef >= 0, "trainer config: Expected a number >= 0 for reward.centerRewardsCoefficient but received ",
                coef);
    c.reward_options.center_rewards_coefficient = coef;
    if (rw.contains("margin")) c.reward_options.margin = number(rw, "margin", "reward");
    TORCH_CHECK(std::isfinite(c.reward_options.margin), "trainer config: Expected a finite number for reward.margin");
  }
  if (j.contains("paddingFree")) {
    auto& pf = j.at("paddingFree");
    TORCH_CHECK(pf.is_boolean(), "trainer config: Expected a boolean for config.paddingFree but received ", pf.dump());
    c.padding_free = pf.get<bool>();
  }
  if (j.contains("activationCheckpointing")) {
    auto& ac = j.at("activationCheckpointing");
    TORCH_CHECK(ac.is_boolean(), "trainer config: Expected a boolean for config.activationCheckpointing but received ", ac.dump());
    c.activation_checkpointing = ac.get<bool>();
  }
  return c;
}

}  // namespace tdpo
