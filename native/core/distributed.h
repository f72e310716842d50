// Data-parallel training over torch's c10d: a TCPStore rendezvous (rank 0 serves it) and a process group, gloo (host
// memory; CUDA tensors are staged through it) or NCCL (device memory; CUDA builds whose libtorch has NCCL and whose
// build found nccl.h). No DDP exists in C++: gradients are flattened into buckets, all-reduced (SUM, then divided by
// the world size: gloo has no AVG), and copied back.
#pragma once
#include <ATen/ATen.h>

#include <chrono>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tdpo {

// The torchrun environment contract: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
struct DistEnv {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
};

// Reads and checks the variables from `env` (a name -> value map; dist_env_from_process() uses the process's own).
// Errors name the variable and its value. WORLD_SIZE unset means a single process (world_size 1, no group); when it is
// set (1 included, as torchrun sets it) RANK, MASTER_ADDR and MASTER_PORT are required.
DistEnv parse_dist_env(const std::map<std::string, std::string>& env);
DistEnv dist_env_from_process();

// The process-group backends this build can create: "gloo" (gloo headers found at build time), "nccl" (a CUDA
// libtorch with NCCL and nccl.h found at build time).
std::vector<std::string> dist_backends();

class DataParallel {
 public:
  // Joins the group: rank 0 starts the TCPStore server on master_port, all ranks rendezvous and build a `backend`
  // ("gloo" or "nccl") process group. `device` is where the trained tensors live; NCCL needs it to be a CUDA device
  // and reduces there. Throws (naming master_addr:master_port and the world size) if the group is not complete
  // within `timeout`; the same timeout bounds every later collective.
  DataParallel(const DistEnv& env, std::chrono::milliseconds timeout, const std::string& backend = "gloo",
               at::Device device = at::kCPU);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  const DistEnv& env() const { return env_; }
  const std::string& backend() const { return backend_; }
  // Where collective buffers live: the CUDA device for NCCL, the CPU for gloo.
  at::Device comm_device() const { return comm_device_; }

  // Overwrites every tensor (in place) with rank 0's values.
  void broadcast_parameters(std::vector<at::Tensor>& tensors);
  // Replaces each tensor by its mean over the ranks (in place; undefined tensors are skipped, and must be undefined
  // on every rank). Tensors are packed per dtype into flat buckets of at most bucket_bytes.
  void allreduce_mean(std::vector<at::Tensor> tensors, int64_t bucket_bytes = 25 << 20);
  // Starts an all-reduce (SUM, in place) of a contiguous tensor on comm_device() and returns at once; the returned
  // function waits for it (bounded by the timeout; errors name the rank). The tensor must stay alive until then.
  std::function<void()> allreduce_sum_async(const at::Tensor& flat);
  // Element-wise sums over the ranks (float64, exact for integers below 2^53); used for metrics.
  std::vector<double> allreduce_sum_double(const std::vector<double>& values);
  void barrier();

 private:
  DistEnv env_;
  std::chrono::milliseconds timeout_;
  std::string backend_;
  at::Device comm_device_ = at::kCPU;
  struct Impl;  // the store and the process group (c10 intrusive pointers)
  std::unique_ptr<Impl> impl_;

  void allreduce_sum_inplace(at::Tensor& flat);  // one collective on a contiguous tensor
  at::Tensor on_comm_device(const at::Tensor& t) const;
};

}  // namespace tdpo
