#include "lora.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "activation_checkpoint.h"
#include "causal_lm_base.h"
#include "runtime.h"
#include "safetensors.h"

namespace tdpo {

namespace {

const char* kPrefix = "base_model.model.";

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

bool ends_with_module(const std::string& module, const std::string& target) {
  if (module == target) return true;
  return module.size() > target.size() && module.compare(module.size() - target.size(), target.size(), target) == 0 &&
         module[module.size() - target.size() - 1] == '.';
}

// The (out, in) weight slot of `module` in `model`: the tensor of "<module>.weight" in named_parameters().
const at::Tensor* weight_slot(CausalLM& model, const std::string& module) {
  auto* base = dynamic_cast<CausalLMBase*>(&model);
  TORCH_CHECK(base, "LoRA needs a model built by torch-dpo (CausalLMBase)");
  return base->parameter_slot(module + ".weight");
}

}  // namespace

// ---- CausalLM / CausalLMBase hooks ----

void CausalLM::set_lora(std::shared_ptr<LoraAdapters> adapters) {
  TORCH_CHECK(!adapters, "model of type '", config().model_type, "' does not support LoRA adapters");
}

at::Tensor* CausalLMBase::linear_slot(const std::string& name) {
  const std::string suffix = ".weight";
  TORCH_CHECK(name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0,
              "linear_slot expects a '<module>.weight' name, got '", name, "'");
  auto* s = slot(name);
  TORCH_CHECK(s, "model of type '", cfg_.model_type, "' has no parameter '", name, "'");
  linear_modules_.push_back(name.substr(0, name.size() - suffix.size()));
  return s;
}

const at::Tensor* CausalLMBase::parameter_slot(const std::string& name) { return slot(name); }

at::Tensor CausalLMBase::linear(const at::Tensor& x, const at::Tensor* w, const at::Tensor* b) const {
  if (lora_) return lora_->linear(x, w, b);
  return at::linear(x, *w, opt(b));
}

void CausalLMBase::set_lora(std::shared_ptr<LoraAdapters> adapters) { lora_ = std::move(adapters); }

std::vector<std::pair<std::string, at::Tensor>> CausalLMBase::trainable_parameters() const {
  if (lora_) return lora_->named_parameters();
  return named_parameters();
}

// ---- LoraConfig ----

void LoraConfig::check() const {
  TORCH_CHECK(r >= 1, "Expected an integer >= 1 for LoRA r but received ", r);
  TORCH_CHECK(std::isfinite(alpha) && alpha > 0, "Expected a number > 0 for LoRA alpha but received ", alpha);
  TORCH_CHECK(std::isfinite(dropout) && dropout >= 0 && dropout < 1,
              "Expected a number in [0, 1) for LoRA dropout but received ", dropout);
  TORCH_CHECK(!target_modules.empty() || !target_regex.empty(),
              "Expected at least one module name for LoRA target_modules but received none");
}

// ---- LoraAdapters ----

LoraAdapters::LoraAdapters(LoraConfig cfg, std::vector<LoraAdapter> adapters)
    : cfg_(std::move(cfg)), adapters_(std::move(adapters)) {
  cfg_.check();
  for (size_t i = 0; i < adapters_.size(); ++i) {
    const auto& a = adapters_[i];
    TORCH_CHECK(a.base && a.base->dim() == 2, "LoRA module '", a.module, "' needs a 2-D base weight");
    const int64_t out = a.base->size(0), in = a.base->size(1);
    TORCH_CHECK(a.A.sizes() == at::IntArrayRef({cfg_.r, in}), "LoRA module '", a.module, "': lora_A must be (",
                cfg_.r, ", ", in, "), got ", a.A.sizes());
    TORCH_CHECK(a.B.sizes() == at::IntArrayRef({out, cfg_.r}), "LoRA module '", a.module, "': lora_B must be (", out,
                ", ", cfg_.r, "), got ", a.B.sizes());
    TORCH_CHECK(by_base_.emplace(a.base, i).second, "LoRA module '", a.module, "' is listed twice");
  }
}

const LoraAdapter* LoraAdapters::find(const at::Tensor* base) const {
  auto it = by_base_.find(base);
  return it == by_base_.end() ? nullptr : &adapters_[it->second];
}

at::Tensor LoraAdapters::linear(const at::Tensor& x, const at::Tensor* w, const at::Tensor* b) const {
  auto y = at::linear(x, *w, b ? *b : at::Tensor());  // (..., out)
  if (!enabled_) return y;
  const auto* a = find(w);
  if (!a) return y;
  const bool train = training_forward() && cfg_.dropout > 0;  // autograd on, or a checkpointed block's first pass
  auto xd = train ? at::dropout(x, cfg_.dropout, /*train=*/true) : x;  // (..., in)
  auto low = at::linear(at::linear(xd, a->A), a->B);                  // (..., r) -> (..., out)
  return y + low * cfg_.scale();
}

std::vector<std::pair<std::string, at::Tensor>> LoraAdapters::named_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  out.reserve(2 * adapters_.size());
  for (const auto& a : adapters_) {
    out.emplace_back(lora_a_key(a.module), a.A);
    out.emplace_back(lora_b_key(a.module), a.B);
  }
  return out;
}

int64_t LoraAdapters::num_parameters() const {
  int64_t n = 0;
  for (const auto& a : adapters_) n += a.A.numel() + a.B.numel();
  return n;
}

void LoraAdapters::to(c10::Device device, c10::ScalarType dtype) {
  for (auto& a : adapters_) {
    for (at::Tensor* t : {&a.A, &a.B}) {
      if (t->device() == device && t->scalar_type() == dtype) continue;
      const bool rg = t->requires_grad();
      *t = t->detach().to(device, dtype).requires_grad_(rg);
    }
  }
}

AdaptersDisabled::AdaptersDisabled(const CausalLM& model) : lora_(model.lora()) {
  if (lora_) {
    was_ = lora_->enabled();
    lora_->set_enabled(false);
  }
}

AdaptersDisabled::~AdaptersDisabled() {
  if (lora_) lora_->set_enabled(was_);
}

// ---- matching and attaching ----

std::string lora_a_key(const std::string& module) { return kPrefix + module + ".lora_A.weight"; }
std::string lora_b_key(const std::string& module) { return kPrefix + module + ".lora_B.weight"; }

std::vector<std::string> match_lora_targets(const CausalLM& model, const LoraConfig& cfg) {
  const auto modules = model.linear_modules();
  TORCH_CHECK(!modules.empty(), "model of type '", model.config().model_type, "' has no LoRA-capable linear layers");
  std::vector<std::string> out;
  if (!cfg.target_regex.empty()) {
    std::regex re;
    try {
      re = std::regex(cfg.target_regex);
    } catch (const std::regex_error& e) {
      TORCH_CHECK(false, "LoRA target_modules regex '", cfg.target_regex, "' is invalid: ", e.what());
    }
    for (const auto& m : modules)
      if (std::regex_match(m, re)) out.push_back(m);
    TORCH_CHECK(!out.empty(), "LoRA target_modules regex '", cfg.target_regex, "' matches no linear module; the ",
                model.config().model_type, " model's linear modules are: ", join(modules));
    return out;
  }
  std::set<std::string> names;  // distinct last names, for the error message
  for (const auto& m : modules) names.insert(m.substr(m.rfind('.') + 1));
  std::vector<bool> hit(modules.size(), false);
  for (const auto& t : cfg.target_modules) {
    bool any = false;
    for (size_t i = 0; i < modules.size(); ++i)
      if (ends_with_module(modules[i], t)) hit[i] = any = true;
    TORCH_CHECK(any, "LoRA target module '", t, "' matches no linear module of this ", model.config().model_type,
                " model; its linear modules are named: ", join({names.begin(), names.end()}), " (e.g. ", modules[0],
                ")");
  }
  for (size_t i = 0; i < modules.size(); ++i)
    if (hit[i]) out.push_back(modules[i]);
  return out;
}

namespace {

std::shared_ptr<LoraAdapters> install(CausalLM& model, LoraConfig cfg, std::vector<LoraAdapter> adapters) {
  TORCH_CHECK(!model.lora(), "the model already has LoRA adapters (merge or reload it before attaching others)");
  for (auto& a : adapters) {
    a.A = a.A.to(model.device(), model.dtype()).detach().requires_grad_(true);
    a.B = a.B.to(model.device(), model.dtype()).detach().requires_grad_(true);
  }
  auto lora = std::make_shared<LoraAdapters>(std::move(cfg), std::move(adapters));
  model.set_lora(lora);
  for (auto& [name, p] : model.named_parameters()) p.requires_grad_(false);
  return lora;
}

}  // namespace

std::shared_ptr<LoraAdapters> attach_lora(CausalLM& model, LoraConfig cfg, uint64_t seed) {
  cfg.check();
  cfg.fan_in_fan_out = model.config().model_type == "gpt2";  // Conv1D bases (PEFT sets the flag for them)
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<LoraAdapter> adapters;
  for (const auto& m : match_lora_targets(model, cfg)) {
    LoraAdapter a;
    a.module = m;
    a.base = weight_slot(model, m);
    const int64_t out = a.base->size(0), in = a.base->size(1);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));  // kaiming-uniform, a = sqrt(5)
    a.A = at::empty({cfg.r, in}, at::kDouble).uniform_(-bound, bound, gen);
    a.B = at::zeros({out, cfg.r}, at::kDouble);
    adapters.push_back(std::move(a));
  }
  return install(model, std::move(cfg), std::move(adapters));
}

// ---- PEFT files ----

LoraConfig lora_config_from_json(const nlohmann::json& j, const std::string& where) {
  TORCH_CHECK(j.is_object(), where, ": expected a JSON object");
  auto field = [&](const char* k) -> const nlohmann::json* {
    return j.contains(k) && !j[k].is_null() ? &j[k] : nullptr;
  };
  auto bad = [&](const char* k, const char* expected) {
    TORCH_CHECK(false, where, ": Expected ", expected, " for ", k, " but received ", j[k].dump());
  };
  const auto* pt = field("peft_type");
  TORCH_CHECK(pt && pt->is_string() && pt->get<std::string>() == "LORA", where,
              ": Expected \"LORA\" for peft_type but received ", pt ? pt->dump() : std::string("nothing"));
  LoraConfig c;
  if (const auto* v = field("r")) {
    if (!v->is_number_integer()) bad("r", "an integer >= 1");
    c.r = v->get<int64_t>();
  }
  if (const auto* v = field("lora_alpha")) {
    if (!v->is_number()) bad("lora_alpha", "a number > 0");
    c.alpha = v->get<double>();
  }
  if (const auto* v = field("lora_dropout")) {
    if (!v->is_number()) bad("lora_dropout", "a number in [0, 1)");
    c.dropout = v->get<double>();
  }
  const auto* tm = field("target_modules");
  TORCH_CHECK(tm, where, ": Expected a list of module names or a regex for target_modules but received nothing");
  if (tm->is_string()) {
    c.target_regex = tm->get<std::string>();
  } else {
    if (!tm->is_array()) bad("target_modules", "a list of module names or a regex");
    for (const auto& t : *tm) {
      if (!t.is_string()) bad("target_modules", "a list of module names or a regex");
      c.target_modules.push_back(t.get<std::string>());
    }
  }
  if (const auto* v = field("fan_in_fan_out")) {
    if (!v->is_boolean()) bad("fan_in_fan_out", "true or false");
    c.fan_in_fan_out = v->get<bool>();
  }
  if (const auto* v = field("bias"); v && !(v->is_string() && v->get<std::string>() == "none"))
    bad("bias", "\"none\" (adapter biases are not supported)");
  for (const char* k : {"use_dora", "use_rslora"})
    if (const auto* v = field(k); v && !(v->is_boolean() && !v->get<bool>())) bad(k, "false (not supported)");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (const auto* v = field(k); v && !(v->is_object() && v->empty()))
      bad(k, "{} (per-module ranks are not supported)");
  if (const auto* v = field("layers_to_transform"); v) bad("layers_to_transform", "null (not supported)");
  try {
    c.check();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, where, ": ", e.what_without_backtrace());
  }
  return c;
}

nlohmann::json lora_config_to_json(const LoraConfig& cfg, const std::string& base_model) {
  nlohmann::json j;
  j["peft_type"] = "LORA";
  j["task_type"] = "CAUSAL_LM";
  j["r"] = cfg.r;
  j["lora_alpha"] = cfg.alpha;
  j["lora_dropout"] = cfg.dropout;
  if (cfg.target_regex.empty())
    j["target_modules"] = cfg.target_modules;
  else
    j["target_modules"] = cfg.target_regex;
  j["bias"] = "none";
  j["fan_in_fan_out"] = cfg.fan_in_fan_out;
  j["base_model_name_or_path"] = base_model.empty() ? nlohmann::json(nullptr) : nlohmann::json(base_model);
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["modules_to_save"] = nullptr;
  j["use_rslora"] = false;
  j["use_dora"] = false;
  return j;
}

void save_lora_adapter(const CausalLM& model, const std::string& dir, const std::string& base_model,
                       const std::string& dtype) {
  auto lora = model.lora();
  TORCH_CHECK(lora, "cannot save a LoRA adapter to ", dir, ": the model has no adapters");
  const auto st = parse_dtype(dtype.empty() ? "float32" : dtype);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, t] : lora->named_parameters()) {
    auto c = t.detach().to(at::kCPU, st).contiguous();
    TORCH_CHECK(at::isfinite(c).all().item<bool>(), "refusing to write ", dir, ": adapter tensor ", name,
                " holds non-finite values (NaN or Inf)");
    tensors.emplace_back(name, c);
  }
  std::filesystem::create_directories(dir);
  save_safetensors(dir + "/adapter_model.safetensors", tensors, {{"format", "pt"}});
  const std::string text = lora_config_to_json(lora->config(), base_model).dump(2) + "\n";
  write_file_atomic(dir + "/adapter_config.json", {{text.data(), text.size()}});
}

std::shared_ptr<LoraAdapters> load_lora_adapter(CausalLM& model, const std::string& dir) {
  const std::string cfg_path = dir + "/adapter_config.json", st_path = dir + "/adapter_model.safetensors";
  TORCH_CHECK(std::filesystem::exists(cfg_path), cfg_path, ": not found (expected a PEFT adapter folder)");
  TORCH_CHECK(std::filesystem::exists(st_path), st_path, ": not found (expected a PEFT adapter folder)");
  nlohmann::json j;
  {
    std::ifstream in(cfg_path);
    try {
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, cfg_path, ": not valid JSON (", e.what(), ")");
    }
  }
  auto cfg = lora_config_from_json(j, cfg_path);
  std::vector<std::string> modules;
  try {
    modules = match_lora_targets(model, cfg);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, cfg_path, ": ", e.what_without_backtrace());
  }
  auto file = SafetensorsFile::open(st_path);
  std::set<std::string> expected;
  std::vector<LoraAdapter> adapters;
  for (const auto& m : modules) {
    LoraAdapter a;
    a.module = m;
    a.base = weight_slot(model, m);
    const int64_t out = a.base->size(0), in = a.base->size(1);
    for (int k = 0; k < 2; ++k) {
      const std::string key = k == 0 ? lora_a_key(m) : lora_b_key(m);
      // PEFT also accepts keys with the adapter name ("...lora_A.default.weight") in some versions.
      std::string found = key;
      if (!file->find(found)) found = key.substr(0, key.size() - 7) + ".default.weight";
      TORCH_CHECK(file->find(found), st_path, " is missing key '", key, "' (module '", m, "' matched by ", cfg_path,
                  ")");
      expected.insert(found);
      at::Tensor t = file->tensor(found);
      const std::vector<int64_t> want = k == 0 ? std::vector<int64_t>{cfg.r, in} : std::vector<int64_t>{out, cfg.r};
      TORCH_CHECK(t.sizes().vec() == want, st_path, " key '", found, "' has shape ", t.sizes(), " but r = ", cfg.r,
                  " and the base weight (out, in) = (", out, ", ", in, ") need ", at::IntArrayRef(want));
      TORCH_CHECK(t.is_floating_point(), st_path, " key '", found, "' has dtype ", t.scalar_type(),
                  "; expected a floating point tensor");
      (k == 0 ? a.A : a.B) = t.clone();  // own the memory: the file mapping may go
    }
    adapters.push_back(std::move(a));
  }
  for (const auto& e : file->entries())
    TORCH_CHECK(expected.count(e.name), st_path, " has unknown key '", e.name, "' (not an adapter of the modules ",
                "matched by target_modules in ", cfg_path, ")");
  return install(model, std::move(cfg), std::move(adapters));
}

void merge_lora(CausalLM& model) {
  auto lora = model.lora();
  TORCH_CHECK(lora, "cannot merge LoRA adapters: the model has none");
  c10::NoGradGuard ng;
  auto* base = dynamic_cast<CausalLMBase*>(&model);
  TORCH_CHECK(base, "LoRA needs a model built by torch-dpo (CausalLMBase)");
  const double s = lora->config().scale();
  for (const auto& a : lora->adapters()) {
    const auto& w = *a.base;                                                     // (out, in)
    auto delta = at::mm(a.B.detach().to(at::kDouble), a.A.detach().to(at::kDouble)) * s;  // (out, in) float64
    model.set_parameter(a.module + ".weight", (w.detach().to(at::kDouble) + delta).to(w.scalar_type()));
  }
  model.set_lora(nullptr);
  for (auto& [name, p] : model.named_parameters()) p.requires_grad_(true);
}

}  // namespace tdpo
