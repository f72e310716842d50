// Native tests of KV-cache generation, sampling and sequence log-probs on randomly initialised models (no Python):
// the cached path against full recomputation at every step, greedy generate() against an uncached greedy loop, EOS
// stops, sampling rules, chunking and completion-mask sums, and gradients against finite differences.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <set>

#include "causal_lm.h"
#include "generate.h"
#include "seq_logprobs.h"

namespace {

tdpo::ModelConfig tiny_config(const std::string& type) {
  tdpo::ModelConfig c;
  c.model_type = type;
  c.vocab_size = 50;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = type == "gpt2" ? 4 : 2;
  c.head_dim = 6;
  c.max_position_embeddings = 64;
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = type != "llama";
  c.hidden_act = type == "gpt2" ? "gelu_new" : "silu";
  if (type == "mistral") c.sliding_window = 3;
  c.eos_token_ids = {49};
  return c;
}

// A random model whose weights are scaled up so that logits are far from flat (distinct argmaxes).
std::shared_ptr<tdpo::CausalLM> tiny_model(const std::string& type, c10::ScalarType dtype = at::kFloat) {
  auto m = tdpo::make_causal_lm(tiny_config(type), c10::kCPU, dtype, /*seed=*/123);
  c10::NoGradGuard g;
  for (auto& [name, t] : m->named_parameters())
    if (t.dim() == 2) t.mul_(15.0);
  return m;
}

const std::vector<std::vector<int64_t>> kPrompts = {{3, 14, 15, 9, 26}, {5}, {35, 8, 9}};

std::pair<at::Tensor, at::Tensor> left_pad(const std::vector<std::vector<int64_t>>& p) {
  size_t P = 0;
  for (const auto& s : p) P = std::max(P, s.size());
  auto ids = at::full({(int64_t)p.size(), (int64_t)P}, 11, at::kLong);
  auto mask = at::zeros({(int64_t)p.size(), (int64_t)P}, at::kLong);
  for (size_t b = 0; b < p.size(); ++b)
    for (size_t t = 0; t < p[b].size(); ++t) {
      ids[b][P - p[b].size() + t] = p[b][t];
      mask[b][P - p[b].size() + t] = 1;
    }
  return {ids, mask};
}

class Generation : public ::testing::TestWithParam<std::string> {};

// At every step the logits from the KV cache equal a full forward over the whole left-padded sequence so far.
TEST_P(Generation, CachedStepsEqualFullRecompute) {
  auto model = tiny_model(GetParam());
  c10::NoGradGuard g;
  auto [ids, mask] = left_pad(kPrompts);
  tdpo::KVCache cache;
  auto step_logits = model->logits(ids, mask, &cache).select(1, -1);  // (B, V)
  for (int step = 0; step < 7; ++step) {
    auto full = model->logits(ids, mask).select(1, -1);  // (B, V) uncached
    EXPECT_LT((step_logits - full).abs().max().item<double>(), 2e-4) << GetParam() << " step " << step;
    EXPECT_EQ(cache.length(), ids.size(1));
    auto next = full.argmax(-1).unsqueeze(1);  // (B, 1)
    ids = at::cat({ids, next}, 1);
    mask = at::cat({mask, at::ones_like(next)}, 1);
    step_logits = model->logits(next, at::ones_like(next), &cache).select(1, -1);
  }
  ASSERT_EQ(cache.k.size(), 2u);
  EXPECT_EQ(cache.k[0].size(2), ids.size(1));
}

// generate() (cached) gives the tokens of an uncached greedy loop run on each prompt alone (no padding).
TEST_P(Generation, GreedyEqualsUncachedLoopPerPrompt) {
  auto model = tiny_model(GetParam());
  tdpo::GenerateOptions o;
  o.max_new_tokens = 8;
  o.eos_token_ids = std::vector<int64_t>{};
  auto res = tdpo::generate(*model, kPrompts, o);
  EXPECT_EQ(res.tokens.sizes(), (at::IntArrayRef{3, 8}));
  c10::NoGradGuard g;
  std::set<int64_t> distinct;
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    auto seq = kPrompts[b];
    std::vector<int64_t> want;
    for (int i = 0; i < 8; ++i) {
      auto ids = at::tensor(seq, at::kLong).unsqueeze(0);
      auto next = model->logits(ids, at::ones_like(ids)).select(1, -1).argmax(-1).item<int64_t>();
      want.push_back(next);
      seq.push_back(next);
      distinct.insert(next);
    }
    EXPECT_EQ(res.sequences()[b], want) << GetParam() << " prompt " << b;
  }
  EXPECT_GT(distinct.size(), 3u) << "degenerate model: the comparison would be weak";
}

INSTANTIATE_TEST_SUITE_P(Archs, Generation, ::testing::Values("llama", "mistral", "qwen2", "gpt2"));

TEST(Generate, StopsAtEosAndPadsTheRest) {
  auto model = tiny_model("llama");
  tdpo::GenerateOptions o;
  o.max_new_tokens = 8;
  o.eos_token_ids = std::vector<int64_t>{};
  auto free_run = tdpo::generate(*model, kPrompts, o).sequences();
  const int64_t eos = free_run[0][2];  // row 0 stops at its third token (or earlier if it appeared before)
  o.eos_token_ids = std::vector<int64_t>{eos};
  o.pad_token_id = 0;
  auto res = tdpo::generate(*model, kPrompts, o);
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    const auto& f = free_run[b];
    auto it = std::find(f.begin(), f.end(), eos);
    const int64_t want_len = it == f.end() ? 8 : (it - f.begin()) + 1;
    EXPECT_EQ(res.lengths[b].item<int64_t>(), want_len) << "row " << b;
    EXPECT_EQ(res.sequences()[b], std::vector<int64_t>(f.begin(), f.begin() + want_len)) << "row " << b;
    for (int64_t t = want_len; t < res.tokens.size(1); ++t) EXPECT_EQ(res.tokens[b][t].item<int64_t>(), 0);
  }
  EXPECT_LE(res.lengths[0].item<int64_t>(), 3);
}

TEST(Generate, SamplingIsSeededAndRespectsTopKTopP) {
  auto model = tiny_model("qwen2");
  tdpo::GenerateOptions o;
  o.max_new_tokens = 10;
  o.do_sample = true;
  o.temperature = 1.5;
  o.eos_token_ids = std::vector<int64_t>{};
  o.seed = 7;
  auto a = tdpo::generate(*model, kPrompts, o).sequences();
  auto b = tdpo::generate(*model, kPrompts, o).sequences();
  EXPECT_EQ(a, b);
  o.seed = 8;
  EXPECT_NE(tdpo::generate(*model, kPrompts, o).sequences(), a);
  // top_k = 1 and a tiny top_p both reduce sampling to greedy.
  tdpo::GenerateOptions greedy;
  greedy.max_new_tokens = 10;
  greedy.eos_token_ids = std::vector<int64_t>{};
  auto want = tdpo::generate(*model, kPrompts, greedy).sequences();
  o.top_k = 1;
  EXPECT_EQ(tdpo::generate(*model, kPrompts, o).sequences(), want);
  o.top_k = 0;
  o.top_p = 1e-6;
  EXPECT_EQ(tdpo::generate(*model, kPrompts, o).sequences(), want);
}

TEST(Generate, ChooseNextTokensFollowsTheDistribution) {
  // probabilities 0.5, 0.3, 0.15, 0.05
  auto logits = at::log(at::tensor({0.5, 0.3, 0.15, 0.05}, at::kFloat)).unsqueeze(0).repeat({20000, 1});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  tdpo::GenerateOptions o;
  o.do_sample = true;
  auto count = [&](const at::Tensor& t, int64_t v) { return (t == v).sum().item<double>() / t.numel(); };
  auto s = tdpo::choose_next_tokens(logits, o, gen);
  EXPECT_NEAR(count(s, 0), 0.5, 0.015);
  EXPECT_NEAR(count(s, 1), 0.3, 0.015);
  EXPECT_NEAR(count(s, 3), 0.05, 0.01);
  o.top_k = 2;  // renormalised over {0, 1}: 0.625, 0.375
  s = tdpo::choose_next_tokens(logits, o, gen);
  EXPECT_NEAR(count(s, 0), 0.625, 0.015);
  EXPECT_EQ(count(s, 2) + count(s, 3), 0.0);
  o.top_k = 0;
  o.top_p = 0.85;  // smallest set reaching 0.85: {0, 1, 2} -> 0.5/0.95, 0.3/0.95, 0.15/0.95
  s = tdpo::choose_next_tokens(logits, o, gen);
  EXPECT_NEAR(count(s, 2), 0.15 / 0.95, 0.015);
  EXPECT_EQ(count(s, 3), 0.0);
  o.top_p = 1.0;
  o.temperature = 0.5;  // p^2 renormalised: 0.25, 0.09, 0.0225, 0.0025 over 0.365
  s = tdpo::choose_next_tokens(logits, o, gen);
  EXPECT_NEAR(count(s, 0), 0.25 / 0.365, 0.015);
  o.do_sample = false;
  EXPECT_EQ(count(tdpo::choose_next_tokens(logits, o, gen), 0), 1.0);
}

TEST(Generate, RejectsBadArguments) {
  auto model = tiny_model("gpt2");
  tdpo::GenerateOptions o;
  o.max_new_tokens = 0;
  EXPECT_THROW(tdpo::generate(*model, kPrompts, o), c10::Error);
  o.max_new_tokens = 2;
  EXPECT_THROW(tdpo::generate(*model, {{1, 2}, {}}, o), c10::Error);
  EXPECT_THROW(tdpo::generate(*model, {{1, 50}}, o), c10::Error);  // id out of vocab
  auto [ids, mask] = left_pad(kPrompts);
  EXPECT_THROW(tdpo::generate(*model, ids, mask.flip(1), o), c10::Error);  // right padding
}

TEST(SeqLogprobs, ChunkingPaddingAndCompletionSums) {
  auto model = tiny_model("mistral");
  c10::NoGradGuard g;
  const std::vector<std::vector<int64_t>> seqs = {{1, 2, 3, 4, 5, 6, 7}, {9, 8, 7}, {4, 4, 30, 12, 40}};
  auto ids = at::zeros({3, 7}, at::kLong), mask = at::zeros({3, 7}, at::kLong);
  for (size_t b = 0; b < seqs.size(); ++b)
    for (size_t t = 0; t < seqs[b].size(); ++t) ids[b][t] = seqs[b][t], mask[b][t] = 1;
  auto one = tdpo::sequence_token_logprobs(*model, ids, mask, 1);
  auto all = tdpo::sequence_token_logprobs(*model, ids, mask, 1000);
  EXPECT_TRUE(at::allclose(one, all, 0, 1e-6));
  // Each sequence alone (no padding) gives the same numbers, computed here from full log_softmax in float64.
  for (size_t b = 0; b < seqs.size(); ++b) {
    auto sid = at::tensor(seqs[b], at::kLong).unsqueeze(0);
    auto lsm = at::log_softmax(model->logits(sid, at::ones_like(sid))[0].to(at::kDouble), -1);  // (T, V)
    for (size_t t = 1; t < seqs[b].size(); ++t)
      EXPECT_NEAR(all[b][t - 1].item<double>(), lsm[t - 1][seqs[b][t]].item<double>(), 2e-5) << b << "," << t;
  }
  // Completion mask: tokens 3.. of row 0, 1.. of row 1, none of row 2.
  auto cm = at::zeros({3, 7}, at::kLong);
  cm[0].narrow(0, 3, 4).fill_(1);
  cm[1].narrow(0, 1, 2).fill_(1);
  auto sums = tdpo::sequence_logprob_sums(*model, ids, mask, cm);
  EXPECT_NEAR(sums[0].item<double>(), all[0].narrow(0, 2, 4).sum().item<double>(), 1e-5);
  EXPECT_NEAR(sums[1].item<double>(), all[1].narrow(0, 0, 2).sum().item<double>(), 1e-5);
  EXPECT_EQ(sums[2].item<double>(), 0.0);
  cm[1][4] = 1;  // a pad position
  EXPECT_THROW(tdpo::sequence_logprob_sums(*model, ids, mask, cm), c10::Error);
}

// The gradient of a summed log-prob w.r.t. a few weights of every kind matches central finite differences
// (float64 model; the log-softmax runs in float32, hence the tolerance).
TEST(SeqLogprobs, GradientsMatchFiniteDifferences) {
  for (const std::string type : {"llama", "gpt2"}) {
    auto model = tdpo::make_causal_lm(tiny_config(type), c10::kCPU, at::kDouble, 5);
    auto ids = at::tensor({3, 7, 1, 22, 9, 40, 2, 5}, at::kLong).view({2, 4});
    auto mask = at::tensor({1, 1, 1, 1, 1, 1, 1, 0}, at::kLong).view({2, 4});
    auto cm = at::tensor({0, 1, 1, 1, 0, 0, 1, 0}, at::kLong).view({2, 4});
    auto loss = [&] { return tdpo::sequence_logprob_sums(*model, ids, mask, cm).sum(); };
    auto params = model->named_parameters();
    loss().backward();
    for (size_t pi : {size_t(0), size_t(2), params.size() / 2, params.size() - 1}) {
      auto& [name, p] = params[pi];
      auto flat = p.view({-1});
      for (int64_t j : {int64_t(0), flat.numel() / 3, flat.numel() - 1}) {
        const double h = 1e-2;
        double fp, fm;
        {
          c10::NoGradGuard g;
          const double v = flat[j].item<double>();
          flat[j] = v + h;
          fp = loss().item<double>();
          flat[j] = v - h;
          fm = loss().item<double>();
          flat[j] = v;
        }
        const double fd = (fp - fm) / (2 * h);
        const double an = p.grad().view({-1})[j].item<double>();
        EXPECT_NEAR(an, fd, 2e-3 + 2e-2 * std::abs(fd)) << type << " " << name << "[" << j << "]";
      }
    }
  }
}

}  // namespace
