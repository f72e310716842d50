// N-API wrapper of a loaded causal LM (NativeModel). Other wrappers (the trainer) reach its state through here.
#pragma once
#include <napi.h>

#include <memory>
#include <mutex>
#include <string>

#include "causal_lm.h"
#include "napi_util.h"

namespace tdpo::napi {

// What a NativeModel owns. Shared with running workers and with trainers that train it; `mu` serialises all work on
// the model (libuv runs workers on several threads).
struct ModelState {
  std::shared_ptr<CausalLM> model;
  std::string source;  // directory loaded from, or "random"
  std::mutex mu;
};

class NativeModel : public Disposable<NativeModel, ModelState> {
 public:
  static Napi::Function Define(Napi::Env env);
  static Napi::Object Wrap(Napi::Env env, std::shared_ptr<ModelState> state);
  static std::shared_ptr<ModelState> StateOf(Napi::Env env, const Napi::Value& v, const char* what);
  explicit NativeModel(const Napi::CallbackInfo& info);

 private:
  Napi::Value Config(const Napi::CallbackInfo& info);
  Napi::Value SequenceLogps(const Napi::CallbackInfo& info);
  Napi::Value TokenLogps(const Napi::CallbackInfo& info);
  Napi::Value Rewards(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Save(const Napi::CallbackInfo& info);
  // LoRA (lora_napi.cpp)
  Napi::Value AttachLora(const Napi::CallbackInfo& info);
  Napi::Value LoadAdapter(const Napi::CallbackInfo& info);
  Napi::Value SaveAdapter(const Napi::CallbackInfo& info);
  Napi::Value MergeAdapters(const Napi::CallbackInfo& info);
  Napi::Value AdapterInfo(const Napi::CallbackInfo& info);
  Napi::Value BaseSequenceLogps(const Napi::CallbackInfo& info);
  Napi::Value LogpsImpl(const Napi::CallbackInfo& info, const char* method, bool adapters_off);
  struct Rows {
    int64_t rows = 0, T = 0;
    at::Tensor ids, mask;  // (rows, T) int64
  };
  static Rows rows_arg(const Napi::CallbackInfo& info, size_t rows_at, const char* method);
  Napi::Value Dispose(const Napi::CallbackInfo& info) { return DisposeImpl(info); }
  Napi::Value IsDisposed(const Napi::CallbackInfo& info) { return IsDisposedImpl(info); }
};

void InitModel(Napi::Env env, Napi::Object exports);

}  // namespace tdpo::napi
