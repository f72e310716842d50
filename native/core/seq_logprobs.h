// Per-token and per-sequence log-probabilities of given sequences under a CausalLM, chunked over tokens so that the
// (B, T, V) float32 logits are never held at once. Differentiable: the caller chooses the grad mode.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include "causal_lm.h"

namespace tdpo {

// hidden (B, T, H) final hidden states, head weight (V, H) and optional bias (V), input_ids (B, T), attention_mask
// (B, T) 0/1 -> (B, T-1) float32 where [b, t-1] = log p(x_t | x_<t) for t = 1..T-1, and 0 where token t or token
// t-1 is a pad. Logits are formed for at most chunk_tokens positions at a time.
at::Tensor token_logprobs_from_hidden(const at::Tensor& hidden, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, const at::Tensor& input_ids,
                                      const at::Tensor& attention_mask, int64_t chunk_tokens = 512);

// The same from the model: one forward, then the chunked head. Right padding (or left padding) both work.
at::Tensor sequence_token_logprobs(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                   int64_t chunk_tokens = 512);

// (B) float32: sum of log p(x_t | x_<t) over t >= 1 where completion_mask[b, t] = 1 (prompt tokens are 0 there).
// completion_mask (B, T) 0/1; positions it marks must be real tokens (attention_mask 1) with a real predecessor.
at::Tensor sequence_logprob_sums(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const at::Tensor& completion_mask, int64_t chunk_tokens = 512);

}  // namespace tdpo
