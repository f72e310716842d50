// The DPO loss alone on random inputs, timed: torch-dpo's fused lm-head + log-probs + DPO loss (fused_dpo_loss, no
// (2P, T, V) logits) or the naive path (full logits, log-softmax, gather, dpo_loss), forward + backward. Used by
// bench/loss_step.ts (issue "GPU performance": the fused loss against its matmul floor and the Python peers); with
// `compare` it also checks the two paths against each other on the same inputs.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/ATen.h>

namespace tdpo {

struct LossBenchOptions {
  int64_t pairs = 4;           // P: pairs per batch (2P sequences, chosen then rejected)
  int64_t seq = 1024;          // T: tokens per sequence
  int64_t prompt = 0;          // leading tokens of each sequence that are not scored (label -100)
  int64_t hidden = 2048;       // H: hidden size
  int64_t vocab = 128256;      // V: vocabulary size
  int64_t iters = 10;          // timed forward + backward passes (median and min reported)
  int64_t warmup = 3;          // untimed passes first
  int64_t chunk_rows = 1024;   // fused: tokens per lm-head chunk
  std::string impl = "fused";  // "fused" (fused_dpo_loss) or "naive" (full logits)
  bool compare = false;        // also run the other implementation once on the same inputs and report differences
  uint64_t seed = 0;           // inputs: hidden ~ N(0, 1), weight ~ N(0, 0.02²), labels uniform, refs near the policy
};

struct LossBenchResult {
  double ms_median = 0, ms_min = 0;  // per forward + backward, synchronised
  double peak_bytes = 0;             // CUDA: peak allocated during the timed passes above what was held before them
  double loss = 0;                   // the sigmoid DPO loss (β 0.1) of the inputs
  double matmul_flop = 0;            // 6·M·H·V: logits, grad hidden, grad weight over the M scored tokens
  // compare only (else NaN): |Δloss|/|loss|, ‖Δ grad hidden‖/‖grad hidden‖, ‖Δ grad weight‖/‖grad weight‖ against
  // the other implementation (computed in float64)
  double loss_rel_diff, grad_hidden_rel_diff, grad_weight_rel_diff;
};

LossBenchResult loss_benchmark(const LossBenchOptions& opt, at::Device device, at::ScalarType dtype);

// {"pairs", "seq", "prompt", "hidden", "vocab", "iters", "warmup", "chunkRows", "impl", "compare", "seed"} (all
// optional) -> options; an unknown key or a value of the wrong type throws naming it.
LossBenchOptions loss_bench_options_from_json(const std::string& json);
// {"msMedian", "msMin", "peakBytes", "loss", "matmulFlop", "lossRelDiff", ...} (NaN differences as null).
std::string loss_bench_result_json(const LossBenchResult& r);

}  // namespace tdpo
