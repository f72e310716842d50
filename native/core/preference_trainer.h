// The training step shared by the DPO-family trainers: policy forward on a concatenated chosen+rejected batch,
// fused lm-head loss, backward with gradient accumulation, clipping, optimizer step, non-finite guard.
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "causal_lm.h"
#include "distributed.h"
#include "grad_sync.h"
#include "dpo_loss.h"
#include "fused_dpo.h"
#include "fused_logps.h"
#include "reward_head.h"
#include "kto_loss.h"

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
  bool fused = true;           // adamw through libtorch's fused kernel where it has one (>= 2.4); default true
};

// One micro-batch of P pairs, rows 0..P-1 chosen and P..2P-1 rejected, right padded to T.
struct PreferenceBatch {
  at::Tensor input_ids;       // (2P, T) int64
  at::Tensor attention_mask;  // (2P, T) int64, 1 = token
  at::Tensor labels;          // (2P, T) int64, already shifted (labels[t] = input_ids[t+1]), -100 = not scored
  at::Tensor ref_logps;       // (2P) float, reference sequence log-probs; undefined = reference-free (zeros)
  at::Tensor margins;         // (P) reward-model margins m in −log σ(r_w − r_l − m) (set_reward only); undefined = 0
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

// One micro-batch of N unpaired (KTO) examples, right padded to T: rows 0..N-1 are prompt_i ++ completion_i, rows
// N..2N-1 the mismatched pairs prompt_i ++ completion_j (j != i) whose log-ratios estimate KL(πθ‖πref).
struct KTOBatch {
  at::Tensor input_ids;       // (2N, T) int64
  at::Tensor attention_mask;  // (2N, T) int64, 1 = token
  at::Tensor labels;          // (2N, T) int64, shifted, -100 = not scored
  at::Tensor ref_logps;       // (2N) reference log-probs (examples, then mismatched pairs); undefined = reference-free
  at::Tensor desirable;       // (N) int64, 1 = desirable
};

struct KTOMicroStepResult {
  double loss = 0;          // this micro-batch's loss (before accumulation scaling)
  double kl = 0;            // z0: the clamped KL estimate the loss used (mean over the ranks when data parallel)
  at::Tensor rewards;       // (N) β·(logπ − logπref) of the examples
  at::Tensor policy_logps;  // (N) summed policy log-probs of the examples
  at::Tensor counts;        // (N) scored tokens per example
  at::Tensor logits_sum;    // (N) sum over scored tokens of the mean logit
  int64_t tokens = 0;       // non-pad tokens processed (both forward passes)
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
  // sync: this is the last micro-batch before step(); with data parallelism its backward all-reduces the gradient
  // buckets as they become ready (overlapped), otherwise step() all-reduces them all.
  MicroStepResult accumulate(const PreferenceBatch& batch, double scale, bool sync = false);
  // The same forward without gradients or state updates (evaluation).
  MicroStepResult evaluate(const PreferenceBatch& batch);
  // Clips to max_grad_norm (<= 0: no clipping), sets lr, steps the optimizer, zeroes gradients.
  StepResult step(double lr, double max_grad_norm);
  void zero_grad();

  // Data-parallel training: copies rank 0's parameters to every rank now; from then on step() replaces the
  // gradients by their mean over the ranks before the norm, clipping and update (so all ranks stay identical).
  // overlap: all-reduce gradient buckets during the backward of accumulate(..., sync = true) (see grad_sync.h).
  void set_data_parallel(std::shared_ptr<DataParallel> dp, bool overlap = true, int64_t bucket_bytes = 25 << 20);
  const OverlappedGradSync* grad_sync() const { return grad_sync_.get(); }  // null without overlap
  const std::shared_ptr<DataParallel>& data_parallel() const { return dp_; }

  // KTO (kto_step.cpp): set_kto() selects the KTO loss; accumulate_kto()/evaluate_kto() then take unpaired batches.
  void set_kto(const KTOLossConfig& cfg);
  KTOMicroStepResult accumulate_kto(const KTOBatch& batch, double scale, bool sync = false);
  KTOMicroStepResult evaluate_kto(const KTOBatch& batch);

  // Padding-free packing (packing.h): the policy forward of run() packs the batch's sequences into fewer rows.
  void set_padding_free(bool on) { padding_free_ = on; }
  bool padding_free() const { return padding_free_; }

  // Reward models (reward_head.h): set_reward() selects the Bradley–Terry loss on the policy's score head instead of
  // the lm-head loss; MicroStepResult then holds the rewards r_w / r_l (policy_logps and logits_sum are zeros).
  void set_reward(const RewardLossOptions& opt);

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
  std::unique_ptr<OverlappedGradSync> grad_sync_;  // data parallel with overlap
  bool sync_next_ = false;            // the running accumulate() is the last before step()
  void backward(const at::Tensor& loss, double scale);  // loss·scale backward, arming the overlapped sync
  struct SyncScope {  // sets sync_next_ for one accumulate call
    bool& flag;
    SyncScope(bool& f, bool v) : flag(f) { flag = v; }
    ~SyncScope() { flag = false; }
  };
  BCORunningMean bco_state_;  // bco_pair's running reward mean, carried across steps and saved with the state
  bool padding_free_ = false;  // pack sequences for the policy forward (packing.h)

  MicroStepResult run(const PreferenceBatch& b, double scale, bool train);
  bool reward_enabled_ = false;
  RewardLossOptions reward_;
  MicroStepResult run_reward(const PreferenceBatch& b, const at::Tensor& hidden, const at::Tensor& mask, double scale,
                             bool train);
  bool kto_enabled_ = false;
  KTOLossConfig kto_;
  KTOMicroStepResult run_kto(const KTOBatch& b, double scale, bool train);

};

// Sequence log-probs of a batch under a model, no gradient (the reference forward, precompute, `logps`).
// padding_free: run the model on packed rows (packing.h); same results.
FusedLogps sequence_logps_nograd(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const at::Tensor& labels, const FusedLogpsOptions& opt = {},
                                 bool padding_free = false);

void check_batch(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& labels, int64_t vocab);

}  // namespace tdpo
