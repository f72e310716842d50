// Tests of native/core/model_config: transformers 4.x and 5.x config.json layouts for llama / mistral / qwen2 / gpt2,
// defaults, every error case, writing back, and the fixtures of test/reference/make_fixture.py.
#include <gtest/gtest.h>

#include "error_expect.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "checkpoint_files.h"
#include "model_config.h"

namespace fs = std::filesystem;
using nlohmann::json;
using tdpo::ModelConfig;
using tdpo::parse_model_config;

namespace {

const char* kSrc = "/models/x/config.json";

ModelConfig parse(const std::string& text) { return parse_model_config(json::parse(text), kSrc); }

// Expects parsing to fail with a message naming the source file and each fragment.
void expect_error(const json& j, std::vector<std::string> fragments) {
  std::string msg = error_of([&] { parse_model_config(j, kSrc); });
  ASSERT_FALSE(msg.empty()) << "no error for " << j.dump();
  EXPECT_NE(msg.find(kSrc), std::string::npos) << msg;
  for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.hidden_act, b.hidden_act);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.pad_token_id, b.pad_token_id);
}

// Writing back and parsing again gives the same config.
void expect_round_trip(const ModelConfig& c) {
  SCOPED_TRACE(c.model_type);
  expect_same(parse_model_config(tdpo::model_config_to_json(c), kSrc), c);
}

const char* kLlama4 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
  "mlp_bias": false, "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.45.0",
  "use_cache": true, "vocab_size": 128256})";

const char* kLlama5 = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": true, "bos_token_id": 1,
  "dtype": "float16", "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 96, "intermediate_size": 256,
  "max_position_embeddings": 2048, "mlp_bias": true, "num_attention_heads": 6, "num_hidden_layers": 3,
  "num_key_value_heads": 2, "pad_token_id": null, "rms_norm_eps": 1e-06,
  "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 250000.0},
  "tie_word_embeddings": false, "transformers_version": "5.0.0", "vocab_size": 1000})";

const char* kMistral4 = R"({
  "architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1, "eos_token_id": 2,
  "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 14336,
  "max_position_embeddings": 1024000, "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.44.0", "vocab_size": 131072})";

const char* kQwen4 = R"({
  "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
  "max_position_embeddings": 32768, "max_window_layers": 21, "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.43.1", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

const char* kGpt2 = R"({
  "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "bos_token_id": 50256,
  "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02, "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_inner": null, "n_layer": 12,
  "n_positions": 1024, "resid_pdrop": 0.1, "vocab_size": 50257})";

}  // namespace

TEST(ModelConfig, ParsesLlama4xWithLlama3Rope) {
  ModelConfig c = parse(kLlama4);
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_hidden_layers, 16);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_EQ(c.norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.pad_token_id, -1);
  EXPECT_EQ(c.raw["transformers_version"], "4.45.0");
  expect_round_trip(c);
}

TEST(ModelConfig, ParsesLlama5xRopeParametersAndDtype) {
  ModelConfig c = parse(kLlama5);
  EXPECT_EQ(c.torch_dtype, "float16");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_theta, 250000.0);  // from rope_parameters
  EXPECT_EQ(c.head_dim, 16);          // 96 / 6
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.mlp_bias);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.norm_eps, 1e-6);
  expect_round_trip(c);
  json out = tdpo::model_config_to_json(c);  // keeps the 5.x layout
  EXPECT_EQ(out["dtype"], "float16");
  EXPECT_FALSE(out.contains("torch_dtype"));
  EXPECT_FALSE(out.contains("rope_scaling"));
  EXPECT_EQ(out["rope_parameters"]["rope_theta"], 250000.0);
  EXPECT_EQ(out["rope_parameters"]["rope_type"], "linear");
}

TEST(ModelConfig, ParsesMistralSlidingWindowForms) {
  ModelConfig c = parse(kMistral4);
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.head_dim, 128);  // given, != 5120 / 32
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.rope_theta, 1e6);
  expect_round_trip(c);
  json j = json::parse(kMistral4);
  j["sliding_window"] = 4096;
  EXPECT_EQ(parse_model_config(j, kSrc).sliding_window, 4096);
  expect_round_trip(parse_model_config(j, kSrc));
  j.erase("sliding_window");  // absent: MistralConfig's default
  EXPECT_EQ(parse_model_config(j, kSrc).sliding_window, 4096);
  // 5.x layout.
  j = json::parse(kMistral4);
  j.erase("rope_theta");
  j.erase("torch_dtype");
  j["dtype"] = "bfloat16";
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = parse_model_config(j, kSrc);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  expect_round_trip(c);
}

TEST(ModelConfig, ParsesQwen2BiasAndWindowSwitch) {
  ModelConfig c = parse(kQwen4);
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_TRUE(c.attention_bias);  // q/k/v biases always
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.head_dim, 64);  // 896 / 14
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window false
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151645});
  expect_round_trip(c);
  json j = json::parse(kQwen4);
  j["use_sliding_window"] = true;
  c = parse_model_config(j, kSrc);
  EXPECT_EQ(c.sliding_window, 32768);
  expect_round_trip(c);
  json out = tdpo::model_config_to_json(c);
  EXPECT_FALSE(out.contains("attention_bias"));  // not a qwen2 field
  EXPECT_EQ(out["max_window_layers"], 21);       // unknown fields kept
  // 5.x layout.
  j = json::parse(kQwen4);
  j.erase("rope_theta");
  j.erase("torch_dtype");
  j["dtype"] = "float32";
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = parse_model_config(j, kSrc);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.sliding_window, 0);
  expect_round_trip(c);
  EXPECT_EQ(tdpo::model_config_to_json(c)["rope_parameters"]["rope_theta"], 1e6);
}

TEST(ModelConfig, ParsesGpt2NamesAndDefaults) {
  ModelConfig c = parse(kGpt2);
  EXPECT_EQ(c.model_type, "gpt2");
  EXPECT_EQ(c.vocab_size, 50257);
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.intermediate_size, 3072);  // n_inner null -> 4 * n_embd
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 12);
  EXPECT_EQ(c.num_key_value_heads, 12);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 1024);
  EXPECT_EQ(c.norm_eps, 1e-5);
  EXPECT_EQ(c.hidden_act, "gelu_new");
  EXPECT_TRUE(c.tie_word_embeddings);  // gpt2 default
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{50256});
  EXPECT_EQ(c.bos_token_id, 50256);
  expect_round_trip(c);
  json out = tdpo::model_config_to_json(c);
  EXPECT_TRUE(out["n_inner"].is_null());
  EXPECT_FALSE(out.contains("hidden_size"));
  json j = json::parse(kGpt2);
  j["n_inner"] = 1000;
  j["activation_function"] = "gelu_pytorch_tanh";
  j["tie_word_embeddings"] = false;
  j["dtype"] = "bfloat16";  // 5.x
  c = parse_model_config(j, kSrc);
  EXPECT_EQ(c.intermediate_size, 1000);
  EXPECT_EQ(c.hidden_act, "gelu_pytorch_tanh");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  expect_round_trip(c);
}

TEST(ModelConfig, AppliesDefaultsForAbsentFields) {
  ModelConfig c = parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256})");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.norm_eps, 1e-6);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.hidden_act, "silu");
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_EQ(c.pad_token_id, -1);
  expect_round_trip(c);
  // Legacy rope key "type", nulls treated as absent, pad -1 as none.
  c = parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null, "head_dim": null,
      "max_position_embeddings": 256, "rope_scaling": {"type": "linear", "factor": 2.0}, "pad_token_id": -1})");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.pad_token_id, -1);
  expect_round_trip(c);
}

TEST(ModelConfig, WritesChangedFieldsAndKeepsUnknownOnes) {
  ModelConfig c = parse(kLlama4);
  c.torch_dtype = "float32";
  c.eos_token_ids = {7};
  c.pad_token_id = 5;
  c.rope_scaling = tdpo::RopeScaling();
  json out = tdpo::model_config_to_json(c);
  EXPECT_EQ(out["torch_dtype"], "float32");
  EXPECT_EQ(out["eos_token_id"], 7);
  EXPECT_EQ(out["pad_token_id"], 5);
  EXPECT_TRUE(out["rope_scaling"].is_null());
  EXPECT_EQ(out["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(out["pretraining_tp"], 1);
  expect_round_trip(c);
  // A config built in code (no raw JSON) writes a parseable 4.x layout.
  ModelConfig m;
  m.model_type = "mistral";
  m.vocab_size = 50;
  m.hidden_size = 16;
  m.intermediate_size = 32;
  m.num_hidden_layers = 1;
  m.num_attention_heads = 2;
  m.num_key_value_heads = 1;
  m.head_dim = 8;
  m.max_position_embeddings = 64;
  m.sliding_window = 8;
  m.eos_token_ids = {1, 2};
  expect_round_trip(m);
}

TEST(ModelConfig, RejectsEachBadFieldNamingFileAndField) {
  const json base = json::parse(R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256})");
  auto with = [&](const std::string& key, const json& v) {
    json j = base;
    j[key] = v;
    return j;
  };
  auto without = [&](const std::string& key) {
    json j = base;
    j.erase(key);
    return j;
  };
  expect_error(json::array(), {"object"});
  expect_error(without("model_type"), {"\"model_type\""});
  expect_error(with("model_type", "falcon"), {"\"model_type\"", "falcon", "llama"});
  expect_error(with("model_type", 3), {"\"model_type\""});
  for (const char* k : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "max_position_embeddings"}) {
    expect_error(without(k), {std::string("\"") + k + "\"", "Missing"});
    expect_error(with(k, 0), {std::string("\"") + k + "\"", "received 0"});
    expect_error(with(k, -4), {std::string("\"") + k + "\"", "received -4"});
    expect_error(with(k, "64"), {std::string("\"") + k + "\""});
    expect_error(with(k, 64.5), {std::string("\"") + k + "\""});
  }
  expect_error(with("vocab_size", int64_t(1) << 32), {"\"vocab_size\"", "4294967296"});
  expect_error(with("num_attention_heads", 5), {"\"num_attention_heads\"", "\"hidden_size\"", "head_dim"});
  expect_error(with("num_key_value_heads", 3), {"\"num_key_value_heads\"", "3"});
  expect_error(with("num_key_value_heads", 0), {"\"num_key_value_heads\""});
  expect_error(with("head_dim", 7), {"\"head_dim\"", "even"});
  expect_error(with("head_dim", -8), {"\"head_dim\""});
  expect_error(with("rms_norm_eps", -1e-6), {"\"rms_norm_eps\""});
  expect_error(with("rms_norm_eps", "1e-6"), {"\"rms_norm_eps\""});
  expect_error(with("rope_theta", 0), {"\"rope_theta\""});
  expect_error(with("rope_scaling", 2), {"\"rope_scaling\""});
  expect_error(with("rope_scaling", {{"rope_type", "yarn"}, {"factor", 4}}), {"rope_scaling.rope_type", "yarn"});
  expect_error(with("rope_scaling", {{"rope_type", "linear"}}), {"rope_scaling.factor"});
  expect_error(with("rope_scaling", {{"rope_type", "linear"}, {"factor", -2}}), {"rope_scaling.factor"});
  expect_error(with("rope_scaling", {{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 1}}),
               {"high_freq_factor"});
  expect_error(with("rope_scaling", {{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 4},
                                     {"high_freq_factor", 1}, {"original_max_position_embeddings", 8192}}),
               {"low_freq_factor < high_freq_factor"});
  expect_error(with("rope_parameters", {{"rope_type", "dynamic"}, {"rope_theta", 1e4}}), {"rope_parameters", "dynamic"});
  expect_error(with("rope_parameters", {{"rope_type", "default"}, {"rope_theta", "big"}}),
               {"rope_parameters.rope_theta"});
  expect_error(with("hidden_act", "gelu"), {"\"hidden_act\"", "gelu"});
  expect_error(with("tie_word_embeddings", "yes"), {"\"tie_word_embeddings\""});
  expect_error(with("attention_bias", 1), {"\"attention_bias\""});
  expect_error(with("torch_dtype", "int8"), {"\"torch_dtype\"", "int8"});
  expect_error(with("dtype", 16), {"\"dtype\""});
  expect_error(with("eos_token_id", 100), {"\"eos_token_id\"", "100"});
  expect_error(with("eos_token_id", json::array({1, "2"})), {"eos_token_id[1]"});
  expect_error(with("bos_token_id", -5), {"\"bos_token_id\""});
  json m = with("model_type", "mistral");
  m["sliding_window"] = -1;
  expect_error(m, {"\"sliding_window\""});
  json g = json::parse(kGpt2);
  g["n_head"] = 7;
  expect_error(g, {"\"n_head\"", "\"n_embd\""});
  g = json::parse(kGpt2);
  g["activation_function"] = "relu";
  expect_error(g, {"\"activation_function\"", "relu"});
  g = json::parse(kGpt2);
  g.erase("n_embd");
  expect_error(g, {"\"n_embd\""});
  g = json::parse(kGpt2);
  g["layer_norm_epsilon"] = -1;
  expect_error(g, {"\"layer_norm_epsilon\""});
  g = json::parse(kGpt2);
  g["n_inner"] = 0;
  expect_error(g, {"\"n_inner\""});
}

TEST(ModelConfig, LoadsFilesAndNamesThemInErrors) {
  char tmpl[] = "/tmp/tdpo-cfg-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, p = dir + "/config.json";
  std::ofstream(p) << kQwen4;
  EXPECT_EQ(tdpo::load_model_config(p).hidden_size, 896);
  std::ofstream(p) << "{\"model_type\": ";
  std::string msg = error_of([&] { tdpo::load_model_config(p); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  msg = error_of([&] { tdpo::load_model_config(dir + "/none.json"); });
  EXPECT_NE(msg.find(dir + "/none.json"), std::string::npos) << msg;
  std::ofstream(p) << R"({"model_type": "gpt2", "vocab_size": 10})";
  msg = error_of([&] { tdpo::load_model_config(p); });
  EXPECT_NE(msg.find(p), std::string::npos) << msg;
  EXPECT_NE(msg.find("n_embd"), std::string::npos) << msg;
  fs::remove_all(dir);
}

// make_fixture.py output: config and weights agree with each other and with the options given.
TEST(ModelConfig, ReadsMakeFixtureCheckpoints) {
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
  char tmpl[] = "/tmp/tdpo-fx-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string root = tmpl;
  struct Case {
    std::string args;
    std::string type;
    bool tied;
    std::string rope;
    int64_t window;
    std::string dtype;
  };
  const std::vector<Case> cases = {
      {"--arch llama --transformers 4 --rope-scaling llama3 --attention-bias --mlp-bias", "llama", false, "llama3", 0,
       "float32"},
      {"--arch llama --transformers 5 --tied --rope-scaling linear --dtype bfloat16 --shards 2", "llama", true,
       "linear", 0, "bfloat16"},
      {"--arch mistral --transformers 4 --sliding-window 5 --kv-heads 1", "mistral", false, "default", 5, "float32"},
      {"--arch qwen2 --transformers 5 --sliding-window 6 --tied --dtype float16", "qwen2", true, "default", 6,
       "float16"},
      {"--arch gpt2 --transformers 4 --tied --shards 3", "gpt2", true, "default", 0, "float32"},
      {"--arch gpt2 --transformers 5 --layers 1 --hidden 24 --heads 3", "gpt2", false, "default", 0, "float32"},
  };
  std::string lines;
  for (size_t n = 0; n < cases.size(); ++n) lines += cases[n].args + " --out " + root + "/m" + std::to_string(n) + "\n";
  std::ofstream(root + "/batch.txt") << lines;
  const std::string cmd =
      "/usr/bin/python3 " TORCH_DPO_SOURCE_DIR "/test/reference/make_fixture.py --batch < " + root + "/batch.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  int n = 0;
  for (const auto& k : cases) {
    SCOPED_TRACE(k.args);
    const std::string out = root + "/m" + std::to_string(n++);
    ModelConfig c = tdpo::load_model_config(out + "/config.json");
    EXPECT_EQ(c.model_type, k.type);
    EXPECT_EQ(c.tie_word_embeddings, k.tied);
    EXPECT_EQ(c.rope_scaling.type, k.rope);
    EXPECT_EQ(c.sliding_window, k.window);
    EXPECT_EQ(c.torch_dtype, k.dtype);
    expect_round_trip(c);
    auto r = tdpo::CheckpointReader::open(out);
    const at::ScalarType st = k.dtype == "bfloat16" ? at::kBFloat16 : k.dtype == "float16" ? at::kHalf : at::kFloat;
    for (const auto& name : r.names()) EXPECT_EQ(r.tensor(name).scalar_type(), st) << name;
    EXPECT_EQ(r.has("lm_head.weight"), !c.tie_word_embeddings);
    const int64_t H = c.hidden_size, L = c.num_hidden_layers;
    if (c.model_type == "gpt2") {
      EXPECT_EQ(r.names().size(), size_t(2 + 12 * L + 2 + (c.tie_word_embeddings ? 0 : 1)));
      EXPECT_EQ(r.tensor("transformer.wte.weight").sizes().vec(), (std::vector<int64_t>{c.vocab_size, H}));
      EXPECT_EQ(r.tensor("transformer.wpe.weight").sizes().vec(),
                (std::vector<int64_t>{c.max_position_embeddings, H}));
      EXPECT_EQ(r.tensor("transformer.h.0.attn.c_attn.weight").sizes().vec(), (std::vector<int64_t>{H, 3 * H}));
      EXPECT_EQ(r.tensor("transformer.h.0.mlp.c_fc.weight").sizes().vec(),
                (std::vector<int64_t>{H, c.intermediate_size}));
    } else {
      const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
      const std::string p = "model.layers." + std::to_string(L - 1) + ".";
      EXPECT_EQ(r.tensor("model.embed_tokens.weight").sizes().vec(), (std::vector<int64_t>{c.vocab_size, H}));
      EXPECT_EQ(r.tensor(p + "self_attn.q_proj.weight").sizes().vec(), (std::vector<int64_t>{q, H}));
      EXPECT_EQ(r.tensor(p + "self_attn.k_proj.weight").sizes().vec(), (std::vector<int64_t>{kv, H}));
      EXPECT_EQ(r.tensor(p + "self_attn.o_proj.weight").sizes().vec(), (std::vector<int64_t>{H, q}));
      EXPECT_EQ(r.tensor(p + "mlp.down_proj.weight").sizes().vec(), (std::vector<int64_t>{H, c.intermediate_size}));
      EXPECT_EQ(r.has(p + "self_attn.q_proj.bias"), c.attention_bias);
      EXPECT_EQ(r.has(p + "self_attn.o_proj.bias"), c.attention_bias && c.model_type != "qwen2");
      EXPECT_EQ(r.has(p + "mlp.up_proj.bias"), c.mlp_bias);
      EXPECT_EQ(r.tensor("model.norm.weight").sizes().vec(), (std::vector<int64_t>{H}));
    }
  }
  fs::remove_all(root);
}
