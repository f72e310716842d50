// Masked multi-head attention with grouped-query K/V, shared by all architectures.
#pragma once
#include <ATen/ATen.h>

#include "torch_version.h"

namespace tdpo {

// Which keys each new query may see. key_mask (B, S) 0/1 over all S key positions (cache + new); the T queries are
// the last T positions. Key j is visible from query i (absolute index q = S - T + i) when j <= q, key_mask[b, j] = 1
// and, with window > 0, q - j < window. -> (B, 1, T, S) bool.
// key_mask may hold segment ids instead (0 = pad, k >= 1 = packed sequence k): key j must then be non-pad and in
// the query's segment (key_mask[b, j] == key_mask[b, q]), i.e. block-diagonal causal attention; a pad query keeps
// the 0/1 rule (it sees every earlier non-pad key), so a 0/1 mask gives exactly the 0/1 result.
// The window counts absolute indices, which equals the position difference inside a contiguous segment.
// On libtorch >= 2 (CUDA) attend() passes this mask to at::scaled_dot_product_attention. The variable-length flash
// kernel (cumulative sequence lengths instead of a mask) is only reachable through the private operator
// at::_flash_attention_forward, whose signature changes between 2.x releases; it is not used (and untested here).
at::Tensor attention_allowed(const at::Tensor& key_mask, int64_t T, int64_t window);

// q (B, H, T, D), k and v (B, Hkv, S, D) with H a multiple of Hkv (query head h reads K/V head h / (H / Hkv)),
// allowed (B, 1, T, S) bool -> (B, T, H * D) in q's dtype: softmax(q k^T * scale, masked) v, the softmax in float32.
// K/V heads are not repeated: the H / Hkv query heads of a group are folded into the query length instead.
// libtorch >= 2 uses at::scaled_dot_product_attention with an additive mask; 1.13 an explicit masked softmax.
// Queries that see no key at all (pads under left padding) get a zero output, never NaN.
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                  double scale);

// The two implementations behind attend(), same contract: the explicit masked softmax (every libtorch) and, on
// libtorch >= 2, at::scaled_dot_product_attention with an additive mask (tests compare them there).
at::Tensor attend_explicit(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                           double scale);
#if TORCH_VERSION_MAJOR >= 2
at::Tensor attend_sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& allowed,
                       double scale);
#endif

// The training / scoring fast path. True when key_mask (B, T) — no KV cache, S = T — is a 0/1 right-padded mask
// (each row ones, then zeros): plain causal attention then gives every real query exactly its allowed keys (the
// pads come after them), so attend_causal() may replace the masked call. Pad queries differ (they are never read).
// One device-to-host read per call.
bool right_padded_causal(const at::Tensor& key_mask);

// Whether attend_causal() runs at::scaled_dot_product_attention(is_causal, enable_gqa) without a mask, which lets
// libtorch pick its flash kernels and reads K/V heads without repeating them (libtorch >= 2.5).
constexpr bool causal_sdpa_available() {
  return TDPO_TORCH_AT_LEAST(2, 5);
}

// q (B, H, T, D), k and v (B, Hkv, T, D) -> (B, T, H * D): causal attention without padding (see right_padded_causal);
// throws where causal_sdpa_available() is false.
at::Tensor attend_causal(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale);

}  // namespace tdpo
