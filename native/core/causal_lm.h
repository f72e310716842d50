// Hugging Face causal language models in plain libtorch: the architecture-independent interface, the KV cache, and
// load / save / random-init entry points. Architectures: llama, mistral, qwen2 (llama.h) and gpt2 (gpt2.h).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model_config.h"

namespace tdpo {

// Per-layer keys/values of every position seen so far, and the attention mask of those positions.
// k[i], v[i]: (B, Hkv, S, D) for layer i (keys after RoPE for the llama family). mask: (B, S) int64, 1 = token.
// A default-constructed cache is empty; the model fills it on the first hidden_states() call that receives it.
struct KVCache {
  std::vector<at::Tensor> k, v;
  at::Tensor mask;  // (B, S) int64
  int64_t length() const { return mask.defined() ? mask.size(1) : 0; }
  bool empty() const { return length() == 0; }
  void clear() { k.clear(); v.clear(); mask = at::Tensor(); }
};

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  virtual const ModelConfig& config() const = 0;

  // input_ids (B, T) int64, attention_mask (B, T) int64/bool, 1 = token, 0 = pad (right padding for training, left
  // padding allowed for generation). Position ids are cumsum(mask) - 1 over cache + new positions, pads clamped to 0.
  // With a cache, the new keys/values are appended to it and the new tokens attend to all cached positions.
  // Returns the final normed hidden states (B, T, H) in the model dtype (not logits).
  virtual at::Tensor hidden_states(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                   KVCache* cache = nullptr) = 0;
  virtual at::Tensor lm_head_weight() const = 0;  // (V, H): the input embedding when tied
  virtual c10::optional<at::Tensor> lm_head_bias() const { return c10::nullopt; }

  // (B, T, V) logits in the model dtype; holds all of them at once, so only for small uses (tests, generation steps).
  at::Tensor logits(const at::Tensor& input_ids, const at::Tensor& attention_mask, KVCache* cache = nullptr);

  // Trainable tensors under their Hugging Face names, in a fixed order; a tied head is counted once (as the
  // embedding). The tensors are the model's own (same storage): in-place updates change the model. Layouts are the
  // model's internal ones (for GPT-2 Conv1D weights that is (out, in), the transpose of the file layout).
  virtual std::vector<std::pair<std::string, at::Tensor>> named_parameters() const = 0;

  // Replaces parameter `name` (a name from named_parameters()) by `value`; shapes must match. Used by loading.
  virtual void set_parameter(const std::string& name, const at::Tensor& value) = 0;

  // Casts and moves every parameter; requires_grad is kept.
  virtual void to(c10::Device device, c10::ScalarType dtype) = 0;

  c10::Device device() const;
  c10::ScalarType dtype() const;
  int64_t num_parameters() const;
  // Sets requires_grad on every parameter (true after load/make; a frozen reference model sets false).
  void set_requires_grad(bool on);
};

// Loads config.json and the safetensors weights of `dir` (sharded or not). Parameters are cast to `dtype` on
// `device`. Zero-copy: when the file dtype equals `dtype` and device is CPU the parameters view the read-only mmap
// of the checkpoint files, which CheckpointReader maps MAP_PRIVATE (in-place optimizer updates copy the touched
// pages, the files are never written). All parameters have requires_grad = true.
// Errors name the directory and the key: missing key, unknown key, shape mismatch, unsupported model_type.
std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, c10::Device device, c10::ScalarType dtype);

// Writes `dir`/config.json and the weights under HF names and layouts, as config().torch_dtype
// ("float32" | "bfloat16" | "float16") unless `dtype` names another one; shards above max_shard_bytes.
void save_causal_lm(const CausalLM& model, const std::string& dir, int64_t max_shard_bytes = 5LL << 30,
                    const std::string& dtype = "");

// A randomly initialised model (normal(0, 0.02) matrices, unit norm weights, zero biases), deterministic in `seed`.
std::shared_ptr<CausalLM> make_causal_lm(const ModelConfig& cfg, c10::Device device, c10::ScalarType dtype,
                                         uint64_t seed);

// Position ids from a (B, S) 0/1 mask: cumsum - 1, pads clamped to 0 -> (B, S) int64.
at::Tensor positions_from_mask(const at::Tensor& mask);

// Checks (B, T) ids / mask arguments and returns the mask as int64 on the ids' device (ones when undefined).
at::Tensor checked_mask(const at::Tensor& input_ids, const at::Tensor& attention_mask, int64_t vocab_size);

}  // namespace tdpo
