#include "runtime.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <atomic>
#include <mutex>

#include <c10/core/GradMode.h>

// The CUDA allocator's header needs the CUDA toolkit's headers; a CUDA libtorch without them builds, and
// cuda_memory() then says why it cannot answer.
#if defined(TORCH_DPO_CUDA_BUILD) && __has_include(<c10/cuda/CUDACachingAllocator.h>) && __has_include(<cuda_runtime_api.h>)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#define TORCH_DPO_CUDA_ALLOCATOR_STATS 1
#endif

namespace tdpo {

static std::atomic<int64_t> g_intra_threads{0};

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  info.libtorch_version = std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
                          std::to_string(TORCH_VERSION_PATCH);
  info.cuda_available = torch::cuda::is_available();
  info.cuda_device_count = static_cast<int64_t>(torch::cuda::device_count());
  info.intra_op_threads = at::get_num_threads();
  info.inter_op_threads = at::get_num_interop_threads();
#ifdef TORCH_DPO_CUDA_BUILD
  info.cuda_build = true;
#else
  info.cuda_build = info.cuda_available;
#endif
  info.parallel_info = at::get_parallel_info();
  return info;
}

DeviceMemory cuda_memory(const std::string& name, bool reset_peak) {
  c10::Device d = parse_device(name);
  TORCH_CHECK(d.is_cuda(), "Expected a CUDA device ('cuda' or 'cuda:N') for device but received '", name, "'");
#ifdef TORCH_DPO_CUDA_ALLOCATOR_STATS
  const c10::DeviceIndex idx = d.has_index() ? d.index() : c10::cuda::current_device();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(idx);
  constexpr size_t kAggregate = 0;  // StatType::AGGREGATE: all pools together
  DeviceMemory m;
  m.allocated = stats.allocated_bytes[kAggregate].current;
  m.peak_allocated = stats.allocated_bytes[kAggregate].peak;
  m.reserved = stats.reserved_bytes[kAggregate].current;
  if (reset_peak) c10::cuda::CUDACachingAllocator::resetPeakStats(idx);
  return m;
#else
  (void)reset_peak;
  TORCH_CHECK(false, "CUDA memory statistics need an addon built against a CUDA libtorch with the CUDA headers");
#endif
}

void configure_threads(int64_t intra, int64_t inter) {
  static std::mutex mu;
  static int64_t inter_set = 0;
  std::lock_guard<std::mutex> lock(mu);
  TORCH_CHECK(intra >= 0 && intra <= 4096, "intra-op threads must be in [0, 4096], got ", intra);
  TORCH_CHECK(inter >= 0 && inter <= 4096, "inter-op threads must be in [0, 4096], got ", inter);
  if (intra > 0) {
    at::set_num_threads(static_cast<int>(intra));
    g_intra_threads = intra;
  }
  if (inter > 0 && inter != inter_set) {
    TORCH_CHECK(inter_set == 0, "inter-op threads can be set once per process; already ", inter_set, ", asked ", inter);
    at::set_num_interop_threads(static_cast<int>(inter));
    inter_set = inter;
  }
}

void prepare_worker_thread() {
  const int64_t want = g_intra_threads.load();
  if (want > 0 && at::get_num_threads() != want) at::set_num_threads(static_cast<int>(want));
  c10::GradMode::set_enabled(false);
}

c10::Device parse_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    TORCH_CHECK(torch::cuda::is_available(), "device '", name,
                "' asked for, but CUDA is not available in this libtorch build or on this machine");
    c10::Device d(name);
    if (d.has_index())
      TORCH_CHECK(d.index() < static_cast<int64_t>(torch::cuda::device_count()), "device '", name, "' does not exist: ",
                  torch::cuda::device_count(), " CUDA device(s) visible");
    return d;
  }
  TORCH_CHECK(false, "Expected 'cpu', 'cuda' or 'cuda:N' for device but received '", name, "'");
}

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return c10::kFloat;
  if (name == "bfloat16") return c10::kBFloat16;
  if (name == "float16") return c10::kHalf;
  if (name == "float64") return c10::kDouble;
  TORCH_CHECK(false, "Expected 'float32', 'bfloat16', 'float16' or 'float64' for dtype but received '", name, "'");
}

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return "float32";
    case c10::kBFloat16: return "bfloat16";
    case c10::kHalf: return "float16";
    case c10::kDouble: return "float64";
    case c10::kLong: return "int64";
    case c10::kInt: return "int32";
    default: return c10::toString(t);
  }
}

}  // namespace tdpo
