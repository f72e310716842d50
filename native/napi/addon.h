// One Init function per N-API file; addon.cpp calls each. Add yours here and in addon.cpp.
#pragma once
#include <napi.h>

namespace tdpo::napi {

// Per-environment data: constructors of the wrapped classes (set by their Init functions).
struct AddonData {
  Napi::FunctionReference model_ctor;
  Napi::FunctionReference trainer_ctor;
};
AddonData& addon_data(Napi::Env env);

void InitRuntime(Napi::Env env, Napi::Object exports);
void InitModel(Napi::Env env, Napi::Object exports);
void InitTrainer(Napi::Env env, Napi::Object exports);
}  // namespace tdpo::napi
