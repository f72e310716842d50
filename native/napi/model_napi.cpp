// N-API: loadModel(), createModel() and the NativeModel class (config, sequence log-probs, token log-probs,
// generation, save, dispose). Converts arguments and dispatches to native/core; nothing else.
#include "model_napi.h"

#include <nlohmann/json.hpp>

#include "addon.h"
#include "generate.h"
#include "lora.h"
#include "preference_trainer.h"
#include "reward_head.h"
#include "runtime.h"
#include "seq_logprobs.h"

namespace tdpo::napi {

using State = std::shared_ptr<ModelState>;

Napi::Function NativeModel::Define(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {InstanceMethod("config", &NativeModel::Config), InstanceMethod("sequenceLogps", &NativeModel::SequenceLogps),
                      InstanceMethod("tokenLogps", &NativeModel::TokenLogps), InstanceMethod("generate", &NativeModel::Generate),
                      InstanceMethod("save", &NativeModel::Save), InstanceMethod("dispose", &NativeModel::Dispose),
                      InstanceMethod("rewards", &NativeModel::Rewards),
                      InstanceMethod("attachLora", &NativeModel::AttachLora), InstanceMethod("loadAdapter", &NativeModel::LoadAdapter),
                      InstanceMethod("saveAdapter", &NativeModel::SaveAdapter), InstanceMethod("mergeAdapters", &NativeModel::MergeAdapters),
                      InstanceMethod("adapterInfo", &NativeModel::AdapterInfo),
                      InstanceMethod("baseSequenceLogps", &NativeModel::BaseSequenceLogps),
                      InstanceAccessor("disposed", &NativeModel::IsDisposed, nullptr)});
}

NativeModel::NativeModel(const Napi::CallbackInfo& info) : Disposable<NativeModel, ModelState>(info) {
  if (info.Length() != 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "NativeModel cannot be constructed directly; use loadModel() or createModel()");
  state_ = *info[0].As<Napi::External<State>>().Data();
}

Napi::Object NativeModel::Wrap(Napi::Env env, State state) {
  auto holder = Napi::External<State>::New(env, new State(std::move(state)), [](Napi::Env, State* p) { delete p; });
  return addon_data(env).model_ctor.New({holder});
}

State NativeModel::StateOf(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(addon_data(env).model_ctor.Value()))
    throw_type(env, "a NativeModel", what, v);
  auto* m = Napi::ObjectWrap<NativeModel>::Unwrap(v.As<Napi::Object>());
  return m->live(env, "NativeModel");
}

Napi::Value NativeModel::Config(const Napi::CallbackInfo& info) {
  expect_count(info, 0, "NativeModel.config()");
  auto s = live(info.Env(), "NativeModel");
  return guard(info.Env(), [&]() -> Napi::Value {
    std::lock_guard<std::mutex> lock(s->mu);
    auto j = model_config_to_json(s->model->config());
    j["torch_dpo"] = {{"num_parameters", s->model->num_parameters()},
                      {"device", s->model->device().str()},
                      {"dtype", dtype_name(s->model->dtype())},
                      {"source", s->source}};
    return Napi::String::New(info.Env(), j.dump());
  });
}

// The (rows, T) inputIds and attentionMask at arguments 0, 1 with rows and T at rows_at, rows_at + 1.
NativeModel::Rows NativeModel::rows_arg(const Napi::CallbackInfo& info, size_t rows_at, const char* method) {
  Rows r;
  r.rows = arg_int(info, rows_at, "rows");
  r.T = arg_int(info, rows_at + 1, "T");
  if (r.rows < 1 || r.T < 1)
    throw Napi::RangeError::New(info.Env(), std::string("Expected rows and T >= 1 for ") + method);
  r.ids = int32_arg(info, 0, "inputIds", {r.rows, r.T});
  r.mask = int32_arg(info, 1, "attentionMask", {r.rows, r.T});
  return r;
}

// sequenceLogps(inputIds, attentionMask, labels: Int32Array (rows*T), rows, T, chunkRows, paddingFree?: boolean)
//   -> Promise<{logps: Float64Array, counts: Int32Array, logitsSum: Float64Array}>
Napi::Value NativeModel::SequenceLogps(const Napi::CallbackInfo& info) { return LogpsImpl(info, "sequenceLogps", false); }

// The body of sequenceLogps / baseSequenceLogps (adapters_off: the LoRA adapters are off for this call only).
Napi::Value NativeModel::LogpsImpl(const Napi::CallbackInfo& info, const char* method, bool adapters_off) {
  if (info.Length() != 7)
    expect_count(info, 6, (std::string("NativeModel.") + method + "(inputIds, attentionMask, labels, rows, T, chunkRows, paddingFree?)").c_str());
  const bool padding_free = info.Length() == 7 && arg_bool(info, 6, "paddingFree");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto in = rows_arg(info, 3, method);
  auto chunk = arg_int(info, 5, "chunkRows");
  if (chunk < 1) throw Napi::RangeError::New(env, std::string("Expected chunkRows >= 1 for ") + method);
  auto labels = int32_arg(info, 2, "labels", {in.rows, in.T});
  auto ids = in.ids, mask = in.mask;
  return run_async<FusedLogps>(
      env, info.This().As<Napi::Object>(),
      [s, ids, mask, labels, chunk, padding_free, adapters_off]() {
        std::lock_guard<std::mutex> lock(s->mu);
        std::unique_ptr<AdaptersDisabled> off;
        if (adapters_off) off = std::make_unique<AdaptersDisabled>(*s->model);
        return sequence_logps_nograd(*s->model, ids, mask, labels, FusedLogpsOptions{chunk}, padding_free);
      },
      [](Napi::Env e, FusedLogps& r) -> Napi::Value {
        auto o = Napi::Object::New(e);
        o.Set("logps", to_float64_array(e, r.logps));
        o.Set("counts", to_int32_array(e, r.token_counts));
        o.Set("logitsSum", to_float64_array(e, r.logits_sum));
        return o;
      });
}

// tokenLogps(inputIds, attentionMask, rows, T) -> Promise<Float32Array (rows*T)>: [r, t] = log p(x_t | x_<t), 0 at t = 0
Napi::Value NativeModel::TokenLogps(const Napi::CallbackInfo& info) {
  expect_count(info, 4, "NativeModel.tokenLogps(inputIds, attentionMask, rows, T)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto in = rows_arg(info, 2, "tokenLogps");
  const int64_t rows = in.rows;
  auto ids = in.ids, mask = in.mask;
  return run_async<at::Tensor>(
      env, info.This().As<Napi::Object>(),
      [s, ids, mask, rows]() {
        std::lock_guard<std::mutex> lock(s->mu);
        require_lm_head(*s->model, "tokenLogps");
        auto dev = s->model->device();
        auto lp = sequence_token_logprobs(*s->model, ids.to(dev), mask.to(dev)).cpu();  // (rows, T-1)
        return at::cat({at::zeros({rows, 1}, lp.options()), lp}, 1);                     // (rows, T)
      },
      [](Napi::Env e, at::Tensor& r) -> Napi::Value { return to_float32_array(e, r); });
}

// generate(inputIds, attentionMask (left padded), rows, T, optionsJson) -> Promise<Int32Array (rows*maxNewTokens)>,
// -1 after a row stopped. options: {maxNewTokens, temperature (0 = greedy), topK, topP, seed, eosTokenIds}
Napi::Value NativeModel::Generate(const Napi::CallbackInfo& info) {
  expect_count(info, 5, "NativeModel.generate(inputIds, attentionMask, rows, T, optionsJson)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto in = rows_arg(info, 2, "generate");
  const int64_t rows = in.rows;
  auto ids = in.ids, mask = in.mask;
  auto json = arg_string(info, 4, "optionsJson");
  GenerateOptions o = guard(env, [&]() {
    auto j = nlohmann::json::parse(json);
    GenerateOptions g;
    g.max_new_tokens = j.at("maxNewTokens").get<int64_t>();
    const double temperature = j.at("temperature").get<double>();
    g.do_sample = temperature > 0;
    g.temperature = g.do_sample ? temperature : 1.0;
    g.top_k = j.at("topK").get<int64_t>();
    g.top_p = j.at("topP").get<double>();
    g.seed = j.at("seed").get<uint64_t>();
    g.eos_token_ids = j.at("eosTokenIds").get<std::vector<int64_t>>();
    return g;
  });
  return run_async<at::Tensor>(
      env, info.This().As<Napi::Object>(),
      [s, ids, mask, o, rows]() {
        std::lock_guard<std::mutex> lock(s->mu);
        require_lm_head(*s->model, "generate");
        auto r = generate(*s->model, ids, mask, o);
        auto out = at::full({rows, o.max_new_tokens}, -1, at::kLong);
        auto seqs = r.sequences();
        for (int64_t b = 0; b < rows; ++b)
          for (size_t i = 0; i < seqs[b].size(); ++i) out[b][static_cast<int64_t>(i)] = seqs[b][i];
        return out;
      },
      [](Napi::Env e, at::Tensor& r) -> Napi::Value { return to_int32_array(e, r); });
}

// rewards(inputIds, attentionMask (right padded), rows, T) -> Promise<Float64Array (rows)>: the score head at each
// row's last token (score-head models only).
Napi::Value NativeModel::Rewards(const Napi::CallbackInfo& info) {
  expect_count(info, 4, "NativeModel.rewards(inputIds, attentionMask, rows, T)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto in = rows_arg(info, 2, "rewards");
  auto ids = in.ids, mask = in.mask;
  return run_async<at::Tensor>(
      env, info.This().As<Napi::Object>(),
      [s, ids, mask]() {
        std::lock_guard<std::mutex> lock(s->mu);
        return sequence_rewards_nograd(*s->model, ids, mask).to(at::kDouble);
      },
      [](Napi::Env e, at::Tensor& r) -> Napi::Value { return to_float64_array(e, r); });
}

Napi::Value NativeModel::Save(const Napi::CallbackInfo& info) {
  expect_count(info, 2, "NativeModel.save(dir, dtype)");
  auto env = info.Env();
  auto s = live(env, "NativeModel");
  auto dir = arg_string(info, 0, "dir");
  auto dtype = arg_string(info, 1, "dtype");
  return run_async<bool>(
      env, info.This().As<Napi::Object>(),
      [s, dir, dtype]() {
        std::lock_guard<std::mutex> lock(s->mu);
        for (auto& [name, p] : s->model->named_parameters())
          TORCH_CHECK(at::isfinite(p).all().item<bool>(), "refusing to write ", dir, ": parameter ", name,
                      " holds non-finite values (NaN or Inf)");
        save_causal_lm(*s->model, dir, 5LL << 30, dtype);
        return true;
      },
      undefined_result);
}

// loadModel(dir, device, dtype, head?: '' | 'score', seed?) -> Promise<NativeModel>; head 'score' makes a reward model
// (a causal checkpoint gets a new score head drawn with `seed`).
static Napi::Value LoadModelJs(const Napi::CallbackInfo& info) {
  if (info.Length() != 5) expect_count(info, 3, "loadModel(dir, device, dtype, head?, seed?)");
  auto env = info.Env();
  auto dir = arg_string(info, 0, "dir");
  auto device = arg_string(info, 1, "device");
  auto dtype = arg_string(info, 2, "dtype");
  HeadOptions head;
  if (info.Length() == 5) {
    head.head = arg_string(info, 3, "head");
    head.seed = static_cast<uint64_t>(arg_int(info, 4, "seed"));
  }
  return run_async<State>(
      env, Napi::Object::New(env),
      [dir, device, dtype, head]() {
        auto st = std::make_shared<ModelState>();
        st->model = load_causal_lm(dir, parse_device(device), parse_dtype(dtype), head);
        st->source = dir;
        return st;
      },
      [](Napi::Env e, State& st) -> Napi::Value { return NativeModel::Wrap(e, st); });
}

// createModel(configJson, device, dtype, seed) -> Promise<NativeModel> (random weights)
static Napi::Value CreateModelJs(const Napi::CallbackInfo& info) {
  expect_count(info, 4, "createModel(configJson, device, dtype, seed)");
  auto env = info.Env();
  auto json = arg_string(info, 0, "configJson");
  auto device = arg_string(info, 1, "device");
  auto dtype = arg_string(info, 2, "dtype");
  auto seed = arg_int(info, 3, "seed");
  return run_async<State>(
      env, Napi::Object::New(env),
      [json, device, dtype, seed]() {
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(json);
        } catch (const std::exception& e) {
          TORCH_CHECK(false, "configJson is not valid JSON: ", e.what());
        }
        auto st = std::make_shared<ModelState>();
        st->model = make_causal_lm(parse_model_config(j, "configJson"), parse_device(device), parse_dtype(dtype),
                                   static_cast<uint64_t>(seed));
        st->source = "random";
        return st;
      },
      [](Napi::Env e, State& st) -> Napi::Value { return NativeModel::Wrap(e, st); });
}

void InitModel(Napi::Env env, Napi::Object exports) {
  auto ctor = NativeModel::Define(env);
  addon_data(env).model_ctor = Napi::Persistent(ctor);
  exports.Set("NativeModel", ctor);
  exports.Set("loadModel", Napi::Function::New(env, LoadModelJs, "loadModel"));
  exports.Set("createModel", Napi::Function::New(env, CreateModelJs, "createModel"));
}

}  // namespace tdpo::napi
