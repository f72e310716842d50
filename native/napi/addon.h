// One Init function per N-API file; addon.cpp calls each. Add yours here and in addon.cpp.
#pragma once
#include <napi.h>

namespace tdpo::napi {
void InitRuntime(Napi::Env env, Napi::Object exports);
}  // namespace tdpo::napi
