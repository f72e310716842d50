#include "causal_lm.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>

#include "activation_checkpoint.h"
#include "causal_lm_base.h"
#include "checkpoint_files.h"
#include "gpt2.h"
#include "llama.h"
#include "lora.h"
#include "runtime.h"
#include "safetensors.h"
#include "weight_map.h"

namespace tdpo {

// ---- CausalLM ----

at::Tensor CausalLM::logits(const at::Tensor& input_ids, const at::Tensor& attention_mask, KVCache* cache) {
  require_lm_head(*this, "logits()");
  auto h = hidden_states(input_ids, attention_mask, cache);  // (B, T, H)
  auto b = lm_head_bias();
  return at::linear(h, lm_head_weight(), b ? *b : at::Tensor());  // (B, T, V)
}

c10::Device CausalLM::device() const { return named_parameters().front().second.device(); }
c10::ScalarType CausalLM::dtype() const { return named_parameters().front().second.scalar_type(); }

c10::optional<at::Tensor> CausalLM::score_weight() const {
  if (!has_score_head()) return c10::nullopt;
  for (const auto& [name, t] : named_parameters())
    if (name == "score.weight") return t;
  TORCH_CHECK(false, "model of type '", config().model_type, "' has head 'score' but no parameter 'score.weight'");
}

void require_lm_head(const CausalLM& model, const char* what) {
  TORCH_CHECK(!model.has_score_head(), what, " needs a language-model head, but this model is a ",
              sequence_classification_architecture(model.config().model_type),
              " (score head: rewards only; use score / RewardTrainer)");
}

int64_t CausalLM::num_parameters() const {
  int64_t n = 0;
  for (const auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void CausalLM::set_requires_grad(bool on) {
  for (auto& [name, t] : named_parameters()) t.requires_grad_(on);
}

at::Tensor positions_from_mask(const at::Tensor& mask) {
  auto m = mask.to(at::kLong);  // (B, S)
  if (m.numel() == 0 || m.max().item<int64_t>() <= 1) return (m.cumsum(1) - 1).clamp_min(0);  // (B, S)
  // Segment ids: a token's position is the number of earlier tokens of its segment. A stable sort groups each
  // segment's tokens in order; the rank inside the group is the index minus the group's first index.
  const int64_t B = m.size(0), S = m.size(1);
  auto sorted = at::sort(m, /*stable=*/true, /*dim=*/1, /*descending=*/false);
  auto keys = std::get<0>(sorted), order = std::get<1>(sorted);                       // (B, S) each
  auto idx = at::arange(S, m.options()).unsqueeze(0).expand({B, S});                  // (B, S)
  auto starts = at::ones({B, S}, m.options().dtype(at::kBool));                       // (B, S) group starts
  if (S > 1) starts.narrow(1, 1, S - 1).copy_(keys.narrow(1, 1, S - 1).ne(keys.narrow(1, 0, S - 1)));
  auto first = std::get<0>(at::where(starts, idx, at::zeros_like(idx)).cummax(1));   // (B, S)
  auto pos = at::empty_like(m).scatter_(1, order, idx - first);                       // (B, S)
  return pos.masked_fill(m.eq(0), 0);                                                 // pads -> 0
}

at::Tensor checked_mask(const at::Tensor& input_ids, const at::Tensor& attention_mask, int64_t vocab_size,
                        bool allow_segments) {
  TORCH_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0,
              "input_ids must be a non-empty (B, T) tensor, got ",
              input_ids.defined() ? c10::str(input_ids.sizes()) : std::string("undefined"));
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
              "input_ids must be int64 or int32, got ", input_ids.scalar_type());
  const auto lo = input_ids.min().item<int64_t>(), hi = input_ids.max().item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < vocab_size, "input_ids must be in [0, ", vocab_size, "), got values in [", lo, ", ", hi,
              "]");
  if (!attention_mask.defined()) return at::ones(input_ids.sizes(), input_ids.options().dtype(at::kLong));
  TORCH_CHECK(attention_mask.sizes() == input_ids.sizes(), "attention_mask must have the shape of input_ids ",
              input_ids.sizes(), ", got ", attention_mask.sizes());
  auto m = attention_mask.to(input_ids.device(), at::kLong);
  const auto mlo = m.min().item<int64_t>(), mhi = m.max().item<int64_t>();
  if (allow_segments) {
    TORCH_CHECK(mlo >= 0, "attention_mask must hold 0 (pad) or segment ids >= 1, got values in [", mlo, ", ", mhi,
                "]");
  } else {
    TORCH_CHECK(mlo >= 0 && mhi <= 1, "attention_mask must hold 0 or 1, got values in [", mlo, ", ", mhi,
                "] (segment ids > 1 of packed sequences are accepted only by a model forward without KV cache)");
  }
  return m;
}

// ---- CausalLMBase ----

CausalLMBase::CausalLMBase(ModelConfig cfg) : cfg_(std::move(cfg)) {
  for (const auto& spec : weight_map(cfg_).weights) {
    order_.push_back(spec.key);
    params_[spec.key] = at::empty(spec.model_shape(), at::kFloat).requires_grad_(true);
  }
}

at::Tensor* CausalLMBase::slot(const std::string& name) {
  auto it = params_.find(name);
  return it == params_.end() ? nullptr : &it->second;
}

std::vector<std::pair<std::string, at::Tensor>> CausalLMBase::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(order_.size());
  for (const auto& n : order_) out.emplace_back(n, params_.at(n));
  return out;
}

void CausalLMBase::set_parameter(const std::string& name, const at::Tensor& value) {
  auto it = params_.find(name);
  TORCH_CHECK(it != params_.end(), "model of type '", cfg_.model_type, "' has no parameter '", name, "'");
  TORCH_CHECK(value.sizes() == it->second.sizes(), "parameter '", name, "' must have shape ", it->second.sizes(),
              ", got ", value.sizes());
  const bool rg = it->second.requires_grad();
  it->second = value.detach().requires_grad_(rg);
}

void CausalLMBase::to(c10::Device device, c10::ScalarType dtype) {
  TORCH_CHECK(at::isFloatingType(dtype), "model dtype must be floating point, got ", dtype);
  for (auto& [name, t] : params_) {
    if (t.device() == device && t.scalar_type() == dtype) continue;
    const bool rg = t.requires_grad();
    t = t.detach().to(device, dtype).requires_grad_(rg);
  }
  if (lora_) lora_->to(device, dtype);  // LoRA adapters follow the base weights
}

void CausalLMBase::init_random(uint64_t seed) {
  c10::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (const auto& name : order_) {
    auto& t = params_.at(name);
    const bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    const bool is_norm = name.find("norm") != std::string::npos || name.find(".ln_") != std::string::npos;
    at::Tensor v;
    if (is_bias)
      v = at::zeros(t.sizes(), at::kDouble);
    else if (is_norm)
      v = at::ones(t.sizes(), at::kDouble);
    else
      v = at::normal(0.0, 0.02, t.sizes(), gen, at::TensorOptions().dtype(at::kDouble));
    t = v.to(t.device(), t.scalar_type()).requires_grad_(true);
  }
}

at::Tensor CausalLMBase::run_block(std::function<at::Tensor(const at::Tensor&)> block, const at::Tensor& x,
                                   const KVCache* cache) const {
  if (checkpoint_blocks_ && cache == nullptr && c10::GradMode::is_enabled()) return checkpointed(std::move(block), x);
  return block(x);
}

CausalLMBase::StepInputs CausalLMBase::prepare_step(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                                   KVCache* cache) const {
  StepInputs in;
  const auto dev = device();
  in.ids = input_ids.to(dev, at::kLong);
  auto mask = checked_mask(in.ids, attention_mask, cfg_.vocab_size, /*allow_segments=*/true);  // (B, T)
  if (cache) {
    const auto mhi = mask.max().item<int64_t>();
    TORCH_CHECK(mhi <= 1, "a KV cache needs a 0/1 attention_mask; segment ids (packed sequences, values > 1) are "
                "supported only without a cache, got values up to ", mhi);
  }
  if (cache && !cache->empty()) {
    TORCH_CHECK(cache->mask.size(0) == in.ids.size(0), "KV cache holds batch size ", cache->mask.size(0),
                " but input_ids has ", in.ids.size(0));
    TORCH_CHECK(cache->k.size() == static_cast<size_t>(cfg_.num_hidden_layers) && cache->v.size() == cache->k.size(),
                "KV cache holds ", cache->k.size(), " layers, the model has ", cfg_.num_hidden_layers);
    in.full_mask = at::cat({cache->mask.to(dev, at::kLong), mask}, 1);  // (B, S)
  } else {
    if (cache) cache->clear();
    in.full_mask = mask;  // (B, S = T)
  }
  const int64_t T = in.ids.size(1), S = in.full_mask.size(1);
  in.positions = positions_from_mask(in.full_mask).narrow(1, S - T, T);  // (B, T)
  if (cache) cache->mask = in.full_mask;
  return in;
}

void CausalLMBase::cache_append(KVCache* cache, size_t layer, at::Tensor& k, at::Tensor& v) {
  if (!cache) return;
  if (cache->k.size() == layer) {
    cache->k.push_back(k);
    cache->v.push_back(v);
    return;
  }
  TORCH_CHECK(layer < cache->k.size(), "KV cache is missing layer ", layer);
  k = at::cat({cache->k[layer], k}, 2);  // (B, Hkv, S, D)
  v = at::cat({cache->v[layer], v}, 2);  // (B, Hkv, S, D)
  cache->k[layer] = k;
  cache->v[layer] = v;
}

// ---- factories ----

namespace {

std::shared_ptr<CausalLMBase> construct(const ModelConfig& cfg) {
  if (cfg.model_type == "llama" || cfg.model_type == "mistral" || cfg.model_type == "qwen2")
    return std::make_shared<LlamaModel>(cfg);
  if (cfg.model_type == "gpt2") return std::make_shared<GPT2Model>(cfg);
  TORCH_CHECK(false, "unsupported model_type '", cfg.model_type, "' (supported: llama, mistral, qwen2, gpt2)");
}

}  // namespace

std::shared_ptr<CausalLM> load_causal_lm(const std::string& dir, c10::Device device, c10::ScalarType dtype,
                                         const HeadOptions& head) {
  TORCH_CHECK(at::isFloatingType(dtype), "model dtype must be floating point, got ", dtype);
  TORCH_CHECK(head.head.empty() || head.head == "score", "Expected head '' or 'score' but received '", head.head, "'");
  auto cfg = load_model_config(dir + "/config.json");
  const bool convert = head.head == "score" && cfg.head != "score";  // causal LM -> reward model
  if (convert) cfg = with_score_head(cfg);
  std::shared_ptr<CausalLMBase> model;
  try {
    model = construct(cfg);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "cannot build the model of ", dir, "/config.json: ", e.what_without_backtrace());
  }
  auto reader = CheckpointReader::open(dir);
  load_weights(*model, reader, dir, device, dtype, convert);
  if (convert) {
    double std = 0.02;
    if (cfg.raw.contains("initializer_range") && cfg.raw["initializer_range"].is_number()) {
      std = cfg.raw["initializer_range"].get<double>();
      TORCH_CHECK(std::isfinite(std) && std > 0, "Expected a number > 0 for \"initializer_range\" but received ", std,
                  " in ", dir, "/config.json");
    }
    auto gen = at::make_generator<at::CPUGeneratorImpl>(head.seed);
    auto w = at::normal(0.0, std, {cfg.num_labels, cfg.hidden_size}, gen, at::TensorOptions().dtype(at::kDouble));
    model->set_parameter("score.weight", w.to(device, dtype));  // (1, H)
  }
  model->set_requires_grad(true);
  return model;
}

void save_causal_lm(const CausalLM& model, const std::string& dir, int64_t max_shard_bytes, const std::string& dtype) {
  std::string name = dtype.empty() ? model.config().torch_dtype : dtype;
  if (name.empty()) name = dtype_name(model.dtype());
  const auto st = parse_dtype(name);
  auto tensors = export_weights(model, st);
  std::filesystem::create_directories(dir);
  ModelConfig cfg = model.config();
  cfg.torch_dtype = dtype_name(st);  // written under the key of the config's layout (torch_dtype or dtype)
  const std::string text = model_config_to_json(cfg).dump(2) + "\n";
  write_checkpoint(dir, tensors, max_shard_bytes);
  write_file_atomic(dir + "/config.json", {{text.data(), text.size()}});
}

std::shared_ptr<CausalLM> make_causal_lm(const ModelConfig& cfg, c10::Device device, c10::ScalarType dtype,
                                         uint64_t seed) {
  auto model = construct(cfg);
  model->init_random(seed);
  model->to(device, dtype);
  return model;
}

}  // namespace tdpo
