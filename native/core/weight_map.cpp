#include "weight_map.h"

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "checkpoint_files.h"

namespace tdpo {

namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

std::string layer_key(const std::string& pattern, int64_t i) {
  auto pos = pattern.find("{i}");
  if (pos == std::string::npos) return pattern;
  return pattern.substr(0, pos) + std::to_string(i) + pattern.substr(pos + 3);
}

void check_dims(const ModelConfig& cfg) {
  TORCH_CHECK(cfg.vocab_size > 0 && cfg.hidden_size > 0 && cfg.num_hidden_layers > 0 && cfg.num_attention_heads > 0 &&
                  cfg.intermediate_size > 0 && cfg.head_dim > 0,
              "model config of type '", cfg.model_type, "' needs positive vocab_size, hidden_size, intermediate_size, ",
              "num_hidden_layers, num_attention_heads and head_dim; got vocab_size=", cfg.vocab_size, " hidden_size=",
              cfg.hidden_size, " intermediate_size=", cfg.intermediate_size, " num_hidden_layers=",
              cfg.num_hidden_layers, " num_attention_heads=", cfg.num_attention_heads, " head_dim=", cfg.head_dim);
}

// The output head: lm_head.weight (V, H) unless tied (a saved copy of the tied embedding is then ignored), or for a
// …ForSequenceClassification model the bias-free score.weight (num_labels, H) and no lm_head at all.
void add_head(WeightMap& m, const ModelConfig& cfg) {
  if (cfg.head == "score") {
    TORCH_CHECK(cfg.num_labels == 1, "a score head needs num_labels 1, got ", cfg.num_labels);
    m.weights.push_back({"score.weight", {cfg.num_labels, cfg.hidden_size}});
    return;
  }
  TORCH_CHECK(cfg.head == "lm", "Expected head 'lm' or 'score' but received '", cfg.head, "'");
  if (!cfg.tie_word_embeddings) m.weights.push_back({"lm_head.weight", {cfg.vocab_size, cfg.hidden_size}});
  if (cfg.tie_word_embeddings) m.ignored.push_back(R"(lm_head\.weight)");  // a saved copy of the tied embedding
}

// llama / mistral / qwen2: one table; biases follow attention_bias (q, k, v, o), qwen2 (q, k, v) and mlp_bias.
WeightMap llama_family_map(const ModelConfig& cfg) {
  check_dims(cfg);
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size, I = cfg.intermediate_size, D = cfg.head_dim;
  const int64_t Hq = cfg.num_attention_heads, Hkv = cfg.num_key_value_heads;
  TORCH_CHECK(Hkv > 0 && Hq % Hkv == 0, "num_attention_heads (", Hq, ") must be a positive multiple of ",
              "num_key_value_heads (", Hkv, ")");
  // qwen2 always has q/k/v biases and never an o_proj bias, whatever attention_bias says.
  const bool qwen2 = cfg.model_type == "qwen2";
  const bool qkv_bias = cfg.attention_bias || qwen2;
  const bool o_bias = cfg.attention_bias && !qwen2;
  const bool mlp_bias = cfg.mlp_bias;
  struct Row { const char* key; std::vector<int64_t> shape; bool present; };
  const std::vector<Row> per_layer = {
      {"model.layers.{i}.input_layernorm.weight", {H}, true},
      {"model.layers.{i}.self_attn.q_proj.weight", {Hq * D, H}, true},
      {"model.layers.{i}.self_attn.q_proj.bias", {Hq * D}, qkv_bias},
      {"model.layers.{i}.self_attn.k_proj.weight", {Hkv * D, H}, true},
      {"model.layers.{i}.self_attn.k_proj.bias", {Hkv * D}, qkv_bias},
      {"model.layers.{i}.self_attn.v_proj.weight", {Hkv * D, H}, true},
      {"model.layers.{i}.self_attn.v_proj.bias", {Hkv * D}, qkv_bias},
      {"model.layers.{i}.self_attn.o_proj.weight", {H, Hq * D}, true},
      {"model.layers.{i}.self_attn.o_proj.bias", {H}, o_bias},
      {"model.layers.{i}.post_attention_layernorm.weight", {H}, true},
      {"model.layers.{i}.mlp.gate_proj.weight", {I, H}, true},
      {"model.layers.{i}.mlp.gate_proj.bias", {I}, mlp_bias},
      {"model.layers.{i}.mlp.up_proj.weight", {I, H}, true},
      {"model.layers.{i}.mlp.up_proj.bias", {I}, mlp_bias},
      {"model.layers.{i}.mlp.down_proj.weight", {H, I}, true},
      {"model.layers.{i}.mlp.down_proj.bias", {H}, mlp_bias},
  };
  WeightMap m;
  m.weights.push_back({"model.embed_tokens.weight", {V, H}});
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& r : per_layer)
      if (r.present) m.weights.push_back({layer_key(r.key, i), r.shape});
  m.weights.push_back({"model.norm.weight", {H}});
  m.ignored = {R"(model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq)", R"(model\.rotary_emb\.inv_freq)"};
  add_head(m, cfg);
  return m;
}

// gpt2: Conv1D weights are (in, out) in the file; the attention's q, k, v projections are fused in c_attn.
WeightMap gpt2_map(const ModelConfig& cfg) {
  check_dims(cfg);
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size, I = cfg.intermediate_size;
  const int64_t P = cfg.max_position_embeddings;
  TORCH_CHECK(P > 0, "gpt2 needs max_position_embeddings (n_positions) > 0, got ", P);
  TORCH_CHECK(cfg.num_attention_heads * cfg.head_dim == H, "gpt2 needs n_head * head_dim == n_embd, got ",
              cfg.num_attention_heads, " * ", cfg.head_dim, " != ", H);
  const auto T = WeightLayout::kTranspose, S = WeightLayout::kSame;
  struct Row { const char* key; std::vector<int64_t> shape; WeightLayout layout; };
  const std::vector<Row> per_layer = {
      {"transformer.h.{i}.ln_1.weight", {H}, S},
      {"transformer.h.{i}.ln_1.bias", {H}, S},
      {"transformer.h.{i}.attn.c_attn.weight", {H, 3 * H}, T},
      {"transformer.h.{i}.attn.c_attn.bias", {3 * H}, S},
      {"transformer.h.{i}.attn.c_proj.weight", {H, H}, T},
      {"transformer.h.{i}.attn.c_proj.bias", {H}, S},
      {"transformer.h.{i}.ln_2.weight", {H}, S},
      {"transformer.h.{i}.ln_2.bias", {H}, S},
      {"transformer.h.{i}.mlp.c_fc.weight", {H, I}, T},
      {"transformer.h.{i}.mlp.c_fc.bias", {I}, S},
      {"transformer.h.{i}.mlp.c_proj.weight", {I, H}, T},
      {"transformer.h.{i}.mlp.c_proj.bias", {H}, S},
  };
  WeightMap m;
  m.weights.push_back({"transformer.wte.weight", {V, H}});
  m.weights.push_back({"transformer.wpe.weight", {P, H}});
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& r : per_layer) m.weights.push_back({layer_key(r.key, i), r.shape, r.layout});
  m.weights.push_back({"transformer.ln_f.weight", {H}});
  m.weights.push_back({"transformer.ln_f.bias", {H}});
  // The causal-mask buffers of old GPT-2 checkpoints.
  m.ignored = {R"(transformer\.h\.\d+\.attn\.bias)", R"(transformer\.h\.\d+\.attn\.masked_bias)"};
  add_head(m, cfg);
  return m;
}

}  // namespace

std::vector<int64_t> WeightSpec::model_shape() const {
  if (layout == WeightLayout::kTranspose && file_shape.size() == 2) return {file_shape[1], file_shape[0]};
  return file_shape;
}

bool WeightMap::is_ignored(const std::string& key) const {
  for (const auto& re : ignored)
    if (std::regex_match(key, std::regex(re))) return true;
  return false;
}

const WeightSpec* WeightMap::find(const std::string& key) const {
  for (const auto& w : weights)
    if (w.key == key) return &w;
  return nullptr;
}

WeightMap weight_map(const ModelConfig& cfg) {
  if (cfg.model_type == "llama" || cfg.model_type == "mistral" || cfg.model_type == "qwen2")
    return llama_family_map(cfg);
  if (cfg.model_type == "gpt2") return gpt2_map(cfg);
  TORCH_CHECK(false, "unsupported model_type '", cfg.model_type, "' (supported: llama, mistral, qwen2, gpt2)");
}

at::Tensor to_model_layout(const WeightSpec& spec, const at::Tensor& t) {
  return spec.layout == WeightLayout::kTranspose ? t.t() : t;
}

at::Tensor to_file_layout(const WeightSpec& spec, const at::Tensor& t) {
  return spec.layout == WeightLayout::kTranspose ? t.t() : t;
}

void load_weights(CausalLM& model, const CheckpointReader& reader, const std::string& dir, c10::Device device,
                  c10::ScalarType dtype, bool causal_to_score) {
  TORCH_CHECK(!causal_to_score || model.config().head == "score",
              "converting a causal checkpoint to a score head needs a model with head 'score'");
  const auto& cfg = model.config();
  const auto map = weight_map(cfg);
  const bool gpt2 = cfg.model_type == "gpt2";
  // Canonical key -> file key (GPT-2 files saved from GPT2Model lack the "transformer." prefix).
  std::map<std::string, std::string> by_key;
  for (const auto& name : reader.names()) {
    std::string key = name;
    if (gpt2 && name.rfind("transformer.", 0) != 0 && name.rfind("lm_head.", 0) != 0 && name.rfind("score.", 0) != 0)
      key = "transformer." + name;
    if (causal_to_score && key == "lm_head.weight") continue;  // the causal LM's head, replaced by the score head
    TORCH_CHECK(!causal_to_score || key != "score.weight", "checkpoint ", dir, " already holds 'score.weight' but its ",
                "config.json describes a causal LM; fix \"architectures\" in ", dir, "/config.json");
    TORCH_CHECK(by_key.emplace(key, name).second, "checkpoint ", dir, " holds both '", by_key[key], "' and '", name,
                "' for parameter '", key, "'");
  }
  for (const auto& [key, name] : by_key)
    TORCH_CHECK(map.find(key) || map.is_ignored(key), "checkpoint ", dir, " has unknown key '", name,
                "' for model_type '", cfg.model_type, "'", cfg.tie_word_embeddings ? " (tied embeddings)" : "");
  for (const auto& spec : map.weights) {
    if (causal_to_score && spec.key == "score.weight") continue;  // initialised by the caller
    auto it = by_key.find(spec.key);
    TORCH_CHECK(it != by_key.end(), "checkpoint ", dir, " is missing key '", spec.key, "' (model_type '",
                cfg.model_type, "', ", cfg.num_hidden_layers, " layers", cfg.tie_word_embeddings ? ", tied" : "",
                ")");
    at::Tensor t = reader.tensor(it->second);
    TORCH_CHECK(t.sizes().vec() == spec.file_shape, "checkpoint ", dir, " key '", it->second, "' has shape ",
                shape_str(t.sizes()), " but the config expects ", shape_str(spec.file_shape));
    TORCH_CHECK(t.is_floating_point(), "checkpoint ", dir, " key '", it->second, "' has dtype ", t.scalar_type(),
                "; expected a floating point tensor");
    // to() returns the same tensor (a view of the mapping) when dtype and device already match: zero-copy.
    model.set_parameter(spec.key, to_model_layout(spec, t).to(device, dtype));
  }
}

std::vector<std::pair<std::string, at::Tensor>> export_weights(const CausalLM& model, c10::ScalarType dtype) {
  const auto map = weight_map(model.config());
  auto params = model.named_parameters();
  TORCH_CHECK(params.size() == map.weights.size(), "model has ", params.size(), " parameters but the weight map of '",
              model.config().model_type, "' lists ", map.weights.size());
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& spec = map.weights[i];
    TORCH_CHECK(params[i].first == spec.key, "parameter ", i, " is '", params[i].first, "' but the weight map lists '",
                spec.key, "'");
    auto t = to_file_layout(spec, params[i].second.detach()).to(at::kCPU, dtype).contiguous();
    TORCH_CHECK(t.sizes().vec() == spec.file_shape, "parameter '", spec.key, "' exports shape ", shape_str(t.sizes()),
                " but the file layout is ", shape_str(spec.file_shape));
    out.emplace_back(spec.key, t);
  }
  return out;
}

}  // namespace tdpo
