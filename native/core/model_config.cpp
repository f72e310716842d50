// config.json parsing and writing for llama / mistral / qwen2 / gpt2 (transformers 4.x and 5.x layouts).
#include "model_config.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <fstream>
#include <sstream>

namespace tdpo {

namespace {

using json = nlohmann::json;
constexpr int64_t kMaxSize = int64_t(1) << 31;  // sizes above 2^31 are treated as corrupt

struct Reader {
  const json& j;
  const std::string& source;

  // Present and not null.
  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }
  const json& at(const char* key) const { return j.at(key); }

  [[noreturn]] void bad(const std::string& field, const std::string& expected, const json& got) const {
    TORCH_CHECK(false, "Expected ", expected, " for \"", field, "\" but received ", got.dump(), " in ", source);
  }

  int64_t integer(const json& v, const std::string& field, int64_t lo, int64_t hi) const {
    if (!v.is_number_integer()) bad(field, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(hi) : v.get<int64_t>() > hi)
      bad(field, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
    int64_t x = v.get<int64_t>();
    if (x < lo) bad(field, "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
    return x;
  }
  // Required positive size (first of the given names that is present).
  int64_t size(std::initializer_list<const char*> keys) const {
    for (const char* k : keys)
      if (has(k)) return integer(at(k), k, 1, kMaxSize);
    std::string names;
    for (const char* k : keys) names += (names.empty() ? "\"" : " or \"") + std::string(k) + "\"";
    TORCH_CHECK(false, "Missing field ", names, " (a positive integer) in ", source);
  }
  int64_t opt_int(const char* key, int64_t def, int64_t lo, int64_t hi) const {
    return has(key) ? integer(at(key), key, lo, hi) : def;
  }
  double number(const std::string& field, const json& v, double lo) const {
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < lo)
      bad(field, "a finite number >= " + std::to_string(lo), v);
    return v.get<double>();
  }
  double opt_number(const char* key, double def, double lo) const { return has(key) ? number(key, at(key), lo) : def; }
  bool opt_bool(const char* key, bool def) const {
    if (!has(key)) return def;
    if (!at(key).is_boolean()) bad(key, "true or false", at(key));
    return at(key).get<bool>();
  }
  std::string opt_string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    if (!at(key).is_string()) bad(key, "a string", at(key));
    return at(key).get<std::string>();
  }
};

// rope_scaling (4.x) / rope_parameters (5.x) object -> RopeScaling.
RopeScaling parse_rope(const json& r, const std::string& field, const std::string& source, int64_t max_pos) {
  Reader rd{r, source};
  RopeScaling s;
  if (!r.is_object()) rd.bad(field, "an object or null", r);
  std::string type = "default";
  if (rd.has("rope_type")) type = rd.opt_string("rope_type", "default");
  else if (rd.has("type")) type = rd.opt_string("type", "default");
  if (type != "default" && type != "linear" && type != "llama3")
    rd.bad(field + ".rope_type", "\"default\" | \"linear\" | \"llama3\"", json(type));
  s.type = type;
  if (type == "default") return s;
  if (!rd.has("factor")) TORCH_CHECK(false, "Missing field \"", field, ".factor\" (rope type ", type, ") in ", source);
  s.factor = rd.number(field + ".factor", r.at("factor"), 0.0);
  if (!(s.factor > 0)) rd.bad(field + ".factor", "a number > 0", r.at("factor"));
  if (type == "llama3") {
    for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      TORCH_CHECK(rd.has(k), "Missing field \"", field, ".", k, "\" (rope type llama3) in ", source);
    s.low_freq_factor = rd.number(field + ".low_freq_factor", r.at("low_freq_factor"), 0.0);
    s.high_freq_factor = rd.number(field + ".high_freq_factor", r.at("high_freq_factor"), 0.0);
    if (!(s.high_freq_factor > s.low_freq_factor) || !(s.low_freq_factor > 0))
      TORCH_CHECK(false, "Expected 0 < low_freq_factor < high_freq_factor for \"", field, "\" but received ",
                  s.low_freq_factor, " and ", s.high_freq_factor, " in ", source);
    s.original_max_position_embeddings =
        rd.integer(r.at("original_max_position_embeddings"), field + ".original_max_position_embeddings", 1, kMaxSize);
  }
  (void)max_pos;
  return s;
}

// "architectures" -> head: a …ForSequenceClassification entry selects the score head, whose label count comes from
// "id2label" (its size), else "num_labels", else transformers' default of 2; only one label (a scalar reward) is
// supported.
void parse_head(const Reader& rd, ModelConfig& c) {
  if (!rd.has("architectures")) return;
  const json& a = rd.at("architectures");
  if (!a.is_array()) rd.bad("architectures", "an array of class names", a);
  const std::string suffix = "ForSequenceClassification";
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_string()) rd.bad("architectures[" + std::to_string(i) + "]", "a class name string", a[i]);
    const std::string name = a[i].get<std::string>();
    if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string want = sequence_classification_architecture(c.model_type);
    if (name != want) rd.bad("architectures[" + std::to_string(i) + "]", "\"" + want + "\" (model_type " + c.model_type + ")", a[i]);
    c.head = "score";
  }
  if (c.head != "score") return;
  if (rd.has("id2label")) {
    const json& m = rd.at("id2label");
    if (!m.is_object()) rd.bad("id2label", "an object {\"0\": label}", m);
    c.num_labels = static_cast<int64_t>(m.size());
    if (c.num_labels != 1)
      rd.bad("id2label", "one label (num_labels 1: a scalar reward head; " + std::to_string(c.num_labels) + " labels given)", m);
  } else {
    c.num_labels = rd.opt_int("num_labels", 2, 1, kMaxSize);
    if (c.num_labels != 1)
      TORCH_CHECK(false, "Expected num_labels 1 (a scalar reward head) for \"num_labels\" but received ", c.num_labels,
                  rd.has("num_labels") ? "" : " (transformers' default when neither \"id2label\" nor \"num_labels\" is given)",
                  " in ", rd.source);
  }
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& source) {
  TORCH_CHECK(j.is_object(), "Expected a JSON object in ", source, " but received a ", j.type_name());
  Reader rd{j, source};
  ModelConfig c;
  c.raw = j;
  TORCH_CHECK(rd.has("model_type"), "Missing field \"model_type\" in ", source);
  c.model_type = rd.opt_string("model_type", "");
  const bool gpt2 = c.model_type == "gpt2";
  if (!gpt2 && c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    rd.bad("model_type", "\"llama\" | \"mistral\" | \"qwen2\" | \"gpt2\" (supported architectures)", j.at("model_type"));

  c.vocab_size = rd.size({"vocab_size"});
  if (gpt2) {
    c.hidden_size = rd.size({"n_embd", "hidden_size"});
    c.num_hidden_layers = rd.size({"n_layer", "num_hidden_layers"});
    c.num_attention_heads = rd.size({"n_head", "num_attention_heads"});
    c.max_position_embeddings = rd.size({"n_positions", "max_position_embeddings"});
    c.intermediate_size = rd.has("n_inner") ? rd.integer(j.at("n_inner"), "n_inner", 1, kMaxSize) : 4 * c.hidden_size;
    c.num_key_value_heads = c.num_attention_heads;
    c.norm_eps = rd.opt_number("layer_norm_epsilon", 1e-5, 0.0);
    c.hidden_act = rd.opt_string("activation_function", "gelu_new");
    if (c.hidden_act != "gelu_new" && c.hidden_act != "gelu_pytorch_tanh" && c.hidden_act != "gelu")
      rd.bad("activation_function", "\"gelu_new\" | \"gelu_pytorch_tanh\" | \"gelu\"", j.at("activation_function"));
    c.tie_word_embeddings = rd.opt_bool("tie_word_embeddings", true);
    c.attention_bias = true;  // GPT-2 projections always carry biases
    c.mlp_bias = true;
    TORCH_CHECK(c.hidden_size % c.num_attention_heads == 0, "Expected \"n_head\" (", c.num_attention_heads,
                ") to divide \"n_embd\" (", c.hidden_size, ") in ", source);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  } else {
    c.hidden_size = rd.size({"hidden_size"});
    c.intermediate_size = rd.size({"intermediate_size"});
    c.num_hidden_layers = rd.size({"num_hidden_layers"});
    c.num_attention_heads = rd.size({"num_attention_heads"});
    c.max_position_embeddings = rd.size({"max_position_embeddings"});
    c.num_key_value_heads = rd.opt_int("num_key_value_heads", c.num_attention_heads, 1, kMaxSize);
    TORCH_CHECK(c.num_attention_heads % c.num_key_value_heads == 0, "Expected \"num_key_value_heads\" (",
                c.num_key_value_heads, ") to divide \"num_attention_heads\" (", c.num_attention_heads, ") in ", source);
    if (rd.has("head_dim")) {
      c.head_dim = rd.integer(j.at("head_dim"), "head_dim", 1, kMaxSize);
    } else {
      TORCH_CHECK(c.hidden_size % c.num_attention_heads == 0, "Expected \"num_attention_heads\" (",
                  c.num_attention_heads, ") to divide \"hidden_size\" (", c.hidden_size,
                  ") since \"head_dim\" is absent, in ", source);
      c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    if (c.head_dim % 2 != 0) rd.bad("head_dim", "an even head size (rotary embeddings rotate pairs)", json(c.head_dim));
    c.norm_eps = rd.opt_number("rms_norm_eps", 1e-6, 0.0);
    c.hidden_act = rd.opt_string("hidden_act", "silu");
    if (c.hidden_act != "silu" && c.hidden_act != "swish")
      rd.bad("hidden_act", "\"silu\" (the SwiGLU MLP of " + c.model_type + ")", j.at("hidden_act"));
    c.tie_word_embeddings = rd.opt_bool("tie_word_embeddings", false);
    if (c.model_type == "qwen2") {
      c.attention_bias = true;
      c.mlp_bias = false;
    } else {
      c.attention_bias = rd.opt_bool("attention_bias", false);
      c.mlp_bias = rd.opt_bool("mlp_bias", false);
    }
    // Rotary embeddings: 5.x "rope_parameters" (with rope_theta inside), else 4.x "rope_theta" + "rope_scaling".
    double theta = rd.opt_number("rope_theta", 10000.0, 0.0);
    if (rd.has("rope_parameters")) {
      const json& rp = j.at("rope_parameters");
      c.rope_scaling = parse_rope(rp, "rope_parameters", source, c.max_position_embeddings);
      if (rp.contains("rope_theta") && !rp.at("rope_theta").is_null())
        theta = rd.number("rope_parameters.rope_theta", rp.at("rope_theta"), 0.0);
    } else if (rd.has("rope_scaling")) {
      c.rope_scaling = parse_rope(j.at("rope_scaling"), "rope_scaling", source, c.max_position_embeddings);
    }
    if (!(theta > 0)) TORCH_CHECK(false, "Expected a number > 0 for \"rope_theta\" but received ", theta, " in ", source);
    c.rope_theta = theta;
    if (c.model_type == "mistral") {
      // Absent means the MistralConfig default (4096); null means no window.
      c.sliding_window = !j.contains("sliding_window") ? 4096 : rd.opt_int("sliding_window", 0, 0, kMaxSize);
    } else if (c.model_type == "qwen2" && rd.opt_bool("use_sliding_window", false)) {
      c.sliding_window = !j.contains("sliding_window") ? 4096 : rd.opt_int("sliding_window", 0, 0, kMaxSize);
    }
  }
  if (c.vocab_size > kMaxSize) rd.bad("vocab_size", "at most 2^31", j.at("vocab_size"));

  // dtype: 5.x "dtype", 4.x "torch_dtype".
  const char* dtype_key = rd.has("dtype") ? "dtype" : "torch_dtype";
  c.torch_dtype = rd.opt_string(dtype_key, "float32");
  if (c.torch_dtype != "float32" && c.torch_dtype != "bfloat16" && c.torch_dtype != "float16" &&
      c.torch_dtype != "float64")
    rd.bad(dtype_key, "\"float32\" | \"bfloat16\" | \"float16\" | \"float64\"", j.at(dtype_key));

  if (rd.has("eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (size_t i = 0; i < e.size(); ++i)
        c.eos_token_ids.push_back(rd.integer(e[i], "eos_token_id[" + std::to_string(i) + "]", 0, c.vocab_size - 1));
    } else {
      c.eos_token_ids.push_back(rd.integer(e, "eos_token_id", 0, c.vocab_size - 1));
    }
  }
  // -1 (written by some converters) means none, like null.
  c.bos_token_id = rd.opt_int("bos_token_id", -1, -1, c.vocab_size - 1);
  c.pad_token_id = rd.opt_int("pad_token_id", -1, -1, c.vocab_size - 1);
  parse_head(rd, c);
  return c;
}

std::string sequence_classification_architecture(const std::string& model_type) {
  if (model_type == "llama") return "LlamaForSequenceClassification";
  if (model_type == "mistral") return "MistralForSequenceClassification";
  if (model_type == "qwen2") return "Qwen2ForSequenceClassification";
  if (model_type == "gpt2") return "GPT2ForSequenceClassification";
  TORCH_CHECK(false, "no sequence-classification architecture for model_type '", model_type,
              "' (supported: llama, mistral, qwen2, gpt2)");
}

ModelConfig with_score_head(ModelConfig c) {
  c.head = "score";
  c.num_labels = 1;
  return c;
}

ModelConfig load_model_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "Cannot read the model config ", path);
  std::ostringstream s;
  s << in.rdbuf();
  json j;
  try {
    j = json::parse(s.str());
  } catch (const json::exception& e) {
    TORCH_CHECK(false, "Expected JSON in the model config ", path, " but it does not parse: ", e.what());
  }
  return parse_model_config(j, path);
}

namespace {
json rope_json(const RopeScaling& r) {
  json o = {{"rope_type", r.type}};
  if (r.type != "default") o["factor"] = r.factor;
  if (r.type == "llama3") {
    o["low_freq_factor"] = r.low_freq_factor;
    o["high_freq_factor"] = r.high_freq_factor;
    o["original_max_position_embeddings"] = r.original_max_position_embeddings;
  }
  return o;
}
json token_or_null(int64_t id) { return id < 0 ? json(nullptr) : json(id); }
}  // namespace

json model_config_to_json(const ModelConfig& c) {
  json j = c.raw.is_object() ? c.raw : json::object();
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  const bool v5 = j.contains("dtype") || j.contains("rope_parameters");
  if (c.model_type == "gpt2") {
    j["n_embd"] = c.hidden_size;
    j["n_layer"] = c.num_hidden_layers;
    j["n_head"] = c.num_attention_heads;
    j["n_positions"] = c.max_position_embeddings;
    j["n_inner"] = c.intermediate_size == 4 * c.hidden_size && (!j.contains("n_inner") || j["n_inner"].is_null())
                       ? json(nullptr)
                       : json(c.intermediate_size);
    j["layer_norm_epsilon"] = c.norm_eps;
    j["activation_function"] = c.hidden_act;
  } else {
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["max_position_embeddings"] = c.max_position_embeddings;
    if (j.contains("head_dim") || c.head_dim * c.num_attention_heads != c.hidden_size) j["head_dim"] = c.head_dim;
    j["rms_norm_eps"] = c.norm_eps;
    j["hidden_act"] = c.hidden_act;
    if (c.model_type != "qwen2") {
      j["attention_bias"] = c.attention_bias;
      if (c.model_type == "llama" || c.mlp_bias) j["mlp_bias"] = c.mlp_bias;
    }
    if (v5) {
      json rp = rope_json(c.rope_scaling);
      rp["rope_theta"] = c.rope_theta;
      j["rope_parameters"] = rp;
      j.erase("rope_scaling");
      j.erase("rope_theta");
    } else {
      j["rope_theta"] = c.rope_theta;
      if (c.rope_scaling.type == "default") {
        j["rope_scaling"] = nullptr;
      } else {
        json rs = rope_json(c.rope_scaling);
        if (c.raw.is_object() && c.raw.contains("rope_scaling") && c.raw["rope_scaling"].is_object() &&
            c.raw["rope_scaling"].contains("type"))
          rs["type"] = c.rope_scaling.type;  // keep the legacy key too
        j["rope_scaling"] = rs;
      }
    }
    if (c.model_type == "mistral") {
      j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    } else if (c.model_type == "qwen2") {
      j["use_sliding_window"] = c.sliding_window > 0;
      if (c.sliding_window > 0) j["sliding_window"] = c.sliding_window;
    }
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (v5) {
    j["dtype"] = c.torch_dtype;
    j.erase("torch_dtype");
  } else {
    j["torch_dtype"] = c.torch_dtype;
  }
  if (c.eos_token_ids.size() == 1) j["eos_token_id"] = c.eos_token_ids[0];
  else if (c.eos_token_ids.empty()) j["eos_token_id"] = nullptr;
  else j["eos_token_id"] = c.eos_token_ids;
  j["bos_token_id"] = token_or_null(c.bos_token_id);
  j["pad_token_id"] = token_or_null(c.pad_token_id);
  if (c.head == "score") {
    // What transformers' PretrainedConfig reads back as num_labels == 1 for the …ForSequenceClassification class.
    TORCH_CHECK(c.num_labels == 1, "only num_labels 1 can be written, got ", c.num_labels);
    j["architectures"] = json::array({sequence_classification_architecture(c.model_type)});
    j["id2label"] = {{"0", "LABEL_0"}};
    j["label2id"] = {{"LABEL_0", 0}};
    if (j.contains("num_labels")) j["num_labels"] = 1;
  }
  return j;
}

}  // namespace tdpo
