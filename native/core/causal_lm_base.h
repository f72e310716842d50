// CausalLMBase: the parameter bookkeeping shared by the architectures (named tensors in weight-map order).
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "causal_lm.h"
#include "weight_map.h"

namespace tdpo {

class CausalLMBase : public CausalLM {
 public:
  const ModelConfig& config() const override { return cfg_; }
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const override;
  void set_parameter(const std::string& name, const at::Tensor& value) override;
  void to(c10::Device device, c10::ScalarType dtype) override;
  // LoRA hooks (defined in lora.cpp).
  std::vector<std::pair<std::string, at::Tensor>> trainable_parameters() const override;
  std::shared_ptr<LoraAdapters> lora() const override { return lora_; }
  void set_lora(std::shared_ptr<LoraAdapters> adapters) override;
  std::vector<std::string> linear_modules() const override { return linear_modules_; }
  void set_activation_checkpointing(bool on) override { checkpoint_blocks_ = on; }
  bool activation_checkpointing() const override { return checkpoint_blocks_; }
  // The stable slot of parameter `name` (what linear() receives), nullptr when absent; for lora.cpp.
  const at::Tensor* parameter_slot(const std::string& name);

  // Fills every parameter: ones for norm weights, zeros for biases, normal(0, 0.02) otherwise (float64 draws from
  // a CPU generator seeded with `seed`, so the values do not depend on device or dtype).
  void init_random(uint64_t seed);

 protected:
  // Allocates every parameter of weight_map(cfg) (model layout, float32 CPU, uninitialised, requires_grad).
  explicit CausalLMBase(ModelConfig cfg);
  // The tensor slot of parameter `name` (stable address); nullptr when the config has no such parameter.
  at::Tensor* slot(const std::string& name);
  // The (B, T) ids on the model device, the (B, S) mask of cache + new positions and the (B, T) position ids of
  // the new tokens. With a cache, its mask is extended here (a cache is invalid after a failed forward).
  struct StepInputs {
    at::Tensor ids, full_mask, positions;
  };
  StepInputs prepare_step(const at::Tensor& input_ids, const at::Tensor& attention_mask, KVCache* cache) const;
  // Appends this step's (B, Hkv, T, D) keys/values of `layer` to the cache and replaces k, v by all of them.
  static void cache_append(KVCache* cache, size_t layer, at::Tensor& k, at::Tensor& v);
  static at::Tensor opt(const at::Tensor* p) { return p ? *p : at::Tensor(); }
  // slot() of a linear layer's weight "<module>.weight", recording <module> as a LoRA target candidate.
  at::Tensor* linear_slot(const std::string& name);
  // x (..., in) -> (..., out) = x W^T + b through the weight slot `w` (bias slot `b` may be null), plus the LoRA
  // path of `w` when adapters are attached and enabled (lora.cpp).
  at::Tensor linear(const at::Tensor& x, const at::Tensor* w, const at::Tensor* b) const;
  // block(x), checkpointed (activation_checkpoint.h) when activation checkpointing is on, autograd is recording and
  // there is no cache; else called directly. `block` must not capture anything that dies before the backward.
  at::Tensor run_block(std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& x, const KVCache* cache) const;

  ModelConfig cfg_;

 private:
  std::vector<std::string> order_;
  std::map<std::string, at::Tensor> params_;
  std::vector<std::string> linear_modules_;  // LoRA-targetable modules, forward order
  std::shared_ptr<LoraAdapters> lora_;       // null: no adapters
  bool checkpoint_blocks_ = false;           // set_activation_checkpointing()
};

}  // namespace tdpo
