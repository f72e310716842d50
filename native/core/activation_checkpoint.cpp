#include "activation_checkpoint.h"

#include <ATen/Context.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>
#include <utility>

namespace tdpo {

namespace {

thread_local bool t_first_pass = false;  // a checkpointed block's unrecorded forward runs on this thread

struct FirstPass {
  bool saved = t_first_pass;
  FirstPass() { t_first_pass = true; }
  ~FirstPass() { t_first_pass = saved; }
};

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct BlockFn : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> fn;
  at::Tensor rng_state;  // the default generator of x's device before the first run (dropout draws the same again)
};

// The default random generator of a device (CPU, or the CUDA device's), whose state the recomputation replays.
at::Generator generator_of(const at::Device& d) {
  return d.is_cpu() ? at::globalContext().defaultGenerator(at::kCPU) : at::globalContext().defaultGenerator(d);
}
at::Tensor rng_get(const at::Device& d) {
  auto g = generator_of(d);
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get_state();
}
void rng_set(const at::Device& d, const at::Tensor& state) {
  auto g = generator_of(d);
  std::lock_guard<std::mutex> lock(g.mutex());
  g.set_state(state);
}

// Puts a saved generator state in place for a scope; the stream then goes on from where it was.
struct RngReplay {
  at::Device device;
  at::Tensor now;
  RngReplay(const at::Device& d, const at::Tensor& saved) : device(d), now(rng_get(d)) { rng_set(d, saved); }
  ~RngReplay() {
    try {
      rng_set(device, now);
    } catch (...) {
    }
  }
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, c10::intrusive_ptr<BlockFn> block) {
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = c10::IValue::make_capsule(block);
    block->rng_state = rng_get(x.device());
    FirstPass first;
    return block->fn(x);  // autograd is off here: nothing inside the block is recorded
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto block = c10::static_intrusive_pointer_cast<BlockFn>(ctx->saved_data["block"].toCapsule());
    at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    at::Tensor y;
    {
      // the same forward, recorded this time, with the random numbers of the first run
      RngReplay replay(x.device(), block->rng_state);
      c10::AutoGradMode on(true);
      y = block->fn(x);
    }
    TORCH_CHECK(grads[0].defined() && y.sizes() == grads[0].sizes(), "checkpointed block: the recomputed output has shape ",
                y.sizes(), ", its gradient ", grads[0].defined() ? grads[0].sizes() : at::IntArrayRef{});
    // Reentrant backward through the recomputed block: its parameters' .grad accumulate as in a plain backward.
    torch::autograd::backward({y}, {grads[0]});
    return {x.grad(), at::Tensor()};
  }
};

}  // namespace

bool training_forward() { return t_first_pass || c10::GradMode::is_enabled(); }

at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x) {
  auto block = c10::make_intrusive<BlockFn>();
  block->fn = std::move(fn);
  const at::Tensor in = x.requires_grad() ? x : x.detach().requires_grad_(true);
  return CheckpointFunction::apply(in, block);
}

}  // namespace tdpo
