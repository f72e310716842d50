// Hugging Face config.json (transformers 4.x and 5.x layouts) for the supported decoder families:
// llama, mistral, qwen2 and gpt2.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tdpo {

struct RopeScaling {            // from "rope_scaling" (4.x) or "rope_parameters" (5.x)
  std::string type = "default"; // "default" | "linear" | "llama3"  (key "rope_type" or legacy "type")
  double factor = 1.0;          // linear/llama3 scaling factor
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3 only
  int64_t original_max_position_embeddings = 8192;       // llama3 only
};

struct ModelConfig {
  std::string model_type;              // "llama" | "mistral" | "qwen2" | "gpt2"
  int64_t vocab_size = 0;              // embedding rows
  int64_t hidden_size = 0;             // gpt2: n_embd
  int64_t intermediate_size = 0;       // gpt2: n_inner or 4*n_embd when null
  int64_t num_hidden_layers = 0;       // gpt2: n_layer
  int64_t num_attention_heads = 0;     // gpt2: n_head
  int64_t num_key_value_heads = 0;     // defaults to num_attention_heads; must divide it
  int64_t head_dim = 0;                // given, or hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0; // gpt2: n_positions
  double norm_eps = 1e-6;              // rms_norm_eps (llama family) or layer_norm_epsilon (gpt2)
  double rope_theta = 10000.0;         // top-level (4.x) or rope_parameters.rope_theta (5.x)
  RopeScaling rope_scaling;
  bool attention_bias = false;         // llama/mistral "attention_bias"; qwen2: true (q/k/v only, o_proj has none)
  bool mlp_bias = false;               // llama "mlp_bias"
  bool tie_word_embeddings = false;    // default true for gpt2, false for the llama family when absent
  int64_t sliding_window = 0;          // mistral/qwen2 (0 = none; qwen2 only when use_sliding_window is true)
  std::string hidden_act = "silu";     // gpt2: activation_function (gelu_new / gelu_pytorch_tanh / gelu)
  std::string torch_dtype = "float32"; // "torch_dtype" (4.x) or "dtype" (5.x)
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be an int or a list
  int64_t bos_token_id = -1, pad_token_id = -1;  // -1: absent / null
  // Output head: "lm" (…ForCausalLM: lm_head / tied embedding) or "score" (…ForSequenceClassification: a bias-free
  // linear score.weight (num_labels, H) read at the last non-pad token). From "architectures"; num_labels from
  // "id2label" (its size), else "num_labels", else 2 (transformers' default). Only num_labels == 1 is supported.
  std::string head = "lm";
  int64_t num_labels = 1;
  nlohmann::json raw;                  // the original JSON (kept so saving writes every field back)
};

// Validates and reads `j`; `source` (the file path) is named in every error together with the field and what was
// expected.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_model_config(const std::string& path);
// `raw` with the fields above written back under the names its layout uses (gpt2 names for gpt2; 5.x
// "dtype"/"rope_parameters" when raw uses them, else 4.x "torch_dtype"/"rope_theta"/"rope_scaling"). Works with an
// empty raw too (a config built in code): then the 4.x layout is written.
nlohmann::json model_config_to_json(const ModelConfig& c);

// "LlamaForSequenceClassification" etc.: the transformers class of a score-head model of `model_type`.
std::string sequence_classification_architecture(const std::string& model_type);
// `c` turned into a score-head (reward) model with one label: head "score", num_labels 1.
ModelConfig with_score_head(ModelConfig c);

}  // namespace tdpo
