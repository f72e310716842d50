#include "preference_trainer.h"

#include <c10/core/GradMode.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include <cmath>

#include "fused_adamw.h"
#include "packing.h"

namespace tdpo {

void check_batch(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& labels, int64_t vocab) {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be (rows, T), got ", input_ids.sizes());
  TORCH_CHECK(attention_mask.sizes() == input_ids.sizes(), "attention_mask must be ", input_ids.sizes(), ", got ",
              attention_mask.sizes());
  TORCH_CHECK(labels.sizes() == input_ids.sizes(), "labels must be ", input_ids.sizes(), ", got ", labels.sizes());
  if (input_ids.numel() == 0) return;
  auto lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < vocab, "input_ids must be in [0, ", vocab, "), got values in [", lo, ", ", hi, "]");
  auto scored = labels.ne(-100);
  if (scored.any().item<bool>()) {
    auto l = labels.masked_select(scored);
    TORCH_CHECK(l.min().item<int64_t>() >= 0 && l.max().item<int64_t>() < vocab, "labels must be -100 or in [0, ",
                vocab, ")");
  }
}

PreferenceTrainer::PreferenceTrainer(std::shared_ptr<CausalLM> policy, DPOLossConfig loss, OptimizerConfig opt,
                                     FusedLogpsOptions fused)
    : policy_(std::move(policy)), loss_(std::move(loss)), opt_cfg_(std::move(opt)), fused_(fused) {
  TORCH_CHECK(policy_, "PreferenceTrainer needs a policy model");
  for (auto& [name, p] : policy_->trainable_parameters()) {  // only the adapters when LoRA is attached
    p.set_requires_grad(true);
    params_.push_back(p);
  }
  TORCH_CHECK(!params_.empty(), "the policy has no parameters");
  if (opt_cfg_.type == "adamw") {
    torch::optim::AdamWOptions o(1e-3);
    o.betas({opt_cfg_.beta1, opt_cfg_.beta2}).eps(opt_cfg_.eps).weight_decay(opt_cfg_.weight_decay);
    if (opt_cfg_.fused)
      optimizer_ = std::make_unique<FusedAdamW>(params_, o);
    else
      optimizer_ = std::make_unique<torch::optim::AdamW>(params_, o);
  } else if (opt_cfg_.type == "sgd") {
    torch::optim::SGDOptions o(1e-3);
    o.momentum(opt_cfg_.momentum).weight_decay(opt_cfg_.weight_decay);
    optimizer_ = std::make_unique<torch::optim::SGD>(params_, o);
  } else {
    TORCH_CHECK(false, "Expected 'adamw' or 'sgd' for optimizer but received '", opt_cfg_.type, "'");
  }
}

PreferenceTrainer::~PreferenceTrainer() = default;

MicroStepResult PreferenceTrainer::accumulate(const PreferenceBatch& b, double scale, bool sync) {
  SyncScope scope(sync_next_, sync);
  return run(b, scale, true);
}

void PreferenceTrainer::backward(const at::Tensor& loss, double scale) {
  if (sync_next_ && grad_sync_) grad_sync_->arm();
  (loss * scale).backward();
}

MicroStepResult PreferenceTrainer::evaluate(const PreferenceBatch& b) { return run(b, 1.0, false); }

MicroStepResult PreferenceTrainer::run(const PreferenceBatch& b, double scale, bool train) {
  const int64_t rows = b.input_ids.size(0);
  TORCH_CHECK(rows > 0 && rows % 2 == 0, "a preference batch has 2P rows (P chosen then P rejected), got ", rows);
  check_batch(b.input_ids, b.attention_mask, b.labels, policy_->config().vocab_size);
  const auto dev = policy_->device();
  at::Tensor ref = b.ref_logps.defined() ? b.ref_logps.to(dev, at::kFloat) : at::zeros({rows}, at::TensorOptions().device(dev));
  TORCH_CHECK(ref.dim() == 1 && ref.size(0) == rows, "ref_logps must be (", rows, "), got ", ref.sizes());
  TORCH_CHECK(at::isfinite(ref).all().item<bool>(), "ref_logps contain NaN or Inf");

  c10::AutoGradMode grad(train);
  auto ids = b.input_ids.to(dev), mask = b.attention_mask.to(dev), labels = b.labels.to(dev);
  TORCH_CHECK(reward_enabled_ == policy_->has_score_head(), reward_enabled_
              ? "reward training needs a policy with a score head (load it with head 'score')"
              : "this policy has a score head (a …ForSequenceClassification reward model): train it with RewardTrainer");
  auto hidden = padding_free_ ? packed_hidden_states(*policy_, ids, mask, labels) : policy_->hidden_states(ids, mask);  // (2P, T, H)
  if (reward_enabled_) return run_reward(b, hidden, mask, scale, train);
  auto out = fused_dpo_loss(hidden, policy_->lm_head_weight(), policy_->lm_head_bias(), labels, ref, loss_, fused_,
                            bco_state_);
  if (train) {
    backward(out.loss, scale);
    bco_state_ = out.parts.bco_state;
  }

  MicroStepResult r;
  r.loss = out.loss.detach().item<double>();
  r.chosen_rewards = out.parts.chosen_rewards.detach().cpu();
  r.rejected_rewards = out.parts.rejected_rewards.detach().cpu();
  r.policy_logps = out.policy_logps.detach().cpu();
  r.counts = out.counts.detach().cpu();
  r.logits_sum = out.logits_sum.detach().cpu();
  r.tokens = mask.sum().item<int64_t>();
  return r;
}

void PreferenceTrainer::set_reward(const RewardLossOptions& opt) {
  reward_enabled_ = true;
  reward_ = opt;
}

// The reward-model step: rewards at each row's last token, Bradley–Terry loss over the P pairs.
MicroStepResult PreferenceTrainer::run_reward(const PreferenceBatch& b, const at::Tensor& hidden, const at::Tensor& mask,
                                              double scale, bool train) {
  const int64_t P = hidden.size(0) / 2;
  auto rewards = last_token_rewards(hidden, *policy_->score_weight(), mask);  // (2P) float32
  auto out = reward_loss(rewards.narrow(0, 0, P), rewards.narrow(0, P, P), b.margins, reward_);
  if (train) backward(out.loss, scale);
  MicroStepResult r;
  r.loss = out.loss.detach().item<double>();
  r.chosen_rewards = out.chosen_rewards.cpu();
  r.rejected_rewards = out.rejected_rewards.cpu();
  r.policy_logps = at::zeros({2 * P}, at::kFloat);
  r.counts = mask.sum(1).cpu();
  r.logits_sum = at::zeros({2 * P}, at::kFloat);
  r.tokens = mask.sum().item<int64_t>();
  return r;
}

void PreferenceTrainer::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad().reset();
}

void PreferenceTrainer::set_data_parallel(std::shared_ptr<DataParallel> dp, bool overlap, int64_t bucket_bytes) {
  grad_sync_.reset();
  dp_ = std::move(dp);
  if (!dp_) return;
  dp_->broadcast_parameters(params_);
  if (overlap) grad_sync_ = std::make_unique<OverlappedGradSync>(dp_, params_, bucket_bytes, std::min<int64_t>(bucket_bytes, 1 << 20));
}

StepResult PreferenceTrainer::step(double lr, double max_grad_norm) {
  TORCH_CHECK(std::isfinite(lr) && lr >= 0, "learning rate must be finite and >= 0, got ", lr);
  StepResult r;
  if (dp_ && !(grad_sync_ && grad_sync_->finish())) {  // not reduced during the last backward: reduce now
    std::vector<at::Tensor> grads;
    for (auto& p : params_) grads.push_back(p.grad());  // undefined on every rank alike (same model and code path)
    dp_->allreduce_mean(grads);
  }
  std::vector<at::Tensor> norms;
  for (auto& p : params_)
    if (p.grad().defined()) norms.push_back(p.grad().detach().to(at::kFloat).norm(2));
  double total = norms.empty() ? 0.0 : at::stack(norms).norm(2).item<double>();
  r.grad_norm = total;
  if (!std::isfinite(total)) {
    r.skipped = true;
    zero_grad();
    return r;
  }
  if (max_grad_norm > 0 && total > max_grad_norm) {
    const double coef = max_grad_norm / (total + 1e-6);
    c10::NoGradGuard ng;
    for (auto& p : params_)
      if (p.grad().defined()) p.mutable_grad().mul_(coef);
  }
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
  optimizer_->step();
  zero_grad();
  ++steps_;
  return r;
}

void PreferenceTrainer::save_state(const std::string& path) const {
  torch::serialize::OutputArchive archive;
  optimizer_->save(archive);
  archive.write("torch_dpo_optimizer_steps", at::tensor({steps_}, at::kLong));
  archive.write("torch_dpo_bco_state", at::tensor({bco_state_.mean, bco_state_.count}, at::kDouble));
  archive.save_to(path);
}

void PreferenceTrainer::load_state(const std::string& path) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "cannot read optimizer state ", path, ": ", e.what());
  }
  optimizer_->load(archive);
  at::Tensor s;
  TORCH_CHECK(archive.try_read("torch_dpo_optimizer_steps", s), "optimizer state ", path, " has no step count");
  steps_ = s.item<int64_t>();
  at::Tensor bco;
  if (archive.try_read("torch_dpo_bco_state", bco) && bco.numel() == 2)
    bco_state_ = BCORunningMean{bco[0].item<double>(), bco[1].item<double>()};
}

FusedLogps sequence_logps_nograd(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const at::Tensor& labels, const FusedLogpsOptions& opt, bool padding_free) {
  require_lm_head(model, "sequence log-probs");
  check_batch(input_ids, attention_mask, labels, model.config().vocab_size);
  c10::NoGradGuard ng;
  const auto dev = model.lm_head_weight().device();
  auto labels_d = labels.to(dev);
  auto hidden = padding_free ? packed_hidden_states(model, input_ids.to(dev), attention_mask.to(dev), labels_d)
                             : model.hidden_states(input_ids.to(dev), attention_mask.to(dev));  // (N, T, H)
  auto r = fused_sequence_logps(hidden, model.lm_head_weight(), model.lm_head_bias(), labels_d, opt);
  return FusedLogps{r.logps.detach().cpu(), r.token_counts.cpu(), r.logits_sum.detach().cpu()};
}

}  // namespace tdpo
