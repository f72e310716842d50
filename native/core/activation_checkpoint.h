// Activation checkpointing: run a block of the model without keeping its intermediate activations for the backward
// pass; the backward recomputes the block (one more forward) and back-propagates through the recomputation.
#pragma once
#include <functional>

#include <ATen/ATen.h>

namespace tdpo {

// y = fn(x), differentiable w.r.t. x and every tensor fn uses that requires grad (their .grad accumulate during the
// backward, hooks included). Only x is kept for the backward. fn runs twice; the recomputation replays the random
// numbers of the first run (the default generator of x's device is saved and restored), so dropout inside matches.
// When x does not require grad (a frozen embedding below a LoRA-trained block), a detached copy that does stands in
// for it, so that the block's own parameters still get their gradients.
at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x);

// Whether the forward running on this thread trains: autograd records it, or it is the first (unrecorded) pass of a
// checkpointed block, which the backward replays with autograd on. Dropout keys on this, so both passes drop alike.
bool training_forward();

}  // namespace tdpo
