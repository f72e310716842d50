// Native tests of the causal LMs (llama, mistral, qwen2, gpt2): per-token log-probs and greedy tokens against the
// independent float64 reference (test/reference/reference.py), padding invariance, save -> load round trips,
// zero-copy loading, and load errors.
#include <gtest/gtest.h>

#include <c10/core/GradMode.h>

#include <cmath>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <iostream>

#include "causal_lm.h"
#include "checkpoint_files.h"
#include "generate.h"
#include "llama.h"
#include "model_fixtures.h"
#include "seq_logprobs.h"
#include "weight_map.h"

using tdpo_test::FixtureSet;
namespace fs = std::filesystem;

namespace {

// Sequences of mixed lengths (vocab 96); the 12-token ones exceed the sliding windows used below.
const std::vector<std::vector<int64_t>> kSequences = {
    {1, 17, 42, 5, 88, 23, 9, 60, 31, 77, 4, 50},
    {1, 8, 95, 33},
    {3, 64, 12, 0, 71, 27, 45},
    {1, 90, 2, 56, 14, 39, 81, 6, 93, 20, 11, 68},
};
const std::vector<std::vector<int64_t>> kPrompts = {{1, 5, 9}, {4, 8, 15, 16, 23, 42}, {7}};
const int64_t kNewTokens = 6;

const std::vector<tdpo_test::FixtureCase>& cases() {
  static const std::vector<tdpo_test::FixtureCase> c = {
      {"llama", {"--arch", "llama", "--seed", "1"}},
      {"llama_tied_gqa1", {"--arch", "llama", "--tied", "--kv-heads", "1", "--seed", "2"}},
      {"llama_bf16_sharded", {"--arch", "llama", "--dtype", "bfloat16", "--shards", "3", "--seed", "3"}},
      {"llama_rope_llama3", {"--arch", "llama", "--rope-scaling", "llama3", "--seed", "4", "--transformers", "5"}},
      {"llama_rope_linear_bias",
       {"--arch", "llama", "--rope-scaling", "linear", "--attention-bias", "--mlp-bias", "--seed", "5"}},
      {"llama_head_dim", {"--arch", "llama", "--head-dim", "16", "--kv-heads", "1", "--seed", "6"}},
      {"mistral_window", {"--arch", "mistral", "--sliding-window", "4", "--kv-heads", "1", "--seed", "7"}},
      {"qwen2", {"--arch", "qwen2", "--seed", "8"}},
      {"qwen2_tied_window", {"--arch", "qwen2", "--tied", "--sliding-window", "3", "--seed", "9"}},
      {"gpt2_tied", {"--arch", "gpt2", "--tied", "--seed", "10"}},
      {"gpt2_untied_bf16", {"--arch", "gpt2", "--dtype", "bfloat16", "--shards", "2", "--seed", "11"}},
  };
  return c;
}

const FixtureSet& fixtures() {
  static const FixtureSet f = [] {
    nlohmann::json input = {{"sequences", kSequences},
                            {"generate", {{"prompts", kPrompts}, {"max_new_tokens", kNewTokens}}}};
    return tdpo_test::build_fixtures("models", cases(), input);
  }();
  return f;
}

#define REQUIRE_FIXTURES()                                                                         \
  do {                                                                                             \
    if (!fixtures().skip.empty()) GTEST_SKIP() << fixtures().skip;                                 \
    ASSERT_TRUE(fixtures().error.empty()) << fixtures().error;                                     \
  } while (0)

// Right- (or left-) padded (B, T) ids and mask from sequences.
std::pair<at::Tensor, at::Tensor> pad_batch(const std::vector<std::vector<int64_t>>& seqs, bool left, int64_t fill) {
  size_t T = 0;
  for (const auto& s : seqs) T = std::max(T, s.size());
  const int64_t B = static_cast<int64_t>(seqs.size());
  auto ids = at::full({B, static_cast<int64_t>(T)}, fill, at::kLong);
  auto mask = at::zeros({B, static_cast<int64_t>(T)}, at::kLong);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t off = left ? static_cast<int64_t>(T - seqs[b].size()) : 0;
    for (size_t t = 0; t < seqs[b].size(); ++t) {
      ids[b][off + t] = seqs[b][t];
      mask[b][off + t] = 1;
    }
  }
  return {ids, mask};
}

// Compares (B, T-1) log-probs of a padded batch with the reference's per-sequence lists: each token and each
// sequence's sum within `tol`.
double expect_matches_reference(const at::Tensor& lp, const nlohmann::json& ref, bool left, const std::string& what,
                                double tol) {
  const int64_t Tm1 = lp.size(1);
  double max_err = 0;
  for (size_t b = 0; b < kSequences.size(); ++b) {
    const auto want = ref["token_logps"][b].get<std::vector<double>>();
    EXPECT_EQ(want.size(), kSequences[b].size() - 1);
    if (want.size() != kSequences[b].size() - 1) continue;
    const int64_t off = left ? Tm1 - static_cast<int64_t>(want.size()) : 0;
    double got_sum = 0, want_sum = 0;
    for (size_t t = 0; t < want.size(); ++t) {
      const double g = lp[b][off + t].item<double>();
      EXPECT_NEAR(g, want[t], tol) << what << " sequence " << b << " token " << t + 1;
      max_err = std::max(max_err, std::abs(g - want[t]));
      got_sum += g;
      want_sum += want[t];
    }
    EXPECT_NEAR(got_sum, want_sum, tol) << what << " sequence " << b << " sum";
    // Pad positions hold exactly 0.
    for (int64_t t = 0; t < Tm1; ++t)
      if (t < off || t >= off + static_cast<int64_t>(want.size())) EXPECT_EQ(lp[b][t].item<float>(), 0.0f);
  }
  return max_err;
}

class ModelVsReference : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelVsReference, TokenLogprobsAndGreedyMatchFloat64Reference) {
  REQUIRE_FIXTURES();
  const std::string name = GetParam();
  const auto& ref = fixtures().ref.at(name);
  auto model = tdpo::load_causal_lm(fixtures().dir(name), c10::kCPU, at::kFloat);
  c10::NoGradGuard no_grad;
  {  // right padding (training layout), small chunks to exercise the chunking
    auto [ids, mask] = pad_batch(kSequences, /*left=*/false, /*fill=*/0);
    auto lp = tdpo::sequence_token_logprobs(*model, ids, mask, /*chunk_tokens=*/5);
    ASSERT_EQ(lp.sizes(), (at::IntArrayRef{4, 11}));
    const double err = expect_matches_reference(lp, ref, false, name + " right-padded", 1e-4);
    std::cout << "[ measured ] " << name << ": max |token log-prob - float64 reference| = " << err << "\n";
    // Logits at each sequence's last token.
    auto logits = model->logits(ids, mask);  // (B, T, V)
    for (size_t b = 0; b < kSequences.size(); ++b) {
      auto want = ref["logits_last"][b].get<std::vector<double>>();
      auto got = logits[b][kSequences[b].size() - 1].to(at::kDouble);
      auto w = at::tensor(want, at::kDouble);
      EXPECT_LT((got - w).abs().max().item<double>(), 1e-4) << name << " logits_last " << b;
    }
  }
  {  // left padding (generation layout), pads filled with a real token id: positions come from the mask
    auto [ids, mask] = pad_batch(kSequences, /*left=*/true, /*fill=*/7);
    auto lp = tdpo::sequence_token_logprobs(*model, ids, mask);
    expect_matches_reference(lp, ref, true, name + " left-padded", 1e-4);
  }
  // Greedy generation with the KV cache equals the reference's greedy tokens (no EOS stop there).
  tdpo::GenerateOptions opts;
  opts.max_new_tokens = kNewTokens;
  opts.eos_token_ids = std::vector<int64_t>{};
  auto got = tdpo::generate(*model, kPrompts, opts).sequences();
  for (size_t p = 0; p < kPrompts.size(); ++p)
    EXPECT_EQ(got[p], ref["greedy"][p].get<std::vector<int64_t>>()) << name << " greedy prompt " << p;
}

INSTANTIATE_TEST_SUITE_P(Models, ModelVsReference,
                         ::testing::Values("llama", "llama_tied_gqa1", "llama_bf16_sharded", "llama_rope_llama3",
                                           "llama_rope_linear_bias", "llama_head_dim", "mistral_window", "qwen2",
                                           "qwen2_tied_window", "gpt2_tied", "gpt2_untied_bf16"));

TEST(Models, Bfloat16ModelIsCloseToReference) {
  REQUIRE_FIXTURES();
  auto model = tdpo::load_causal_lm(fixtures().dir("llama_bf16_sharded"), c10::kCPU, at::kBFloat16);
  EXPECT_EQ(model->dtype(), at::kBFloat16);
  c10::NoGradGuard no_grad;
  auto [ids, mask] = pad_batch(kSequences, false, 0);
  auto lp = tdpo::sequence_token_logprobs(*model, ids, mask);
  const auto& ref = fixtures().ref.at("llama_bf16_sharded");
  // bf16 activations: a loose bound, but far below the spread of log-probs (several nats).
  double max_err = 0;
  for (size_t b = 0; b < kSequences.size(); ++b) {
    auto want = ref["token_logps"][b].get<std::vector<double>>();
    for (size_t t = 0; t < want.size(); ++t) max_err = std::max(max_err, std::abs(lp[b][t].item<double>() - want[t]));
  }
  EXPECT_LT(max_err, 0.5);
}

TEST(Models, SaveThenLoadIsBitIdentical) {
  REQUIRE_FIXTURES();
  for (const std::string name :
       {"llama_bf16_sharded", "gpt2_untied_bf16", "qwen2_tied_window", "llama", "llama_rope_llama3"}) {
    const auto src = fixtures().dir(name);
    auto a = tdpo::load_causal_lm(src, c10::kCPU, at::kFloat);
    const auto out = tdpo_test::make_temp_dir("save");
    tdpo::save_causal_lm(*a, out, /*max_shard_bytes=*/8192);  // several shards
    EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json")) << name;
    auto b = tdpo::load_causal_lm(out, c10::kCPU, at::kFloat);
    auto pa = a->named_parameters(), pb = b->named_parameters();
    ASSERT_EQ(pa.size(), pb.size()) << name;
    for (size_t i = 0; i < pa.size(); ++i) {
      EXPECT_EQ(pa[i].first, pb[i].first);
      EXPECT_TRUE(at::equal(pa[i].second, pb[i].second)) << name << " " << pa[i].first;
    }
    EXPECT_EQ(b->config().torch_dtype, a->config().torch_dtype) << name;
    // The written files hold exactly the source files' tensors (same keys, dtype, layout and bits).
    auto ra = tdpo::CheckpointReader::open(src), rb = tdpo::CheckpointReader::open(out);
    auto na = ra.names(), nb = rb.names();
    std::sort(na.begin(), na.end());
    std::sort(nb.begin(), nb.end());
    EXPECT_EQ(na, nb) << name;
    for (const auto& k : na) {
      auto ta = ra.tensor(k), tb = rb.tensor(k);
      EXPECT_EQ(ta.scalar_type(), tb.scalar_type()) << name << " " << k;
      EXPECT_TRUE(ta.sizes() == tb.sizes() && at::equal(ta, tb)) << name << " " << k;
    }
    fs::remove_all(out);
  }
}

TEST(Models, SaveInAnotherDtypeRoundsOnce) {
  REQUIRE_FIXTURES();
  auto a = tdpo::load_causal_lm(fixtures().dir("gpt2_tied"), c10::kCPU, at::kFloat);
  const auto out = tdpo_test::make_temp_dir("save16");
  tdpo::save_causal_lm(*a, out, 5LL << 30, "bfloat16");
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  auto j = nlohmann::json::parse(tdpo_test::read_text(out + "/config.json"));
  EXPECT_EQ(j.value("torch_dtype", ""), "bfloat16");
  EXPECT_EQ(j.value("n_embd", 0), 32);  // gpt2 names are kept
  auto r = tdpo::CheckpointReader::open(out);
  EXPECT_EQ(r.tensor("transformer.h.0.attn.c_attn.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(r.tensor("transformer.h.0.attn.c_attn.weight").sizes(), (at::IntArrayRef{32, 96}));  // Conv1D (in, out)
  auto b = tdpo::load_causal_lm(out, c10::kCPU, at::kFloat);
  auto pa = a->named_parameters(), pb = b->named_parameters();
  for (size_t i = 0; i < pa.size(); ++i)
    EXPECT_TRUE(at::equal(pa[i].second.to(at::kBFloat16).to(at::kFloat), pb[i].second)) << pa[i].first;
  fs::remove_all(out);
}

TEST(Models, LoadIsZeroCopyAndParametersStayTrainable) {
  REQUIRE_FIXTURES();
  const auto dir = fixtures().dir("llama");
  auto cfg = tdpo::load_model_config(dir + "/config.json");
  auto reader = tdpo::CheckpointReader::open(dir);
  auto model = std::make_shared<tdpo::LlamaModel>(cfg);
  tdpo::load_weights(*model, reader, dir, c10::kCPU, at::kFloat);
  const auto& file = reader.files().at(0);
  const auto* lo = file->mapping_begin();
  const auto* hi = lo + file->mapping_size();
  for (const auto& [name, t] : model->named_parameters()) {
    const auto* p = static_cast<const uint8_t*>(t.data_ptr());
    EXPECT_TRUE(p >= lo && p < hi) << name << " was copied";
    EXPECT_TRUE(t.requires_grad()) << name;
  }
  // A gradient step writes the parameter (copy-on-write) and leaves the file unchanged.
  auto w = model->named_parameters()[1].second;
  const auto key = model->named_parameters()[1].first;
  auto before = w.clone();
  auto [ids, mask] = pad_batch(kSequences, false, 0);
  auto loss = -tdpo::sequence_token_logprobs(*model, ids, mask).sum();
  loss.backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(w.grad().abs().sum().item<double>(), 0);
  {
    c10::NoGradGuard g;
    w.sub_(w.grad() * 0.1);
  }
  EXPECT_FALSE(at::equal(w, before));
  EXPECT_TRUE(at::equal(tdpo::CheckpointReader::open(dir).tensor(key), before)) << "file changed";
}

// Copies fixture `name` to a new folder with its tensors edited by `edit`, and returns the folder.
std::string edited_copy(const std::string& name,
                        const std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>& edit) {
  const auto src = fixtures().dir(name);
  auto r = tdpo::CheckpointReader::open(src);
  std::vector<std::pair<std::string, at::Tensor>> t;
  for (const auto& n : r.names()) t.emplace_back(n, r.tensor(n).clone());
  edit(t);
  const auto out = tdpo_test::make_temp_dir("bad");
  tdpo::write_checkpoint(out, t);
  fs::copy_file(src + "/config.json", out + "/config.json");
  return out;
}

// Loads `dir` (then removes it) and returns the error message, or "" when it loads.
std::string load_error(const std::string& dir) {
  std::string msg;
  try {
    tdpo::load_causal_lm(dir, c10::kCPU, at::kFloat);
  } catch (const c10::Error& e) {
    msg = e.what_without_backtrace();
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return msg;
}

TEST(Models, LoadErrorsNameTheKeyAndType) {
  REQUIRE_FIXTURES();
  {
    auto dir = edited_copy("llama", [](auto& t) {
      t.erase(std::remove_if(t.begin(), t.end(),
                             [](auto& p) { return p.first == "model.layers.1.self_attn.k_proj.weight"; }),
              t.end());
    });
    auto e = load_error(dir);
    EXPECT_NE(e.find("missing key 'model.layers.1.self_attn.k_proj.weight'"), std::string::npos) << e;
    EXPECT_NE(e.find(dir), std::string::npos) << e;
  }
  {
    auto dir = edited_copy("gpt2_tied", [](auto& t) { t.emplace_back("transformer.h.0.attn.extra", at::zeros({2})); });
    auto e = load_error(dir);
    EXPECT_NE(e.find("unknown key 'transformer.h.0.attn.extra'"), std::string::npos) << e;
  }
  {
    auto dir = edited_copy("qwen2", [](auto& t) {
      for (auto& p : t)
        if (p.first == "model.layers.0.self_attn.q_proj.bias") p.second = at::zeros({31});
    });
    auto e = load_error(dir);
    EXPECT_NE(e.find("'model.layers.0.self_attn.q_proj.bias' has shape [31]"), std::string::npos) << e;
    EXPECT_NE(e.find("expects [32]"), std::string::npos) << e;
  }
  {  // HF buffers on the allow-list are accepted, and GPT-2 keys without "transformer." load too
    auto dir = edited_copy("gpt2_tied", [](auto& t) {
      for (auto& p : t) p.first = p.first.substr(std::string("transformer.").size());
      t.emplace_back("h.0.attn.bias", at::ones({1, 1, 4, 4}));
      t.emplace_back("h.1.attn.masked_bias", at::ones({1}));
    });
    EXPECT_EQ(load_error(dir), "");
  }
  {
    const auto dir = tdpo_test::make_temp_dir("badtype");
    auto j = nlohmann::json::parse(tdpo_test::read_text(fixtures().dir("llama") + "/config.json"));
    j["model_type"] = "falcon";
    tdpo_test::write_text(dir + "/config.json", j.dump());
    fs::copy_file(fixtures().dir("llama") + "/model.safetensors", dir + "/model.safetensors");
    auto e = load_error(dir);
    EXPECT_NE(e.find("falcon"), std::string::npos) << e;
  }
}

TEST(Models, WeightMapListsEveryParameterInOrder) {
  REQUIRE_FIXTURES();
  for (const auto& c : cases()) {
    auto model = tdpo::load_causal_lm(fixtures().dir(c.name), c10::kCPU, at::kFloat);
    auto map = tdpo::weight_map(model->config());
    auto params = model->named_parameters();
    ASSERT_EQ(params.size(), map.weights.size()) << c.name;
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(params[i].first, map.weights[i].key) << c.name;
      EXPECT_EQ(params[i].second.sizes().vec(), map.weights[i].model_shape()) << c.name;
    }
    // A tied head is the embedding itself, counted once.
    if (model->config().tie_word_embeddings)
      EXPECT_TRUE(model->lm_head_weight().is_same(params[0].second)) << c.name;
  }
}

}  // namespace
