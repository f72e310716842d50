// Activation checkpointing (native/core/activation_checkpoint.h): recomputing each block in the backward gives the
// gradients of the plain backward, for every architecture, with LoRA adapters on a frozen base (the block input then
// does not require grad) and with LoRA dropout (the recomputation replays the random numbers); and the checkpointed
// forward keeps fewer tensors alive for the backward.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include "activation_checkpoint.h"
#include "causal_lm.h"
#include "lora.h"
#include "tiny_config.h"

namespace {

using tdpo::CausalLM;

// A scalar loss of the final hidden states (fixed random weights) after a forward with autograd on; returns the
// gradients of every trainable tensor, in trainable_parameters() order.
std::vector<at::Tensor> grads_of(CausalLM& m, bool checkpoint, uint64_t rng_seed) {
  m.set_activation_checkpointing(checkpoint);
  auto ids = at::tensor({3, 17, 5, 29, 11, 2, 38, 8, 21, 0, 7, 7}, at::kLong).view({2, 6});
  auto mask = at::tensor({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, at::kLong).view({2, 6});
  auto params = m.trainable_parameters();
  for (auto& [n, p] : params) p.mutable_grad().reset();
  at::manual_seed(rng_seed);  // LoRA dropout draws from the default generator
  c10::AutoGradMode on(true);
  auto h = m.hidden_states(ids, mask);                                         // (2, 6, H)
  auto w = at::randn(h.sizes(), at::make_generator<at::CPUGeneratorImpl>(1), at::kDouble);
  (h * w).sum().backward();
  std::vector<at::Tensor> out;
  for (auto& [n, p] : params) out.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());  // lm_head: none
  return out;
}

// How many gradients are defined (the blocks' parameters must all get one).
size_t defined(const std::vector<at::Tensor>& g) {
  size_t n = 0;
  for (auto& t : g) n += t.defined() ? 1 : 0;
  return n;
}

double max_rel(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].defined() && !b[i].defined()) continue;
    if (!a[i].defined() || !b[i].defined()) return 1e300;
    worst = std::max(worst, ((a[i] - b[i]).abs().max() / b[i].abs().max().clamp_min(1e-300)).item<double>());
  }
  return worst;
}

class CheckpointedModels : public ::testing::TestWithParam<std::string> {};

TEST_P(CheckpointedModels, SameGradientsAsThePlainBackward) {
  auto m = tdpo::make_causal_lm(tiny_config(GetParam()), c10::kCPU, at::kDouble, 7);
  auto plain = grads_of(*m, false, 0);
  auto ckpt = grads_of(*m, true, 0);
  ASSERT_EQ(plain.size(), ckpt.size());
  EXPECT_GE(defined(plain), plain.size() - 1);  // all but an untied lm_head (not used by hidden_states)
  EXPECT_LT(max_rel(ckpt, plain), 1e-12);
  // off again: the flag is the only switch
  EXPECT_LT(max_rel(grads_of(*m, false, 0), plain), 1e-12);
}

TEST_P(CheckpointedModels, LoraOnAFrozenBaseWithDropout) {
  const auto type = GetParam();
  auto m = tdpo::make_causal_lm(tiny_config(type), c10::kCPU, at::kDouble, 7);
  tdpo::LoraConfig c;
  c.r = 2;
  c.alpha = 4;
  c.dropout = 0.3;
  c.target_modules = type == "gpt2" ? std::vector<std::string>{"c_attn", "c_fc"} : std::vector<std::string>{"q_proj", "up_proj"};
  auto lora = tdpo::attach_lora(*m, c, 3);
  {
    c10::NoGradGuard ng;  // B = 0 in a fresh adapter would zero dL/dA
    for (const auto& a : lora->adapters()) a.B.normal_(0.0, 0.3);
  }
  auto plain = grads_of(*m, false, 5);
  auto ckpt = grads_of(*m, true, 5);
  ASSERT_EQ(plain.size(), lora->adapters().size() * 2);
  EXPECT_EQ(defined(ckpt), plain.size());
  EXPECT_LT(max_rel(ckpt, plain), 1e-12);
  // another dropout draw gives other gradients (the test would not notice a replay that failed otherwise)
  EXPECT_GT(max_rel(grads_of(*m, true, 6), plain), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(All, CheckpointedModels, ::testing::Values("llama", "mistral", "qwen2", "gpt2"));

// The checkpointed block keeps only its input for the backward: a block of 6 element-wise steps over a (64, 64)
// input holds 1 saved tensor of that size instead of 6; measured through the graph's saved variables by counting
// how many (64, 64) tensors stay referenced after the forward (use_count of a tracked intermediate).
TEST(ActivationCheckpoint, KeepsOnlyTheBlockInput) {
  auto x = at::randn({64, 64}, at::kDouble).set_requires_grad(true);
  std::vector<c10::weak_intrusive_ptr<c10::TensorImpl>> inner;
  auto block = [&inner](const at::Tensor& in) {
    at::Tensor y = in;
    for (int i = 0; i < 6; ++i) {
      y = at::sin(y) * 1.5;  // sin saves its input; each y is an intermediate
      inner.emplace_back(y.getIntrusivePtr());
    }
    return y;
  };
  c10::AutoGradMode on(true);
  auto plain = block(x).sum();
  size_t alive_plain = 0;
  for (auto& w : inner) alive_plain += w.expired() ? 0 : 1;
  inner.clear();
  auto ck = tdpo::checkpointed(block, x).sum();
  size_t alive_ckpt = 0;
  for (auto& w : inner) alive_ckpt += w.expired() ? 0 : 1;
  EXPECT_GE(alive_plain, 5u);  // the plain graph keeps the intermediates for sin's backward
  EXPECT_EQ(alive_ckpt, 0u);   // the checkpointed one keeps none (only x)
  plain.backward();
  auto g_plain = x.grad().clone();
  x.mutable_grad().reset();
  ck.backward();
  EXPECT_TRUE(at::allclose(x.grad(), g_plain, 0, 0));
}

}  // namespace
