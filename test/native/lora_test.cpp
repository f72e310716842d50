// LoRA adapters (native/core/lora.h): gradients against an independent autograd path through the effective weight,
// merging, adapters off = base model, PEFT save / load, and error messages.
#include <gtest/gtest.h>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <filesystem>
#include <fstream>

#include "causal_lm.h"
#include "error_expect.h"
#include "tiny_config.h"
#include "lora.h"
#include "model_fixtures.h"
#include "safetensors.h"
#include "weight_map.h"

namespace {

using tdpo::CausalLM;
using tdpo::LoraConfig;


std::shared_ptr<CausalLM> model(const std::string& type, uint64_t seed = 7) {
  return tdpo::make_causal_lm(tiny_config(type), c10::kCPU, at::kDouble, seed);
}

LoraConfig lora_cfg(const std::string& type, int64_t r = 3, double alpha = 6) {
  LoraConfig c;
  c.r = r;
  c.alpha = alpha;
  c.target_modules = type == "gpt2" ? std::vector<std::string>{"c_attn", "c_proj"}
                                    : std::vector<std::string>{"q_proj", "v_proj", "down_proj"};
  return c;
}

// Fixed (B, T) inputs with one right-padded row.
std::pair<at::Tensor, at::Tensor> inputs() {
  auto ids = at::tensor({3, 17, 5, 29, 11, 2, 38, 8, 21, 0}, at::kLong).view({2, 5});
  auto mask = at::tensor({1, 1, 1, 1, 1, 1, 1, 1, 0, 0}, at::kLong).view({2, 5});
  return {ids, mask};
}

// Gives every B a random value (a fresh adapter has B = 0, which makes dL/dA vanish).
void randomise_b(tdpo::LoraAdapters& lora, uint64_t seed) {
  c10::NoGradGuard ng;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (const auto& a : lora.adapters()) a.B.copy_(at::normal(0.0, 0.3, a.B.sizes(), gen, at::kDouble));
}

at::Tensor param(const CausalLM& m, const std::string& name) {
  for (const auto& [n, t] : m.named_parameters())
    if (n == name) return t;
  ADD_FAILURE() << "no parameter " << name;
  return at::Tensor();
}

double max_rel(const at::Tensor& got, const at::Tensor& want) {
  return ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item<double>();
}

class LoraModels : public ::testing::TestWithParam<std::string> {};

// dL/dA and dL/dB through the adapter path equal s·Bᵀ·G and s·G·Aᵀ, where G = dL/dW_eff is the gradient of the
// same loss with respect to the explicit weight W_eff = W + s·B·A of a second model without adapters.
TEST_P(LoraModels, GradientsMatchTheExplicitLowRankWeight) {
  const auto type = GetParam();
  auto m = model(type);
  auto lora = tdpo::attach_lora(*m, lora_cfg(type), 11);
  randomise_b(*lora, 12);
  auto [ids, mask] = inputs();
  auto R = at::randn({2, 5, 40}, at::TensorOptions().dtype(at::kDouble));  // fixed loss weights
  (m->logits(ids, mask) * R).sum().backward();

  for (const auto& [name, t] : m->named_parameters()) {
    EXPECT_FALSE(t.requires_grad()) << name;
    EXPECT_FALSE(t.grad().defined()) << name;
  }
  auto trainable = m->trainable_parameters();
  ASSERT_EQ(trainable.size(), 2 * lora->adapters().size());
  EXPECT_EQ(trainable[0].first, tdpo::lora_a_key(lora->adapters()[0].module));
  EXPECT_EQ(trainable[0].first.rfind("base_model.model.", 0), 0u);

  auto twin = model(type);
  const double s = lora->config().scale();
  {
    c10::NoGradGuard ng;
    for (const auto& a : lora->adapters())
      twin->set_parameter(a.module + ".weight", param(*twin, a.module + ".weight") + s * at::mm(a.B, a.A));
  }
  (twin->logits(ids, mask) * R).sum().backward();
  for (const auto& a : lora->adapters()) {
    auto G = param(*twin, a.module + ".weight").grad();  // (out, in)
    ASSERT_TRUE(G.defined()) << a.module;
    ASSERT_TRUE(a.A.grad().defined() && a.B.grad().defined()) << a.module;
    EXPECT_LT(max_rel(a.A.grad(), s * at::mm(a.B.detach().t(), G)), 1e-6) << a.module;
    EXPECT_LT(max_rel(a.B.grad(), s * at::mm(G, a.A.detach().t())), 1e-6) << a.module;
    EXPECT_GT(a.A.grad().abs().max().item<double>(), 0) << a.module;
  }
}

// Merged weights equal W + (alpha/r)·B·A (an elementwise sum of outer products here), merged logits equal the
// adapter model's, and the adapters are gone afterwards.
TEST_P(LoraModels, MergeEqualsBasePlusScaledProduct) {
  const auto type = GetParam();
  auto m = model(type);
  auto lora = tdpo::attach_lora(*m, lora_cfg(type, 4, 3.0), 5);
  randomise_b(*lora, 6);
  auto [ids, mask] = inputs();
  at::Tensor with_adapters;
  {
    c10::NoGradGuard ng;
    with_adapters = m->logits(ids, mask);
  }
  auto base = model(type);
  std::map<std::string, at::Tensor> want;
  for (const auto& a : lora->adapters()) {
    auto outer = (a.B.detach().unsqueeze(2) * a.A.detach().unsqueeze(0)).sum(1);  // (out, in) = Σ_k B[:,k] A[k,:]
    want[a.module] = param(*base, a.module + ".weight") + outer * (3.0 / 4.0);
  }
  tdpo::merge_lora(*m);
  EXPECT_FALSE(m->lora());
  EXPECT_EQ(m->trainable_parameters().size(), m->named_parameters().size());
  for (const auto& [name, t] : m->named_parameters()) EXPECT_TRUE(t.requires_grad()) << name;
  for (const auto& [module, w] : want) EXPECT_LT(max_rel(param(*m, module + ".weight").detach(), w), 1e-12) << module;
  c10::NoGradGuard ng;
  EXPECT_LT(max_rel(m->logits(ids, mask), with_adapters), 1e-6);
  // The untouched weights stay as they were.
  for (const auto& [name, t] : base->named_parameters()) {
    const auto module = name.substr(0, name.rfind('.'));
    if (!want.count(module)) EXPECT_TRUE(at::equal(param(*m, name), t)) << name;
  }
}

// A fresh adapter (B = 0) leaves the logits exactly equal to the base model; A is kaiming-uniform and seeded.
TEST_P(LoraModels, FreshAdaptersLeaveTheModelUnchanged) {
  const auto type = GetParam();
  auto m = model(type), base = model(type);
  auto lora = tdpo::attach_lora(*m, lora_cfg(type), 3);
  auto [ids, mask] = inputs();
  c10::NoGradGuard ng;
  EXPECT_TRUE(at::equal(m->logits(ids, mask), base->logits(ids, mask)));
  auto again = model(type);
  auto lora2 = tdpo::attach_lora(*again, lora_cfg(type), 3);
  auto other = model(type);
  auto lora3 = tdpo::attach_lora(*other, lora_cfg(type), 4);
  for (size_t i = 0; i < lora->adapters().size(); ++i) {
    const auto& a = lora->adapters()[i];
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.A.size(1)));
    EXPECT_LE(a.A.abs().max().item<double>(), bound);
    EXPECT_GT(a.A.abs().max().item<double>(), 0.5 * bound);
    EXPECT_EQ(a.B.abs().max().item<double>(), 0.0);
    EXPECT_TRUE(at::equal(a.A, lora2->adapters()[i].A));
    EXPECT_FALSE(at::equal(a.A, lora3->adapters()[i].A));
  }
}

// With adapters off the model computes the base model; the previous state comes back after the scope.
TEST_P(LoraModels, AdaptersOffGivesTheBaseModel) {
  const auto type = GetParam();
  auto m = model(type), base = model(type);
  auto lora = tdpo::attach_lora(*m, lora_cfg(type), 3);
  randomise_b(*lora, 9);
  auto [ids, mask] = inputs();
  c10::NoGradGuard ng;
  auto want = base->logits(ids, mask);
  auto on = m->logits(ids, mask);
  EXPECT_GT((on - want).abs().max().item<double>(), 1e-3);
  {
    tdpo::AdaptersDisabled off(*m);
    EXPECT_FALSE(lora->enabled());
    EXPECT_TRUE(at::equal(m->logits(ids, mask), want));
  }
  EXPECT_TRUE(lora->enabled());
  EXPECT_TRUE(at::equal(m->logits(ids, mask), on));
  tdpo::AdaptersDisabled no_adapters(*base);  // a no-op without adapters
}

// Dropout acts only while autograd records; no-grad forwards are deterministic and dropout-free.
TEST_P(LoraModels, DropoutOnlyWhileTraining) {
  const auto type = GetParam();
  auto cfg = lora_cfg(type);
  auto m = model(type), plain = model(type);
  cfg.dropout = 0.5;
  auto lora = tdpo::attach_lora(*m, cfg, 3);
  cfg.dropout = 0;
  auto lora_plain = tdpo::attach_lora(*plain, cfg, 3);
  randomise_b(*lora, 9);
  randomise_b(*lora_plain, 9);
  auto [ids, mask] = inputs();
  at::Tensor eval, eval_plain, train;
  {
    c10::NoGradGuard ng;
    eval = m->logits(ids, mask);
    eval_plain = plain->logits(ids, mask);
  }
  train = m->logits(ids, mask).detach();
  EXPECT_TRUE(at::equal(eval, eval_plain));
  EXPECT_GT((train - eval).abs().max().item<double>(), 1e-6);
}

// PEFT layout: adapter_config.json fields and adapter_model.safetensors keys; loading restores the same adapters.
TEST_P(LoraModels, PeftSaveLoadRoundTrip) {
  const auto type = GetParam();
  auto m = model(type);
  auto lora = tdpo::attach_lora(*m, lora_cfg(type, 2, 5.0), 3);
  randomise_b(*lora, 4);
  const auto dir = tdpo_test::make_temp_dir("lora_rt");
  tdpo::save_lora_adapter(*m, dir, "some/base");
  auto j = nlohmann::json::parse(tdpo_test::read_text(dir + "/adapter_config.json"));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 2);
  EXPECT_EQ(j["lora_alpha"], 5.0);
  EXPECT_EQ(j["lora_dropout"], 0.0);
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["fan_in_fan_out"], type == "gpt2");
  EXPECT_EQ(j["base_model_name_or_path"], "some/base");
  EXPECT_EQ(j["target_modules"], nlohmann::json(lora_cfg(type).target_modules));
  auto file = tdpo::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_EQ(file->entries().size(), 2 * lora->adapters().size());
  const auto first = lora->adapters()[0].module;
  ASSERT_TRUE(file->find("base_model.model." + first + ".lora_A.weight"));
  EXPECT_EQ(file->find("base_model.model." + first + ".lora_B.weight")->dtype, at::kFloat);

  auto fresh = model(type);
  auto loaded = tdpo::load_lora_adapter(*fresh, dir);
  ASSERT_EQ(loaded->adapters().size(), lora->adapters().size());
  EXPECT_EQ(loaded->config().r, 2);
  EXPECT_EQ(loaded->config().alpha, 5.0);
  for (size_t i = 0; i < loaded->adapters().size(); ++i) {
    const auto& a = loaded->adapters()[i], &b = lora->adapters()[i];
    EXPECT_EQ(a.module, b.module);
    EXPECT_TRUE(at::equal(a.A, b.A.detach().to(at::kFloat).to(at::kDouble)));
    EXPECT_TRUE(at::equal(a.B, b.B.detach().to(at::kFloat).to(at::kDouble)));
    EXPECT_TRUE(a.A.requires_grad());
  }
  for (const auto& [name, t] : fresh->named_parameters()) EXPECT_FALSE(t.requires_grad()) << name;
  std::filesystem::remove_all(dir);
}

// The PEFT files read by an independent float64 Python merge (test/reference/lora_merge.py: W_file + s·B·A,
// transposed for fan_in_fan_out) give the weights that loading them here and merging writes out.
TEST_P(LoraModels, MergeOfSavedFilesMatchesPythonPeftFormula) {
  if (!tdpo_test::python_torch_missing().empty()) GTEST_SKIP() << tdpo_test::python_torch_missing();
  const auto type = GetParam();
  auto m = model(type);
  auto lora = tdpo::attach_lora(*m, lora_cfg(type, 3, 7.0), 3);
  randomise_b(*lora, 4);
  const auto dir = tdpo_test::make_temp_dir("lora_py");
  tdpo::save_causal_lm(*m, dir + "/base", 5LL << 30, "float64");
  tdpo::save_lora_adapter(*m, dir + "/adapter", "", "float64");
  auto fresh = tdpo::load_causal_lm(dir + "/base", c10::kCPU, at::kDouble);
  tdpo::load_lora_adapter(*fresh, dir + "/adapter");
  tdpo::merge_lora(*fresh);
  std::map<std::string, at::Tensor> ours;
  for (auto& [k, t] : tdpo::export_weights(*fresh, at::kDouble)) ours[k] = t;
  const std::string cmd = "/usr/bin/python3 " + std::string(TORCH_DPO_SOURCE_DIR) + "/test/reference/lora_merge.py " +
                          dir + "/base " + dir + "/adapter " + dir + "/py.safetensors";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto py = tdpo::SafetensorsFile::open(dir + "/py.safetensors");
  ASSERT_EQ(py->entries().size(), lora->adapters().size());
  for (const auto& e : py->entries()) {
    ASSERT_TRUE(ours.count(e.name)) << e.name;
    EXPECT_LT(max_rel(ours[e.name], py->tensor(e.name)), 1e-12) << e.name;
  }
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Types, LoraModels, ::testing::Values("llama", "gpt2"));

// GPT-2 Conv1D weights are (in, out) in the file: the merged file tensor is W_file + s·(B·A)ᵀ.
TEST(Lora, Gpt2MergedFileLayoutIsTransposed) {
  auto m = model("gpt2");
  auto lora = tdpo::attach_lora(*m, lora_cfg("gpt2"), 3);
  randomise_b(*lora, 4);
  auto base = model("gpt2");
  const auto& a = lora->adapters()[0];  // transformer.h.0.attn.c_attn: file (H, 3H)
  auto want = tdpo::export_weights(*base, at::kDouble);
  at::Tensor file_before;
  for (auto& [k, t] : want)
    if (k == a.module + ".weight") file_before = t;
  auto delta_file = (at::mm(a.B, a.A) * lora->config().scale()).t().detach();  // (in, out)
  tdpo::merge_lora(*m);
  for (auto& [k, t] : tdpo::export_weights(*m, at::kDouble))
    if (k == a.module + ".weight") EXPECT_LT(max_rel(t, file_before + delta_file), 1e-12);
}

TEST(Lora, TargetMatchingAndErrors) {
  auto m = model("llama");
  LoraConfig c;
  c.target_modules = {"q_proj"};
  auto names = tdpo::match_lora_targets(*m, c);
  EXPECT_EQ(names, (std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"}));
  c.target_modules = {"model.layers.1.mlp.up_proj"};  // a full module name
  EXPECT_EQ(tdpo::match_lora_targets(*m, c), std::vector<std::string>{"model.layers.1.mlp.up_proj"});
  c.target_modules = {"proj"};  // not a whole last name
  auto msg = error_of([&] { tdpo::match_lora_targets(*m, c); });
  EXPECT_NE(msg.find("LoRA target module 'proj' matches no linear module"), std::string::npos) << msg;
  EXPECT_NE(msg.find("down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"), std::string::npos) << msg;
  c.target_modules = {"lm_head"};
  expect_error([&] { tdpo::attach_lora(*m, c, 1); }, "LoRA target module 'lm_head' matches no linear module");
  c.target_modules = {};
  c.target_regex = R"(.*\.layers\.0\..*_proj)";
  EXPECT_EQ(tdpo::match_lora_targets(*m, c).size(), 7u);
  c.target_regex = "";
  expect_error([&] { tdpo::attach_lora(*m, c, 1); }, "Expected at least one module name for LoRA target_modules");
  c.target_modules = {"q_proj"};
  c.r = 0;
  expect_error([&] { tdpo::attach_lora(*m, c, 1); }, "Expected an integer >= 1 for LoRA r but received 0");
  c.r = 2;
  c.dropout = 1;
  expect_error([&] { tdpo::attach_lora(*m, c, 1); }, "Expected a number in [0, 1) for LoRA dropout but received 1");
  c.dropout = 0;
  tdpo::attach_lora(*m, c, 1);
  expect_error([&] { tdpo::attach_lora(*m, c, 1); }, "the model already has LoRA adapters");
  auto plain = model("llama");
  expect_error([&] { tdpo::merge_lora(*plain); }, "cannot merge LoRA adapters: the model has none");
  expect_error([&] { tdpo::save_lora_adapter(*plain, "/tmp/x"); }, "the model has no adapters");
}

TEST(Lora, LoadErrorsNameTheFileAndKey) {
  auto m = model("llama");
  auto lora = tdpo::attach_lora(*m, lora_cfg("llama"), 3);
  const auto dir = tdpo_test::make_temp_dir("lora_err");
  tdpo::save_lora_adapter(*m, dir);
  const auto st = dir + "/adapter_model.safetensors", cj = dir + "/adapter_config.json";
  auto tensors = lora->named_parameters();
  const std::string dropped = tensors[3].first;  // a lora_B key
  std::vector<std::pair<std::string, at::Tensor>> kept;
  for (auto& [k, t] : tensors)
    if (k != dropped) kept.emplace_back(k, t.detach().to(at::kFloat));
  tdpo::save_safetensors(st, kept);
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); }, st + " is missing key '" + dropped + "'");

  kept.emplace_back("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight", at::zeros({3, 16}));
  kept.emplace_back(dropped, at::zeros({5, 3}));
  tdpo::save_safetensors(st, kept);
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); }, "has shape [5, 3] but r = 3");
  kept.back().second = tensors[3].second.detach().to(at::kFloat);
  tdpo::save_safetensors(st, kept);
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); },
               st + " has unknown key 'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight'");

  auto j = nlohmann::json::parse(tdpo_test::read_text(cj));
  j["peft_type"] = "IA3";
  tdpo_test::write_text(cj, j.dump());
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); },
               cj + ": Expected \"LORA\" for peft_type but received \"IA3\"");
  j["peft_type"] = "LORA";
  j["use_dora"] = true;
  tdpo_test::write_text(cj, j.dump());
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); }, "Expected false (not supported) for use_dora");
  j["use_dora"] = false;
  j["target_modules"] = {"c_attn"};
  tdpo_test::write_text(cj, j.dump());
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); }, cj + ": LoRA target module 'c_attn'");
  tdpo_test::write_text(cj, "{not json");
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); }, cj + ": not valid JSON");
  std::filesystem::remove(cj);
  expect_error([&] { tdpo::load_lora_adapter(*model("llama"), dir); }, cj + ": not found");
  std::filesystem::remove_all(dir);
}

}  // namespace
