#include "grad_sync.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <mutex>

namespace tdpo {

struct OverlappedGradSync::State {
  struct Bucket {
    std::vector<size_t> params;   // indices into params
    std::vector<int64_t> offset;  // element offset of each parameter in `flat`
    at::Tensor flat;              // (numel) float32/float64 buffer on the group's comm_device()
    int64_t pending = 0;          // parameters whose gradient has not arrived yet
    std::function<void()> wait;   // set once started
  };
  std::shared_ptr<DataParallel> dp;
  std::vector<at::Tensor> params;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;  // (params) bucket index of each parameter
  std::vector<size_t> slot_of;    // (params) position of each parameter in its bucket
  std::vector<bool> arrived;      // (params) gradient seen in the armed backward
  size_t next = 0;                // the next bucket to start
  bool armed = false;
  int64_t started_in_backward = 0;
  std::mutex mu;                  // hooks may run on autograd device threads

  // Writes value (+ extra, when defined) into parameter i's slot of its bucket; zeros for an undefined value.
  void copy_in(size_t i, const at::Tensor& value, const at::Tensor& extra = at::Tensor()) {
    auto& b = buckets[bucket_of[i]];
    auto dst = b.flat.narrow(0, b.offset[slot_of[i]], params[i].numel());  // (numel)
    if (value.defined()) dst.copy_(value.detach().reshape({-1}));
    else dst.zero_();
    if (extra.defined()) dst.add_(extra.detach().reshape({-1}).to(dst.device(), dst.scalar_type()));
  }

  void start_ready(bool in_backward) {
    while (next < buckets.size() && buckets[next].pending == 0) {
      buckets[next].wait = dp->allreduce_sum_async(buckets[next].flat);
      if (in_backward) ++started_in_backward;
      ++next;
    }
  }

  void on_grad(size_t i, const at::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || arrived[i]) return;
    c10::NoGradGuard ng;
    // The hook runs before autograd adds `grad` to .grad: the accumulated value after this backward is their sum.
    const auto& p = params[i];
    if (p.grad().defined()) copy_in(i, p.grad(), grad);
    else copy_in(i, grad);
    arrived[i] = true;
    --buckets[bucket_of[i]].pending;
    start_ready(true);
  }

  void wait_all() noexcept {
    for (auto& b : buckets)
      if (b.wait) {
        try {
          b.wait();
        } catch (...) {
        }
        b.wait = nullptr;
      }
  }
};

OverlappedGradSync::OverlappedGradSync(std::shared_ptr<DataParallel> dp, std::vector<at::Tensor> params,
                                       int64_t bucket_bytes, int64_t first_bucket_bytes)
    : s_(std::make_shared<State>()) {
  TORCH_CHECK(dp, "OverlappedGradSync needs a data-parallel group");
  TORCH_CHECK(bucket_bytes > 0 && first_bucket_bytes > 0, "Expected positive bucket sizes but received ", bucket_bytes,
              " and ", first_bucket_bytes);
  auto& s = *s_;
  s.dp = std::move(dp);
  s.params = std::move(params);
  const size_t n = s.params.size();
  s.bucket_of.assign(n, 0);
  s.slot_of.assign(n, 0);
  s.arrived.assign(n, false);
  // Buckets in reverse parameter order; a bucket holds one dtype, at least one parameter, at most bucket_bytes.
  for (size_t k = n; k-- > 0;) {
    const auto& p = s.params[k];
    TORCH_CHECK(p.defined() && p.requires_grad(), "OverlappedGradSync: parameter ", k, " is undefined or frozen");
    const auto acc = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;  // reduced in float32 (or float64)
    const int64_t esize = static_cast<int64_t>(c10::elementSize(acc));
    const int64_t cap = s.buckets.size() <= 1 ? std::min(first_bucket_bytes, bucket_bytes) : bucket_bytes;
    const bool fresh = s.buckets.empty() || s.buckets.back().flat.scalar_type() != acc ||
                       (s.buckets.back().flat.numel() + p.numel()) * esize > cap;
    if (fresh) {
      s.buckets.emplace_back();
      s.buckets.back().flat = at::empty({0}, at::TensorOptions().dtype(acc).device(s.dp->comm_device()));
    }
    auto& b = s.buckets.back();
    s.bucket_of[k] = s.buckets.size() - 1;
    s.slot_of[k] = b.params.size();
    b.params.push_back(k);
    b.offset.push_back(b.flat.numel());
    b.flat = at::empty({b.flat.numel() + p.numel()}, b.flat.options());
  }
  std::weak_ptr<State> weak = s_;
  for (size_t k = 0; k < n; ++k)
    s.params[k].register_hook([weak, k](const at::Tensor& grad) {
      if (auto st = weak.lock()) st->on_grad(k, grad);
    });
}

OverlappedGradSync::~OverlappedGradSync() { s_->wait_all(); }  // collectives must not outlive their buffers

bool OverlappedGradSync::armed() const { return s_->armed; }
int64_t OverlappedGradSync::buckets() const { return static_cast<int64_t>(s_->buckets.size()); }
int64_t OverlappedGradSync::started_during_backward() const { return s_->started_in_backward; }

void OverlappedGradSync::arm() {
  auto& s = *s_;
  std::lock_guard<std::mutex> lock(s.mu);
  TORCH_CHECK(!s.armed, "a gradient synchronisation is already armed (finish() was not called)");
  for (auto& b : s.buckets) {
    b.pending = static_cast<int64_t>(b.params.size());
    b.wait = nullptr;
  }
  std::fill(s.arrived.begin(), s.arrived.end(), false);
  s.next = 0;
  s.started_in_backward = 0;
  s.armed = true;
}

bool OverlappedGradSync::finish() {
  auto& s = *s_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.armed) return false;
  s.armed = false;
  c10::NoGradGuard ng;
  // Parameters without a gradient in this backward: their accumulated .grad (or zeros) goes in.
  for (size_t i = 0; i < s.params.size(); ++i) {
    if (s.arrived[i]) continue;
    s.copy_in(i, s.params[i].grad());
    --s.buckets[s.bucket_of[i]].pending;
  }
  s.start_ready(false);
  const double inv = 1.0 / static_cast<double>(s.dp->world_size());
  for (auto& b : s.buckets) {
    auto wait = std::move(b.wait);
    b.wait = nullptr;
    wait();
    b.flat.mul_(inv);
    for (size_t j = 0; j < b.params.size(); ++j) {
      auto& p = s.params[b.params[j]];
      if (!s.arrived[b.params[j]] && !p.grad().defined()) continue;  // no gradient on this rank: stays undefined
      auto mean = b.flat.narrow(0, b.offset[j], p.numel()).view(p.sizes());
      if (p.grad().defined()) p.mutable_grad().copy_(mean);
      else p.mutable_grad() = mean.to(p.options()).clone();
    }
  }
  return true;
}

}  // namespace tdpo
