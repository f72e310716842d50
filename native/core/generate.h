// Autoregressive generation with a KV cache: greedy or sampled (temperature, top-k, top-p), stop at EOS ids,
// batches of prompts with left padding. Each step runs the model on one new token per row (cost linear in the
// number of new tokens, apart from attention over the cache).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

#include "causal_lm.h"

namespace tdpo {

struct GenerateOptions {
  int64_t max_new_tokens = 32;  // >= 1
  bool do_sample = false;       // false: greedy argmax (temperature/top_k/top_p unused)
  double temperature = 1.0;     // > 0 when sampling
  int64_t top_k = 0;            // keep the k most likely tokens (0: all)
  double top_p = 1.0;           // keep the smallest most-likely set whose mass reaches top_p, in (0, 1]
  c10::optional<std::vector<int64_t>> eos_token_ids;  // nullopt: config().eos_token_ids; empty: never stop early
  int64_t pad_token_id = -1;    // filler after a row stops; -1: config pad, else the first EOS, else 0
  uint64_t seed = 0;            // seeds the CPU generator sampling draws from (same tokens on every device)
};

struct GenerateResult {
  at::Tensor tokens;   // (B, N) int64 CPU new tokens, N <= max_new_tokens; pad_token_id after a row's stop
  at::Tensor lengths;  // (B) int64 CPU: new tokens of each row, including the EOS that stopped it
  std::vector<std::vector<int64_t>> sequences() const;  // each row's new tokens without the filler
};

// Prompts of any lengths (each >= 1 token), left padded internally.
GenerateResult generate(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options);

// input_ids (B, P) with attention_mask (B, P) left padded (each row: zeros then ones, at least one 1).
GenerateResult generate(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                        const GenerateOptions& options);

// Chooses one token per row from (B, V) logits per `options` -> (B) int64 CPU. Sampling draws from `gen` (CPU).
at::Tensor choose_next_tokens(const at::Tensor& logits, const GenerateOptions& options, at::Generator& gen);

}  // namespace tdpo
