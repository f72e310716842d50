// The llama family (model_type llama, mistral, qwen2): RMSNorm, RoPE, grouped-query attention, SwiGLU MLP.
#pragma once
#include <vector>

#include "causal_lm_base.h"

namespace tdpo {

class LlamaModel : public CausalLMBase {
 public:
  // Parameters are allocated uninitialised (float32, CPU); load_weights or init_random fills them.
  // Throws for an unsupported hidden_act or rope_scaling type.
  explicit LlamaModel(const ModelConfig& cfg);
  at::Tensor hidden_states(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           KVCache* cache = nullptr) override;
  at::Tensor lm_head_weight() const override { return cfg_.tie_word_embeddings ? *embed_ : *head_; }

 private:
  struct Layer {
    at::Tensor *in_norm, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    at::Tensor *post_norm, *gate_w, *gate_b, *up_w, *up_b, *down_w, *down_b;
    bool windowed;  // sliding-window attention in this layer
  };
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor *embed_, *norm_, *head_;
  std::vector<Layer> layers_;
  at::Tensor inv_freq_;  // (D/2) float64
};

}  // namespace tdpo
