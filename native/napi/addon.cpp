// The addon's entry point: registers each N-API file's exports. Nothing else lives here.
#include "addon.h"

namespace tdpo::napi {

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  env.SetInstanceData(new AddonData());
  InitRuntime(env, exports);
  InitModel(env, exports);
  InitTrainer(env, exports);
  exports.Set("abiVersion", Napi::Number::New(env, 2));  // lib/native.ts EXPECTED_ABI
  return exports;
}

}  // namespace tdpo::napi

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return tdpo::napi::Init(env, exports); }
NODE_API_MODULE(torch_dpo, InitAddon)
