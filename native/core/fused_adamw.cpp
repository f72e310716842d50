#include "fused_adamw.h"

#include "torch_version.h"

#include <c10/core/GradMode.h>

#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>

#define TDPO_FUSED_ADAMW TDPO_TORCH_AT_LEAST(2, 4)
#if TDPO_FUSED_ADAMW
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>
#endif

namespace tdpo {

namespace {

// The frontend's state map key of a parameter: its TensorImpl address (libtorch 2.x), or that address as a string
// (older releases).
template <typename Map>
typename Map::key_type key_of(const at::Tensor& p) {
  if constexpr (std::is_same_v<typename Map::key_type, std::string>) {
    std::ostringstream ss;  // as c10::guts::to_string wrote it
    ss << p.unsafeGetTensorImpl();
    return ss.str();
  } else {
    return p.unsafeGetTensorImpl();
  }
}

}  // namespace

bool fused_adamw_available() { return TDPO_FUSED_ADAMW; }

FusedAdamW::FusedAdamW(std::vector<at::Tensor> params, torch::optim::AdamWOptions options)
    : torch::optim::AdamW(std::move(params), std::move(options)) {}

at::Tensor FusedAdamW::step(LossClosure closure) {
#if !TDPO_FUSED_ADAMW
  last_fused_ = 0;
  return torch::optim::AdamW::step(std::move(closure));
#else
  // amsgrad, or a parameter on a device other than CPU / CUDA: the frontend's per-tensor update for all of them.
  for (auto& group : param_groups()) {
    bool other = static_cast<torch::optim::AdamWOptions&>(group.options()).amsgrad();
    for (auto& p : group.params()) other = other || (p.grad().defined() && !p.is_cpu() && !p.is_cuda());
    if (other) {
      last_fused_ = 0;
      return torch::optim::AdamW::step(std::move(closure));
    }
  }
  c10::NoGradGuard no_grad;
  at::Tensor loss;
  if (closure) {
    c10::AutoGradMode grad(true);
    loss = closure();
  }
  last_fused_ = 0;
  for (auto& group : param_groups()) {
    auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
    // The kernel takes one device and dtype per call: (device, dtype) -> parameter lists.
    struct Lists {
      std::vector<at::Tensor> p, g, m, v, steps;
      std::vector<torch::optim::AdamWParamState*> states;
      std::vector<StepTensor*> counters;
    };
    std::map<std::tuple<int, int, int>, Lists> by_kind;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      TORCH_CHECK(!p.grad().is_sparse(), "AdamW does not support sparse gradients");
      const auto key = key_of<decltype(state_)>(p);
      auto it = state_.find(key);
      if (it == state_.end()) {
        auto s = std::make_unique<torch::optim::AdamWParamState>();
        s->step(0);
        s->exp_avg(at::zeros_like(p, at::MemoryFormat::Preserve));
        s->exp_avg_sq(at::zeros_like(p, at::MemoryFormat::Preserve));
        it = state_.emplace(key, std::move(s)).first;
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
      auto& sc = steps_[p.unsafeGetTensorImpl()];
      if (!sc.value.defined() || sc.step != st.step() || sc.value.device() != p.device()) {
        sc.value = at::full({}, static_cast<double>(st.step()), p.options().dtype(at::kFloat));
        sc.step = st.step();
      }
      auto& l = by_kind[{static_cast<int>(p.device().type()), static_cast<int>(p.device().index()),
                         static_cast<int>(p.scalar_type())}];
      l.p.push_back(p);
      l.g.push_back(p.grad());
      l.m.push_back(st.exp_avg());
      l.v.push_back(st.exp_avg_sq());
      l.steps.push_back(sc.value);
      l.states.push_back(&st);
      l.counters.push_back(&sc);
    }
    const auto [beta1, beta2] = o.betas();
    for (auto& [kind, l] : by_kind) {
      at::_foreach_add_(l.steps, 1);  // the kernel reads the already-incremented step, as Python's fused path does
      at::_fused_adamw_(l.p, l.g, l.m, l.v, /*max_exp_avg_sqs=*/{}, l.steps, o.lr(), beta1, beta2, o.weight_decay(),
                        o.eps(), /*amsgrad=*/false, /*maximize=*/false);
      for (size_t i = 0; i < l.p.size(); ++i) {
        l.states[i]->step(l.states[i]->step() + 1);
        l.counters[i]->step = l.states[i]->step();
      }
      last_fused_ += static_cast<int64_t>(l.p.size());
    }
  }
  return loss;
#endif
}

}  // namespace tdpo
