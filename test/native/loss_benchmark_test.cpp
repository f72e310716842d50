// The loss benchmark's harness: fused and naive paths agree on its inputs (the comparison the GPU benchmark reports),
// its FLOP count and timings are what they say, and bad options are named.
#include <gtest/gtest.h>

#include <cmath>

#include "error_expect.h"
#include "loss_benchmark.h"

using namespace tdpo;

namespace {

LossBenchOptions small(const std::string& impl) {
  LossBenchOptions o;
  o.pairs = 2;
  o.seq = 12;
  o.prompt = 3;
  o.hidden = 16;
  o.vocab = 50;
  o.iters = 3;
  o.warmup = 1;
  o.chunk_rows = 7;  // several chunks, one ending inside a sequence
  o.impl = impl;
  o.compare = true;
  o.seed = 5;
  return o;
}

}  // namespace

TEST(LossBenchmark, FusedAndNaiveAgreeInFloat64AndFloat32) {
  for (const char* impl : {"fused", "naive"}) {
    auto r64 = loss_benchmark(small(impl), at::kCPU, at::kDouble);
    EXPECT_LT(r64.loss_rel_diff, 1e-12) << impl;
    EXPECT_LT(r64.grad_hidden_rel_diff, 1e-12) << impl;
    EXPECT_LT(r64.grad_weight_rel_diff, 1e-12) << impl;
    auto r32 = loss_benchmark(small(impl), at::kCPU, at::kFloat);
    EXPECT_LT(r32.loss_rel_diff, 1e-5) << impl;
    EXPECT_LT(r32.grad_hidden_rel_diff, 1e-5) << impl;
    EXPECT_LT(r32.grad_weight_rel_diff, 1e-5) << impl;
    // same seed, same inputs: the float32 loss is the float64 one to float32 precision, and it is not log 2
    EXPECT_NEAR(r32.loss, r64.loss, 1e-5 * std::abs(r64.loss));
    EXPECT_GT(std::abs(r64.loss - std::log(2.0)), 1e-3);
    EXPECT_GT(r64.ms_median, 0);
    EXPECT_LE(r64.ms_min, r64.ms_median);
    EXPECT_EQ(r64.peak_bytes, 0);  // CPU: not measured
    EXPECT_EQ(r64.matmul_flop, 6.0 * (4 * (12 - 3)) * 16 * 50);
  }
  // bfloat16: the fused path against full bf16 logits, within bf16 tolerances
  auto bf = loss_benchmark(small("fused"), at::kCPU, at::kBFloat16);
  EXPECT_LT(bf.loss_rel_diff, 1e-2);
  EXPECT_LT(bf.grad_hidden_rel_diff, 2e-2);
  EXPECT_LT(bf.grad_weight_rel_diff, 2e-2);
}

TEST(LossBenchmark, OptionsFromJsonAndErrors) {
  auto o = loss_bench_options_from_json(R"({"pairs":3,"seq":64,"prompt":8,"hidden":32,"vocab":100,"iters":2,"warmup":0,"chunkRows":16,"impl":"naive","compare":true,"seed":9})");
  EXPECT_EQ(o.pairs, 3);
  EXPECT_EQ(o.seq, 64);
  EXPECT_EQ(o.prompt, 8);
  EXPECT_EQ(o.chunk_rows, 16);
  EXPECT_EQ(o.impl, "naive");
  EXPECT_TRUE(o.compare);
  EXPECT_EQ(o.seed, 9u);
  expect_error([&] { loss_bench_options_from_json(R"({"pairs":1.5})"); }, "Expected an integer for pairs");
  expect_error([&] { loss_bench_options_from_json(R"({"hiden":8})"); }, "unknown loss benchmark option 'hiden'");
  expect_error([&] { loss_bench_options_from_json("[1]"); }, "Expected a JSON object");
  auto bad = small("fused");
  bad.prompt = 12;
  expect_error([&] { loss_benchmark(bad, at::kCPU, at::kFloat); }, "Expected prompt in [0, seq)");
  bad = small("fast");
  expect_error([&] { loss_benchmark(bad, at::kCPU, at::kFloat); }, "Expected 'fused' or 'naive' for impl");
  auto json = loss_bench_result_json(loss_benchmark(small("fused"), at::kCPU, at::kFloat));
  EXPECT_NE(json.find("\"msMedian\""), std::string::npos) << json;
}
