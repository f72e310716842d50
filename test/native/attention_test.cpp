// Native tests of attention.h (masks, grouped-query attention, the SDPA path on libtorch >= 2) and rope.h, against
// scalar float64 loops written here.
#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "attention.h"
#include "model_config.h"
#include "rope.h"

namespace {

TEST(Attention, AllowedMaskMatchesHandRule) {
  // Left-padded row 0 (first two pads), full row 1; S = 6 keys, the last T = 4 are queries; window 3.
  auto km = at::tensor({0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, at::kLong).view({2, 6});
  auto a = tdpo::attention_allowed(km, 4, 3);
  ASSERT_EQ(a.sizes(), (at::IntArrayRef{2, 1, 4, 6}));
  for (int b = 0; b < 2; ++b)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 6; ++j) {
        const int q = 2 + i;
        const bool want = j <= q && q - j < 3 && km[b][j].item<int64_t>() == 1;
        EXPECT_EQ(a[b][0][i][j].item<bool>(), want) << b << "," << i << "," << j;
      }
}

// Scalar float64 attention with explicit K/V head sharing (kv head = h / (H / Hkv)).
at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                           double scale) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = k.size(1), S = k.size(2);
  auto qd = q.to(at::kDouble), kd = k.to(at::kDouble), vd = v.to(at::kDouble);
  auto out = at::zeros({B, T, H * D}, at::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kh = h / (H / Hkv);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> s(S, -INFINITY);
        double m = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          if (!allowed[b][0][t][j].item<bool>()) continue;
          s[j] = (qd[b][h][t] * kd[b][kh][j]).sum().item<double>() * scale;
          m = std::max(m, s[j]);
        }
        if (m == -INFINITY) continue;  // no visible key: zero output
        double z = 0;
        for (int64_t j = 0; j < S; ++j) z += s[j] == -INFINITY ? 0 : std::exp(s[j] - m);
        for (int64_t j = 0; j < S; ++j)
          if (s[j] != -INFINITY) out[b][t].narrow(0, h * D, D) += vd[b][kh][j] * (std::exp(s[j] - m) / z);
      }
    }
  return out;
}

TEST(Attention, GroupedQueryAttentionMatchesScalarLoops) {
  at::manual_seed(3);
  const int64_t B = 2, H = 6, Hkv = 2, T = 3, S = 5, D = 4;
  auto q = at::randn({B, H, T, D}), k = at::randn({B, Hkv, S, D}), v = at::randn({B, Hkv, S, D});
  auto km = at::tensor({0, 0, 0, 1, 1, 1, 1, 1, 1, 1}, at::kLong).view({B, S});  // row 0: query 0 sees nothing
  auto allowed = tdpo::attention_allowed(km, T, 0);
  const double scale = 0.37;
  auto want = naive_attention(q, k, v, allowed, scale);
  auto got = tdpo::attend_explicit(q, k, v, allowed, scale);
  EXPECT_LT((got.to(at::kDouble) - want).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(got[0][0].abs().sum().item<float>(), 0.0f);  // fully masked query -> zeros, not NaN
  EXPECT_TRUE(at::isfinite(got).all().item<bool>());
  auto via_dispatch = tdpo::attend(q, k, v, allowed, scale);
  EXPECT_LT((via_dispatch.to(at::kDouble) - want).abs().max().item<double>(), 1e-5);
#if TORCH_VERSION_MAJOR >= 2
  auto sdpa = tdpo::attend_sdpa(q, k, v, allowed, scale);
  EXPECT_LT((sdpa.to(at::kDouble) - want).abs().max().item<double>(), 1e-5);
#endif
  // Gradients stay finite with fully masked rows.
  auto qq = q.clone().requires_grad_(true);
  tdpo::attend(qq, k, v, allowed, scale).sum().backward();
  EXPECT_TRUE(at::isfinite(qq.grad()).all().item<bool>());
}

TEST(Attention, RightPaddedCausalDetection) {
  auto t = [](std::vector<int64_t> v, int64_t B) { return at::tensor(v, at::kLong).view({B, -1}); };
  EXPECT_TRUE(tdpo::right_padded_causal(t({1, 1, 1, 0, 1, 1, 1, 1}, 2)));   // right padding, full row
  EXPECT_TRUE(tdpo::right_padded_causal(t({1, 0, 0, 0}, 1)));
  EXPECT_FALSE(tdpo::right_padded_causal(t({0, 1, 1, 1}, 1)));              // left padding
  EXPECT_FALSE(tdpo::right_padded_causal(t({1, 0, 1, 1}, 1)));              // a hole
  EXPECT_FALSE(tdpo::right_padded_causal(t({1, 1, 2, 2, 0}, 1)));           // packed segment ids
}

TEST(Attention, UnmaskedCausalSdpaEqualsTheMaskedPathOnRealTokens) {
  if (!tdpo::causal_sdpa_available()) {
    std::cout << "[ INFO ] libtorch < 2.5: attend_causal is not used (the masked path serves every batch)\n";
    EXPECT_THROW(tdpo::attend_causal(at::zeros({1, 2, 3, 4}), at::zeros({1, 1, 3, 4}), at::zeros({1, 1, 3, 4}), 0.5),
                 c10::Error);
    return;
  }
  for (auto [H, Hkv] : {std::pair<int64_t, int64_t>{6, 2}, {4, 4}, {4, 1}}) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      at::manual_seed(5);
      const int64_t B = 3, T = 7, D = 8;
      auto o = at::dtype(dtype);
      auto q = at::randn({B, H, T, D}, o), k = at::randn({B, Hkv, T, D}, o), v = at::randn({B, Hkv, T, D}, o);
      auto km = at::tensor({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0}, at::kLong).view({B, T});
      ASSERT_TRUE(tdpo::right_padded_causal(km));
      const double scale = 0.41;
      auto want = naive_attention(q.to(at::kDouble), k.to(at::kDouble), v.to(at::kDouble), tdpo::attention_allowed(km, T, 0), scale);
      auto qq = q.clone().requires_grad_(true);
      auto got = tdpo::attend_causal(qq, k, v, scale);                        // (B, T, H*D)
      auto masked = tdpo::attend(q, k, v, tdpo::attention_allowed(km, T, 0), scale);
      auto real = km.to(at::kBool).unsqueeze(-1);                              // (B, T, 1)
      const double tol = dtype == at::kFloat ? 1e-5 : 1e-12;
      EXPECT_LT((got.to(at::kDouble) - want).masked_fill(real.logical_not(), 0).abs().max().item<double>(), tol);
      EXPECT_LT((got - masked).masked_fill(real.logical_not(), 0).abs().max().item<double>(), tol);
      // Gradients of the real rows' outputs reach q only through real rows as well.
      (got * real).sum().backward();
      auto qm = q.clone().requires_grad_(true);
      (tdpo::attend(qm, k, v, tdpo::attention_allowed(km, T, 0), scale) * real).sum().backward();
      EXPECT_LT((qq.grad() - qm.grad()).abs().max().item<double>(), dtype == at::kFloat ? 1e-4 : 1e-10);
    }
  }
}

TEST(Rope, InvFreqMatchesScalarFormulas) {
  tdpo::ModelConfig c;
  c.head_dim = 16;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  auto got = tdpo::rope_inv_freq(c);
  ASSERT_EQ(got.numel(), 8);
  int low = 0, mid = 0, high = 0;
  for (int i = 0; i < 8; ++i) {
    const double f = std::pow(500000.0, -2.0 * i / 16.0);
    const double wl = 2 * M_PI / f;
    double want;
    if (wl < 8192.0 / 4.0) {
      want = f, ++high;
    } else if (wl > 8192.0) {
      want = f / 8.0, ++low;
    } else {
      const double s = (8192.0 / wl - 1.0) / 3.0;
      want = (1 - s) * f / 8.0 + s * f, ++mid;
    }
    EXPECT_NEAR(got[i].item<double>(), want, 1e-15 + 1e-12 * want) << i;
  }
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
  EXPECT_GT(high, 0);
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4.0;
  EXPECT_NEAR(tdpo::rope_inv_freq(c)[3].item<double>(), std::pow(500000.0, -6.0 / 16.0) / 4.0, 1e-15);
  c.rope_scaling.type = "yarn";
  try {
    tdpo::rope_inv_freq(c);
    ADD_FAILURE() << "yarn accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("yarn"), std::string::npos);
  }
}

TEST(Rope, RotatesPairsIAndIPlusHalf) {
  tdpo::ModelConfig c;
  c.head_dim = 8;
  c.rope_theta = 100.0;
  auto inv = tdpo::rope_inv_freq(c);
  auto pos = at::tensor({0, 3, 7}, at::kLong).view({1, 3});
  auto [cos, sin] = tdpo::rope_cos_sin(inv, pos, at::kDouble);
  at::manual_seed(0);
  auto x = at::randn({1, 2, 3, 8}, at::kDouble);
  auto y = tdpo::apply_rope(x, cos, sin);
  for (int h = 0; h < 2; ++h)
    for (int t = 0; t < 3; ++t)
      for (int i = 0; i < 4; ++i) {
        const double a = pos[0][t].item<int64_t>() * std::pow(100.0, -2.0 * i / 8.0);
        const double x1 = x[0][h][t][i].item<double>(), x2 = x[0][h][t][i + 4].item<double>();
        EXPECT_NEAR(y[0][h][t][i].item<double>(), x1 * std::cos(a) - x2 * std::sin(a), 1e-12);
        EXPECT_NEAR(y[0][h][t][i + 4].item<double>(), x2 * std::cos(a) + x1 * std::sin(a), 1e-12);
      }
}

}  // namespace
