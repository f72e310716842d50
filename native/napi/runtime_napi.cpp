// N-API: runtimeInfo(), configure(), cudaMemory(), tokenLogprobs(), matmulBenchmark(), lossBenchmark().
#include "addon.h"
#include "distributed.h"
#include "loss_benchmark.h"
#include "napi_util.h"
#include "runtime.h"
#include "token_logprobs.h"

namespace tdpo::napi {

static Napi::Value RuntimeInfoJs(const Napi::CallbackInfo& info) {
  expect_count(info, 0, "runtimeInfo()");
  return guard(info.Env(), [&]() -> Napi::Value {
    auto r = runtime_info();
    auto o = Napi::Object::New(info.Env());
    o.Set("libtorchVersion", r.libtorch_version);
    o.Set("cudaAvailable", r.cuda_available);
    o.Set("cudaDeviceCount", Napi::Number::New(info.Env(), static_cast<double>(r.cuda_device_count)));
    o.Set("intraOpThreads", Napi::Number::New(info.Env(), static_cast<double>(r.intra_op_threads)));
    o.Set("interOpThreads", Napi::Number::New(info.Env(), static_cast<double>(r.inter_op_threads)));
    o.Set("cudaBuild", r.cuda_build);
    o.Set("parallelInfo", r.parallel_info);
    auto backends = dist_backends();
    auto arr = Napi::Array::New(info.Env(), backends.size());
    for (uint32_t i = 0; i < backends.size(); ++i) arr.Set(i, backends[i]);
    o.Set("distBackends", arr);
    return o;
  });
}

static Napi::Value ConfigureJs(const Napi::CallbackInfo& info) {
  expect_count(info, 2, "configure(intraOpThreads, interOpThreads)");
  auto intra = arg_int(info, 0, "intraOpThreads");
  auto inter = arg_int(info, 1, "interOpThreads");
  return guard(info.Env(), [&]() -> Napi::Value {
    configure_threads(intra, inter);
    return info.Env().Undefined();
  });
}

// tokenLogprobs(logits: Float32Array, targets: Int32Array, rows, vocab) -> Promise<Float32Array>
static Napi::Value TokenLogprobsJs(const Napi::CallbackInfo& info) {
  expect_count(info, 4, "tokenLogprobs(logits, targets, rows, vocab)");
  auto env = info.Env();
  auto rows = arg_int(info, 2, "rows");
  auto vocab = arg_int(info, 3, "vocab");
  if (rows < 0 || vocab < 1) throw Napi::RangeError::New(env, "Expected rows >= 0 and vocab >= 1 for tokenLogprobs");
  auto logits = float32_arg(info, 0, "logits", {rows, vocab});
  auto targets = int32_arg(info, 1, "targets", {rows});
  return run_async<at::Tensor>(
      env, Napi::Object::New(env), [logits, targets]() { return token_logprobs(logits, targets); },
      [](Napi::Env e, at::Tensor& r) -> Napi::Value { return to_float32_array(e, r); });
}

// matmulBenchmark(n, iters, device, dtype) -> Promise<number> (GFLOP/s)
static Napi::Value MatmulBenchmarkJs(const Napi::CallbackInfo& info) {
  expect_count(info, 4, "matmulBenchmark(n, iters, device, dtype)");
  auto env = info.Env();
  auto n = arg_int(info, 0, "n");
  auto iters = arg_int(info, 1, "iters");
  auto device = arg_string(info, 2, "device");
  auto dtype = arg_string(info, 3, "dtype");
  return run_async<double>(
      env, Napi::Object::New(env), [=]() { return matmul_gflops(n, iters, device, dtype); },
      [](Napi::Env e, double& g) -> Napi::Value { return Napi::Number::New(e, g); });
}

// lossBenchmark(optionsJson, device, dtype) -> Promise<string> (the result as JSON; loss_benchmark.h)
static Napi::Value LossBenchmarkJs(const Napi::CallbackInfo& info) {
  expect_count(info, 3, "lossBenchmark(optionsJson, device, dtype)");
  auto env = info.Env();
  auto json = arg_string(info, 0, "optionsJson");
  auto device = arg_string(info, 1, "device");
  auto dtype = arg_string(info, 2, "dtype");
  return run_async<std::string>(
      env, Napi::Object::New(env),
      [=]() { return loss_bench_result_json(loss_benchmark(loss_bench_options_from_json(json), parse_device(device), parse_dtype(dtype))); },
      [](Napi::Env e, std::string& s) -> Napi::Value { return Napi::String::New(e, s); });
}

// cudaMemory(device, resetPeak) -> {allocatedBytes, peakAllocatedBytes, reservedBytes}
static Napi::Value CudaMemoryJs(const Napi::CallbackInfo& info) {
  expect_count(info, 2, "cudaMemory(device, resetPeak)");
  auto device = arg_string(info, 0, "device");
  auto reset = arg_bool(info, 1, "resetPeak");
  return guard(info.Env(), [&]() -> Napi::Value {
    auto m = cuda_memory(device, reset);
    auto o = Napi::Object::New(info.Env());
    o.Set("allocatedBytes", Napi::Number::New(info.Env(), static_cast<double>(m.allocated)));
    o.Set("peakAllocatedBytes", Napi::Number::New(info.Env(), static_cast<double>(m.peak_allocated)));
    o.Set("reservedBytes", Napi::Number::New(info.Env(), static_cast<double>(m.reserved)));
    return o;
  });
}

void InitRuntime(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaMemory", Napi::Function::New(env, CudaMemoryJs, "cudaMemory"));
  exports.Set("runtimeInfo", Napi::Function::New(env, RuntimeInfoJs, "runtimeInfo"));
  exports.Set("configure", Napi::Function::New(env, ConfigureJs, "configure"));
  exports.Set("tokenLogprobs", Napi::Function::New(env, TokenLogprobsJs, "tokenLogprobs"));
  exports.Set("matmulBenchmark", Napi::Function::New(env, MatmulBenchmarkJs, "matmulBenchmark"));
  exports.Set("lossBenchmark", Napi::Function::New(env, LossBenchmarkJs, "lossBenchmark"));
}

}  // namespace tdpo::napi
