// The training step shared by the DPO-family trainers: policy forward on a concatenated chosen+rejected batch,
// fused lm-head loss, backward with gradient accumulation, clipping, optimizer step, non-finite guard.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "causal_lm.h"
#include "distributed.h"
#include "dpo_loss.h"
#include "fused_dpo.h"
#include "fused_logps.h"

namespace torch::optim {
class Optimizer;
}

namespace tdpo {

struct OptimizerConfig {
  std::string type = "adamw";  // "adamw" | "sgd"
  double weight_decay = 0.0;   // decoupled for adamw, L2 for sgd; default 0
  double beta1 = 0.9;          // adamw first-moment decay; default 0.9
  double beta2 = 0.999;        // adamw second-moment decay; default 0.999
  double eps = 1e-8;           // adamw denominator epsilon; default 1e-8
  double momentum = 0.0;       // sgd momentum; default 0
};

// One micro-batch of P pairs, rows 0..P-1 chosen and P..2P-1 rejected, right padded to T.
struct PreferenceBatch {
  at::Tensor input_ids;       // (2P, T) int64
  at::Tensor attention_mask;  // (2P, T) int64, 1 = token
  at::Tensor labels;          // (2P, T) int64, already shifted (labels[t] = input_ids[t+1]), -100 = not scored
  at::Tensor ref_logps;       // (2P) float, reference sequence log-probs; undefined = reference-free (zeros)
};

struct MicroStepResult {
  double loss = 0;                      // this micro-batch's loss (before accumulation scaling)
  at::Tensor chosen_rewards;            // (P) β·(logπ − logπref) of chosen
  at::Tensor rejected_rewards;          // (P)
  at::Tensor policy_logps;              // (2P) summed policy log-probs
  at::Tensor counts;                    // (2P) scored tokens per row
  at::Tensor logits_sum;                // (2P) sum over scored tokens of the mean logit
  int64_t tokens = 0;                   // non-pad tokens processed (forward)
};

struct StepResult {
  double grad_norm = 0;  // total L2 norm of gradients before clipping
  bool skipped = false;  // non-finite gradient: no update, gradients dropped
};

class PreferenceTrainer {
 public:
  PreferenceTrainer(std::shared_ptr<CausalLM> policy, DPOLossConfig loss, OptimizerConfig opt, FusedLogpsOptions fused = {});
  ~PreferenceTrainer();

  // Forward + backward of loss * scale (scale = 1/accumulation steps); gradients accumulate until step().
  MicroStepResult accumulate(const PreferenceBatch& batch, double scale);
  // The same forward without gradients or state updates (evaluation).
  MicroStepResult evaluate(const PreferenceBatch& batch);
  // Clips to max_grad_norm (<= 0: no clipping), sets lr, steps the optimizer, zeroes gradients.
  StepResult step(double lr, double max_grad_norm);
  void zero_grad();

  // Data-parallel training: copies rank 0's parameters to every rank now; from then on step() replaces the
  // gradients by their mean over the ranks before the norm, clipping and update (so all ranks stay identical).
  void set_data_parallel(std::shared_ptr<DataParallel> dp);
  const std::shared_ptr<DataParallel>& data_parallel() const { return dp_; }

  void save_state(const std::string& path) const;  // optimizer moments + step count (torch archive)
  void load_state(const std::string& path);
  int64_t optimizer_steps() const { return steps_; }
  const std::shared_ptr<CausalLM>& policy() const { return policy_; }

 private:
  std::shared_ptr<CausalLM> policy_;
  DPOLossConfig loss_;
  OptimizerConfig opt_cfg_;
  FusedLogpsOptions fused_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  int64_t steps_ = 0;
  std::shared_ptr<DataParallel> dp_;  // null: a single process
  BCORunningMean bco_state_;  // bco_pair's running reward mean, carried across steps and saved with the state

  MicroStepResult run(const PreferenceBatch& b, double scale, bool train);
};

// Sequence log-probs of a batch under a model, no gradient (the reference forward, precompute, `logps`).
FusedLogps sequence_logps_nograd(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const at::Tensor& labels, const FusedLogpsOptions& opt = {});

void check_batch(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& labels, int64_t vocab);

}  // namespace tdpo
