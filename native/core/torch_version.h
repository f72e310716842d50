// The libtorch release this file is compiled against, as one comparison for version-guarded code.
#pragma once
#include <torch/version.h>

// True when the libtorch headers are release major.minor or later (usable in #if and in constexpr code).
#define TDPO_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
