// DataParallel over c10d (TCPStore + gloo on loopback): two ranks as two threads of this process.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "causal_lm.h"
#include "distributed.h"
#include "preference_trainer.h"
#include "tiny_config.h"

using namespace tdpo;
using namespace std::chrono;

namespace {

// A loopback port nobody listens on right now (bound to 0, read back, released).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

DistEnv env_for(int64_t rank, int64_t world, int port) {
  DistEnv e;
  e.rank = rank;
  e.world_size = world;
  e.local_rank = rank;
  e.master_addr = "127.0.0.1";
  e.master_port = port;
  return e;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(DistributedEnv, ParsesTorchrunVariables) {
  auto d = parse_dist_env({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.2"}, {"MASTER_PORT", "29501"}});
  EXPECT_EQ(d.rank, 1);
  EXPECT_EQ(d.world_size, 4);
  EXPECT_EQ(d.local_rank, 1);
  EXPECT_EQ(d.master_addr, "10.0.0.2");
  EXPECT_EQ(d.master_port, 29501);
  auto single = parse_dist_env({});
  EXPECT_EQ(single.world_size, 1);
  EXPECT_EQ(single.rank, 0);
  // WORLD_SIZE=1 is a group of one (torchrun --nproc 1): the rest of the contract is required
  auto one = parse_dist_env({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "29500"}});
  EXPECT_EQ(one.world_size, 1);
  EXPECT_EQ(one.master_port, 29500);
  auto e = error_of([] { parse_dist_env({{"WORLD_SIZE", "1"}}); });
  EXPECT_NE(e.find("RANK"), std::string::npos) << e;
}

TEST(DistributedEnv, ErrorsNameTheVariable) {
  auto e1 = error_of([] { parse_dist_env({{"WORLD_SIZE", "two"}}); });
  EXPECT_NE(e1.find("WORLD_SIZE"), std::string::npos) << e1;
  EXPECT_NE(e1.find("'two'"), std::string::npos) << e1;
  auto e2 = error_of([] { parse_dist_env({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}); });
  EXPECT_NE(e2.find("RANK"), std::string::npos) << e2;
  EXPECT_NE(e2.find("[0, 1]"), std::string::npos) << e2;
  auto e3 = error_of([] { parse_dist_env({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_PORT", "1"}}); });
  EXPECT_NE(e3.find("MASTER_ADDR"), std::string::npos) << e3;
  auto e4 = error_of([] { parse_dist_env({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}); });
  EXPECT_NE(e4.find("MASTER_PORT"), std::string::npos) << e4;
  auto e5 = error_of([] { parse_dist_env({{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}); });
  EXPECT_NE(e5.find("RANK"), std::string::npos) << e5;
}

// Rank r holds tensors filled from r; the results are checked against sums worked out by hand.
TEST(DistributedTwoRanks, BroadcastAllreduceBarrierExact) {
  const int port = free_port();
  auto body = [port](int64_t rank) {
    DataParallel dp(env_for(rank, 2, port), milliseconds(20000));
    EXPECT_EQ(dp.world_size(), 2);
    // broadcast: rank 0's values everywhere (float and int64, one non-contiguous view's base)
    std::vector<at::Tensor> params{at::full({3, 2}, rank == 0 ? 1.5 : -7.0, at::kFloat),
                                   at::arange(5, at::kLong) * (rank == 0 ? 2 : 100)};
    dp.broadcast_parameters(params);
    EXPECT_TRUE(at::equal(params[0], at::full({3, 2}, 1.5, at::kFloat)));
    EXPECT_TRUE(at::equal(params[1], at::arange(5, at::kLong) * 2));
    // allreduce_mean over mixed dtypes and an undefined tensor, with a bucket of 16 bytes (several buckets)
    const double r = static_cast<double>(rank);
    std::vector<at::Tensor> grads{at::full({4}, 1.0 + r, at::kFloat),          // mean 1.5
                                  at::Tensor(),                               // skipped
                                  at::arange(6, at::kDouble).view({2, 3}) * (1 + 2 * r),  // mean ×2
                                  at::full({2, 2}, 10.0 * r, at::kFloat)};    // mean 5
    dp.allreduce_mean(grads, 16);
    EXPECT_TRUE(at::equal(grads[0], at::full({4}, 1.5, at::kFloat)));
    EXPECT_FALSE(grads[1].defined());
    EXPECT_TRUE(at::equal(grads[2], at::arange(6, at::kDouble).view({2, 3}) * 2));
    EXPECT_TRUE(at::equal(grads[3], at::full({2, 2}, 5.0, at::kFloat)));
    // the same with one big bucket
    std::vector<at::Tensor> g2{at::full({3}, r, at::kFloat), at::full({2}, 4 * r, at::kFloat)};
    dp.allreduce_mean(g2);
    EXPECT_TRUE(at::equal(g2[0], at::full({3}, 0.5, at::kFloat)));
    EXPECT_TRUE(at::equal(g2[1], at::full({2}, 2.0, at::kFloat)));
    auto s = dp.allreduce_sum_double({1.0 + r, 0.25 * r, 1e15 + r});
    EXPECT_EQ(s, (std::vector<double>{3.0, 0.25, 2e15 + 1}));
    dp.barrier();
  };
  auto f0 = std::async(std::launch::async, body, 0);
  auto f1 = std::async(std::launch::async, body, 1);
  f0.get();
  f1.get();
}

// A group of one runs the real collectives: sums are the values themselves, asynchronous bucket reductions included.
TEST(DistributedOneRank, CollectivesOfAGroupOfOne) {
  DataParallel dp(env_for(0, 1, free_port()), milliseconds(20000));
  EXPECT_EQ(dp.backend(), "gloo");
  EXPECT_EQ(dp.comm_device(), at::Device(at::kCPU));
  std::vector<at::Tensor> g{at::full({3}, 2.5, at::kFloat), at::Tensor(), at::arange(4, at::kDouble)};
  dp.allreduce_mean(g);
  EXPECT_TRUE(at::equal(g[0], at::full({3}, 2.5, at::kFloat)));
  EXPECT_TRUE(at::equal(g[2], at::arange(4, at::kDouble)));
  auto flat = at::arange(6, at::kFloat);
  auto wait = dp.allreduce_sum_async(flat);
  wait();
  EXPECT_TRUE(at::equal(flat, at::arange(6, at::kFloat)));
  EXPECT_EQ(dp.allreduce_sum_double({0.5, 3.0}), (std::vector<double>{0.5, 3.0}));
  // buckets must live on the backend's device, contiguous
  auto e = error_of([&] { dp.allreduce_sum_async(at::zeros({2, 3}).t()); });
  EXPECT_NE(e.find("not contiguous"), std::string::npos) << e;
  dp.barrier();
}

TEST(DistributedOneRank, BackendChoicesAreChecked) {
  const auto backends = dist_backends();
  EXPECT_NE(std::find(backends.begin(), backends.end(), "gloo"), backends.end()) << "this build has gloo headers";
  auto e1 = error_of([] { DataParallel dp(env_for(0, 1, free_port()), milliseconds(2000), "mpi"); });
  EXPECT_NE(e1.find("'gloo' or 'nccl'"), std::string::npos) << e1;
  EXPECT_NE(e1.find("'mpi'"), std::string::npos) << e1;
  // NCCL: unavailable in a build without it, and never on a CPU device
  auto e2 = error_of([] { DataParallel dp(env_for(0, 1, free_port()), milliseconds(2000), "nccl", at::kCPU); });
  const bool nccl = std::find(backends.begin(), backends.end(), "nccl") != backends.end();
  EXPECT_NE(e2.find(nccl ? "Expected a CUDA device for the nccl backend" : "the nccl backend is unavailable"), std::string::npos) << e2;
}

TEST(DistributedTwoRanks, MissingRankTimesOutNamingMasterAndWorldSize) {
  const int port = free_port();
  auto t0 = steady_clock::now();
  // world size 2 but only rank 0 shows up
  auto e = error_of([port] { DataParallel dp(env_for(0, 2, port), milliseconds(1500)); });
  auto secs = duration<double>(steady_clock::now() - t0).count();
  EXPECT_NE(e.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << e;
  EXPECT_NE(e.find("world size 2"), std::string::npos) << e;
  EXPECT_LT(secs, 15.0);
}

TEST(DistributedTwoRanks, UnreachableMasterTimesOut) {
  const int port = free_port();
  auto t0 = steady_clock::now();
  auto e = error_of([port] { DataParallel dp(env_for(1, 2, port), milliseconds(1500)); });
  auto secs = duration<double>(steady_clock::now() - t0).count();
  EXPECT_NE(e.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << e;
  EXPECT_NE(e.find("rank 1 of world size 2"), std::string::npos) << e;
  EXPECT_LT(secs, 15.0);
}

// PreferenceTrainer with a DataParallel: rank 0's weights reach rank 1 at attach time, and one SGD step with each
// rank on half of a batch gives the weights of one trainer on the whole batch (float64, so equal to ~1e-12).
namespace {


// P pairs: rows 0..P-1 chosen, P..2P-1 rejected; T tokens, the first 2 are prompt (unscored).
PreferenceBatch random_batch(int64_t P, int64_t T, uint64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  PreferenceBatch b;
  b.input_ids = at::randint(0, 40, {2 * P, T}, g, at::kLong);
  b.attention_mask = at::ones({2 * P, T}, at::kLong);
  b.labels = at::full({2 * P, T}, -100, at::kLong);
  b.labels.narrow(1, 1, T - 2).copy_(b.input_ids.narrow(1, 2, T - 2));  // labels[t] = ids[t+1] past the prompt
  b.ref_logps = at::randn({2 * P}, g, at::kDouble) - 20;
  return b;
}

PreferenceBatch halves(const PreferenceBatch& a, const PreferenceBatch& b) {  // chosen of a, b, then rejected of a, b
  auto cat = [](const at::Tensor& x, const at::Tensor& y) {
    const int64_t p = x.size(0) / 2;
    return at::cat({x.narrow(0, 0, p), y.narrow(0, 0, p), x.narrow(0, p, p), y.narrow(0, p, p)});
  };
  return PreferenceBatch{cat(a.input_ids, b.input_ids), cat(a.attention_mask, b.attention_mask), cat(a.labels, b.labels),
                         cat(a.ref_logps, b.ref_logps)};
}

}  // namespace

// Pair i of a batch as a batch of one pair.
PreferenceBatch pair_of(const PreferenceBatch& b, int64_t i) {
  const int64_t P = b.input_ids.size(0) / 2;
  auto rows = at::tensor({i, P + i}, at::kLong);
  return PreferenceBatch{b.input_ids.index_select(0, rows), b.attention_mask.index_select(0, rows),
                         b.labels.index_select(0, rows), b.ref_logps.index_select(0, rows)};
}

struct DPVariant {
  const char* name;
  bool overlap;        // all-reduce buckets during the last backward
  int64_t micro;       // micro-batches per rank (1 or 2 pairs each)
  int64_t bucket_bytes;
};

TEST(DistributedTrainer, TwoRanksOnHalfBatchesMatchOneTrainerOnTheWholeBatch) {
  const auto h0 = random_batch(2, 7, 1), h1 = random_batch(2, 7, 2);
  OptimizerConfig sgd;
  sgd.type = "sgd";
  // the reference: one trainer, model seed 10, the whole batch
  auto ref_model = make_causal_lm(tiny_config("llama"), c10::kCPU, at::kDouble, 10);
  PreferenceTrainer single(ref_model, DPOLossConfig{}, sgd);
  single.accumulate(halves(h0, h1), 1.0);
  auto sr = single.step(0.5, 0.0);
  ASSERT_GT(sr.grad_norm, 1e-4);

  for (const DPVariant& v : {DPVariant{"all-reduce at step()", false, 1, 25 << 20},
                             DPVariant{"overlapped, 512-byte buckets", true, 1, 512},
                             DPVariant{"overlapped, 2 micro-batches, 4 KiB buckets", true, 2, 4096}}) {
    SCOPED_TRACE(v.name);
    const int port = free_port();
    std::vector<std::shared_ptr<CausalLM>> models(2);
    std::vector<double> norms(2);
    std::vector<int64_t> buckets(2, 0), early(2, 0);
    auto body = [&](int64_t rank) {
      models[rank] = make_causal_lm(tiny_config("llama"), c10::kCPU, at::kDouble, rank == 0 ? 10 : 99);  // rank 1 starts elsewhere
      PreferenceTrainer t(models[rank], DPOLossConfig{}, sgd);
      t.set_data_parallel(std::make_shared<DataParallel>(env_for(rank, 2, port), milliseconds(20000)), v.overlap,
                          v.bucket_bytes);
      const auto& h = rank == 0 ? h0 : h1;
      if (v.micro == 1) {
        t.accumulate(h, 1.0, /*sync=*/true);
      } else {
        t.accumulate(pair_of(h, 0), 0.5, false);
        t.accumulate(pair_of(h, 1), 0.5, true);
      }
      if (t.grad_sync()) {
        buckets[rank] = t.grad_sync()->buckets();
        early[rank] = t.grad_sync()->started_during_backward();
      }
      norms[rank] = t.step(0.5, 0.0).grad_norm;
    };
    auto f0 = std::async(std::launch::async, body, 0);
    auto f1 = std::async(std::launch::async, body, 1);
    f0.get();
    f1.get();
    EXPECT_NEAR(norms[0], sr.grad_norm, 1e-10 * sr.grad_norm);
    EXPECT_EQ(norms[0], norms[1]);
    if (v.overlap) {
      EXPECT_GT(buckets[0], 3);                // several buckets
      EXPECT_EQ(early[0], buckets[0]);         // every one started inside the backward
    }
    auto want = ref_model->named_parameters();
    for (int r = 0; r < 2; ++r) {
      auto got = models[r]->named_parameters();
      ASSERT_EQ(got.size(), want.size());
      for (auto& [name, w] : want) {
        auto it = std::find_if(got.begin(), got.end(), [&](auto& kv) { return kv.first == name; });
        ASSERT_NE(it, got.end()) << name;
        double err = (it->second - w).abs().max().item<double>();
        EXPECT_LT(err, 1e-12) << "rank " << r << " " << name;
      }
    }
  }
}
