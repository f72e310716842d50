#include "generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <limits>

namespace tdpo {

namespace {

void check_options(const GenerateOptions& o) {
  TORCH_CHECK(o.max_new_tokens >= 1, "max_new_tokens must be >= 1, got ", o.max_new_tokens);
  TORCH_CHECK(!o.do_sample || o.temperature > 0, "temperature must be > 0 when sampling, got ", o.temperature);
  TORCH_CHECK(o.top_k >= 0, "top_k must be >= 0, got ", o.top_k);
  TORCH_CHECK(o.top_p > 0 && o.top_p <= 1, "top_p must be in (0, 1], got ", o.top_p);
}

}  // namespace

std::vector<std::vector<int64_t>> GenerateResult::sequences() const {
  std::vector<std::vector<int64_t>> out;
  auto t = tokens.contiguous();
  for (int64_t b = 0; b < t.size(0); ++b) {
    const int64_t n = lengths[b].item<int64_t>();
    const int64_t* p = t.data_ptr<int64_t>() + b * t.size(1);
    out.emplace_back(p, p + n);
  }
  return out;
}

at::Tensor choose_next_tokens(const at::Tensor& logits, const GenerateOptions& o, at::Generator& gen) {
  TORCH_CHECK(logits.dim() == 2, "logits must be (B, V), got ", logits.sizes());
  auto l = logits.detach().to(at::kCPU, at::kFloat);  // (B, V)
  if (!o.do_sample) return l.argmax(-1);             // (B)
  const int64_t V = l.size(1);
  l = l / o.temperature;
  const float ninf = -std::numeric_limits<float>::infinity();
  if (o.top_k > 0 && o.top_k < V) {
    auto kth = std::get<0>(l.topk(o.top_k, -1)).narrow(1, o.top_k - 1, 1);  // (B, 1)
    l = l.masked_fill(l < kth, ninf);
  }
  if (o.top_p < 1.0) {
    auto sorted = l.sort(-1, /*descending=*/true);
    auto sp = at::softmax(std::get<0>(sorted), -1);  // (B, V) descending probabilities
    auto before = sp.cumsum(-1) - sp;                // mass of the more likely tokens
    auto drop_sorted = before >= o.top_p;            // the most likely token is always kept (before = 0)
    auto drop = at::zeros_like(drop_sorted).scatter(1, std::get<1>(sorted), drop_sorted);
    l = l.masked_fill(drop, ninf);
  }
  auto probs = at::softmax(l, -1);                                                 // (B, V)
  return at::multinomial(probs, 1, /*replacement=*/false, gen).squeeze(1);        // (B)
}

GenerateResult generate(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                        const GenerateOptions& o) {
  check_options(o);
  const auto& cfg = model.config();
  auto mask = checked_mask(input_ids, attention_mask, cfg.vocab_size).cpu();  // (B, P)
  const int64_t B = mask.size(0), P = mask.size(1);
  // Left padding: every row is zeros then ones, with at least one token.
  auto rising = (mask.narrow(1, 1, P - 1) < mask.narrow(1, 0, P - 1)).any(1);  // (B) a 1 followed by a 0
  TORCH_CHECK(!rising.any().item<bool>() && mask.select(1, P - 1).all().item<bool>(),
              "generate expects left-padded prompts (each attention_mask row zeros then ones, ending in 1)");
  const std::vector<int64_t> eos = o.eos_token_ids ? *o.eos_token_ids : cfg.eos_token_ids;
  int64_t pad = o.pad_token_id;
  if (pad < 0) pad = cfg.pad_token_id >= 0 ? cfg.pad_token_id : (!eos.empty() ? eos[0] : 0);
  TORCH_CHECK(pad >= 0 && pad < cfg.vocab_size, "pad_token_id must be in [0, ", cfg.vocab_size, "), got ", pad);
  auto eos_t = at::tensor(eos.empty() ? std::vector<int64_t>{-1} : eos, at::kLong);  // (E)

  c10::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  const auto dev = model.device();
  const auto w = model.lm_head_weight();
  const auto bias = model.lm_head_bias();
  KVCache cache;
  auto h = model.hidden_states(input_ids.to(dev), mask.to(dev), &cache).select(1, P - 1);  // (B, H)
  auto done = at::zeros({B}, at::kBool);
  auto lengths = at::zeros({B}, at::kLong);
  std::vector<at::Tensor> steps;
  for (int64_t s = 0; s < o.max_new_tokens; ++s) {
    auto logits = at::linear(h, w, bias ? *bias : at::Tensor());  // (B, V)
    auto next = choose_next_tokens(logits, o, gen);                // (B) CPU
    next = at::where(done, at::full_like(next, pad), next);
    lengths += done.logical_not().to(at::kLong);
    steps.push_back(next);
    done = done.logical_or((next.unsqueeze(1) == eos_t.unsqueeze(0)).any(1));
    if (done.all().item<bool>() || s + 1 == o.max_new_tokens) break;
    auto step_ids = next.unsqueeze(1).to(dev);                              // (B, 1)
    auto step_mask = at::ones({B, 1}, step_ids.options());                  // (B, 1)
    h = model.hidden_states(step_ids, step_mask, &cache).select(1, 0);      // (B, H)
  }
  return {at::stack(steps, 1), lengths};
}

GenerateResult generate(CausalLM& model, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& o) {
  TORCH_CHECK(!prompts.empty(), "generate needs at least one prompt");
  size_t P = 0;
  for (size_t b = 0; b < prompts.size(); ++b) {
    TORCH_CHECK(!prompts[b].empty(), "prompt ", b, " is empty; every prompt needs at least one token");
    P = std::max(P, prompts[b].size());
  }
  const int64_t B = static_cast<int64_t>(prompts.size());
  auto ids = at::zeros({B, static_cast<int64_t>(P)}, at::kLong);   // (B, P)
  auto mask = at::zeros({B, static_cast<int64_t>(P)}, at::kLong);  // (B, P)
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const int64_t off = static_cast<int64_t>(P - p.size());
    for (size_t t = 0; t < p.size(); ++t) {
      ia[b][off + t] = p[t];
      ma[b][off + t] = 1;
    }
  }
  return generate(model, ids, mask, o);
}

}  // namespace tdpo
