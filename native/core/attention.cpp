#include "attention.h"

#include <cmath>
#include <limits>

namespace tdpo {

at::Tensor attention_allowed(const at::Tensor& key_mask, int64_t T, int64_t window) {
  TORCH_CHECK(key_mask.dim() == 2, "key mask must be (B, S), got ", key_mask.sizes());
  const int64_t S = key_mask.size(1);
  TORCH_CHECK(T >= 1 && T <= S, "query length must be in [1, ", S, "], got ", T);
  auto opts = at::TensorOptions().dtype(at::kLong).device(key_mask.device());
  auto qpos = at::arange(S - T, S, opts).unsqueeze(1);                 // (T, 1)
  auto kpos = at::arange(0, S, opts).unsqueeze(0);                     // (1, S)
  auto ok = kpos <= qpos;                                              // (T, S)
  if (window > 0) ok = ok.logical_and(qpos - kpos < window);           // (T, S)
  auto keys = key_mask.to(at::kBool).unsqueeze(1);                     // (B, 1, S)
  auto allowed = ok.unsqueeze(0).logical_and(keys);                    // (B, T, S)
  if (key_mask.scalar_type() != at::kBool && key_mask.max().item<int64_t>() > 1) {
    // Segment ids: a (non-pad) query sees only keys of its own segment; pad queries keep the 0/1 rule.
    auto seg = key_mask.to(at::kLong);                                 // (B, S)
    auto qseg = seg.narrow(1, S - T, T).unsqueeze(2);                  // (B, T, 1)
    allowed = allowed.logical_and(qseg.eq(0).logical_or(qseg.eq(seg.unsqueeze(1))));  // (B, T, S)
  }
  return allowed.unsqueeze(1);                                         // (B, 1, T, S)
}

namespace {

struct Grouped {
  int64_t B, H, T, D, Hkv, S, G;
  at::Tensor qg;        // (B, Hkv, G*T, D): row g*T + t is query head kv*G + g at position t
  at::Tensor ag;        // (B, 1, G*T, S) bool
  at::Tensor any_key;   // (B, 1, G*T, 1) bool: the query sees at least one key
};

Grouped group_queries(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention expects q, k, v of rank 4, got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
  Grouped g;
  g.B = q.size(0), g.H = q.size(1), g.T = q.size(2), g.D = q.size(3);
  g.Hkv = k.size(1), g.S = k.size(2);
  TORCH_CHECK(g.Hkv > 0 && g.H % g.Hkv == 0, "query heads (", g.H, ") must be a multiple of key/value heads (", g.Hkv,
              ")");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == g.B && k.size(3) == g.D, "k and v must be (", g.B, ", ", g.Hkv,
              ", S, ", g.D, "), got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(allowed.dim() == 4 && allowed.size(0) == g.B && allowed.size(1) == 1 && allowed.size(2) == g.T &&
                  allowed.size(3) == g.S,
              "allowed must be (", g.B, ", 1, ", g.T, ", ", g.S, "), got ", allowed.sizes());
  g.G = g.H / g.Hkv;
  g.qg = q.reshape({g.B, g.Hkv, g.G * g.T, g.D});                                  // (B, Hkv, G*T, D)
  g.ag = g.G == 1 ? allowed : allowed.repeat({1, 1, g.G, 1});                     // (B, 1, G*T, S)
  g.any_key = g.ag.any(-1, /*keepdim=*/true);                                     // (B, 1, G*T, 1)
  return g;
}

at::Tensor ungroup(const Grouped& g, const at::Tensor& out) {  // (B, Hkv, G*T, D) -> (B, T, H*D)
  return out.reshape({g.B, g.H, g.T, g.D}).transpose(1, 2).reshape({g.B, g.T, g.H * g.D});
}

}  // namespace

at::Tensor attend_explicit(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                           double scale) {
  auto g = group_queries(q, k, v, allowed);
  // Scores and softmax in float32 (float64 for a float64 model).
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto scores = at::matmul(g.qg, k.transpose(-1, -2)).to(acc) * scale;  // (B, Hkv, G*T, S)
  // A finite fill keeps fully masked rows finite (uniform) in forward and backward; they are zeroed after.
  scores = scores.masked_fill(g.ag.logical_not(), std::numeric_limits<float>::lowest());
  auto p = at::softmax(scores, -1).masked_fill(g.ag.logical_not(), 0.0);  // (B, Hkv, G*T, S)
  return ungroup(g, at::matmul(p.to(v.scalar_type()), v));              // (B, T, H*D)
}

#if TORCH_VERSION_MAJOR >= 2
at::Tensor attend_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                       double scale) {
  auto g = group_queries(q, k, v, allowed);
  auto qg = g.qg;
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(g.D));
  if (std::abs(scale - default_scale) > 1e-12 * default_scale) qg = qg * (scale / default_scale);
  const auto st = qg.scalar_type();
  const double lowest = st == at::kHalf       ? -65504.0
                        : st == at::kBFloat16 ? -3.3895313892515355e38
                                              : static_cast<double>(std::numeric_limits<float>::lowest());
  auto bias = at::zeros(g.ag.sizes(), qg.options()).masked_fill(g.ag.logical_not(), lowest);  // (B, 1, G*T, S)
  auto out = at::scaled_dot_product_attention(qg, k, v, bias);                              // (B, Hkv, G*T, D)
  return ungroup(g, out.masked_fill(g.any_key.logical_not(), 0));                           // (B, T, H*D)
}
#endif

bool right_padded_causal(const at::Tensor& key_mask) {
  TORCH_CHECK(key_mask.dim() == 2, "key_mask must be (B, T), got ", key_mask.sizes());
  const int64_t T = key_mask.size(1);
  auto ok = (key_mask.ge(0) & key_mask.le(1)).all();  // 0/1 values, not segment ids
  if (T > 1) ok = ok & key_mask.narrow(1, 1, T - 1).le(key_mask.narrow(1, 0, T - 1)).all();  // (B, T-1) non-increasing
  return ok.item<bool>();
}

at::Tensor attend_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
                  q.size(2) == k.size(2) && q.size(3) == k.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "attend_causal expects q (B, H, T, D) and k, v (B, Hkv, T, D) with H a multiple of Hkv, got ", q.sizes(),
              ", ", k.sizes(), ", ", v.sizes());
#if TDPO_TORCH_AT_LEAST(2, 5)
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  auto out = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true, scale,
                                              /*enable_gqa=*/k.size(1) != H);        // (B, H, T, D)
  return out.transpose(1, 2).reshape({B, T, H * D});                                // (B, T, H*D)
#else
  (void)scale;
  TORCH_CHECK(false, "attend_causal needs libtorch >= 2.5");
#endif
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                  double scale) {
#if TORCH_VERSION_MAJOR >= 2
  return attend_sdpa(q, k, v, allowed, scale);
#else
  return attend_explicit(q, k, v, allowed, scale);
#endif
}

}  // namespace tdpo
