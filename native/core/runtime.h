// Process-wide libtorch facts and settings: version, devices, threads.
#pragma once
#include <cstdint>
#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace tdpo {

struct RuntimeInfo {
  std::string libtorch_version;  // e.g. "1.13.0", from TORCH_VERSION_* at build time
  bool cuda_available = false;   // a CUDA device can be used now
  int64_t cuda_device_count = 0; // number of visible CUDA devices
  int64_t intra_op_threads = 0;  // at::get_num_threads()
  int64_t inter_op_threads = 0;  // at::get_num_interop_threads()
  bool cuda_build = false;       // libtorch_cuda was linked (the build can use CUDA)
  std::string parallel_info;     // at::get_parallel_info(), libtorch's own summary
};

RuntimeInfo runtime_info();

// Sets libtorch's thread pools. intra <= 0 leaves the intra-op pool as is; inter <= 0 likewise.
// The inter-op pool can be sized once per process, before any parallel work; a second different request throws.
void configure_threads(int64_t intra, int64_t inter);

// Applies the configured intra-op thread count to the calling thread (OpenMP keeps it per thread) and turns grad
// mode off; every worker thread calls this before running libtorch work. Work that trains enables grad itself.
void prepare_worker_thread();

// "cpu", "cuda", "cuda:1" -> Device; throws with the accepted forms otherwise, or when CUDA is not available.
c10::Device parse_device(const std::string& name);

// Bytes held by libtorch's CUDA caching allocator on one device (what torch.cuda.memory_allocated /
// max_memory_allocated / memory_reserved report in Python).
struct DeviceMemory {
  int64_t allocated = 0;       // bytes in live tensors now
  int64_t peak_allocated = 0;  // the most bytes in live tensors since the last peak reset
  int64_t reserved = 0;        // bytes the caching allocator holds from the driver now
};

// Memory statistics of a CUDA device ("cuda", "cuda:N"); reset_peak restarts the peak after reading it. Throws on a
// CPU device, or when this build of the addon has no CUDA libtorch.
DeviceMemory cuda_memory(const std::string& device, bool reset_peak);

// "float32" | "bfloat16" | "float16" -> dtype; throws naming the accepted values otherwise.
c10::ScalarType parse_dtype(const std::string& name);
std::string dtype_name(c10::ScalarType t);

}  // namespace tdpo
