// FusedAdamW (libtorch's fused multi-tensor AdamW kernel where libtorch >= 2.4 has it) against the C++ frontend's
// per-tensor torch::optim::AdamW: the same parameters and gradient sequence with a changing learning rate and weight
// decay give the same weights and moments; checkpoints move between the two. Where the kernel is not available (libtorch
// 1.13, CI) FusedAdamW is the frontend's AdamW and the test says so.
#include <gtest/gtest.h>
#include <torch/serialize.h>

#include <sstream>

#include "fused_adamw.h"

namespace {

std::vector<at::Tensor> make_params(at::ScalarType dtype) {
  at::manual_seed(3);
  std::vector<at::Tensor> ps;
  for (auto shape : {std::vector<int64_t>{7, 5}, {5}, {3, 4, 2}}) ps.push_back(at::randn(shape, at::dtype(dtype)).requires_grad_(true));
  return ps;
}

// Gradient k of parameter i (deterministic, different per step).
at::Tensor grad_of(const at::Tensor& p, int k, int i) {
  at::manual_seed(100 * k + i);
  return at::randn(p.sizes(), p.options()).mul_(0.5 + k);
}

void run_steps(torch::optim::AdamW& opt, std::vector<at::Tensor>& ps, int from, int to) {
  for (int k = from; k < to; ++k) {
    for (size_t i = 0; i < ps.size(); ++i) ps[i].mutable_grad() = grad_of(ps[i], k, static_cast<int>(i));
    for (auto& g : opt.param_groups()) g.options().set_lr(1e-2 / (1 + k));
    opt.step();
  }
}

torch::optim::AdamWOptions options() {
  torch::optim::AdamWOptions o(1e-2);
  o.betas({0.9, 0.99}).eps(1e-8).weight_decay(0.05);
  return o;
}

double max_diff(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, (a[i] - b[i]).abs().max().item<double>());
  return d;
}

}  // namespace

TEST(FusedAdamW, MatchesTheFrontendAdamWOverStepsWithChangingLearningRate) {
  for (auto dtype : {at::kFloat, at::kDouble}) {
    auto a = make_params(dtype);
    auto b = make_params(dtype);
    tdpo::FusedAdamW fused(a, options());
    torch::optim::AdamW plain(b, options());
    run_steps(fused, a, 0, 6);
    run_steps(plain, b, 0, 6);
    const double d = max_diff(a, b);
    if (!tdpo::fused_adamw_available()) {
      std::cout << "[ INFO ] fused AdamW kernel unavailable in this libtorch: FusedAdamW is the frontend's AdamW\n";
      EXPECT_EQ(fused.last_fused_tensors(), 0);
      EXPECT_EQ(d, 0.0);
      continue;
    }
    EXPECT_EQ(fused.last_fused_tensors(), 3);
    std::cout << "[ INFO ] " << (dtype == at::kFloat ? "float32" : "float64") << ": max |fused - per-tensor| after 6 steps "
              << d << "\n";
    EXPECT_LT(d, dtype == at::kFloat ? 1e-5 : 1e-12);
    EXPECT_GT((a[0] - make_params(dtype)[0]).abs().max().item<double>(), 1e-2) << "the steps moved the weights";
  }
}

TEST(FusedAdamW, CheckpointsMoveBetweenFusedAndPerTensor) {
  auto a = make_params(at::kFloat);
  tdpo::FusedAdamW fused(a, options());
  run_steps(fused, a, 0, 3);
  std::stringstream saved;
  {
    torch::serialize::OutputArchive ar;
    fused.save(ar);
    ar.save_to(saved);
  }
  // Continue: the original fused optimizer, a per-tensor AdamW loaded from its state, a fresh FusedAdamW loaded from it.
  std::vector<at::Tensor> bc, cc;
  for (auto& p : a) {
    bc.push_back(p.detach().clone().requires_grad_(true));
    cc.push_back(p.detach().clone().requires_grad_(true));
  }
  torch::optim::AdamW plain(bc, options());
  tdpo::FusedAdamW fused2(cc, options());
  for (torch::optim::Optimizer* o : {static_cast<torch::optim::Optimizer*>(&plain), static_cast<torch::optim::Optimizer*>(&fused2)}) {
    std::stringstream in(saved.str());
    torch::serialize::InputArchive ar;
    ar.load_from(in);
    o->load(ar);
  }
  run_steps(fused, a, 3, 6);
  run_steps(plain, bc, 3, 6);
  run_steps(fused2, cc, 3, 6);
  EXPECT_LT(max_diff(a, bc), 1e-5);
  EXPECT_LT(max_diff(a, cc), 1e-6);
}
