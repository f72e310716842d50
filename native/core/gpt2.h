// GPT-2 (model_type gpt2): learned positions, pre-LayerNorm blocks, fused q/k/v projection, gelu_new MLP.
#pragma once
#include <string>
#include <vector>

#include "causal_lm_base.h"

namespace tdpo {

class GPT2Model : public CausalLMBase {
 public:
  // Throws for an unsupported activation_function or scale_attn_by_inverse_layer_idx = true.
  explicit GPT2Model(const ModelConfig& cfg);
  at::Tensor hidden_states(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                           KVCache* cache = nullptr) override;
  at::Tensor lm_head_weight() const override { return cfg_.tie_word_embeddings ? *wte_ : *head_; }

 private:
  struct Layer {
    at::Tensor *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;  // attn_w (3H, H): rows q | k | v
    at::Tensor *ln2_w, *ln2_b, *fc_w, *fc_b, *mlp_proj_w, *mlp_proj_b;
  };
  at::Tensor *wte_, *wpe_, *lnf_w_, *lnf_b_, *head_;
  std::vector<Layer> layers_;
  std::string gelu_approx_;  // "tanh" (gelu_new) or "none" (exact gelu)
  double scale_ = 1.0;
};

}  // namespace tdpo
