// fused_sequence_logps against (a) the naive path: full (N, T, V) logits -> log_softmax -> gather -> masked sum with
// ordinary autograd, (b) float64 loops written here, (c) finite differences; plus peak CPU memory and bad input.
#include <gtest/gtest.h>

#include "torch_version.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include <c10/core/CPUAllocator.h>

#include "fused_logps.h"

namespace {

struct Case {
  at::Tensor hidden, weight, bias, labels;  // (N, T, H), (V, H), (V), (N, T)
};

// Random inputs with a prompt prefix and right padding ignored (-100), plus one fully ignored sequence when N > 2.
Case make_case(int64_t N, int64_t T, int64_t H, int64_t V, at::ScalarType dt, uint64_t seed) {
  at::manual_seed(seed);
  Case c;
  c.hidden = at::randn({N, T, H}, at::kDouble).to(dt);
  c.weight = (at::randn({V, H}, at::kDouble) / std::sqrt((double)H) * 2).to(dt);
  c.bias = (at::randn({V}, at::kDouble) * 0.5).to(dt);
  c.labels = at::randint(V, {N, T}, at::kLong);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t prompt = (n * 3) % std::max<int64_t>(T / 2, 1), len = T - (n % 3);
    for (int64_t t = 0; t < T; ++t)
      if (t < prompt || t >= len) c.labels[n][t] = tdpo::kIgnoreIndex;
  }
  if (N > 2) c.labels[N - 1].fill_(tdpo::kIgnoreIndex);
  return c;
}

// Naive path: materialises (N, T, V) logits.
at::Tensor naive_logps(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& bias,
                       const at::Tensor& labels) {
  auto logits = at::matmul(hidden, weight.t());                            // (N, T, V)
  if (bias.defined()) logits = logits + bias;
  auto lp = at::log_softmax(logits.to(at::kFloat), -1);                    // (N, T, V)
  auto mask = labels != tdpo::kIgnoreIndex;                                // (N, T)
  auto safe = labels.masked_fill(~mask, 0);                                // (N, T)
  auto tok = lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1);                // (N, T)
  return (tok * mask.to(at::kFloat)).sum(1);                               // (N)
}

double rel_err(const at::Tensor& got, const at::Tensor& want) {
  auto g = got.to(at::kDouble), w = want.to(at::kDouble);
  return (g - w).abs().max().item<double>() / std::max(w.abs().max().item<double>(), 1e-30);
}

}  // namespace

TEST(FusedLogps, MatchesNaivePathValuesAndGradsFloat32) {
  const int64_t N = 5, T = 13, H = 24, V = 97;
  auto c = make_case(N, T, H, V, at::kFloat, 1);
  auto coef = at::randn({N});                                              // random upstream gradient
  auto h0 = c.hidden.clone().requires_grad_(true), w0 = c.weight.clone().requires_grad_(true),
       b0 = c.bias.clone().requires_grad_(true);
  auto want = naive_logps(h0, w0, b0, c.labels);
  (want * coef).sum().backward();
  ASSERT_EQ((c.labels != -100).sum().item<int64_t>(), 43);                  // 4, 7, 16, 29 do not divide 43 (nor N*T = 65)
  for (int64_t chunk : {1, 4, 7, 16, 29, 1024}) {
    auto h = c.hidden.clone().requires_grad_(true), w = c.weight.clone().requires_grad_(true),
         b = c.bias.clone().requires_grad_(true);
    tdpo::FusedLogpsOptions opt;
    opt.chunk_rows = chunk;
    auto got = tdpo::fused_sequence_logps(h, w, b, c.labels, opt);
    EXPECT_LT(rel_err(got.logps, want), 1e-5) << "chunk " << chunk;
    EXPECT_TRUE(at::equal(got.token_counts, (c.labels != -100).sum(1))) << "chunk " << chunk;
    EXPECT_EQ(got.logps[N - 1].item<float>(), 0.0f);                      // fully ignored sequence
    EXPECT_FALSE(got.logits_sum.requires_grad());
    (got.logps * coef).sum().backward();
    EXPECT_LT(rel_err(h.grad(), h0.grad()), 1e-5) << "grad hidden, chunk " << chunk;
    EXPECT_LT(rel_err(w.grad(), w0.grad()), 1e-5) << "grad weight, chunk " << chunk;
    EXPECT_LT(rel_err(b.grad(), b0.grad()), 1e-5) << "grad bias, chunk " << chunk;
    EXPECT_EQ(h.grad()[N - 1].abs().max().item<float>(), 0.0f);            // ignored rows get no gradient
  }
}

TEST(FusedLogps, NoBiasAndOnlySomeInputsRequiringGrad) {
  auto c = make_case(3, 9, 8, 31, at::kFloat, 2);
  auto w0 = c.weight.clone().requires_grad_(true);
  naive_logps(c.hidden, w0, at::Tensor(), c.labels).sum().backward();
  auto w = c.weight.clone().requires_grad_(true);
  tdpo::FusedLogpsOptions opt;
  opt.chunk_rows = 5;
  auto got = tdpo::fused_sequence_logps(c.hidden, w, c10::nullopt, c.labels, opt);
  EXPECT_LT(rel_err(got.logps, naive_logps(c.hidden, c.weight, at::Tensor(), c.labels)), 1e-5);
  got.logps.sum().backward();
  EXPECT_LT(rel_err(w.grad(), w0.grad()), 1e-5);
  // No input requires grad: plain values, no graph.
  auto plain = tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias, c.labels, opt);
  EXPECT_FALSE(plain.logps.requires_grad());
}

// Float64 loops written independently of the implementation: logps, counts, logits_sum, and the analytic gradient
// dlogp/dh = W[y] - Σ_v softmax_v W[v] checked against the fused float64 backward.
TEST(FusedLogps, MatchesFloat64LoopsAndAnalyticGradient) {
  const int64_t N = 3, T = 6, H = 5, V = 11;
  auto c = make_case(N, T, H, V, at::kDouble, 3);
  auto h = c.hidden.clone().requires_grad_(true), w = c.weight.clone().requires_grad_(true),
       b = c.bias.clone().requires_grad_(true);
  tdpo::FusedLogpsOptions opt;
  opt.chunk_rows = 4;
  auto got = tdpo::fused_sequence_logps(h, w, b, c.labels, opt);
  got.logps.sum().backward();
  auto hs = c.hidden.accessor<double, 3>();
  auto ws = c.weight.accessor<double, 2>();
  auto bs = c.bias.accessor<double, 1>();
  auto ls = c.labels.accessor<int64_t, 2>();
  auto gh = h.grad().accessor<double, 3>();
  for (int64_t n = 0; n < N; ++n) {
    double lp = 0, msum = 0;
    int64_t cnt = 0;
    for (int64_t t = 0; t < T; ++t) {
      if (ls[n][t] == -100) {
        for (int64_t k = 0; k < H; ++k) EXPECT_EQ(gh[n][t][k], 0.0);
        continue;
      }
      std::vector<double> z(V);
      double mx = -1e300, mean = 0;
      for (int64_t v = 0; v < V; ++v) {
        z[v] = bs[v];
        for (int64_t k = 0; k < H; ++k) z[v] += hs[n][t][k] * ws[v][k];
        mx = std::max(mx, z[v]);
        mean += z[v] / V;
      }
      double s = 0;
      for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - mx);
      const double lse = mx + std::log(s);
      lp += z[ls[n][t]] - lse;
      msum += mean;
      ++cnt;
      for (int64_t k = 0; k < H; ++k) {
        double g = ws[ls[n][t]][k];
        for (int64_t v = 0; v < V; ++v) g -= std::exp(z[v] - lse) * ws[v][k];
        EXPECT_NEAR(gh[n][t][k], g, 1e-12) << "grad hidden[" << n << "][" << t << "][" << k << "]";
      }
    }
    EXPECT_NEAR(got.logps[n].item<double>(), lp, 1e-12) << "seq " << n;
    EXPECT_NEAR(got.logits_sum[n].item<double>(), msum, 1e-12) << "seq " << n;
    EXPECT_EQ(got.token_counts[n].item<int64_t>(), cnt);
  }
  // weight and bias gradients by central finite differences of the fused forward (float64) on sampled entries.
  auto f = [&](const at::Tensor& ww, const at::Tensor& bb) {
    return tdpo::fused_sequence_logps(c.hidden, ww, bb, c.labels, opt).logps.sum().item<double>();
  };
  const double e = 1e-6;
  for (int64_t i = 0; i < 12; ++i) {
    const int64_t v = (i * 7) % V, k = (i * 3) % H;
    auto wp = c.weight.clone(), wm = c.weight.clone();
    wp[v][k] += e;
    wm[v][k] -= e;
    EXPECT_NEAR(w.grad()[v][k].item<double>(), (f(wp, c.bias) - f(wm, c.bias)) / (2 * e), 1e-7) << "weight " << v << "," << k;
    auto bp = c.bias.clone(), bm = c.bias.clone();
    bp[v] += e;
    bm[v] -= e;
    EXPECT_NEAR(b.grad()[v].item<double>(), (f(c.weight, bp) - f(c.weight, bm)) / (2 * e), 1e-7) << "bias " << v;
  }
}

TEST(FusedLogps, BFloat16InputsMatchFloat32OnTheSameValues) {
  auto c = make_case(4, 10, 16, 53, at::kBFloat16, 4);
  auto h = c.hidden.clone().requires_grad_(true), w = c.weight.clone().requires_grad_(true);
  tdpo::FusedLogpsOptions opt;
  opt.chunk_rows = 7;
  auto got = tdpo::fused_sequence_logps(h, w, c.bias, c.labels, opt);
  EXPECT_EQ(got.logps.scalar_type(), at::kFloat);
  got.logps.sum().backward();
  EXPECT_EQ(w.grad().scalar_type(), at::kBFloat16);
  auto h32 = c.hidden.to(at::kFloat).requires_grad_(true), w32 = c.weight.to(at::kFloat).requires_grad_(true);
  auto want = naive_logps(h32, w32, c.bias.to(at::kFloat), c.labels);
  want.sum().backward();
  // bf16 logits carry ~3 significant digits: compare at that precision.
  EXPECT_LT(rel_err(got.logps, want), 2e-2);
  EXPECT_LT(rel_err(w.grad(), w32.grad()), 3e-2);
  EXPECT_LT(rel_err(h.grad(), h32.grad()), 3e-2);
}

TEST(FusedLogps, RejectsBadInput) {
  auto c = make_case(2, 4, 3, 7, at::kFloat, 5);
  auto expect_msg = [](const std::function<void()>& fn, const std::string& part) {
    try {
      fn();
      ADD_FAILURE() << "no error; expected one mentioning " << part;
    } catch (const c10::Error& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden[0], c.weight, c.bias, c.labels); }, "hidden of shape (N, T, H)");
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight.t(), c.bias, c.labels); }, "weight (V, H) with H = 3");
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias.slice(0, 0, 5), c.labels); }, "bias of shape (7)");
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias, c.labels.slice(1, 0, 3)); }, "labels of shape (2, 4)");
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias, c.labels.to(at::kFloat)); }, "integer labels");
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight.to(at::kDouble), c.bias, c.labels); }, "weight dtype");
  auto l1 = c.labels.clone();
  l1[1][2] = 7;
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias, l1); }, "received 7 at labels[1][2]");
  auto l2 = c.labels.clone();
  l2[0][3] = -1;
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias, l2); }, "received -1 at labels[0][3]");
  tdpo::FusedLogpsOptions bad;
  bad.chunk_rows = 0;
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, c.weight, c.bias, c.labels, bad); }, "chunk_rows >= 1");
  auto l3 = c.labels.clone();
  l3[1].fill_(3);  // every position of sequence 1 counted
  auto h = c.hidden.clone();
  h[1][2][0] = std::nan("");
  expect_msg([&] { tdpo::fused_sequence_logps(h, c.weight, c.bias, l3); }, "hidden[1] holds inf/NaN");
  auto w = c.weight.clone();
  w[3][1] = INFINITY;
  expect_msg([&] { tdpo::fused_sequence_logps(c.hidden, w, c.bias, l3); }, "weight holds inf/NaN");
}

// ---- peak memory -------------------------------------------------------------------------------------------------
// Method: a counting allocator is installed as libtorch's CPU allocator (c10::SetCPUAllocator, higher priority) for the
// duration of a measurement. It forwards to the previous allocator and tracks live and peak bytes of every CPU tensor
// storage allocated meanwhile (BLAS/oneDNN scratch buffers obtained with plain malloc are not seen). The peak is
// relative to the bytes live when the measurement starts (inputs are allocated before).
namespace {

std::atomic<int64_t> g_live{0}, g_peak{0};

struct CountingCtx {
  c10::DataPtr inner;
  int64_t bytes;
};

void counting_delete(void* p) {
  auto* c = static_cast<CountingCtx*>(p);
  g_live -= c->bytes;
  delete c;
}

struct CountingAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;
#if TDPO_TORCH_AT_LEAST(2, 3)
  c10::DataPtr allocate(size_t n) override {
#else
  c10::DataPtr allocate(size_t n) const override {
#endif
    c10::DataPtr in = base->allocate(n);
    void* data = in.get();
    auto* ctx = new CountingCtx{std::move(in), (int64_t)n};
    const int64_t now = (g_live += (int64_t)n);
    int64_t prev = g_peak.load();
    while (now > prev && !g_peak.compare_exchange_weak(prev, now)) {
    }
    return {data, ctx, &counting_delete, c10::Device(c10::kCPU)};
  }
#if TDPO_TORCH_AT_LEAST(2, 3)
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
#endif
};

// Runs fn with the counting allocator installed; returns the peak of bytes allocated during fn that were live at once.
template <class F>
int64_t peak_bytes(F&& fn) {
  static CountingAllocator counting;
  c10::Allocator* prev = c10::GetCPUAllocator();
  counting.base = prev;
  g_live = 0;
  g_peak = 0;
  c10::SetCPUAllocator(&counting, /*priority=*/100);
  fn();
  c10::SetCPUAllocator(prev, /*priority=*/100);
  return g_peak.load();
}

}  // namespace

TEST(FusedLogps, PeakMemoryDoesNotGrowWithVocabTimesLength) {
  const int64_t N = 4, H = 64, V = 32000;
  std::printf("\n  peak CPU tensor bytes for forward+backward, N=%ld H=%ld V=%ld (float32)\n", (long)N, (long)H, (long)V);
  std::printf("  %-22s %6s %12s %10s\n", "path", "T", "peak MiB", "time s");
  auto run = [&](int64_t T, int64_t chunk, bool naive) {
    auto c = make_case(N, T, H, V, at::kFloat, 6);
    auto h = c.hidden.clone().requires_grad_(true), w = c.weight.clone().requires_grad_(true),
         b = c.bias.clone().requires_grad_(true);
    auto t0 = std::chrono::steady_clock::now();
    int64_t peak = peak_bytes([&] {
      at::Tensor lp;
      if (naive) {
        lp = naive_logps(h, w, b, c.labels);
      } else {
        tdpo::FusedLogpsOptions opt;
        opt.chunk_rows = chunk;
        lp = tdpo::fused_sequence_logps(h, w, b, c.labels, opt).logps;
      }
      lp.sum().backward();
    });
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    char name[64];
    std::snprintf(name, sizeof name, naive ? "naive" : "fused chunk_rows=%ld", (long)chunk);
    std::printf("  %-22s %6ld %12.1f %10.2f\n", name, (long)T, peak / 1048576.0, s);
    return peak;
  };
  const int64_t naive256 = run(256, 0, true);
  const int64_t f1024 = run(256, 1024, false);
  const int64_t f256 = run(256, 256, false);
  const int64_t f64 = run(256, 64, false);
  const int64_t f64_long = run(512, 64, false);
  const int64_t logits_bytes = N * 256 * V * 4;           // one (N, T, V) float32 tensor at T = 256
  const int64_t grads_bytes = (V * H + V) * 4 + N * 512 * H * 4;  // grad W, grad b, grad hidden (largest T)
  EXPECT_GE(naive256, 2 * logits_bytes);                   // naive keeps at least logits and log_softmax
  // fused: a few (chunk, V) float32 buffers + gradients + O(N*T) vectors, independent of T.
  EXPECT_LT(f64, 4 * 64 * V * 4 + 2 * grads_bytes + (1 << 20));
  EXPECT_LT(f64_long, 4 * 64 * V * 4 + 2 * grads_bytes + (1 << 20));
  EXPECT_LT(f256, 4 * 256 * V * 4 + 2 * grads_bytes + (1 << 20));
  EXPECT_LT(f64 * 8, naive256);
  EXPECT_LE(f256, f1024);
}
