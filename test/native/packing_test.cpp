// Native tests of padding-free packing: segment positions and block-diagonal attention masks checked by hand, the
// first-fit-decreasing plan, packed hidden states equal to the padded forward (llama with GQA, mistral sliding
// window, qwen2 biases, gpt2 learned positions; float64), the fused DPO loss and every parameter gradient with
// packing equal to the padded path (float64 and float32, separable and general loss paths, through
// PreferenceTrainer too), and the errors (KV cache with a segment mask, left padding, pads with labels).
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <map>
#include <string>
#include <vector>

#include "attention.h"
#include "causal_lm.h"
#include "error_expect.h"
#include "fused_dpo.h"
#include "tiny_config.h"
#include "packing.h"
#include "preference_trainer.h"

namespace {

at::Tensor long2d(const std::vector<std::vector<int64_t>>& rows) {
  const int64_t B = rows.size(), S = rows[0].size();
  auto t = at::zeros({B, S}, at::kLong);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) t[b][s] = rows[b][s];
  return t;
}

void expect_equal_long(const at::Tensor& got, const std::vector<std::vector<int64_t>>& want) {
  ASSERT_EQ(got.dim(), 2);
  ASSERT_EQ(got.size(0), (int64_t)want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    ASSERT_EQ(got.size(1), (int64_t)want[b].size());
    for (size_t s = 0; s < want[b].size(); ++s) EXPECT_EQ(got[b][s].item<int64_t>(), want[b][s]) << b << "," << s;
  }
}

TEST(PackingSegments, PositionsRestartInEverySegment) {
  // Segment masks: positions count the earlier tokens of the same segment; pads are 0.
  auto pos = tdpo::positions_from_mask(long2d({{1, 1, 1, 2, 2, 0}, {1, 1, 0, 0, 0, 0}, {1, 1, 2, 2, 2, 3}}));
  expect_equal_long(pos, {{0, 1, 2, 0, 1, 0}, {0, 1, 0, 0, 0, 0}, {0, 1, 0, 1, 2, 0}});
  // Segments need not be contiguous (a segment interrupted by another continues its count), ids need not start at 1.
  expect_equal_long(tdpo::positions_from_mask(long2d({{2, 1, 2, 1, 0, 5, 5}})), {{0, 0, 1, 1, 0, 0, 1}});
  // 0/1 masks keep cumsum - 1 with pads clamped to 0 (left and right padding, internal pads).
  expect_equal_long(tdpo::positions_from_mask(long2d({{0, 0, 1, 1, 1}, {1, 1, 0, 1, 0}})),
                    {{0, 0, 0, 1, 2}, {0, 1, 1, 2, 2}});
}

TEST(PackingSegments, AttentionIsBlockDiagonalCausal) {
  // One row: segment 1 = columns 0-1, segment 2 = columns 2-4, pad at 5.
  auto a = tdpo::attention_allowed(long2d({{1, 1, 2, 2, 2, 0}}), 6, 0);  // (1, 1, 6, 6)
  ASSERT_EQ(a.sizes(), at::IntArrayRef({1, 1, 6, 6}));
  const std::vector<std::vector<int64_t>> want = {
      {1, 0, 0, 0, 0, 0}, {1, 1, 0, 0, 0, 0},  // segment 1
      {0, 0, 1, 0, 0, 0}, {0, 0, 1, 1, 0, 0}, {0, 0, 1, 1, 1, 0},  // segment 2
      {1, 1, 1, 1, 1, 0},  // the pad query keeps the 0/1 rule: every earlier non-pad key
  };
  expect_equal_long(a[0][0].to(at::kLong), want);
  // Window 2 inside segment 2; only the last 3 queries (T = 3 of S = 6).
  auto w = tdpo::attention_allowed(long2d({{1, 1, 2, 2, 2, 0}}), 3, 2);  // (1, 1, 3, 6)
  expect_equal_long(w[0][0].to(at::kLong), {{0, 0, 1, 1, 0, 0}, {0, 0, 0, 1, 1, 0}, {0, 0, 0, 0, 1, 0}});
  // A 0/1 mask is unchanged by the segment rule: causal over non-pad keys.
  auto z = tdpo::attention_allowed(long2d({{0, 1, 1, 0}}), 4, 0);
  expect_equal_long(z[0][0].to(at::kLong), {{0, 0, 0, 0}, {0, 1, 0, 0}, {0, 1, 1, 0}, {0, 1, 1, 0}});
}

TEST(PackingPlan, FirstFitDecreasingByHand) {
  // Lengths 5, 3, 2, 6, 1, 0 with T = 6. Longest first: 6 (#3) -> row 0 (full); 5 (#0) -> row 1; 3 (#1) -> row 2;
  // 2 (#2) -> row 2 (3 + 2 <= 6); 1 (#4) -> row 1 (5 + 1); the empty #5 is not placed.
  const std::vector<int64_t> lens = {5, 3, 2, 6, 1, 0};
  auto mask = at::zeros({6, 6}, at::kLong);
  auto ids = at::zeros({6, 6}, at::kLong);
  for (int64_t n = 0; n < 6; ++n)
    for (int64_t t = 0; t < lens[n]; ++t) {
      mask[n][t] = 1;
      ids[n][t] = 10 * (n + 1) + t;
    }
  auto p = tdpo::plan_packing(mask);
  EXPECT_EQ(p.rows, 3);
  EXPECT_EQ(p.length, 6);
  EXPECT_EQ(p.tokens(), 17);
  EXPECT_EQ(p.row_of, (std::vector<int64_t>{1, 2, 2, 0, 1, -1}));
  EXPECT_EQ(p.offset_of, (std::vector<int64_t>{0, 0, 3, 0, 5, 0}));
  EXPECT_EQ(p.segment_of, (std::vector<int64_t>{1, 1, 2, 1, 2, 0}));
  auto b = tdpo::pack_batch(p, ids, /*pad_id=*/7);
  expect_equal_long(b.input_ids, {{40, 41, 42, 43, 44, 45}, {10, 11, 12, 13, 14, 50}, {20, 21, 22, 30, 31, 7}});
  expect_equal_long(b.segment_mask, {{1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 2}, {1, 1, 1, 2, 2, 0}});
  // Unpacking the packed ids gives back the padded ids, zeros at pads.
  auto back = tdpo::unpack_rows(p, b, b.input_ids.to(at::kDouble).unsqueeze(-1)).squeeze(-1).to(at::kLong);
  EXPECT_TRUE(back.equal(ids * mask));
  // A pack length of 12 puts everything in 2 rows: 6 + 5 + 1 and 3 + 2.
  auto p12 = tdpo::plan_packing(mask, 12);
  EXPECT_EQ(p12.rows, 2);
  EXPECT_EQ(p12.row_of, (std::vector<int64_t>{0, 1, 1, 0, 0, -1}));
}

TEST(PackingPlan, RejectsBadMasks) {
  expect_error([] { tdpo::plan_packing(long2d({{1, 1, 0}, {0, 1, 1}})); }, "right padding");
  expect_error([] { tdpo::plan_packing(long2d({{1, 2, 0}})); }, "0/1 attention_mask");
  expect_error([] { tdpo::plan_packing(long2d({{1, 1, 0}}), 2); }, "pack length must be >= the batch length T = 3");
}

// The shared tiny config, plus one KV head for mistral (4 query heads per KV head) with a window shorter than most
// sequences below, and biases + tied head for qwen2.
tdpo::ModelConfig tiny(const std::string& type) {
  auto c = tiny_config(type);
  if (type == "mistral") {
    c.num_key_value_heads = 1;
    c.sliding_window = 3;
  }
  if (type == "qwen2") {
    c.attention_bias = true;
    c.tie_word_embeddings = true;
  }
  return c;
}

std::shared_ptr<tdpo::CausalLM> model_of(const std::string& type, c10::ScalarType dtype) {
  auto m = tdpo::make_causal_lm(tiny(type), c10::kCPU, dtype, /*seed=*/3);
  c10::NoGradGuard g;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);  // the same model on every call
  for (auto& [name, t] : m->named_parameters()) {
    if (t.dim() == 2) t.mul_(10.0);  // far from a flat model, so that masking mistakes show
    if (name.find("bias") != std::string::npos) t.normal_(0.0, 0.3, gen);  // non-zero biases (qwen2 q/k/v, gpt2)
  }
  return m;
}

// A right-padded (N, T) batch of the given lengths with random ids; pads hold `pad`.
std::pair<at::Tensor, at::Tensor> batch_of(const std::vector<int64_t>& lens, int64_t T, int64_t vocab, uint64_t seed,
                                           int64_t pad = 0) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t N = lens.size();
  auto ids = at::randint(1, vocab, {N, T}, gen, at::TensorOptions().dtype(at::kLong));
  auto mask = at::zeros({N, T}, at::kLong);
  for (int64_t n = 0; n < N; ++n) mask[n].narrow(0, 0, lens[n]).fill_(1);
  return {ids.masked_fill(mask.eq(0), pad), mask};
}

const std::vector<int64_t> kLens = {9, 2, 5, 12, 3, 7, 1, 4};  // N = 8, T = 12: packs into 4 rows of 12
const int64_t kT = 12;

TEST(PackedForward, HiddenStatesEqualPaddedForEveryArchitecture) {
  for (const std::string type : {"llama", "mistral", "qwen2", "gpt2"}) {
    SCOPED_TRACE(type);
    auto m = model_of(type, at::kDouble);
    auto [ids, mask] = batch_of(kLens, kT, 40, 11, /*pad=*/5);
    c10::NoGradGuard g;
    auto want = m->hidden_states(ids, mask);  // (N, T, H)
    tdpo::PackPlan plan;
    auto got = tdpo::packed_hidden_states(*m, ids, mask, at::Tensor(), 0, &plan);  // (N, T, H)
    EXPECT_EQ(plan.rows, 4);
    EXPECT_LT(plan.rows, (int64_t)kLens.size());
    ASSERT_EQ(got.sizes(), want.sizes());
    auto keep = mask.unsqueeze(-1).to(at::kDouble);
    EXPECT_LT(((got - want) * keep).abs().max().item<double>(), 1e-10);
    EXPECT_EQ((got * (1 - keep)).abs().max().item<double>(), 0.0);  // zeros at pads
    EXPECT_GT(want.abs().mean().item<double>(), 0.1);
    // A longer pack length (2T) merges further, same values.
    auto got2 = tdpo::packed_hidden_states(*m, ids, mask, at::Tensor(), 2 * kT, &plan);
    EXPECT_EQ(plan.rows, 2);
    EXPECT_LT(((got2 - want) * keep).abs().max().item<double>(), 1e-10);
    // Control: without segment ids (one 0/1 segment per packed row) the packed values are wrong.
    auto packed = tdpo::pack_batch(plan, ids);
    auto mixed = tdpo::unpack_rows(plan, packed, m->hidden_states(packed.input_ids, packed.segment_mask.clamp_max(1)));
    EXPECT_GT(((mixed - want) * keep).abs().max().item<double>(), 1e-3);
  }
}

// Shifted labels of a right-padded batch: labels[t] = ids[t + 1] while t + 1 is a token, else -100.
at::Tensor labels_of(const at::Tensor& ids, const at::Tensor& mask) {
  const int64_t T = ids.size(1);
  auto labels = at::full_like(ids, -100);
  auto next_ok = mask.narrow(1, 1, T - 1).eq(1);
  labels.narrow(1, 0, T - 1).copy_(at::where(next_ok, ids.narrow(1, 1, T - 1), at::full_like(next_ok, -100, at::kLong)));
  return labels;
}

// Loss and every parameter gradient of the fused DPO loss, padded or packed.
std::pair<double, std::map<std::string, at::Tensor>> loss_and_grads(tdpo::CausalLM& m, const at::Tensor& ids,
                                                                    const at::Tensor& mask, const at::Tensor& ref,
                                                                    const tdpo::DPOLossConfig& cfg, bool packed) {
  for (auto& [name, t] : m.named_parameters())
    if (t.grad().defined()) t.mutable_grad().reset();
  auto labels = labels_of(ids, mask);
  auto hidden = packed ? tdpo::packed_hidden_states(m, ids, mask, labels) : m.hidden_states(ids, mask);
  tdpo::FusedLogpsOptions opt;
  opt.chunk_rows = 16;  // several chunks
  auto out = tdpo::fused_dpo_loss(hidden, m.lm_head_weight(), m.lm_head_bias(), labels, ref, cfg, opt);
  out.loss.backward();
  std::map<std::string, at::Tensor> g;
  for (auto& [name, t] : m.named_parameters()) g[name] = t.grad().defined() ? t.grad().clone() : at::zeros_like(t);
  return {out.loss.item<double>(), g};
}

void check_loss_and_grads(const std::string& type, c10::ScalarType dtype, const tdpo::DPOLossConfig& cfg, double tol) {
  auto m = model_of(type, dtype);
  auto [ids, mask] = batch_of(kLens, kT, 40, 21);  // P = 4 pairs: rows 0-3 chosen, 4-7 rejected
  auto ref = at::randn({8}, at::TensorOptions().dtype(dtype)) * 3;
  auto [lp, gp] = loss_and_grads(*m, ids, mask, ref, cfg, false);
  auto [lk, gk] = loss_and_grads(*m, ids, mask, ref, cfg, true);
  EXPECT_NEAR(lk, lp, tol * (1 + std::abs(lp)));
  double gmax = 0;
  for (auto& [name, g] : gp) {
    const double scale = 1 + g.abs().max().item<double>();
    EXPECT_LT((gk.at(name) - g).abs().max().item<double>(), tol * scale) << name;
    gmax = std::max(gmax, g.abs().max().item<double>());
  }
  EXPECT_GT(gmax, 1e-3);  // the gradients are not trivially zero
}

TEST(PackedForward, FusedDPOLossAndGradientsEqualPaddedFloat64) {
  tdpo::DPOLossConfig sig;  // sigmoid: the pair-separable fast path
  tdpo::DPOLossConfig general;
  general.terms = {{"aot", 1.0}, {"sft", 0.5}};  // not pair-separable: the general autograd path
  for (const std::string type : {"llama", "mistral", "qwen2", "gpt2"}) {
    SCOPED_TRACE(type);
    check_loss_and_grads(type, at::kDouble, sig, 1e-9);
    check_loss_and_grads(type, at::kDouble, general, 1e-9);
  }
}

TEST(PackedForward, FusedDPOLossAndGradientsEqualPaddedFloat32) {
  tdpo::DPOLossConfig sig;
  for (const std::string type : {"llama", "gpt2"}) {
    SCOPED_TRACE(type);
    check_loss_and_grads(type, at::kFloat, sig, 1e-5);
  }
}

TEST(PackedForward, TrainerAndReferenceForwardWithPaddingFree) {
  auto [ids, mask] = batch_of(kLens, kT, 40, 31, /*pad=*/3);
  tdpo::PreferenceBatch b;
  b.input_ids = ids;
  b.attention_mask = mask;
  b.labels = labels_of(ids, mask);
  b.ref_logps = at::randn({8}, at::kFloat);
  tdpo::DPOLossConfig cfg;
  auto padded = model_of("qwen2", at::kDouble), packed = model_of("qwen2", at::kDouble);
  tdpo::PreferenceTrainer tp(padded, cfg, {}), tk(packed, cfg, {});
  tk.set_padding_free(true);
  EXPECT_TRUE(tk.padding_free());
  for (int step = 0; step < 2; ++step) {  // two optimizer steps: the second forward runs on updated weights
    auto rp = tp.accumulate(b, 1.0), rk = tk.accumulate(b, 1.0);
    EXPECT_NEAR(rk.loss, rp.loss, 1e-9 * (1 + std::abs(rp.loss)));
    EXPECT_EQ(rk.tokens, rp.tokens);
    EXPECT_TRUE(rk.policy_logps.allclose(rp.policy_logps, 1e-9, 1e-9));
    auto pp = padded->named_parameters(), pk = packed->named_parameters();
    for (size_t i = 0; i < pp.size(); ++i)
      EXPECT_LT((pk[i].second.grad() - pp[i].second.grad()).abs().max().item<double>(), 1e-9) << pp[i].first;
    auto sp = tp.step(1e-2, 1.0), sk = tk.step(1e-2, 1.0);
    EXPECT_NEAR(sk.grad_norm, sp.grad_norm, 1e-9 * (1 + sp.grad_norm));
  }
  // The reference forward (sequence_logps_nograd) with packing.
  auto want = tdpo::sequence_logps_nograd(*padded, ids, mask, b.labels, {});
  auto got = tdpo::sequence_logps_nograd(*padded, ids, mask, b.labels, {}, /*padding_free=*/true);
  EXPECT_TRUE(got.logps.allclose(want.logps, 1e-6, 1e-6));  // float32 sums of float64 values
  EXPECT_TRUE(got.token_counts.equal(want.token_counts));
}

TEST(PackedForward, Errors) {
  auto m = model_of("llama", at::kFloat);
  auto ids = long2d({{4, 5, 6, 7}});
  // A segment mask with a KV cache is refused, naming both.
  tdpo::KVCache cache;
  expect_error([&] { m->hidden_states(ids, long2d({{1, 1, 2, 2}}), &cache); }, "KV cache needs a 0/1 attention_mask");
  // The same ids with a 0/1 mask and a cache still work (generation).
  EXPECT_EQ(m->hidden_states(ids, long2d({{1, 1, 1, 1}}), &cache).size(1), 4);
  // checked_mask rejects segment ids unless asked to accept them; negative values always.
  expect_error([&] { tdpo::checked_mask(ids, long2d({{1, 2, 2, 0}}), 40); }, "must hold 0 or 1");
  EXPECT_EQ(tdpo::checked_mask(ids, long2d({{1, 2, 2, 0}}), 40, true).max().item<int64_t>(), 2);
  expect_error([&] { m->hidden_states(ids, long2d({{1, -1, 1, 0}})); }, "segment ids >= 1");
  // Packing: left padding and labels on pads are refused.
  expect_error([&] { tdpo::packed_hidden_states(*m, ids, long2d({{0, 1, 1, 1}})); }, "right padding");
  expect_error([&] { tdpo::packed_hidden_states(*m, ids, long2d({{1, 1, 0, 0}}), long2d({{5, -100, 7, -100}})); },
               "labels score 1 pad position");
}

}  // namespace
