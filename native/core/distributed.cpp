#include "distributed.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include "torch_version.h"
#if __has_include(<gloo/config.h>)
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define TDPO_HAVE_GLOO 1
#else
#define TDPO_HAVE_GLOO 0  // Python torch wheels ship no gloo headers
#endif
// NCCL: a CUDA libtorch built with it (its CMake target defines USE_C10D_NCCL), nccl.h and the CUDA runtime's
// headers on the include path (CMakeLists.txt / find-libtorch.js look for nccl.h).
#if defined(USE_C10D_NCCL) && __has_include(<nccl.h>) && __has_include(<cuda_runtime_api.h>) && \
    __has_include(<torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define TDPO_HAVE_NCCL 1
#else
#define TDPO_HAVE_NCCL 0
#endif
#if TDPO_TORCH_AT_LEAST(2, 0)
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <type_traits>
#include <utility>

namespace tdpo {

namespace {

int64_t env_int(const std::map<std::string, std::string>& env, const std::string& name, int64_t fallback, int64_t lo,
                int64_t hi, bool required) {
  auto it = env.find(name);
  if (it == env.end() || it->second.empty()) {
    TORCH_CHECK(!required, "Expected an integer in [", lo, ", ", hi, "] for environment variable ", name,
                " but it is not set");
    return fallback;
  }
  const std::string& v = it->second;
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 10);
  TORCH_CHECK(errno == 0 && end && *end == '\0' && x >= lo && x <= hi, "Expected an integer in [", lo, ", ", hi,
              "] for environment variable ", name, " but received '", v, "'");
  return x;
}

// c10 errors carry a multi-line backtrace; the first line is the message.
std::string message_of(const std::exception& e) {
  if (auto c = dynamic_cast<const c10::Error*>(&e)) return c->what_without_backtrace();
  return e.what();
}

// TCPStoreOptions::useLibUV exists from libtorch 2.2 on; turns it off and says true where it exists.
template <typename O, typename = void>
struct HasUseLibUV : std::false_type {};
template <typename O>
struct HasUseLibUV<O, std::void_t<decltype(std::declval<O&>().useLibUV)>> : std::true_type {};

template <typename O>
bool disable_libuv(O& o) {
  if constexpr (HasUseLibUV<O>::value) {
    if (!o.useLibUV) return false;
    o.useLibUV = false;
    return true;
  } else {
    return false;
  }
}

// The class both backends derive from: ProcessGroup up to 1.13, Backend from 2.0 on.
#if TDPO_TORCH_AT_LEAST(2, 0)
using CommBackend = c10d::Backend;
#else
using CommBackend = c10d::ProcessGroup;
#endif

// Backend::shutdown() (2.x) ends NCCL's watchdog threads and communicators cleanly; older builds have none.
template <typename B, typename = void>
struct HasShutdown : std::false_type {};
template <typename B>
struct HasShutdown<B, std::void_t<decltype(std::declval<B&>().shutdown())>> : std::true_type {};

template <typename B>
void shutdown_backend(B& b) noexcept {
  if constexpr (HasShutdown<B>::value) {
    try {
      b.shutdown();
    } catch (...) {
    }
  }
}

// Starts an in-place SUM all-reduce of one tensor; returns its work handle.
auto start_sum(CommBackend& pg, const at::Tensor& t) {
  std::vector<at::Tensor> v{t};
  c10d::AllreduceOptions ao;
  ao.reduceOp = c10d::ReduceOp::SUM;
  return pg.allreduce(v, ao);
}

}  // namespace

std::vector<std::string> dist_backends() {
  std::vector<std::string> out;
  if (TDPO_HAVE_GLOO) out.push_back("gloo");
  if (TDPO_HAVE_NCCL) out.push_back("nccl");
  return out;
}

DistEnv parse_dist_env(const std::map<std::string, std::string>& env) {
  DistEnv d;
  auto ws = env.find("WORLD_SIZE");
  if (ws == env.end() || ws->second.empty()) return d;
  d.world_size = env_int(env, "WORLD_SIZE", 1, 1, 1 << 20, true);
  d.rank = env_int(env, "RANK", 0, 0, d.world_size - 1, true);
  d.local_rank = env_int(env, "LOCAL_RANK", 0, 0, d.world_size - 1, false);
  auto a = env.find("MASTER_ADDR");
  TORCH_CHECK(a != env.end() && !a->second.empty(),
              "Expected a host name or address for environment variable MASTER_ADDR but it is not set (WORLD_SIZE is ",
              d.world_size, ")");
  d.master_addr = a->second;
  d.master_port = env_int(env, "MASTER_PORT", 0, 1, 65535, true);
  return d;
}

DistEnv dist_env_from_process() {
  std::map<std::string, std::string> m;
  for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"})
    if (const char* v = std::getenv(k)) m[k] = v;
  return parse_dist_env(m);
}

struct DataParallel::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<CommBackend> pg;
};

DataParallel::DataParallel(const DistEnv& env, std::chrono::milliseconds timeout, const std::string& backend,
                           at::Device device)
    : env_(env), timeout_(timeout), backend_(backend), impl_(std::make_unique<Impl>()) {
  TORCH_CHECK(env_.world_size >= 1 && env_.rank >= 0 && env_.rank < env_.world_size, "Expected 0 <= rank < world_size but received rank ",
              env_.rank, " and world_size ", env_.world_size);
  TORCH_CHECK(env_.master_port >= 1 && env_.master_port <= 65535, "Expected a port in [1, 65535] for MASTER_PORT but received ",
              env_.master_port);
  TORCH_CHECK(timeout.count() > 0, "Expected a positive distributed timeout but received ", timeout.count(), " ms");
  TORCH_CHECK(backend_ == "gloo" || backend_ == "nccl", "Expected 'gloo' or 'nccl' for the distributed backend but received '",
              backend_, "'");
  if (backend_ == "gloo") {
    TORCH_CHECK(TDPO_HAVE_GLOO, "the gloo backend is unavailable: this build found no gloo headers (Debian: apt-get install -y "
                "libgloo-dev, then rebuild; Python torch wheels ship none, use 'nccl' on CUDA there)");
  } else {
    TORCH_CHECK(TDPO_HAVE_NCCL, "the nccl backend is unavailable: it needs a CUDA libtorch built with NCCL and nccl.h at build "
                "time (set NCCL_INCLUDE to the folder holding nccl.h and rebuild)");
    TORCH_CHECK(device.is_cuda(), "Expected a CUDA device for the nccl backend but received ", device);
    comm_device_ = device;
  }
  const std::string where = env_.master_addr + ":" + std::to_string(env_.master_port);
  std::ostringstream who;
  who << "rank " << env_.rank << " of world size " << env_.world_size << " (master " << where << ", timeout "
      << timeout.count() << " ms)";
  try {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(env_.master_port);
    o.isServer = env_.rank == 0;
    o.numWorkers = static_cast<std::size_t>(env_.world_size);
    o.waitWorkers = true;
    o.timeout = timeout;
    c10::intrusive_ptr<c10d::TCPStore> tcp;
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, o);
    } catch (const std::exception& e) {
      // libtorch >= 2.4 asks for the libuv store backend by default; builds without libuv (Debian's) refuse it, and
      // every rank then retries with the classic backend (both speak the same protocol).
      if (message_of(e).find("libuv") == std::string::npos || !disable_libuv(o)) throw;
      tcp = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, o);
    }
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("torch_dpo", tcp);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "distributed rendezvous failed for ", who.str(),
                ": the TCPStore did not gather all ranks (is MASTER_ADDR/MASTER_PORT reachable, and do all ranks agree on "
                "WORLD_SIZE?): ",
                message_of(e));
  }
  try {
    if (backend_ == "gloo") {
#if TDPO_HAVE_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      // Loopback masters stay on loopback; otherwise the interface gloo picks for this host name.
      const bool loop = env_.master_addr == "127.0.0.1" || env_.master_addr == "localhost";
      opts->devices.push_back(loop ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(env_.rank),
                                                              static_cast<int>(env_.world_size), opts);
#endif
    } else {
#if TDPO_HAVE_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      // Communicators are created on the first collective, for the device of its tensors (this rank's GPU).
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, static_cast<int>(env_.rank),
                                                              static_cast<int>(env_.world_size), opts);
#endif
    }
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "creating the ", backend_, " process group failed for ", who.str(),
                " (did all WORLD_SIZE ranks start, with the same MASTER_ADDR/MASTER_PORT?): ", message_of(e));
  }
}

DataParallel::~DataParallel() {
  if (impl_ && impl_->pg) shutdown_backend(*impl_->pg);
}

// A contiguous tensor on the backend's device holding t's values: t itself when it already is one (gloo stages device
// tensors through host memory; NCCL reduces on the GPU).
at::Tensor DataParallel::on_comm_device(const at::Tensor& t) const {
  at::Tensor d = t.detach();
  return d.device() == comm_device_ && d.is_contiguous() ? d : d.contiguous().to(comm_device_);
}

void DataParallel::allreduce_sum_inplace(at::Tensor& flat) {
  TORCH_CHECK(flat.is_contiguous(), "allreduce needs a contiguous tensor");
  at::Tensor buf = on_comm_device(flat);
  try {
    start_sum(*impl_->pg, buf)->wait(timeout_);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "all-reduce of ", flat.numel(), " ", flat.scalar_type(), " values failed on rank ", env_.rank,
                " of ", env_.world_size, " (", backend_, "): ", message_of(e));
  }
  if (!buf.is_same(flat)) flat.copy_(buf);
}

std::function<void()> DataParallel::allreduce_sum_async(const at::Tensor& flat) {
  TORCH_CHECK(flat.device() == comm_device_ && flat.is_contiguous(), "allreduce_sum_async needs a contiguous tensor on ",
              comm_device_, " (", backend_, "), got ", flat.device(), flat.is_contiguous() ? "" : " (not contiguous)");
  auto work = start_sum(*impl_->pg, flat);
  const int64_t n = flat.numel(), rank = env_.rank, world = env_.world_size;
  const auto timeout = timeout_;
  return [work, n, rank, world, timeout] {
    try {
      work->wait(timeout);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "all-reduce of a ", n, "-value gradient bucket failed on rank ", rank, " of ", world, ": ",
                  message_of(e));
    }
  };
}

void DataParallel::broadcast_parameters(std::vector<at::Tensor>& tensors) {
  c10::NoGradGuard ng;
  for (auto& t : tensors) {
    TORCH_CHECK(t.defined(), "broadcast_parameters got an undefined tensor");
    at::Tensor buf = on_comm_device(t);
    std::vector<at::Tensor> v{buf};
    c10d::BroadcastOptions bo;
    bo.rootRank = 0;
    try {
      impl_->pg->broadcast(v, bo)->wait(timeout_);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "broadcast of a ", t.sizes(), " tensor from rank 0 failed on rank ", env_.rank, " of ",
                  env_.world_size, " (", backend_, "): ", message_of(e));
    }
    if (!buf.is_same(t.detach())) t.detach().copy_(buf);
  }
}

void DataParallel::allreduce_mean(std::vector<at::Tensor> tensors, int64_t bucket_bytes) {
  TORCH_CHECK(bucket_bytes > 0, "Expected a positive bucket size but received ", bucket_bytes);
  c10::NoGradGuard ng;
  const double inv = 1.0 / static_cast<double>(env_.world_size);
  size_t i = 0;
  while (i < tensors.size()) {
    if (!tensors[i].defined()) {
      ++i;
      continue;
    }
    // A bucket: consecutive defined tensors of one dtype and device, up to bucket_bytes (at least one tensor).
    const auto dtype = tensors[i].scalar_type();
    const auto dev = tensors[i].device();
    std::vector<at::Tensor> bucket;
    int64_t bytes = 0;
    while (i < tensors.size()) {
      auto& t = tensors[i];
      if (!t.defined()) {
        ++i;
        continue;
      }
      const int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
      if (t.scalar_type() != dtype || t.device() != dev || (!bucket.empty() && bytes + b > bucket_bytes)) break;
      bucket.push_back(t);
      bytes += b;
      ++i;
    }
    std::vector<at::Tensor> flats;
    for (auto& t : bucket) flats.push_back(t.detach().reshape({-1}));
    at::Tensor flat = at::cat(flats);  // (sum of numel) contiguous copy
    allreduce_sum_inplace(flat);
    flat.mul_(inv);
    int64_t off = 0;
    for (auto& t : bucket) {
      t.detach().copy_(flat.narrow(0, off, t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }
}

std::vector<double> DataParallel::allreduce_sum_double(const std::vector<double>& values) {
  if (values.empty()) return values;
  at::Tensor t = at::tensor(values, at::kDouble);  // (N)
  allreduce_sum_inplace(t);
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

void DataParallel::barrier() {
  // A one-element all-reduce: gloo's barrier op has no timeout argument on every version.
  at::Tensor t = at::zeros({1}, at::kDouble);
  allreduce_sum_inplace(t);
}

}  // namespace tdpo
