#include "gpt2.h"

#include <cmath>

#include "attention.h"

namespace tdpo {

GPT2Model::GPT2Model(const ModelConfig& cfg) : CausalLMBase(cfg) {
  const auto& act = cfg_.hidden_act;
  if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast")
    gelu_approx_ = "tanh";
  else if (act == "gelu")
    gelu_approx_ = "none";
  else
    TORCH_CHECK(false, "gpt2 supports activation_function gelu_new, gelu_pytorch_tanh, gelu_fast or gelu, got '", act,
                "'");
  TORCH_CHECK(cfg_.norm_eps > 0, "layer_norm_epsilon must be > 0, got ", cfg_.norm_eps);
  bool scale_weights = true;
  if (cfg_.raw.is_object()) {
    TORCH_CHECK(!cfg_.raw.value("scale_attn_by_inverse_layer_idx", false),
                "gpt2 with scale_attn_by_inverse_layer_idx = true is not supported");
    scale_weights = cfg_.raw.value("scale_attn_weights", true);
  }
  scale_ = scale_weights ? 1.0 / std::sqrt(static_cast<double>(cfg_.head_dim)) : 1.0;
  wte_ = slot("transformer.wte.weight");
  wpe_ = slot("transformer.wpe.weight");
  lnf_w_ = slot("transformer.ln_f.weight");
  lnf_b_ = slot("transformer.ln_f.bias");
  head_ = slot("lm_head.weight");  // nullptr when tied
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    layers_.push_back({slot(p + "ln_1.weight"), slot(p + "ln_1.bias"), linear_slot(p + "attn.c_attn.weight"),
                       slot(p + "attn.c_attn.bias"), linear_slot(p + "attn.c_proj.weight"),
                       slot(p + "attn.c_proj.bias"), slot(p + "ln_2.weight"), slot(p + "ln_2.bias"),
                       linear_slot(p + "mlp.c_fc.weight"), slot(p + "mlp.c_fc.bias"),
                       linear_slot(p + "mlp.c_proj.weight"), slot(p + "mlp.c_proj.bias")});
  }
}

at::Tensor GPT2Model::hidden_states(const at::Tensor& input_ids, const at::Tensor& attention_mask, KVCache* cache) {
  auto in = prepare_step(input_ids, attention_mask, cache);
  const int64_t B = in.ids.size(0), T = in.ids.size(1);
  const int64_t H = cfg_.hidden_size, N = cfg_.num_attention_heads, D = cfg_.head_dim;
  const int64_t P = wpe_->size(0);
  const int64_t max_pos = in.positions.max().item<int64_t>();
  TORCH_CHECK(max_pos < P, "gpt2 supports ", P, " positions (n_positions), the input reaches position ", max_pos);
  auto x = at::embedding(*wte_, in.ids) + at::embedding(*wpe_, in.positions);  // (B, T, H)
  // Right-padded batches without a cache (training, scoring): unmasked causal SDPA where libtorch has it.
  const bool causal = causal_sdpa_available() && cache == nullptr && right_padded_causal(in.full_mask);
  const at::Tensor allowed = causal ? at::Tensor() : attention_allowed(in.full_mask, T, 0);  // (B, 1, T, S)
  const double eps = cfg_.norm_eps;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto block = [this, i, B, T, H, N, D, causal, allowed, eps, cache](const at::Tensor& x) {
      const auto& l = layers_[i];
      auto h = at::layer_norm(x, {H}, *l.ln1_w, *l.ln1_b, eps);                 // (B, T, H)
      auto qkv = linear(h, l.attn_w, l.attn_b).split(H, -1);                    // 3 x (B, T, H)
      auto q = qkv[0].reshape({B, T, N, D}).transpose(1, 2);                    // (B, N, T, D)
      auto k = qkv[1].reshape({B, T, N, D}).transpose(1, 2);                    // (B, N, T, D)
      auto v = qkv[2].reshape({B, T, N, D}).transpose(1, 2);                    // (B, N, T, D)
      cache_append(cache, i, k, v);                                             // k, v: (B, N, S, D)
      auto a = causal ? attend_causal(q, k, v, scale_) : attend(q, k, v, allowed, scale_);  // (B, T, H)
      auto y = x + linear(a, l.proj_w, l.proj_b);                               // (B, T, H)
      h = at::layer_norm(y, {H}, *l.ln2_w, *l.ln2_b, eps);
      auto m = at::gelu(linear(h, l.fc_w, l.fc_b), gelu_approx_);               // (B, T, I)
      return y + linear(m, l.mlp_proj_w, l.mlp_proj_b);                         // (B, T, H)
    };
    x = run_block(block, x, cache);
  }
  return at::layer_norm(x, {H}, *lnf_w_, *lnf_b_, eps);                         // (B, T, H)
}

}  // namespace tdpo
