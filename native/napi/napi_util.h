// Shared N-API plumbing: exception translation, typed-array <-> tensor conversion, Promise-returning workers.
// Every exported function and method follows these patterns:
//   - sync bodies run inside guard(), so c10::Error / std::exception become JS Errors (never a crash);
//   - slow work runs in run_async() on libuv's pool; inputs are copied on the JS thread before queueing;
//   - the N-API layer converts and dispatches only; all tensor work lives in native/core.
#pragma once
#include <napi.h>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "runtime.h"

#include <functional>
#include <memory>
#include <string>
#include <utility>

namespace tdpo::napi {

inline std::string error_message(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

// Runs f() and converts C++ exceptions into a thrown JS Error carrying the message.
template <typename F>
auto guard(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, error_message(e));
  } catch (...) {
    throw Napi::Error::New(env, "unknown native error");
  }
}

// Argument access with the project's one vocabulary: "Expected X for Y but received Z".
std::string js_type_name(const Napi::Value& v);
[[noreturn]] void throw_type(Napi::Env env, const std::string& expected, const std::string& what, const Napi::Value& got);
void expect_count(const Napi::CallbackInfo& info, size_t n, const char* fn);
std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* what);
double arg_number(const Napi::CallbackInfo& info, size_t i, const char* what);
int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* what);
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* what);
Napi::Object arg_object(const Napi::CallbackInfo& info, size_t i, const char* what);
std::string get_string(const Napi::Object& o, const char* key, const char* owner);
int64_t get_int(const Napi::Object& o, const char* key, const char* owner);
double get_number(const Napi::Object& o, const char* key, const char* owner);
bool get_bool(const Napi::Object& o, const char* key, const char* owner);

// Copies a typed array into a new CPU tensor of the given shape (numel must match). Copying keeps the worker safe
// from the JS side mutating or collecting the buffer while the work runs.
at::Tensor float32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, at::IntArrayRef shape);
at::Tensor int32_arg(const Napi::CallbackInfo& info, size_t i, const char* what, at::IntArrayRef shape);  // -> int64 tensor
at::Tensor to_float32_tensor(Napi::Env env, const Napi::Value& v, const char* what, at::IntArrayRef shape);
at::Tensor to_int_tensor(Napi::Env env, const Napi::Value& v, const char* what, at::IntArrayRef shape);

// Tensor -> new JS typed array (copied; tensor moved to CPU and cast first).
Napi::Float32Array to_float32_array(Napi::Env env, const at::Tensor& t);
Napi::Float64Array to_float64_array(Napi::Env env, const at::Tensor& t);
Napi::Int32Array to_int32_array(Napi::Env env, const at::Tensor& t);

// A Promise-returning worker: work() runs on a libuv thread, done() converts its result on the JS thread.
// `keep_alive` (e.g. the wrapped object's JS value) is referenced until the work ends, so it is not collected.
template <typename R>
class PromiseWorker : public Napi::AsyncWorker {
 public:
  PromiseWorker(Napi::Env env, Napi::Object keep_alive, std::function<R()> work,
                std::function<Napi::Value(Napi::Env, R&)> done)
      : Napi::AsyncWorker(env, "torch-dpo"), deferred_(Napi::Promise::Deferred::New(env)),
        keep_alive_(Napi::Persistent(keep_alive)), work_(std::move(work)), done_(std::move(done)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      prepare_worker_thread();
      result_ = std::make_unique<R>(work_());
    } catch (const std::exception& e) {
      SetError(error_message(e));
    } catch (...) {
      SetError("unknown native error");
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(done_(env, *result_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    } catch (const std::exception& e) {
      deferred_.Reject(Napi::Error::New(env, error_message(e)).Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference keep_alive_;
  std::function<R()> work_;
  std::function<Napi::Value(Napi::Env, R&)> done_;
  std::unique_ptr<R> result_;
};

template <typename R>
Napi::Promise run_async(Napi::Env env, Napi::Object keep_alive, std::function<R()> work,
                        std::function<Napi::Value(Napi::Env, R&)> done) {
  auto* w = new PromiseWorker<R>(env, keep_alive, std::move(work), std::move(done));
  auto p = w->Promise();
  w->Queue();
  return p;
}

// run_async's `done` for work that resolves to nothing (its R is a placeholder bool): the Promise resolves undefined.
inline Napi::Value undefined_result(Napi::Env e, bool&) { return e.Undefined(); }

// Base for wrapped native objects that own native memory: dispose() is idempotent, use after dispose throws
// "<Class> was disposed". Subclasses hold their state in a shared_ptr so a running worker keeps it alive.
template <typename T, typename State>
class Disposable : public Napi::ObjectWrap<T> {
 public:
  explicit Disposable(const Napi::CallbackInfo& info) : Napi::ObjectWrap<T>(info) {}

 protected:
  std::shared_ptr<State> state_;
  std::shared_ptr<State> live(Napi::Env env, const char* cls) const {
    if (!state_) throw Napi::Error::New(env, std::string(cls) + " was disposed");
    return state_;
  }
  Napi::Value DisposeImpl(const Napi::CallbackInfo& info) {
    state_.reset();
    return info.Env().Undefined();
  }
  Napi::Value IsDisposedImpl(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !state_); }
};

}  // namespace tdpo::napi
