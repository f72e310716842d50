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
class LoraAdapters;  // lora.h

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
  // Without a cache the mask may also hold segment ids (packed sequences, see packing.h): 0 = pad, k >= 1 = the
  // k-th sequence of the row; positions restart at 0 in every segment and a token attends only to earlier tokens
  // of its own segment (a 0/1 mask is the one-segment case). A segment mask with a cache is an error.
  // Returns the final normed hidden states (B, T, H) in the model dtype (not logits).
  virtual at::Tensor hidden_states(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                   KVCache* cache = nullptr) = 0;
  // (V, H): the input embedding when tied. Not for score-head models (call require_lm_head() first).
  virtual at::Tensor lm_head_weight() const = 0;
  virtual c10::optional<at::Tensor> lm_head_bias() const { return c10::nullopt; }

  // (B, T, V) logits in the model dtype; holds all of them at once, so only for small uses (tests, generation steps).
  at::Tensor logits(const at::Tensor& input_ids, const at::Tensor& attention_mask, KVCache* cache = nullptr);

  // Trainable tensors under their Hugging Face names, in a fixed order; a tied head is counted once (as the
  // embedding). The tensors are the model's own (same storage): in-place updates change the model. Layouts are the
  // model's internal ones (for GPT-2 Conv1D weights that is (out, in), the transpose of the file layout).
  virtual std::vector<std::pair<std::string, at::Tensor>> named_parameters() const = 0;

  // The tensors an optimizer trains, by name: named_parameters(), or only the LoRA adapter tensors (PEFT names)
  // while adapters are attached (lora.h).
  virtual std::vector<std::pair<std::string, at::Tensor>> trainable_parameters() const { return named_parameters(); }
  // LoRA (lora.h): the attached adapters or null; set_lora installs / removes them; linear_modules() lists the HF
  // module names whose weights can carry an adapter (empty: none).
  virtual std::shared_ptr<LoraAdapters> lora() const { return nullptr; }
  virtual void set_lora(std::shared_ptr<LoraAdapters> adapters);
  virtual std::vector<std::string> linear_modules() const { return {}; }
  // Activation checkpointing (activation_checkpoint.h): while on, each transformer block that runs with autograd
  // recording and without a KV cache keeps only its input for the backward, which recomputes the block (less memory,
  // one more forward of the blocks). Same values and gradients. Default off.
  virtual void set_activation_checkpointing(bool on) = 0;
  virtual bool activation_checkpointing() const = 0;

  // Replaces parameter `name` (a name from named_parameters()) by `value`; shapes must match. Used by loading.
  virtual void set_parameter(const std::string& name, const at::Tensor& value) = 0;

  // Casts and moves every parameter; requires_grad is kept.
  virtual void to(c10::Device device, c10::ScalarType dtype) = 0;

  // Score-head (…ForSequenceClassification) models: config().head == "score"; score_weight() is (1, H), no bias.
  bool has_score_head() const { return config().head == "score"; }
  c10::optional<at::Tensor> score_weight() const;

  c10::Device device() const;  // of the first parameter (the embedding)
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
// head: "" loads the head config.json describes; "score" gives a score-head (reward) model: a …ForSequenceClassification
// checkpoint loads as is, a causal LM's lm_head is dropped and score.weight drawn from normal(0, initializer_range of
// config.json, else 0.02) with a CPU generator seeded with `seed`.
struct HeadOptions {
  std::string head;   // "" | "score"
  uint64_t seed = 0;  // for a new score head
};
std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, c10::Device device, c10::ScalarType dtype,
                                         const HeadOptions& head = {});

// Throws, naming `what`, when `model` has a score head (no language-model head: no log-probs or generation).
void require_lm_head(const CausalLM& model, const char* what);

// Writes `dir`/config.json and the weights under HF names and layouts, as config().torch_dtype
// ("float32" | "bfloat16" | "float16") unless `dtype` names another one; shards above max_shard_bytes.
void save_causal_lm(const CausalLM& model, const std::string& dir, int64_t max_shard_bytes = 5LL << 30,
                    const std::string& dtype = "");

// A randomly initialised model (normal(0, 0.02) matrices, unit norm weights, zero biases), deterministic in `seed`.
std::shared_ptr<CausalLM> make_causal_lm(const ModelConfig& cfg, c10::Device device, c10::ScalarType dtype,
                                         uint64_t seed);

// Position ids from a (B, S) mask -> (B, S) int64. 0/1 mask: cumsum - 1, pads clamped to 0. Segment mask (0 = pad,
// k >= 1 = segment k): the number of earlier tokens of the same segment (restarts at 0 per segment), pads 0.
at::Tensor positions_from_mask(const at::Tensor& mask);

// Checks (B, T) ids / mask arguments and returns the mask as int64 on the ids' device (ones when undefined).
// The mask must hold 0/1, or with allow_segments any value >= 0 (segment ids of packed sequences).
at::Tensor checked_mask(const at::Tensor& input_ids, const at::Tensor& attention_mask, int64_t vocab_size,
                        bool allow_segments = false);

}  // namespace tdpo
