// Reward models: rewards at the last non-pad token (hand-checked), the Bradley–Terry loss against a float64 formula,
// finite-difference gradients through a whole model, HF save/load of …ForSequenceClassification checkpoints and the
// causal LM -> reward model conversion, and clear errors for unsupported heads.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "causal_lm.h"
#include "checkpoint_files.h"
#include "error_expect.h"
#include "model_config.h"
#include "preference_trainer.h"
#include "reward_head.h"
#include "safetensors.h"
#include "weight_map.h"

namespace {

using json = nlohmann::json;
using namespace tdpo;

json tiny_llama(bool tied, bool score) {
  json j = {{"model_type", "llama"}, {"vocab_size", 23}, {"hidden_size", 16}, {"intermediate_size", 24},
            {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
            {"max_position_embeddings", 32}, {"tie_word_embeddings", tied}, {"pad_token_id", 0}};
  j["architectures"] = {score ? "LlamaForSequenceClassification" : "LlamaForCausalLM"};
  if (score) j["id2label"] = {{"0", "LABEL_0"}};
  return j;
}

json tiny_gpt2(bool score) {
  json j = {{"model_type", "gpt2"}, {"vocab_size", 19}, {"n_embd", 12}, {"n_layer", 1}, {"n_head", 3},
            {"n_positions", 16}};
  j["architectures"] = {score ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel"};
  if (score) j["num_labels"] = 1;
  return j;
}

std::string temp_dir(const std::string& tag) {
  auto d = std::filesystem::temp_directory_path() / ("tdpo_reward_" + tag + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return json::parse(s.str());
}

void write_json(const std::string& path, const json& j) {
  std::ofstream out(path);
  out << j.dump(2);
}

// Right-padded (N, T) ids and mask with the given row lengths, ids drawn from [1, vocab).
std::pair<at::Tensor, at::Tensor> batch(const std::vector<int64_t>& lens, int64_t T, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t N = static_cast<int64_t>(lens.size());
  auto ids = at::randint(1, vocab, {N, T}, gen, at::kLong);
  auto mask = at::zeros({N, T}, at::kLong);
  for (int64_t n = 0; n < N; ++n) mask[n].narrow(0, 0, lens[n]).fill_(1);
  return {ids * mask, mask};  // pads hold id 0
}

TEST(RewardHead, RewardIsScoreDotHiddenAtTheLastNonPadToken) {
  // hidden[n, t, :] = (100 n + 10 t, 1 + t); score = (0.5, -2).
  const int64_t N = 3, T = 4;
  auto hidden = at::zeros({N, T, 2}, at::kDouble);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < T; ++t) {
      hidden[n][t][0] = 100.0 * n + 10.0 * t;
      hidden[n][t][1] = 1.0 + t;
    }
  auto score = at::tensor({0.5, -2.0}, at::kDouble).view({1, 2});
  // lengths 4, 2, 1: last tokens t = 3, 1, 0
  auto mask = at::tensor({1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0}, at::kLong).view({N, T});
  auto r = last_token_rewards(hidden, score, mask);
  ASSERT_EQ(r.sizes(), at::IntArrayRef({N}));
  EXPECT_DOUBLE_EQ(r[0].item<double>(), 0.5 * 30 - 2.0 * 4);    // 7
  EXPECT_DOUBLE_EQ(r[1].item<double>(), 0.5 * 110 - 2.0 * 2);   // 51
  EXPECT_DOUBLE_EQ(r[2].item<double>(), 0.5 * 200 - 2.0 * 1);   // 98
  // float32 hidden: the result is float32
  EXPECT_EQ(last_token_rewards(hidden.to(at::kFloat), score.to(at::kFloat), mask).scalar_type(), at::kFloat);

  auto left = at::tensor({0, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0}, at::kLong).view({N, T});
  expect_error([&] { last_token_rewards(hidden, score, left); }, "right-padded");
  auto empty = at::tensor({1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0}, at::kLong).view({N, T});
  expect_error([&] { last_token_rewards(hidden, score, empty); }, "at least one token");
  expect_error([&] { last_token_rewards(hidden, at::zeros({2, 2}, at::kDouble), mask); }, "(1, 2)");
}

TEST(RewardHead, LossMatchesTheFloat64Formula) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const int64_t P = 6;
  auto a = at::normal(0.0, 3.0, {P}, gen, at::TensorOptions().dtype(at::kDouble));
  auto b = at::normal(0.0, 3.0, {P}, gen, at::TensorOptions().dtype(at::kDouble));
  auto m = at::normal(0.5, 1.0, {P}, gen, at::TensorOptions().dtype(at::kDouble));
  for (double coef : {0.0, 0.01, 0.3}) {
    for (bool with_margin : {false, true}) {
      double want = 0, center = 0;
      for (int64_t p = 0; p < P; ++p) {
        const double z = a[p].item<double>() - b[p].item<double>() - (with_margin ? m[p].item<double>() : 0.0);
        want += std::log1p(std::exp(-z));  // −log σ(z)
        center += std::pow(a[p].item<double>() + b[p].item<double>(), 2);
      }
      want = want / P + coef * center / P;
      auto out = reward_loss(a, b, with_margin ? m : at::Tensor(), RewardLossOptions{coef});
      EXPECT_NEAR(out.loss.item<double>(), want, 1e-12) << "coef " << coef << " margin " << with_margin;
      // float32 rewards: the same to float32 precision
      auto out32 = reward_loss(a.to(at::kFloat), b.to(at::kFloat), with_margin ? m.to(at::kFloat) : at::Tensor(),
                               RewardLossOptions{coef});
      EXPECT_NEAR(out32.loss.item<double>(), want, 1e-5 * std::max(1.0, want));
    }
  }
  // a margin for every pair (no per-pair margins) equals per-pair margins of that value
  auto same = reward_loss(a, b, at::full({P}, 0.7, at::kDouble), RewardLossOptions{0.0});
  RewardLossOptions constant;
  constant.margin = 0.7;
  EXPECT_NEAR(reward_loss(a, b, at::Tensor(), constant).loss.item<double>(), same.loss.item<double>(), 1e-14);
  EXPECT_GT(same.loss.item<double>(), reward_loss(a, b, at::Tensor()).loss.item<double>());
  // a large negative difference: −log σ(z) ≈ −z without overflow
  auto big = reward_loss(at::tensor({-80.0}, at::kFloat), at::tensor({20.0}, at::kFloat), at::Tensor());
  EXPECT_NEAR(big.loss.item<double>(), 100.0, 1e-4);
  expect_error([&] { reward_loss(a, b, at::ones({P + 1}, at::kDouble)); }, "margins must be (6)");
  expect_error([&] { reward_loss(a, b, at::Tensor(), RewardLossOptions{-1}); }, "center_rewards_coefficient");
}

// Loss of P pairs (rows 0..P-1 chosen, P..2P-1 rejected) through the whole model.
at::Tensor model_loss(CausalLM& model, const at::Tensor& ids, const at::Tensor& mask, const at::Tensor& margins,
                      double coef) {
  auto h = model.hidden_states(ids, mask);  // (2P, T, H)
  auto r = last_token_rewards(h, *model.score_weight(), mask);
  const int64_t P = ids.size(0) / 2;
  return reward_loss(r.narrow(0, 0, P), r.narrow(0, P, P), margins, RewardLossOptions{coef}).loss;
}

TEST(RewardModel, GradientMatchesFiniteDifferences) {
  for (const auto& cfg_json : {tiny_llama(false, true), tiny_gpt2(true)}) {
    auto cfg = parse_model_config(cfg_json, "test config");
    ASSERT_EQ(cfg.head, "score");
    auto model = make_causal_lm(cfg, at::kCPU, at::kDouble, 3);
    {  // a non-trivial score head (init draws it at 0.02 like any matrix; make it larger so the loss is not ~log 2)
      c10::NoGradGuard ng;
      model->score_weight()->mul_(20);
    }
    auto [ids, mask] = batch({5, 3, 6, 2}, 6, cfg.vocab_size, 11);
    auto margins = at::tensor({0.3, -0.2}, at::kDouble);
    const double coef = 0.05;
    auto loss = model_loss(*model, ids, mask, margins, coef);
    loss.backward();
    const std::string body = cfg.model_type == "gpt2" ? "transformer.h.0.mlp.c_proj.weight"
                                                      : "model.layers.0.mlp.down_proj.weight";
    int checked = 0;
    for (const auto& [name, p] : model->named_parameters()) {
      if (name != "score.weight" && name != body) continue;
      auto g = p.grad();
      ASSERT_TRUE(g.defined()) << name;
      auto flat = p.view({-1});
      for (int64_t i : {int64_t(0), int64_t(5), flat.size(0) - 1}) {
        const double eps = 1e-6;
        double plus, minus;
        {
          c10::NoGradGuard ng;
          const double orig = flat[i].item<double>();
          flat[i].fill_(orig + eps);
          plus = model_loss(*model, ids, mask, margins, coef).item<double>();
          flat[i].fill_(orig - eps);
          minus = model_loss(*model, ids, mask, margins, coef).item<double>();
          flat[i].fill_(orig);
        }
        const double fd = (plus - minus) / (2 * eps), an = g.view({-1})[i].item<double>();
        EXPECT_NEAR(an, fd, 1e-7 + 1e-5 * std::abs(fd)) << cfg.model_type << " " << name << "[" << i << "]";
        ++checked;
      }
      EXPECT_GT(g.abs().max().item<double>(), 1e-6) << name;
    }
    EXPECT_EQ(checked, 6);
  }
}

TEST(RewardModel, TrainerAccumulatesTheRewardLoss) {
  auto cfg = parse_model_config(tiny_llama(true, true), "test config");
  auto model = make_causal_lm(cfg, at::kCPU, at::kFloat, 5);
  auto [ids, mask] = batch({4, 6, 3, 5}, 6, cfg.vocab_size, 2);
  auto labels = at::full(ids.sizes(), -100, at::kLong);
  auto margins = at::tensor({0.5, 1.0}, at::kDouble);
  double want;
  at::Tensor want_r;
  {
    c10::NoGradGuard ng;
    auto h = model->hidden_states(ids, mask);
    want_r = last_token_rewards(h, *model->score_weight(), mask);
    want = reward_loss(want_r.narrow(0, 0, 2), want_r.narrow(0, 2, 2), margins, RewardLossOptions{0.1}).loss.item<double>();
  }
  OptimizerConfig sgd;
  sgd.type = "sgd";
  PreferenceTrainer plain(model, DPOLossConfig{}, sgd);
  PreferenceBatch b{ids, mask, labels, at::Tensor(), margins};
  expect_error([&] { plain.evaluate(b); }, "train it with RewardTrainer");
  PreferenceTrainer trainer(model, DPOLossConfig{}, sgd);
  trainer.set_reward(RewardLossOptions{0.1});
  auto before = model->score_weight()->detach().clone();
  auto r = trainer.accumulate(b, 1.0);
  EXPECT_NEAR(r.loss, want, 1e-6);
  EXPECT_TRUE(at::allclose(r.chosen_rewards, want_r.narrow(0, 0, 2)));
  EXPECT_TRUE(at::allclose(r.rejected_rewards, want_r.narrow(0, 2, 2)));
  auto g = model->score_weight()->grad().clone();
  trainer.step(1.0, 0.0);
  EXPECT_TRUE(at::allclose(model->score_weight()->detach(), before - g, 1e-6, 1e-7));  // SGD lr 1: w − g
  // a causal policy cannot take the reward loss
  auto causal = make_causal_lm(parse_model_config(tiny_llama(true, false), "c"), at::kCPU, at::kFloat, 1);
  PreferenceTrainer wrong(causal, DPOLossConfig{}, sgd);
  wrong.set_reward(RewardLossOptions{});
  expect_error([&] { wrong.evaluate(b); }, "needs a policy with a score head");
}

TEST(RewardModel, SavesAndLoadsTheHuggingFaceLayout) {
  for (const auto& cfg_json : {tiny_llama(false, true), tiny_gpt2(true)}) {
    auto cfg = parse_model_config(cfg_json, "test config");
    auto model = make_causal_lm(cfg, at::kCPU, at::kFloat, 9);
    const auto dir = temp_dir("save_" + cfg.model_type);
    save_causal_lm(*model, dir);
    auto j = read_json(dir + "/config.json");
    EXPECT_EQ(j["architectures"], json::array({sequence_classification_architecture(cfg.model_type)}));
    EXPECT_EQ(j["id2label"], json({{"0", "LABEL_0"}}));
    EXPECT_EQ(j["label2id"], json({{"LABEL_0", 0}}));
    auto names = CheckpointReader::open(dir).names();
    EXPECT_NE(std::find(names.begin(), names.end(), "score.weight"), names.end());
    EXPECT_EQ(std::find(names.begin(), names.end(), "lm_head.weight"), names.end());
    EXPECT_EQ(CheckpointReader::open(dir).tensor("score.weight").sizes(), at::IntArrayRef({1, cfg.hidden_size}));
    auto back = load_causal_lm(dir, at::kCPU, at::kFloat);
    ASSERT_TRUE(back->has_score_head());
    auto [ids, mask] = batch({3, 5}, 5, cfg.vocab_size, 4);
    EXPECT_TRUE(at::equal(sequence_rewards_nograd(*back, ids, mask), sequence_rewards_nograd(*model, ids, mask)));
    expect_error([&] { back->logits(ids, mask); }, sequence_classification_architecture(cfg.model_type));
    expect_error([&] { sequence_logps_nograd(*back, ids, mask, at::full(ids.sizes(), -100, at::kLong)); },
                 "needs a language-model head");
    std::filesystem::remove_all(dir);
  }
}

TEST(RewardModel, ConvertsACausalCheckpoint) {
  for (bool tied : {false, true}) {
    json cj = tiny_llama(tied, false);
    cj["initializer_range"] = 0.5;
    auto causal = make_causal_lm(parse_model_config(cj, "c"), at::kCPU, at::kFloat, 21);
    const auto dir = temp_dir(std::string("causal_") + (tied ? "tied" : "untied"));
    save_causal_lm(*causal, dir);
    if (!tied) {  // the checkpoint carries an lm_head, which conversion drops
      auto names = CheckpointReader::open(dir).names();
      ASSERT_NE(std::find(names.begin(), names.end(), "lm_head.weight"), names.end());
    }
    auto rm = load_causal_lm(dir, at::kCPU, at::kFloat, HeadOptions{"score", 17});
    ASSERT_TRUE(rm->has_score_head());
    auto s = *rm->score_weight();
    EXPECT_EQ(s.sizes(), at::IntArrayRef({1, 16}));
    const double sd = s.std().item<double>();
    EXPECT_GT(sd, 0.25);  // drawn at initializer_range 0.5 (16 draws)
    EXPECT_LT(sd, 0.9);
    auto again = load_causal_lm(dir, at::kCPU, at::kFloat, HeadOptions{"score", 17});
    EXPECT_TRUE(at::equal(*again->score_weight(), s));  // deterministic in the seed
    auto other = load_causal_lm(dir, at::kCPU, at::kFloat, HeadOptions{"score", 18});
    EXPECT_FALSE(at::equal(*other->score_weight(), s));
    // the body is the causal model's, the lm_head is gone
    std::map<std::string, at::Tensor> body;
    for (auto& [n, t] : causal->named_parameters()) body[n] = t;
    for (auto& [n, t] : rm->named_parameters()) {
      EXPECT_NE(n, "lm_head.weight");
      if (n != "score.weight") EXPECT_TRUE(at::equal(t, body.at(n))) << n;
    }
    const auto out = dir + "_rm";
    save_causal_lm(*rm, out);
    auto j = read_json(out + "/config.json");
    EXPECT_EQ(j["architectures"], json::array({"LlamaForSequenceClassification"}));
    EXPECT_EQ(j["id2label"].size(), 1u);
    auto back = load_causal_lm(out, at::kCPU, at::kFloat);  // as saved: a score model without conversion
    EXPECT_TRUE(at::equal(*back->score_weight(), s));
    // a score checkpoint with head 'score' loads as is
    EXPECT_TRUE(at::equal(*load_causal_lm(out, at::kCPU, at::kFloat, HeadOptions{"score", 99})->score_weight(), s));
    std::filesystem::remove_all(dir);
    std::filesystem::remove_all(out);
  }
}

TEST(RewardModel, UnsupportedHeadsGiveClearErrors) {
  auto two = tiny_llama(false, true);
  two["id2label"] = {{"0", "bad"}, {"1", "good"}};
  expect_error([&] { parse_model_config(two, "/m/config.json"); }, "for \"id2label\"");
  expect_error([&] { parse_model_config(two, "/m/config.json"); }, "/m/config.json");
  auto no_labels = tiny_llama(false, true);
  no_labels.erase("id2label");
  expect_error([&] { parse_model_config(no_labels, "/m/config.json"); }, "transformers' default");
  auto n2 = tiny_gpt2(true);
  n2["num_labels"] = 2;
  expect_error([&] { parse_model_config(n2, "/g/config.json"); }, "Expected num_labels 1");
  auto wrong = tiny_llama(false, true);
  wrong["architectures"] = {"Qwen2ForSequenceClassification"};
  expect_error([&] { parse_model_config(wrong, "/m/config.json"); }, "\"LlamaForSequenceClassification\"");

  // a score checkpoint without score.weight
  auto cfg = parse_model_config(tiny_llama(true, true), "c");
  auto model = make_causal_lm(cfg, at::kCPU, at::kFloat, 1);
  const auto dir = temp_dir("missing");
  auto tensors = export_weights(*model, at::kFloat);
  tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [](auto& p) { return p.first == "score.weight"; }),
                tensors.end());
  write_checkpoint(dir, tensors, 5LL << 30);
  write_json(dir + "/config.json", model_config_to_json(cfg));
  auto msg = error_of([&] { load_causal_lm(dir, at::kCPU, at::kFloat); });
  EXPECT_NE(msg.find("missing key 'score.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  // sequence rewards of a causal model
  auto causal = make_causal_lm(parse_model_config(tiny_llama(true, false), "c"), at::kCPU, at::kFloat, 1);
  auto [ids, mask] = batch({2}, 2, 23, 1);
  expect_error([&] { sequence_rewards_nograd(*causal, ids, mask); }, "rewards need a score head");
  std::filesystem::remove_all(dir);
}

}  // namespace
