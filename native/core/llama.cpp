#include "llama.h"

#include <cmath>
#include <memory>

#include "attention.h"
#include "rope.h"

namespace tdpo {

LlamaModel::LlamaModel(const ModelConfig& cfg) : CausalLMBase(cfg) {
  TORCH_CHECK(cfg_.hidden_act == "silu" || cfg_.hidden_act == "swish", "model_type '", cfg_.model_type,
              "' supports hidden_act 'silu', got '", cfg_.hidden_act, "'");
  TORCH_CHECK(cfg_.norm_eps > 0, "rms_norm_eps must be > 0, got ", cfg_.norm_eps);
  inv_freq_ = rope_inv_freq(cfg_);
  embed_ = slot("model.embed_tokens.weight");
  norm_ = slot("model.norm.weight");
  head_ = slot("lm_head.weight");  // nullptr when tied
  // qwen2 applies its sliding window only to layers >= max_window_layers; mistral to every layer.
  int64_t first_windowed = 0;
  if (cfg_.model_type == "qwen2" && cfg_.raw.is_object() && cfg_.raw.contains("max_window_layers") &&
      cfg_.raw["max_window_layers"].is_number_integer())
    first_windowed = cfg_.raw["max_window_layers"].get<int64_t>();
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    Layer l;
    l.in_norm = slot(p + "input_layernorm.weight");
    l.q_w = linear_slot(p + "self_attn.q_proj.weight");
    l.q_b = slot(p + "self_attn.q_proj.bias");
    l.k_w = linear_slot(p + "self_attn.k_proj.weight");
    l.k_b = slot(p + "self_attn.k_proj.bias");
    l.v_w = linear_slot(p + "self_attn.v_proj.weight");
    l.v_b = slot(p + "self_attn.v_proj.bias");
    l.o_w = linear_slot(p + "self_attn.o_proj.weight");
    l.o_b = slot(p + "self_attn.o_proj.bias");
    l.post_norm = slot(p + "post_attention_layernorm.weight");
    l.gate_w = linear_slot(p + "mlp.gate_proj.weight");
    l.gate_b = slot(p + "mlp.gate_proj.bias");
    l.up_w = linear_slot(p + "mlp.up_proj.weight");
    l.up_b = slot(p + "mlp.up_proj.bias");
    l.down_w = linear_slot(p + "mlp.down_proj.weight");
    l.down_b = slot(p + "mlp.down_proj.bias");
    l.windowed = cfg_.sliding_window > 0 && i >= first_windowed;
    layers_.push_back(l);
  }
}

at::Tensor LlamaModel::rms_norm(const at::Tensor& x, const at::Tensor& w) const {
  auto xf = x.scalar_type() == at::kDouble ? x : x.to(at::kFloat);             // (B, T, H) float32 or float64
  auto y = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + cfg_.norm_eps);  // (B, T, H)
  return w * y.to(x.scalar_type());
}

at::Tensor LlamaModel::hidden_states(const at::Tensor& input_ids, const at::Tensor& attention_mask, KVCache* cache) {
  auto in = prepare_step(input_ids, attention_mask, cache);
  const int64_t B = in.ids.size(0), T = in.ids.size(1);
  const int64_t Hq = cfg_.num_attention_heads, Hkv = cfg_.num_key_value_heads, D = cfg_.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto x = at::embedding(*embed_, in.ids);                                      // (B, T, H)
  auto [cos, sin] = rope_cos_sin(inv_freq_, in.positions, x.scalar_type());    // (B, 1, T, D) each
  // Right-padded batches without a cache (training, scoring): unmasked causal SDPA where libtorch has it.
  const bool causal = causal_sdpa_available() && cache == nullptr && right_padded_causal(in.full_mask);
  // Masks built on first use and shared with a checkpointed block's recomputation (which runs after this returns).
  struct Masks {
    at::Tensor full, window;  // (B, 1, T, S)
  };
  auto masks = std::make_shared<Masks>();
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto block = [this, i, B, T, Hq, Hkv, D, scale, cos = cos, sin = sin, causal, masks, full_mask = in.full_mask,
                  cache](const at::Tensor& x) {
      const auto& l = layers_[i];
      auto h = rms_norm(x, *l.in_norm);                                         // (B, T, H)
      auto q = linear(h, l.q_w, l.q_b).view({B, T, Hq, D}).transpose(1, 2);     // (B, Hq, T, D)
      auto k = linear(h, l.k_w, l.k_b).view({B, T, Hkv, D}).transpose(1, 2);    // (B, Hkv, T, D)
      auto v = linear(h, l.v_w, l.v_b).view({B, T, Hkv, D}).transpose(1, 2);    // (B, Hkv, T, D)
      q = apply_rope(q, cos, sin);
      k = apply_rope(k, cos, sin);
      cache_append(cache, i, k, v);                                             // k, v: (B, Hkv, S, D)
      const bool windowed = l.windowed && cfg_.sliding_window < k.size(2);     // a window >= S changes nothing
      at::Tensor a;                                                             // (B, T, Hq*D)
      if (causal && !windowed) {
        a = attend_causal(q, k, v, scale);
      } else {
        auto& allowed = windowed ? masks->window : masks->full;
        if (!allowed.defined()) allowed = attention_allowed(full_mask, T, windowed ? cfg_.sliding_window : 0);
        a = attend(q, k, v, allowed, scale);
      }
      auto y = x + linear(a, l.o_w, l.o_b);                                     // (B, T, H)
      h = rms_norm(y, *l.post_norm);
      auto g = at::silu(linear(h, l.gate_w, l.gate_b));                         // (B, T, I)
      auto u = linear(h, l.up_w, l.up_b);                                       // (B, T, I)
      return y + linear(g * u, l.down_w, l.down_b);                             // (B, T, H)
    };
    x = run_block(block, x, cache);
  }
  return rms_norm(x, *norm_);                                                   // (B, T, H)
}

}  // namespace tdpo
