// The tiny model configuration of the native tests: 2 layers, hidden 16, 4 query heads over 2 KV heads (GQA; GPT-2:
// 4), small enough for float64 checks in milliseconds. Tests adjust fields (window, biases, tying) as they need.
#pragma once
#include <string>

#include "model_config.h"

inline tdpo::ModelConfig tiny_config(const std::string& type) {
  tdpo::ModelConfig c;
  c.model_type = type;
  c.vocab_size = 40;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = type == "gpt2" ? 4 : 2;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = type == "gpt2";
  c.hidden_act = type == "gpt2" ? "gelu_new" : "silu";
  c.eos_token_ids = {39};
  return c;
}
