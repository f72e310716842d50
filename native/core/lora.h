// LoRA: low-rank adapters on chosen linear layers of a CausalLM (base weights frozen), switchable off for the DPO
// reference forward, saved / loaded in the PEFT layout (adapter_config.json + adapter_model.safetensors), and merged
// into the base weights on request.
//
// For a targeted weight W (out, in) in the model's internal layout (for GPT-2 Conv1D that is the transpose of the
// file layout) the layer computes  y = x W^T + b + s · dropout(x) A^T B^T,  s = alpha / r,  A (r, in), B (out, r).
// A starts like PEFT (kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), B at zero, so a fresh adapter
// leaves the model unchanged. Dropout is active only while autograd is recording (training), never in no-grad
// forwards (evaluation, reference, generation).
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "causal_lm.h"

namespace tdpo {

struct LoraConfig {
  int64_t r = 8;                            // rank of the update B·A; default 8 (PEFT)
  double alpha = 8;                         // lora_alpha: the update is scaled by alpha / r; default 8 (PEFT)
  double dropout = 0;                       // lora_dropout on the adapter input while training, in [0, 1); default 0
  std::vector<std::string> target_modules;  // last module names ("q_proj") or full module names; required
  std::string target_regex;                 // PEFT's string form of target_modules: full-match regex; default none
  bool fan_in_fan_out = false;              // PEFT flag for Conv1D bases (GPT-2); set by attach_lora; default false
  double scale() const { return alpha / static_cast<double>(r); }
  void check() const;  // throws naming the field for r < 1, alpha <= 0, dropout outside [0, 1), no targets
};

// One adapter. `base` is the model's weight slot (stable for the model's lifetime).
struct LoraAdapter {
  std::string module;                // HF module name, e.g. "model.layers.0.self_attn.q_proj"
  const at::Tensor* base = nullptr;  // (out, in) model-layout weight
  at::Tensor A;                      // (r, in), requires_grad
  at::Tensor B;                      // (out, r), requires_grad
};

class LoraAdapters {
 public:
  LoraAdapters(LoraConfig cfg, std::vector<LoraAdapter> adapters);
  const LoraConfig& config() const { return cfg_; }
  const std::vector<LoraAdapter>& adapters() const { return adapters_; }
  const LoraAdapter* find(const at::Tensor* base) const;  // nullptr when `base` has no adapter

  // Off: every layer computes the base model (the DPO reference). The model's owner serialises work on the model
  // (NativeModel's mutex), so use AdaptersDisabled inside that lock rather than calling this across calls.
  bool enabled() const { return enabled_; }
  void set_enabled(bool on) { enabled_ = on; }

  // x (..., in) -> (..., out): x W^T + b, plus the scaled low-rank path when enabled and `w` has an adapter.
  at::Tensor linear(const at::Tensor& x, const at::Tensor* w, const at::Tensor* b) const;

  // The adapter tensors under PEFT names ("base_model.model.<module>.lora_A.weight" then lora_B), module order.
  std::vector<std::pair<std::string, at::Tensor>> named_parameters() const;
  int64_t num_parameters() const;
  void to(c10::Device device, c10::ScalarType dtype);  // keeps requires_grad

 private:
  LoraConfig cfg_;
  std::vector<LoraAdapter> adapters_;
  std::unordered_map<const at::Tensor*, size_t> by_base_;
  bool enabled_ = true;
};

// Turns the model's adapters off for a scope (no-op without adapters); restores the previous state on exit.
class AdaptersDisabled {
 public:
  explicit AdaptersDisabled(const CausalLM& model);
  ~AdaptersDisabled();
  AdaptersDisabled(const AdaptersDisabled&) = delete;
  AdaptersDisabled& operator=(const AdaptersDisabled&) = delete;

 private:
  std::shared_ptr<LoraAdapters> lora_;
  bool was_ = false;
};

// PEFT names of a module's adapter tensors.
std::string lora_a_key(const std::string& module);
std::string lora_b_key(const std::string& module);

// The model's linear modules matched by cfg (a target matches a module whose name equals it or ends in "." + it;
// target_regex must match the whole name). Throws, listing the model's linear module names, when a target matches
// nothing.
std::vector<std::string> match_lora_targets(const CausalLM& model, const LoraConfig& cfg);

// Attaches fresh adapters (A kaiming-uniform from a CPU generator seeded with `seed`, drawn in float64; B zeros) in
// the model's dtype and device, freezes the base weights (requires_grad false) and returns the adapters. Throws if
// adapters are already attached.
std::shared_ptr<LoraAdapters> attach_lora(CausalLM& model, LoraConfig cfg, uint64_t seed);

// adapter_config.json <-> LoraConfig. Parse errors name `where` and the field; peft_type must be "LORA", bias
// "none", and use_dora / use_rslora false.
LoraConfig lora_config_from_json(const nlohmann::json& j, const std::string& where);
nlohmann::json lora_config_to_json(const LoraConfig& cfg, const std::string& base_model);

// Writes dir/adapter_config.json and dir/adapter_model.safetensors (float32 unless `dtype` names another).
void save_lora_adapter(const CausalLM& model, const std::string& dir, const std::string& base_model = "",
                       const std::string& dtype = "float32");

// Reads a PEFT adapter folder and attaches it (base weights frozen). Errors name the file and the key: a missing
// or unknown key, a shape mismatch, a target the model lacks.
std::shared_ptr<LoraAdapters> load_lora_adapter(CausalLM& model, const std::string& dir);

// W += (alpha / r) · B·A for every adapter (in the model layout: for GPT-2 that is the transpose of the file's
// fan_in_fan_out weight, so the same formula), then removes the adapters; base weights get requires_grad again.
void merge_lora(CausalLM& model);

}  // namespace tdpo
