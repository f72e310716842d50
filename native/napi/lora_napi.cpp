// N-API: the LoRA methods of NativeModel (attachLora, loadAdapter, saveAdapter, mergeAdapters, adapterInfo,
// baseSequenceLogps). Converts arguments and dispatches to native/core/lora; nothing else.
#include <nlohmann/json.hpp>

#include "lora.h"
#include "model_napi.h"
#include "preference_trainer.h"

namespace tdpo::napi {

namespace {

// {r, alpha, dropout, targetModules, fanInFanOut, modules, trainableParameters} or null without adapters.
std::string adapter_info(const CausalLM& model) {
  auto lora = model.lora();
  if (!lora) return "null";
  const auto& c = lora->config();
  nlohmann::json j;
  j["r"] = c.r;
  j["alpha"] = c.alpha;
  j["dropout"] = c.dropout;
  j["targetModules"] = c.target_regex.empty() ? nlohmann::json(c.target_modules) : nlohmann::json(c.target_regex);
  j["fanInFanOut"] = c.fan_in_fan_out;
  std::vector<std::string> modules;
  for (const auto& a : lora->adapters()) modules.push_back(a.module);
  j["modules"] = modules;
  j["trainableParameters"] = lora->num_parameters();
  return j.dump();
}

Napi::Value string_result(Napi::Env e, std::string& s) { return Napi::String::New(e, s); }

}  // namespace

// attachLora(configJson: {r, alpha, dropout, targetModules}, seed) -> Promise<adapter info JSON>
Napi::Value NativeModel::AttachLora(const Napi::CallbackInfo& info) {
  expect_count(info, 2, "NativeModel.attachLora(configJson, seed)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto json = arg_string(info, 0, "configJson");
  auto seed = arg_int(info, 1, "seed");
  LoraConfig cfg = guard(env, [&]() {
    auto j = nlohmann::json::parse(json);
    LoraConfig c;
    c.r = j.at("r").get<int64_t>();
    c.alpha = j.at("alpha").get<double>();
    c.dropout = j.at("dropout").get<double>();
    c.target_modules = j.at("targetModules").get<std::vector<std::string>>();
    c.check();
    return c;
  });
  return run_async<std::string>(
      env, info.This().As<Napi::Object>(),
      [s, cfg, seed]() {
        std::lock_guard<std::mutex> lock(s->mu);
        attach_lora(*s->model, cfg, static_cast<uint64_t>(seed));
        return adapter_info(*s->model);
      },
      string_result);
}

// loadAdapter(dir) -> Promise<adapter info JSON>: a PEFT folder (adapter_config.json + adapter_model.safetensors)
Napi::Value NativeModel::LoadAdapter(const Napi::CallbackInfo& info) {
  expect_count(info, 1, "NativeModel.loadAdapter(dir)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto dir = arg_string(info, 0, "dir");
  return run_async<std::string>(
      env, info.This().As<Napi::Object>(),
      [s, dir]() {
        std::lock_guard<std::mutex> lock(s->mu);
        load_lora_adapter(*s->model, dir);
        return adapter_info(*s->model);
      },
      string_result);
}

// saveAdapter(dir, baseModel) -> Promise<void>
Napi::Value NativeModel::SaveAdapter(const Napi::CallbackInfo& info) {
  expect_count(info, 2, "NativeModel.saveAdapter(dir, baseModel)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto dir = arg_string(info, 0, "dir");
  auto base = arg_string(info, 1, "baseModel");
  return run_async<bool>(
      env, info.This().As<Napi::Object>(),
      [s, dir, base]() {
        std::lock_guard<std::mutex> lock(s->mu);
        save_lora_adapter(*s->model, dir, base);
        return true;
      },
      undefined_result);
}

// mergeAdapters() -> Promise<void>: W += (alpha/r)·B·A, adapters removed
Napi::Value NativeModel::MergeAdapters(const Napi::CallbackInfo& info) {
  expect_count(info, 0, "NativeModel.mergeAdapters()");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  return run_async<bool>(
      env, info.This().As<Napi::Object>(),
      [s]() {
        std::lock_guard<std::mutex> lock(s->mu);
        merge_lora(*s->model);
        return true;
      },
      undefined_result);
}

// adapterInfo() -> adapter info JSON or "null" (sync; waits for running work on the model)
Napi::Value NativeModel::AdapterInfo(const Napi::CallbackInfo& info) {
  expect_count(info, 0, "NativeModel.adapterInfo()");
  auto s = live(info.Env(), "NativeModel");
  return guard(info.Env(), [&]() -> Napi::Value {
    std::lock_guard<std::mutex> lock(s->mu);
    return Napi::String::New(info.Env(), adapter_info(*s->model));
  });
}

// baseSequenceLogps(inputIds, attentionMask, labels, rows, T, chunkRows, paddingFree?) -> Promise<{logps, counts,
// logitsSum}>: sequenceLogps with the LoRA adapters off (the DPO reference). The adapters are switched off and back
// on inside the model lock, so no other call on this model (a training step) can observe them off.
Napi::Value NativeModel::BaseSequenceLogps(const Napi::CallbackInfo& info) {
  return LogpsImpl(info, "baseSequenceLogps", /*adapters_off=*/true);
}

}  // namespace tdpo::napi
