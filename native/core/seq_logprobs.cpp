#include "seq_logprobs.h"

#include "token_logprobs.h"

namespace tdpo {

at::Tensor token_logprobs_from_hidden(const at::Tensor& hidden, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, const at::Tensor& input_ids,
                                      const at::Tensor& attention_mask, int64_t chunk_tokens) {
  TORCH_CHECK(chunk_tokens >= 1, "chunk_tokens must be >= 1, got ", chunk_tokens);
  TORCH_CHECK(hidden.dim() == 3, "hidden states must be (B, T, H), got ", hidden.sizes());
  const int64_t B = hidden.size(0), T = hidden.size(1), H = hidden.size(2);
  TORCH_CHECK(input_ids.dim() == 2 && input_ids.size(0) == B && input_ids.size(1) == T, "input_ids must be (", B,
              ", ", T, "), got ", input_ids.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == H, "head weight must be (V, ", H, "), got ", weight.sizes());
  const auto dev = hidden.device();
  auto out_opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  if (T < 2) return at::zeros({B, 0}, out_opts);
  auto mask = attention_mask.defined() ? attention_mask.to(dev, at::kLong) : at::ones({B, T}, out_opts.dtype(at::kLong));
  TORCH_CHECK(mask.sizes() == input_ids.sizes(), "attention_mask must be (", B, ", ", T, "), got ", mask.sizes());
  auto valid = mask.narrow(1, 1, T - 1).logical_and(mask.narrow(1, 0, T - 1));   // (B, T-1)
  auto idx = valid.reshape({-1}).nonzero().squeeze(1);                            // (N)
  auto h = hidden.narrow(1, 0, T - 1).reshape({B * (T - 1), H}).index_select(0, idx);            // (N, H)
  auto tgt = input_ids.to(dev, at::kLong).narrow(1, 1, T - 1).reshape({-1}).index_select(0, idx);  // (N)
  const int64_t N = idx.size(0);
  std::vector<at::Tensor> parts;
  for (int64_t s = 0; s < N; s += chunk_tokens) {
    const int64_t n = std::min(chunk_tokens, N - s);
    auto logits = at::linear(h.narrow(0, s, n), weight, bias ? *bias : at::Tensor());  // (n, V)
    parts.push_back(token_logprobs(logits, tgt.narrow(0, s, n)));                      // (n) float32
  }
  auto vals = parts.empty() ? at::zeros({0}, out_opts) : at::cat(parts);                // (N)
  return at::zeros({B * (T - 1)}, out_opts).index_put({idx}, vals).view({B, T - 1});    // (B, T-1)
}

at::Tensor sequence_token_logprobs(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                   int64_t chunk_tokens) {
  auto mask = checked_mask(input_ids, attention_mask, model.config().vocab_size);  // (B, T)
  auto hidden = model.hidden_states(input_ids, mask);                              // (B, T, H)
  return token_logprobs_from_hidden(hidden, model.lm_head_weight(), model.lm_head_bias(), input_ids, mask,
                                    chunk_tokens);
}

at::Tensor sequence_logprob_sums(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                 const at::Tensor& completion_mask, int64_t chunk_tokens) {
  auto mask = checked_mask(input_ids, attention_mask, model.config().vocab_size);  // (B, T)
  TORCH_CHECK(completion_mask.defined() && completion_mask.sizes() == input_ids.sizes(),
              "completion_mask must have the shape of input_ids ", input_ids.sizes(), ", got ",
              completion_mask.defined() ? c10::str(completion_mask.sizes()) : std::string("undefined"));
  const int64_t T = input_ids.size(1);
  auto cm = completion_mask.to(mask.device(), at::kLong);
  if (T >= 2) {
    auto ok = mask.narrow(1, 1, T - 1).logical_and(mask.narrow(1, 0, T - 1));  // (B, T-1)
    auto bad = cm.narrow(1, 1, T - 1).to(at::kBool).logical_and(ok.logical_not());
    TORCH_CHECK(!bad.any().item<bool>(), "completion_mask marks ", bad.sum().item<int64_t>(),
                " position(s) that are pads or follow a pad (attention_mask 0)");
  }
  auto lp = sequence_token_logprobs(model, input_ids, mask, chunk_tokens);  // (B, T-1)
  if (T < 2) return at::zeros({input_ids.size(0)}, lp.options());
  return (lp * cm.narrow(1, 1, T - 1).to(lp.device(), at::kFloat)).sum(1);  // (B)
}

}  // namespace tdpo
