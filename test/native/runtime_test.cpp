// Native tests of native/core/runtime and token_logprobs, without N-API.
#include <gtest/gtest.h>

#include <cmath>

#include "runtime.h"
#include "token_logprobs.h"

TEST(Runtime, ReportsVersionAndThreads) {
  auto info = tdpo::runtime_info();
  EXPECT_FALSE(info.libtorch_version.empty());
  EXPECT_GE(info.intra_op_threads, 1);
  tdpo::configure_threads(2, 0);
  EXPECT_EQ(tdpo::runtime_info().intra_op_threads, 2);
  EXPECT_THROW(tdpo::configure_threads(-3, 0), c10::Error);
}

TEST(Runtime, ParsesDevicesAndDtypes) {
  EXPECT_EQ(tdpo::parse_device("cpu").type(), c10::kCPU);
  EXPECT_THROW(tdpo::parse_device("tpu"), c10::Error);
  EXPECT_EQ(tdpo::parse_dtype("bfloat16"), c10::kBFloat16);
  EXPECT_THROW(tdpo::parse_dtype("int8"), c10::Error);
  if (!tdpo::runtime_info().cuda_available) EXPECT_THROW(tdpo::parse_device("cuda"), c10::Error);
}

TEST(TokenLogprobs, MatchesFloat64LogSoftmax) {
  at::manual_seed(0);
  const int64_t N = 9, V = 31;
  auto logits = at::randn({N, V}) * 3;
  auto targets = at::randint(V, {N}, at::kLong);
  auto got = tdpo::token_logprobs(logits, targets);
  auto acc = logits.accessor<float, 2>();
  for (int64_t i = 0; i < N; ++i) {
    double m = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, (double)acc[i][v]);
    for (int64_t v = 0; v < V; ++v) s += std::exp((double)acc[i][v] - m);
    double want = acc[i][targets[i].item<int64_t>()] - m - std::log(s);
    EXPECT_NEAR(got[i].item<float>(), want, 1e-5) << "row " << i;
  }
}

TEST(TokenLogprobs, RejectsBadShapesAndTargets) {
  EXPECT_THROW(tdpo::token_logprobs(at::zeros({2, 3, 4}), at::zeros({2}, at::kLong)), c10::Error);
  EXPECT_THROW(tdpo::token_logprobs(at::zeros({2, 3}), at::zeros({3}, at::kLong)), c10::Error);
  EXPECT_THROW(tdpo::token_logprobs(at::zeros({2, 3}), at::full({2}, 3, at::kLong)), c10::Error);
  EXPECT_THROW(tdpo::token_logprobs(at::zeros({2, 3}), at::full({2}, -1, at::kLong)), c10::Error);
}
