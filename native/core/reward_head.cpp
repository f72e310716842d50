#include "reward_head.h"

#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace tdpo {

at::Tensor last_token_rewards(const at::Tensor& hidden, const at::Tensor& score, const at::Tensor& mask) {
  TORCH_CHECK(hidden.dim() == 3, "hidden states must be (N, T, H), got ", hidden.sizes());
  const int64_t N = hidden.size(0), T = hidden.size(1), H = hidden.size(2);
  TORCH_CHECK(score.dim() == 2 && score.size(0) == 1 && score.size(1) == H, "score.weight must be (1, ", H,
              ") (num_labels 1), got ", score.sizes());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == N && mask.size(1) == T, "attention_mask must be (", N, ", ", T,
              "), got ", mask.sizes());
  auto m = mask.to(hidden.device(), at::kLong);                                 // (N, T)
  auto len = m.sum(1);                                                          // (N)
  TORCH_CHECK(len.min().item<int64_t>() >= 1, "every row needs at least one token for a reward");
  auto pos = at::arange(T, m.options()).unsqueeze(0);                           // (1, T)
  TORCH_CHECK(m.eq(pos.lt(len.unsqueeze(1)).to(at::kLong)).all().item<bool>(),
              "rewards need a right-padded attention_mask (ones then zeros in every row)");
  auto idx = (len - 1).view({N, 1, 1}).expand({N, 1, H});                       // (N, 1, H)
  const auto acc = at::promote_types(hidden.scalar_type(), at::kFloat);         // float32, or float64 for float64
  auto last = hidden.gather(1, idx).squeeze(1).to(acc);                         // (N, H)
  return at::matmul(last, score.to(acc).t()).squeeze(1);                       // (N)
}

RewardLossOutput reward_loss(const at::Tensor& chosen, const at::Tensor& rejected, const at::Tensor& margins,
                             const RewardLossOptions& opt) {
  TORCH_CHECK(chosen.dim() == 1 && rejected.sizes() == chosen.sizes() && chosen.size(0) > 0,
              "chosen and rejected rewards must be the same non-empty (P), got ", chosen.sizes(), " and ",
              rejected.sizes());
  TORCH_CHECK(std::isfinite(opt.center_rewards_coefficient) && opt.center_rewards_coefficient >= 0,
              "Expected a finite number >= 0 for center_rewards_coefficient but received ",
              opt.center_rewards_coefficient);
  auto z = chosen - rejected;                                                   // (P)
  if (margins.defined()) {
    TORCH_CHECK(margins.dim() == 1 && margins.size(0) == chosen.size(0), "margins must be (", chosen.size(0),
                "), got ", margins.sizes());
    auto mg = margins.to(chosen.device(), chosen.scalar_type());
    TORCH_CHECK(at::isfinite(mg).all().item<bool>(), "margins contain NaN or Inf");
    z = z - mg;
  } else if (opt.margin != 0) {
    TORCH_CHECK(std::isfinite(opt.margin), "Expected a finite margin but received ", opt.margin);
    z = z - opt.margin;
  }
  RewardLossOutput out;
  out.loss = at::softplus(-z).mean();  // −log σ(z), stable for large |z|
  if (opt.center_rewards_coefficient > 0)
    out.loss = out.loss + opt.center_rewards_coefficient * (chosen + rejected).pow(2).mean();
  out.chosen_rewards = chosen.detach();
  out.rejected_rewards = rejected.detach();
  return out;
}

at::Tensor sequence_rewards_nograd(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  auto score = model.score_weight();
  TORCH_CHECK(score.has_value(), "rewards need a score head (a …ForSequenceClassification model, or load with head "
              "'score'), but this model is a causal LM of type '", model.config().model_type, "'");
  c10::NoGradGuard ng;
  const auto dev = model.device();
  auto ids = input_ids.to(dev), mask = attention_mask.to(dev);
  auto hidden = model.hidden_states(ids, mask);                                 // (N, T, H)
  return last_token_rewards(hidden, *score, mask).cpu();                        // (N)
}

}  // namespace tdpo
