// Gradient all-reduce overlapped with the backward pass, DDP's scheme on c10d collectives: the parameters are cut
// into buckets once (in reverse order, the order in which backward produces their gradients); during a synchronising
// backward each parameter's hook copies its accumulated gradient into its bucket, and a bucket's asynchronous
// all-reduce starts as soon as the bucket is complete and every earlier bucket has started (so all ranks issue the
// collectives in the same order). finish() starts what is left (parameters that got no gradient), waits, and writes
// the means over the ranks into .grad.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "distributed.h"

namespace tdpo {

class OverlappedGradSync {
 public:
  // params: the trained tensors (leaves with requires_grad); bucket_bytes: the bucket size cap (DDP's default 25 MiB);
  // the first bucket (the last layers' gradients, ready first) is capped at first_bucket_bytes (DDP's 1 MiB) so that
  // communication starts early in the backward.
  OverlappedGradSync(std::shared_ptr<DataParallel> dp, std::vector<at::Tensor> params, int64_t bucket_bytes = 25 << 20,
                     int64_t first_bucket_bytes = 1 << 20);
  ~OverlappedGradSync();
  OverlappedGradSync(const OverlappedGradSync&) = delete;
  OverlappedGradSync& operator=(const OverlappedGradSync&) = delete;

  // The next backward is the last one before the optimizer step: reduce its gradients while it runs.
  void arm();
  bool armed() const;
  // Completes the reduction of an armed backward (false, doing nothing, when none was armed).
  bool finish();
  int64_t buckets() const;
  // Buckets whose all-reduce started inside the last armed backward (the rest started in finish()).
  int64_t started_during_backward() const;

 private:
  struct State;                   // buckets and flags; the parameter hooks hold it weakly (no cycle, no dangling)
  std::shared_ptr<State> s_;
};

}  // namespace tdpo
