// AdamW whose update runs as libtorch's fused multi-tensor kernel (at::_fused_adamw_, the kernel behind Python's
// AdamW(fused=True)) where the libtorch has it for the parameters' device (2.4 and later: CPU and CUDA); elsewhere,
// or with amsgrad / parameters off CPU and CUDA, the C++ frontend's per-tensor AdamW. The state (step, exp_avg,
// exp_avg_sq) is the frontend's own AdamWParamState, so checkpoints written by either path load in the other.
#pragma once
#include <torch/optim/adamw.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

namespace tdpo {

// True when this build can run the fused kernel (libtorch >= 2.4).
bool fused_adamw_available();

class FusedAdamW : public torch::optim::AdamW {
 public:
  FusedAdamW(std::vector<at::Tensor> params, torch::optim::AdamWOptions options);
  at::Tensor step(LossClosure closure = nullptr) override;
  // How many parameter tensors the last step() updated through the fused kernel (0 = all went the per-tensor way).
  int64_t last_fused_tensors() const { return last_fused_; }

 private:
  struct StepTensor {
    at::Tensor value;  // () float32 on the parameter's device: the kernel's step count
    int64_t step = 0;  // the AdamWParamState step it mirrors (re-created when they differ, e.g. after load())
  };
  std::unordered_map<void*, StepTensor> steps_;
  int64_t last_fused_ = 0;
};

}  // namespace tdpo
