#include "token_logprobs.h"

#include <chrono>

#include "runtime.h"

namespace tdpo {

at::Tensor token_logprobs(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2, "logits must be (N, V), got ", logits.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0), "targets must be (N) with N = ", logits.size(0),
              ", got ", targets.sizes());
  TORCH_CHECK(logits.is_floating_point(), "logits must be floating point, got ", logits.scalar_type());
  const int64_t V = logits.size(1);
  auto t = targets.to(logits.device(), at::kLong);
  if (t.numel() > 0) {
    const int64_t lo = t.min().item<int64_t>(), hi = t.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < V, "targets must be in [0, ", V, "), got values in [", lo, ", ", hi, "]");
  }
  auto x = logits.to(at::kFloat);                              // (N, V)
  auto lse = at::logsumexp(x, /*dim=*/1);                      // (N)
  auto picked = x.gather(1, t.unsqueeze(1)).squeeze(1);        // (N)
  return picked - lse;                                         // (N)
}

double matmul_gflops(int64_t n, int64_t iters, const std::string& device, const std::string& dtype) {
  TORCH_CHECK(n > 0 && n <= 32768, "n must be in [1, 32768], got ", n);
  TORCH_CHECK(iters > 0 && iters <= 100000, "iters must be in [1, 100000], got ", iters);
  auto opts = at::TensorOptions().device(parse_device(device)).dtype(parse_dtype(dtype));
  auto a = at::randn({n, n}, opts), b = at::randn({n, n}, opts);
  auto c = at::matmul(a, b);  // warm-up
  if (c.is_cuda()) c.cpu();
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) c = at::matmul(a, b);
  if (c.is_cuda()) c.sum().item<float>();  // synchronise
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 2.0 * n * n * n * iters / s / 1e9;
}

}  // namespace tdpo
