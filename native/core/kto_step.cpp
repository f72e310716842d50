// PreferenceTrainer's KTO micro-step: a no-grad policy forward over the mismatched pairs gives the KL estimate z0,
// then the examples' forward with the fused lm-head log-probs (autograd; logits recomputed in backward) and the KTO loss.
#include <c10/core/GradMode.h>

#include <algorithm>

#include "packing.h"
#include "preference_trainer.h"

namespace tdpo {

void PreferenceTrainer::set_kto(const KTOLossConfig& cfg) {
  check_kto_config(cfg);
  kto_ = cfg;
  kto_enabled_ = true;
}

KTOMicroStepResult PreferenceTrainer::accumulate_kto(const KTOBatch& b, double scale, bool sync) {
  SyncScope scope(sync_next_, sync);
  return run_kto(b, scale, true);
}

KTOMicroStepResult PreferenceTrainer::evaluate_kto(const KTOBatch& b) { return run_kto(b, 1.0, false); }

KTOMicroStepResult PreferenceTrainer::run_kto(const KTOBatch& b, double scale, bool train) {
  TORCH_CHECK(kto_enabled_, "this trainer was not created for KTO (set_kto was not called)");
  require_lm_head(*policy_, "KTO");
  const int64_t rows = b.input_ids.size(0);
  TORCH_CHECK(b.input_ids.dim() == 2 && rows >= 2 && rows % 2 == 0,
              "a KTO batch has 2N rows (N examples then N mismatched pairs), got ", b.input_ids.sizes());
  const int64_t N = rows / 2;
  check_batch(b.input_ids, b.attention_mask, b.labels, policy_->config().vocab_size);
  TORCH_CHECK(b.desirable.defined() && b.desirable.dim() == 1 && b.desirable.size(0) == N,
              "desirable must be (", N, "), got ", b.desirable.defined() ? b.desirable.sizes() : at::IntArrayRef{});
  const auto dev = policy_->device();
  const auto acc = policy_->dtype() == at::kDouble ? at::kDouble : at::kFloat;  // log-prob accumulation dtype
  at::Tensor ref;  // (2N) acc on dev
  if (kto_.reference_free) {
    ref = at::zeros({rows}, at::TensorOptions().device(dev).dtype(acc));
  } else {
    TORCH_CHECK(b.ref_logps.defined(), "KTO needs reference log-probs (2N = ", rows, ") unless reference-free");
    TORCH_CHECK(b.ref_logps.dim() == 1 && b.ref_logps.size(0) == rows, "ref_logps must be (", rows, "), got ",
                b.ref_logps.sizes());
    ref = b.ref_logps.to(dev, acc);
    TORCH_CHECK(at::isfinite(ref).all().item<bool>(), "ref_logps contain NaN or Inf");
  }
  auto ids = b.input_ids.to(dev), mask = b.attention_mask.to(dev), labels = b.labels.to(dev);  // (2N, T)

  // 1) z0 from the mismatched pairs, without gradients (TRL: mean, averaged over processes, then clamped at 0).
  auto kl = sequence_logps_nograd(*policy_, ids.slice(0, N, rows), mask.slice(0, N, rows), labels.slice(0, N, rows),
                                  fused_, padding_free_);                     // logps (N) on CPU
  double z0 = kto_kl_mean(kl.logps, ref.slice(0, N, rows).cpu()).item<double>();
  if (train && dp_) z0 = dp_->allreduce_sum_double({z0})[0] / static_cast<double>(dp_->world_size());
  z0 = std::max(0.0, z0);

  // 2) The examples: policy log-probs with gradients, the KTO loss, backward.
  c10::AutoGradMode grad(train);
  auto ex_ids = ids.slice(0, 0, N), ex_mask = mask.slice(0, 0, N), ex_labels = labels.slice(0, 0, N);  // (N, T)
  auto hidden = padding_free_ ? packed_hidden_states(*policy_, ex_ids, ex_mask, ex_labels)
                             : policy_->hidden_states(ex_ids, ex_mask);       // (N, T, H)
  auto lp = fused_sequence_logps(hidden, policy_->lm_head_weight(), policy_->lm_head_bias(), ex_labels, fused_);
  KTOLossInputs in;
  in.policy_logps = lp.logps;                                                 // (N)
  in.ref_logps = ref.slice(0, 0, N);                                          // (N)
  in.desirable = b.desirable;
  in.z0 = z0;
  auto out = kto_loss(in, kto_);
  if (train) backward(out.loss, scale);

  KTOMicroStepResult r;
  r.loss = out.loss.detach().item<double>();
  r.kl = z0;
  r.rewards = out.rewards.cpu();
  r.policy_logps = lp.logps.detach().cpu();
  r.counts = lp.token_counts.cpu();
  r.logits_sum = lp.logits_sum.detach().cpu();
  r.tokens = mask.sum().item<int64_t>();
  return r;
}

}  // namespace tdpo
