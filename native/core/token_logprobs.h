// Log-probability of target tokens under given logits: the model-free kernel of every DPO-family loss.
#pragma once
#include <ATen/ATen.h>

namespace tdpo {

// logits (N, V) any float dtype, targets (N) int64 in [0, V) -> (N) float32: log_softmax(logits)[i, targets[i]],
// computed in float32 via logsumexp so no (N, V) float32 copy is kept beyond one row block.
at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets);

// Times an (n x n) @ (n x n) matmul `iters` times on `device` in `dtype`; returns GFLOP/s (2 n^3 per product).
double matmul_gflops(int64_t n, int64_t iters, const std::string& device, const std::string& dtype);

}  // namespace tdpo
