// N-API: createTrainer() and the NativeTrainer class (accumulate, step, save/load optimizer state, dispose).
// Converts arguments and dispatches to native/core/preference_trainer; nothing else.
#include <nlohmann/json.hpp>

#include <cstring>

#include "addon.h"
#include "model_napi.h"
#include "napi_util.h"
#include "preference_trainer.h"
#include "trainer_config.h"

namespace tdpo::napi {

struct TrainerState {
  std::shared_ptr<ModelState> model;  // the policy; its mutex serialises all work on it
  std::unique_ptr<PreferenceTrainer> trainer;
};

class NativeTrainer : public Disposable<NativeTrainer, TrainerState> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeTrainer",
                       {InstanceMethod("accumulate", &NativeTrainer::Accumulate), InstanceMethod("evaluate", &NativeTrainer::Evaluate),
                        InstanceMethod("step", &NativeTrainer::Step),
                        InstanceMethod("accumulateKto", &NativeTrainer::AccumulateKto), InstanceMethod("evaluateKto", &NativeTrainer::EvaluateKto),
                        InstanceMethod("saveState", &NativeTrainer::SaveState), InstanceMethod("loadState", &NativeTrainer::LoadState),
                        InstanceMethod("joinDataParallel", &NativeTrainer::JoinDataParallel),
                        InstanceMethod("allreduceSum", &NativeTrainer::AllreduceSum), InstanceMethod("barrier", &NativeTrainer::Barrier),
                        InstanceMethod("dispose", &NativeTrainer::Dispose),
                        InstanceAccessor("disposed", &NativeTrainer::IsDisposed, nullptr)});
  }

  explicit NativeTrainer(const Napi::CallbackInfo& info) : Disposable<NativeTrainer, TrainerState>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "NativeTrainer cannot be constructed directly; use createTrainer()");
    state_ = *info[0].As<Napi::External<std::shared_ptr<TrainerState>>>().Data();
  }

 private:
  // Arguments 0..3 (inputIds, attentionMask, labels, refLogps | null) of a batch of `rows` (even) rows of T tokens,
  // rows and T being the arguments at rows_at and rows_at + 1.
  template <class Batch>
  static Batch rows_arg(const Napi::CallbackInfo& info, size_t rows_at, const char* what) {
    auto env = info.Env();
    auto rows = arg_int(info, rows_at, "rows"), T = arg_int(info, rows_at + 1, "T");
    if (rows < 2 || rows % 2 || T < 1)
      throw Napi::RangeError::New(env, std::string("Expected an even rows >= 2 and T >= 1 for ") + what);
    Batch b;
    b.input_ids = int32_arg(info, 0, "inputIds", {rows, T});
    b.attention_mask = int32_arg(info, 1, "attentionMask", {rows, T});
    b.labels = int32_arg(info, 2, "labels", {rows, T});
    if (!info[3].IsNull()) {
      if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
        throw_type(env, "a Float64Array or null", "refLogps", info[3]);
      auto a = info[3].As<Napi::Float64Array>();
      if (static_cast<int64_t>(a.ElementLength()) != rows)
        throw Napi::RangeError::New(env, "Expected " + std::to_string(rows) + " elements for refLogps but received " +
                                             std::to_string(a.ElementLength()));
      b.ref_logps = at::empty({rows}, at::kDouble);
      std::memcpy(b.ref_logps.template data_ptr<double>(), a.Data(), rows * sizeof(double));
    }
    return b;
  }

  // accumulate()/evaluate(): inputIds, attentionMask, labels, refLogps | null, rows, T, ..., and at margins_at the
  // reward-model margins: a Float64Array (P) or null.
  static PreferenceBatch batch_arg(const Napi::CallbackInfo& info, size_t margins_at) {
    auto b = rows_arg<PreferenceBatch>(info, 4, "a preference batch");
    const int64_t P = b.input_ids.size(0) / 2;
    if (!info[margins_at].IsNull()) {
      if (!info[margins_at].IsTypedArray() || info[margins_at].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
        throw_type(info.Env(), "a Float64Array or null", "margins", info[margins_at]);
      auto a = info[margins_at].As<Napi::Float64Array>();
      if (static_cast<int64_t>(a.ElementLength()) != P)
        throw Napi::RangeError::New(info.Env(), "Expected " + std::to_string(P) + " elements for margins but received " +
                                                    std::to_string(a.ElementLength()));
      b.margins = at::empty({P}, at::kDouble);
      std::memcpy(b.margins.data_ptr<double>(), a.Data(), P * sizeof(double));
    }
    return b;
  }

  // accumulateKto()/evaluateKto(): inputIds, attentionMask, labels, refLogps | null, desirable, rows, T.
  static KTOBatch kto_batch_arg(const Napi::CallbackInfo& info) {
    auto b = rows_arg<KTOBatch>(info, 5, "a KTO batch");
    b.desirable = int32_arg(info, 4, "desirable", {b.input_ids.size(0) / 2});
    return b;
  }

  static Napi::Value micro_to_js(Napi::Env e, MicroStepResult& r) {
    auto o = Napi::Object::New(e);
    o.Set("loss", Napi::Number::New(e, r.loss));
    o.Set("chosenRewards", to_float64_array(e, r.chosen_rewards));
    o.Set("rejectedRewards", to_float64_array(e, r.rejected_rewards));
    o.Set("policyLogps", to_float64_array(e, r.policy_logps));
    o.Set("counts", to_int32_array(e, r.counts));
    o.Set("logitsSum", to_float64_array(e, r.logits_sum));
    o.Set("tokens", Napi::Number::New(e, static_cast<double>(r.tokens)));
    return o;
  }

  // accumulate(inputIds, attentionMask, labels, refLogps: Float64Array | null, rows, T, scale, sync, margins | null)
  //   -> Promise<MicroStep>
  Napi::Value Accumulate(const Napi::CallbackInfo& info) {
    expect_count(info, 9, "NativeTrainer.accumulate(inputIds, attentionMask, labels, refLogps, rows, T, scale, sync, margins)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    auto scale = arg_number(info, 6, "scale");
    auto sync = arg_bool(info, 7, "sync");
    auto b = batch_arg(info, 8);
    return run_async<MicroStepResult>(
        env, info.This().As<Napi::Object>(),
        [s, b, scale, sync]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          return s->trainer->accumulate(b, scale, sync);
        },
        micro_to_js);
  }

  // evaluate(inputIds, attentionMask, labels, refLogps | null, rows, T, margins | null) -> Promise<MicroStep> (no gradients)
  Napi::Value Evaluate(const Napi::CallbackInfo& info) {
    expect_count(info, 7, "NativeTrainer.evaluate(inputIds, attentionMask, labels, refLogps, rows, T, margins)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    auto b = batch_arg(info, 6);
    return run_async<MicroStepResult>(
        env, info.This().As<Napi::Object>(),
        [s, b]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          return s->trainer->evaluate(b);
        },
        micro_to_js);
  }

  static Napi::Value kto_to_js(Napi::Env e, KTOMicroStepResult& r) {
    auto o = Napi::Object::New(e);
    o.Set("loss", Napi::Number::New(e, r.loss));
    o.Set("kl", Napi::Number::New(e, r.kl));
    o.Set("rewards", to_float64_array(e, r.rewards));
    o.Set("policyLogps", to_float64_array(e, r.policy_logps));
    o.Set("counts", to_int32_array(e, r.counts));
    o.Set("logitsSum", to_float64_array(e, r.logits_sum));
    o.Set("tokens", Napi::Number::New(e, static_cast<double>(r.tokens)));
    return o;
  }

  // accumulateKto(inputIds, attentionMask, labels, refLogps | null, desirable: Int32Array, rows, T, scale, sync)
  //   -> Promise<KtoMicroStep>
  Napi::Value AccumulateKto(const Napi::CallbackInfo& info) {
    expect_count(info, 9, "NativeTrainer.accumulateKto(inputIds, attentionMask, labels, refLogps, desirable, rows, T, scale, sync)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    auto scale = arg_number(info, 7, "scale");
    auto sync = arg_bool(info, 8, "sync");
    auto b = kto_batch_arg(info);
    return run_async<KTOMicroStepResult>(
        env, info.This().As<Napi::Object>(),
        [s, b, scale, sync]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          return s->trainer->accumulate_kto(b, scale, sync);
        },
        kto_to_js);
  }

  // evaluateKto(inputIds, attentionMask, labels, refLogps | null, desirable, rows, T) -> Promise<KtoMicroStep>
  Napi::Value EvaluateKto(const Napi::CallbackInfo& info) {
    expect_count(info, 7, "NativeTrainer.evaluateKto(inputIds, attentionMask, labels, refLogps, desirable, rows, T)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    auto b = kto_batch_arg(info);
    return run_async<KTOMicroStepResult>(
        env, info.This().As<Napi::Object>(),
        [s, b]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          return s->trainer->evaluate_kto(b);
        },
        kto_to_js);
  }

  // step(lr, maxGradNorm) -> Promise<{gradNorm, skipped}>
  Napi::Value Step(const Napi::CallbackInfo& info) {
    expect_count(info, 2, "NativeTrainer.step(lr, maxGradNorm)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    auto lr = arg_number(info, 0, "lr"), clip = arg_number(info, 1, "maxGradNorm");
    return run_async<StepResult>(
        env, info.This().As<Napi::Object>(),
        [s, lr, clip]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          return s->trainer->step(lr, clip);
        },
        [](Napi::Env e, StepResult& r) -> Napi::Value {
          auto o = Napi::Object::New(e);
          o.Set("gradNorm", Napi::Number::New(e, r.grad_norm));
          o.Set("skipped", Napi::Boolean::New(e, r.skipped));
          return o;
        });
  }

  Napi::Value StateIO(const Napi::CallbackInfo& info, bool save) {
    expect_count(info, 1, save ? "NativeTrainer.saveState(path)" : "NativeTrainer.loadState(path)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    auto path = arg_string(info, 0, "path");
    return run_async<bool>(
        env, info.This().As<Napi::Object>(),
        [s, path, save]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          if (save)
            s->trainer->save_state(path);
          else
            s->trainer->load_state(path);
          return true;
        },
        undefined_result);
  }
  // joinDataParallel(rank, worldSize, localRank, masterAddr, masterPort, timeoutMs, overlap, backend) -> Promise<void>:
  // rendezvous (off the JS thread) and copy of rank 0's parameters; later steps all-reduce gradients.
  Napi::Value JoinDataParallel(const Napi::CallbackInfo& info) {
    expect_count(info, 8, "NativeTrainer.joinDataParallel(rank, worldSize, localRank, masterAddr, masterPort, timeoutMs, overlap, backend)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    DistEnv d;
    d.rank = arg_int(info, 0, "rank");
    d.world_size = arg_int(info, 1, "worldSize");
    d.local_rank = arg_int(info, 2, "localRank");
    d.master_addr = arg_string(info, 3, "masterAddr");
    d.master_port = arg_int(info, 4, "masterPort");
    auto timeout_ms = arg_int(info, 5, "timeoutMs");
    auto overlap = arg_bool(info, 6, "overlap");
    auto backend = arg_string(info, 7, "backend");
    return run_async<bool>(
        env, info.This().As<Napi::Object>(),
        [s, d, timeout_ms, overlap, backend]() {
          std::lock_guard<std::mutex> lock(s->model->mu);
          TORCH_CHECK(!s->trainer->data_parallel(), "this trainer already joined a data-parallel group");
          auto dp = std::make_shared<DataParallel>(d, std::chrono::milliseconds(timeout_ms), backend, s->trainer->policy()->device());
          s->trainer->set_data_parallel(std::move(dp), overlap);
          return true;
        },
        undefined_result);
  }

  // allreduceSum(values: Float64Array) -> Promise<Float64Array>: element-wise sums over the ranks (the values
  // themselves without a group).
  Napi::Value AllreduceSum(const Napi::CallbackInfo& info) {
    expect_count(info, 1, "NativeTrainer.allreduceSum(values)");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      throw_type(env, "a Float64Array", "values", info[0]);
    auto a = info[0].As<Napi::Float64Array>();
    std::vector<double> v(a.Data(), a.Data() + a.ElementLength());
    return run_async<at::Tensor>(
        env, info.This().As<Napi::Object>(),
        [s, v]() {
          auto dp = s->trainer->data_parallel();
          auto r = dp ? dp->allreduce_sum_double(v) : v;
          return at::tensor(r, at::kDouble);
        },
        [](Napi::Env e, at::Tensor& t) -> Napi::Value { return to_float64_array(e, t); });
  }

  // barrier() -> Promise<void>: waits for every rank (immediately resolved without a group).
  Napi::Value Barrier(const Napi::CallbackInfo& info) {
    expect_count(info, 0, "NativeTrainer.barrier()");
    auto env = info.Env();
    auto s = live(env, "NativeTrainer");
    return run_async<bool>(
        env, info.This().As<Napi::Object>(),
        [s]() {
          if (auto dp = s->trainer->data_parallel()) dp->barrier();
          return true;
        },
        undefined_result);
  }

  Napi::Value SaveState(const Napi::CallbackInfo& info) { return StateIO(info, true); }
  Napi::Value LoadState(const Napi::CallbackInfo& info) { return StateIO(info, false); }
  Napi::Value Dispose(const Napi::CallbackInfo& info) { return DisposeImpl(info); }
  Napi::Value IsDisposed(const Napi::CallbackInfo& info) { return IsDisposedImpl(info); }
};

// createTrainer(policy: NativeModel, configJson) -> NativeTrainer (sync: builds the optimizer only)
static Napi::Value CreateTrainerJs(const Napi::CallbackInfo& info) {
  expect_count(info, 2, "createTrainer(policy, configJson)");
  auto env = info.Env();
  auto model = NativeModel::StateOf(env, info[0], "policy");
  auto json = arg_string(info, 1, "configJson");
  auto state = guard(env, [&]() {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(json);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "configJson is not valid JSON: ", e.what());
    }
    auto cfg = parse_trainer_config(j);
    std::lock_guard<std::mutex> lock(model->mu);
    auto st = std::make_shared<TrainerState>();
    st->model = model;
    st->trainer = std::make_unique<PreferenceTrainer>(model->model, cfg.loss, cfg.optimizer, cfg.fused);
    if (cfg.reward) st->trainer->set_reward(cfg.reward_options);
    st->trainer->set_padding_free(cfg.padding_free);
    model->model->set_activation_checkpointing(cfg.activation_checkpointing);
    if (cfg.kto_enabled) st->trainer->set_kto(cfg.kto);
    return st;
  });
  auto holder = Napi::External<std::shared_ptr<TrainerState>>::New(
      env, new std::shared_ptr<TrainerState>(std::move(state)), [](Napi::Env, std::shared_ptr<TrainerState>* p) { delete p; });
  return addon_data(env).trainer_ctor.New({holder});
}

void InitTrainer(Napi::Env env, Napi::Object exports) {
  auto ctor = NativeTrainer::Define(env);
  addon_data(env).trainer_ctor = Napi::Persistent(ctor);
  exports.Set("NativeTrainer", ctor);
  exports.Set("createTrainer", Napi::Function::New(env, CreateTrainerJs, "createTrainer"));
}

}  // namespace tdpo::napi
