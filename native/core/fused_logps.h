// Per-sequence log-probabilities straight from last hidden states and the lm-head, without (N, T, V) logits.
#pragma once
#include <cstdint>

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

namespace tdpo {

constexpr int64_t kIgnoreIndex = -100;  // label value of a position that is not scored (prompt, padding)

struct FusedLogpsOptions {
  int64_t chunk_rows = 1024;  // tokens per chunk (rows of the (N*T, H) matrix); logits exist for one chunk at a time
  // fused_dpo_loss only: for pair-separable losses (and sft) compute the gradients during the forward pass, so each
  // chunk's logits are computed once (3 matmuls per token instead of 4). A chunk then holds whole pairs: at least one
  // pair, i.e. up to max(chunk_rows, counted tokens of the longest pair) rows.
  bool precompute_grads = true;
};

struct FusedLogps {
  at::Tensor logps;         // (N) float32: sum over counted t of log softmax(h[n,t] W^T + b)[labels[n,t]]
  at::Tensor token_counts;  // (N) int64: number of counted tokens (labels != -100)
  at::Tensor logits_sum;    // (N) float32, no grad: sum over counted tokens of the mean logit over V
};

// hidden (N, T, H) float32/bfloat16/float16, weight (V, H) same dtype, bias (V) optional, labels (N, T) integer
// (already shifted: labels[n,t] is the token predicted from hidden[n,t]; -100 = ignore; others must be in [0, V)).
// Differentiable w.r.t. hidden, weight and bias (a torch::autograd::Function). Processes at most chunk_rows counted
// rows at a time (ignored rows are skipped); the backward pass recomputes each chunk's logits, so only O(N*T)
// values are stored besides the inputs. Gradients are accumulated in float32.
FusedLogps fused_sequence_logps(const at::Tensor& hidden, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& labels,
                                const FusedLogpsOptions& opt = {});

namespace detail {
// Shared by fused_logps and fused_dpo. Validates shapes/dtypes/devices/labels; throws c10::Error naming the field.
void check_fused_inputs(const char* fn, const at::Tensor& hidden, const at::Tensor& weight,
                        const at::Tensor& bias /*undefined = none*/, const at::Tensor& labels, int64_t chunk_rows);
// Flat indices (M) int64 of counted rows of labels (N, T), in row-major order, and their labels (M) int64.
void counted_rows(const at::Tensor& labels, at::Tensor& rows, at::Tensor& targets);
// logits of one chunk: (C, H) rows of hidden (in its dtype) -> (C, V) float32.
at::Tensor chunk_logits(const at::Tensor& h_rows, const at::Tensor& weight, const at::Tensor& bias);
// Throws naming the first non-finite sequence and which input holds non-finite values.
void check_finite_logps(const char* fn, const at::Tensor& logps, const at::Tensor& hidden, const at::Tensor& weight,
                        const at::Tensor& bias);
}  // namespace detail

}  // namespace tdpo
