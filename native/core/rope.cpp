#include "rope.h"

#include <cmath>

namespace tdpo {

at::Tensor rope_inv_freq(const ModelConfig& cfg) {
  const int64_t D = cfg.head_dim;
  TORCH_CHECK(D > 0 && D % 2 == 0, "RoPE needs an even positive head_dim, got ", D);
  TORCH_CHECK(cfg.rope_theta > 0, "RoPE needs rope_theta > 0, got ", cfg.rope_theta);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto exponent = at::arange(0, D, 2, opts) / static_cast<double>(D);  // (D/2)
  auto inv_freq = 1.0 / at::pow(cfg.rope_theta, exponent);               // (D/2)
  const auto& rs = cfg.rope_scaling;
  if (rs.type.empty() || rs.type == "default") return inv_freq;
  if (rs.type == "linear") {
    TORCH_CHECK(rs.factor > 0, "rope_scaling.factor must be > 0 for linear scaling, got ", rs.factor);
    return inv_freq / rs.factor;
  }
  if (rs.type == "llama3") {
    TORCH_CHECK(rs.factor > 0 && rs.low_freq_factor > 0 && rs.high_freq_factor > rs.low_freq_factor &&
                    rs.original_max_position_embeddings > 0,
                "rope_scaling llama3 expects factor > 0, 0 < low_freq_factor < high_freq_factor and "
                "original_max_position_embeddings > 0, got factor=", rs.factor, " low_freq_factor=",
                rs.low_freq_factor, " high_freq_factor=", rs.high_freq_factor,
                " original_max_position_embeddings=", rs.original_max_position_embeddings);
    const double old_len = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_len / rs.low_freq_factor;
    const double high_wavelen = old_len / rs.high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv_freq;                                                       // (D/2)
    auto scaled = at::where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq);             // (D/2)
    auto smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    auto smoothed = (1.0 - smooth) * scaled / rs.factor + smooth * scaled;                       // (D/2)
    auto is_medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return at::where(is_medium, smoothed, scaled);
  }
  TORCH_CHECK(false, "unsupported rope_scaling type '", rs.type, "' (supported: default, linear, llama3)");
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& position_ids,
                                               at::ScalarType dtype) {
  TORCH_CHECK(position_ids.dim() == 2, "position_ids must be (B, T), got ", position_ids.sizes());
  auto f = inv_freq.to(position_ids.device(), at::kDouble);                        // (D/2)
  auto ang = position_ids.to(at::kDouble).unsqueeze(-1) * f;                       // (B, T, D/2)
  auto emb = at::cat({ang, ang}, -1).unsqueeze(1);                                 // (B, 1, T, D)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);  // (B, N, T, D/2) each
  auto rotated = at::cat({-x2, x1}, -1);                            // (B, N, T, D)
  return x * cos + rotated * sin;
}

}  // namespace tdpo
