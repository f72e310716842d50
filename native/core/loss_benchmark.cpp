#include "loss_benchmark.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <vector>

#include <nlohmann/json.hpp>

#include "dpo_loss.h"
#include "fused_dpo.h"
#include "runtime.h"

namespace tdpo {

namespace {

struct Inputs {
  at::Tensor hidden;  // (2P, T, H) leaf, requires grad
  at::Tensor weight;  // (V, H) leaf, requires grad
  at::Tensor labels;  // (2P, T) int64, kIgnoreIndex on the prompt
  at::Tensor ref;     // (2P) float32 reference log-probs
};

// Full (2P, T, V) logits in the input dtype, log-softmax in float32 (float64 for float64 inputs), the labels'
// log-probs summed per sequence.
at::Tensor naive_logps(const at::Tensor& hidden, const at::Tensor& weight, const at::Tensor& labels) {
  const auto acc = hidden.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto logits = at::matmul(hidden, weight.t()).to(acc);                    // (N, T, V)
  auto logp = at::log_softmax(logits, -1);                                 // (N, T, V)
  auto mask = labels.ne(kIgnoreIndex);                                     // (N, T)
  auto tok = logp.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1);  // (N, T)
  return (tok * mask).sum(1);                                              // (N)
}

// One forward + backward of `impl`; the gradients land in the inputs' .grad (reset first). Returns the loss.
at::Tensor pass(const std::string& impl, Inputs& in, int64_t chunk_rows) {
  in.hidden.mutable_grad().reset();
  in.weight.mutable_grad().reset();
  c10::AutoGradMode grad(true);
  const DPOLossConfig cfg;  // the default loss: sigmoid, β 0.1
  at::Tensor loss;
  if (impl == "fused") {
    FusedLogpsOptions fo;
    fo.chunk_rows = chunk_rows;
    loss = fused_dpo_loss(in.hidden, in.weight, c10::nullopt, in.labels, in.ref, cfg, fo).loss;
  } else {
    const int64_t P = in.hidden.size(0) / 2;
    auto logps = naive_logps(in.hidden, in.weight, in.labels);             // (2P)
    auto counts = in.labels.ne(kIgnoreIndex).sum(1);                       // (2P)
    DPOLossInputs d;
    d.policy_chosen = logps.narrow(0, 0, P);
    d.policy_rejected = logps.narrow(0, P, P);
    d.ref_chosen = in.ref.narrow(0, 0, P);
    d.ref_rejected = in.ref.narrow(0, P, P);
    d.chosen_counts = counts.narrow(0, 0, P);
    d.rejected_counts = counts.narrow(0, P, P);
    loss = dpo_loss(d, cfg).loss;
  }
  loss.backward();
  return loss.detach();
}

// Waits for the device: a one-element copy to the host is ordered after everything queued before it.
void sync(const at::Tensor& t) { t.reshape({-1}).narrow(0, 0, 1).item<double>(); }

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  auto a64 = a.to(at::kDouble), b64 = b.to(at::kDouble);
  const double den = b64.norm().item<double>();
  const double num = (a64 - b64).norm().item<double>();
  return den > 0 ? num / den : num;
}

}  // namespace

LossBenchResult loss_benchmark(const LossBenchOptions& o, at::Device device, at::ScalarType dtype) {
  TORCH_CHECK(o.pairs >= 1 && o.seq >= 2 && o.hidden >= 1 && o.vocab >= 2, "Expected pairs >= 1, seq >= 2, hidden >= 1 and "
              "vocab >= 2 but received pairs ", o.pairs, ", seq ", o.seq, ", hidden ", o.hidden, ", vocab ", o.vocab);
  TORCH_CHECK(o.prompt >= 0 && o.prompt < o.seq, "Expected prompt in [0, seq) but received ", o.prompt, " with seq ", o.seq);
  TORCH_CHECK(o.iters >= 1 && o.warmup >= 0, "Expected iters >= 1 and warmup >= 0 but received ", o.iters, " and ", o.warmup);
  TORCH_CHECK(o.chunk_rows >= 1, "Expected chunk_rows >= 1 but received ", o.chunk_rows);
  TORCH_CHECK(o.impl == "fused" || o.impl == "naive", "Expected 'fused' or 'naive' for impl but received '", o.impl, "'");
  const int64_t N = 2 * o.pairs, T = o.seq, H = o.hidden, V = o.vocab;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  Inputs in;
  {
    c10::NoGradGuard ng;
    // drawn on the CPU in float32 (the same numbers on every device), then moved
    in.hidden = at::randn({N, T, H}, gen, at::kFloat).to(device, dtype).set_requires_grad(true);               // (N, T, H)
    in.weight = (at::randn({V, H}, gen, at::kFloat) * 0.02).to(device, dtype).set_requires_grad(true);          // (V, H)
    in.labels = at::randint(0, V, {N, T}, gen, at::kLong);                                                      // (N, T)
    if (o.prompt > 0) in.labels.narrow(1, 0, o.prompt).fill_(kIgnoreIndex);
    in.labels = in.labels.to(device);
    // references: the policy's own log-probs plus N(0, 1) noise, so that the loss is not the constant log 2
    auto policy = fused_sequence_logps(in.hidden.detach(), in.weight.detach(), c10::nullopt, in.labels).logps;  // (N)
    in.ref = (policy.to(at::kFloat).cpu() + at::randn({N}, gen, at::kFloat)).to(device);                       // (N)
  }
  LossBenchResult r;
  r.matmul_flop = 6.0 * static_cast<double>(N * (T - o.prompt)) * static_cast<double>(H) * static_cast<double>(V);
  r.loss_rel_diff = r.grad_hidden_rel_diff = r.grad_weight_rel_diff = std::numeric_limits<double>::quiet_NaN();
  if (o.compare) {
    const std::string other = o.impl == "fused" ? "naive" : "fused";
    auto lb = pass(other, in, o.chunk_rows);
    auto gh = in.hidden.grad().clone(), gw = in.weight.grad().clone();
    auto la = pass(o.impl, in, o.chunk_rows);
    r.loss_rel_diff = rel_diff(la, lb);
    r.grad_hidden_rel_diff = rel_diff(in.hidden.grad(), gh);
    r.grad_weight_rel_diff = rel_diff(in.weight.grad(), gw);
  }
  for (int64_t i = 0; i < o.warmup; ++i) sync(pass(o.impl, in, o.chunk_rows));
  in.hidden.mutable_grad().reset();
  in.weight.mutable_grad().reset();
  const std::string dev = device.str();
  const double before = device.is_cuda() ? static_cast<double>(cuda_memory(dev, true).allocated) : 0.0;
  std::vector<double> ms;
  at::Tensor loss;
  for (int64_t i = 0; i < o.iters; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    loss = pass(o.impl, in, o.chunk_rows);
    sync(in.weight.grad());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  if (device.is_cuda()) r.peak_bytes = static_cast<double>(cuda_memory(dev, false).peak_allocated) - before;
  std::sort(ms.begin(), ms.end());
  r.ms_median = ms[ms.size() / 2];
  r.ms_min = ms.front();
  r.loss = loss.item<double>();
  return r;
}

LossBenchOptions loss_bench_options_from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "loss benchmark options are not valid JSON: ", e.what());
  }
  TORCH_CHECK(j.is_object(), "Expected a JSON object for the loss benchmark options but received ", j.type_name());
  LossBenchOptions o;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const auto& v = it.value();
    auto integer = [&](int64_t& dst) {
      TORCH_CHECK(v.is_number_integer(), "Expected an integer for ", k, " but received ", v.dump());
      dst = v.get<int64_t>();
    };
    if (k == "pairs") integer(o.pairs);
    else if (k == "seq") integer(o.seq);
    else if (k == "prompt") integer(o.prompt);
    else if (k == "hidden") integer(o.hidden);
    else if (k == "vocab") integer(o.vocab);
    else if (k == "iters") integer(o.iters);
    else if (k == "warmup") integer(o.warmup);
    else if (k == "chunkRows") integer(o.chunk_rows);
    else if (k == "seed") {
      TORCH_CHECK(v.is_number_unsigned(), "Expected a non-negative integer for seed but received ", v.dump());
      o.seed = v.get<uint64_t>();
    } else if (k == "impl") {
      TORCH_CHECK(v.is_string(), "Expected 'fused' or 'naive' for impl but received ", v.dump());
      o.impl = v.get<std::string>();
    } else if (k == "compare") {
      TORCH_CHECK(v.is_boolean(), "Expected a boolean for compare but received ", v.dump());
      o.compare = v.get<bool>();
    } else {
      TORCH_CHECK(false, "unknown loss benchmark option '", k, "'");
    }
  }
  return o;
}

std::string loss_bench_result_json(const LossBenchResult& r) {
  auto num = [](double x) { return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr); };
  nlohmann::json j = {{"msMedian", num(r.ms_median)},         {"msMin", num(r.ms_min)},
                      {"peakBytes", num(r.peak_bytes)},       {"loss", num(r.loss)},
                      {"matmulFlop", num(r.matmul_flop)},     {"lossRelDiff", num(r.loss_rel_diff)},
                      {"gradHiddenRelDiff", num(r.grad_hidden_rel_diff)},
                      {"gradWeightRelDiff", num(r.grad_weight_rel_diff)}};
  return j.dump();
}

}  // namespace tdpo
