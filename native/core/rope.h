// Rotary position embeddings (RoPE) of the llama family, with the rope_scaling variants default, linear and llama3.
#pragma once
#include <ATen/ATen.h>

#include <utility>

#include "model_config.h"

namespace tdpo {

// (D/2) float64 inverse frequencies for head_dim D as transformers computes them:
// theta^(-2i/D), then rope_scaling: "default" (none), "linear" (divided by factor), "llama3" (wavelength-banded).
// Unsupported scaling types throw naming the type.
at::Tensor rope_inv_freq(const ModelConfig& cfg);

// cos, sin tables for position ids (B, T) int64 -> each (B, 1, T, D) in `dtype` on the ids' device, computed in
// float64 (angles = pos * inv_freq, duplicated over both halves as in transformers' rotate_half convention).
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& position_ids,
                                               at::ScalarType dtype);

// x (B, N, T, D) -> x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace tdpo
