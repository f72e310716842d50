#include "packing.h"

#include <algorithm>
#include <numeric>

namespace tdpo {

int64_t PackPlan::tokens() const { return std::accumulate(lengths.begin(), lengths.end(), int64_t{0}); }

PackPlan plan_packing(const at::Tensor& attention_mask, int64_t pack_length) {
  TORCH_CHECK(attention_mask.defined() && attention_mask.dim() == 2 && attention_mask.size(0) > 0 &&
                  attention_mask.size(1) > 0,
              "packing expects a non-empty (N, T) attention_mask, got ",
              attention_mask.defined() ? c10::str(attention_mask.sizes()) : std::string("undefined"));
  auto m = attention_mask.to(at::kCPU, at::kLong).contiguous();  // (N, T)
  PackPlan p;
  p.N = m.size(0), p.T = m.size(1);
  TORCH_CHECK(pack_length <= 0 || pack_length >= p.T, "pack length must be >= the batch length T = ", p.T,
              " (or <= 0 for T), got ", pack_length);
  p.length = pack_length <= 0 ? p.T : pack_length;
  const auto mlo = m.min().item<int64_t>(), mhi = m.max().item<int64_t>();
  TORCH_CHECK(mlo >= 0 && mhi <= 1, "packing expects a 0/1 attention_mask, got values in [", mlo, ", ", mhi, "]");
  auto len = m.sum(1);                                                                  // (N)
  auto expected = at::arange(p.T, m.options()).unsqueeze(0).lt(len.unsqueeze(1));     // (N, T) ones then zeros
  auto bad_rows = expected.ne(m.to(at::kBool)).any(1);                                  // (N)
  if (bad_rows.any().item<bool>()) {
    const auto row = bad_rows.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK(false, "packing expects right padding (each attention_mask row ones then zeros), row ", row,
                " is not");
  }
  p.lengths.assign(len.data_ptr<int64_t>(), len.data_ptr<int64_t>() + p.N);
  p.row_of.assign(p.N, -1);
  p.offset_of.assign(p.N, 0);
  p.segment_of.assign(p.N, 0);

  std::vector<int64_t> order(p.N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p.lengths[a] > p.lengths[b]; });
  std::vector<int64_t> used, count;  // per packed row: columns taken, sequences placed
  for (const int64_t n : order) {
    const int64_t L = p.lengths[n];
    if (L == 0) continue;
    size_t r = 0;
    while (r < used.size() && used[r] + L > p.length) ++r;
    if (r == used.size()) {
      used.push_back(0);
      count.push_back(0);
    }
    p.row_of[n] = static_cast<int64_t>(r);
    p.offset_of[n] = used[r];
    p.segment_of[n] = ++count[r];
    used[r] += L;
  }
  p.rows = static_cast<int64_t>(used.size());
  return p;
}

PackedBatch pack_batch(const PackPlan& plan, const at::Tensor& input_ids, int64_t pad_id) {
  TORCH_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) == plan.N &&
                  input_ids.size(1) == plan.T,
              "input_ids must be (", plan.N, ", ", plan.T, ") like the planned mask, got ",
              input_ids.defined() ? c10::str(input_ids.sizes()) : std::string("undefined"));
  const int64_t M = plan.tokens();
  std::vector<int64_t> src, dst, seg;
  src.reserve(M), dst.reserve(M), seg.reserve(M);
  for (int64_t n = 0; n < plan.N; ++n)
    for (int64_t t = 0; t < plan.lengths[n]; ++t) {
      src.push_back(n * plan.T + t);
      dst.push_back(plan.row_of[n] * plan.length + plan.offset_of[n] + t);
      seg.push_back(plan.segment_of[n]);
    }
  const auto dev = input_ids.device();
  auto lopts = at::TensorOptions().dtype(at::kLong);
  PackedBatch b;
  b.src_index = at::tensor(src, lopts).to(dev);                                        // (M)
  b.dst_index = at::tensor(dst, lopts).to(dev);                                        // (M)
  auto seg_t = at::tensor(seg, lopts).to(dev);                                         // (M)
  auto ids = input_ids.to(at::kLong).reshape({-1}).index_select(0, b.src_index);      // (M)
  b.input_ids = at::full({plan.rows * plan.length}, pad_id, lopts.device(dev))
                    .index_put_({b.dst_index}, ids)
                    .view({plan.rows, plan.length});                                   // (R, length)
  b.segment_mask = at::zeros({plan.rows * plan.length}, lopts.device(dev))
                       .index_put_({b.dst_index}, seg_t)
                       .view({plan.rows, plan.length});                                // (R, length)
  return b;
}

at::Tensor unpack_rows(const PackPlan& plan, const PackedBatch& packed, const at::Tensor& packed_values) {
  TORCH_CHECK(packed_values.dim() >= 2 && packed_values.size(0) == plan.rows && packed_values.size(1) == plan.length,
              "packed values must be (", plan.rows, ", ", plan.length, ", ...), got ", packed_values.sizes());
  auto rest = packed_values.sizes().slice(2).vec();
  std::vector<int64_t> flat{plan.rows * plan.length}, out_flat{plan.N * plan.T}, out_shape{plan.N, plan.T};
  flat.insert(flat.end(), rest.begin(), rest.end());
  out_flat.insert(out_flat.end(), rest.begin(), rest.end());
  out_shape.insert(out_shape.end(), rest.begin(), rest.end());
  auto vals = packed_values.reshape(flat).index_select(0, packed.dst_index);           // (M, ...)
  return at::zeros(out_flat, packed_values.options()).index_put({packed.src_index}, vals).view(out_shape);  // (N, T, ...)
}

at::Tensor packed_hidden_states(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                const at::Tensor& labels, int64_t pack_length, PackPlan* plan_out) {
  TORCH_CHECK(input_ids.defined() && attention_mask.defined() && input_ids.sizes() == attention_mask.sizes(),
              "packed forward: input_ids and attention_mask must both be (N, T), got ",
              input_ids.defined() ? c10::str(input_ids.sizes()) : std::string("undefined"), " and ",
              attention_mask.defined() ? c10::str(attention_mask.sizes()) : std::string("undefined"));
  auto plan = plan_packing(attention_mask, pack_length);
  if (labels.defined()) {
    TORCH_CHECK(labels.sizes() == input_ids.sizes(), "packed forward: labels must be ", input_ids.sizes(), ", got ",
                labels.sizes());
    auto pad_scored = labels.ne(-100).logical_and(attention_mask.to(labels.device()).eq(0));  // (N, T)
    const auto bad = pad_scored.sum().item<int64_t>();
    TORCH_CHECK(bad == 0, "padding-free packing: labels score ", bad,
                " pad position(s) (attention_mask 0, label != -100); pads must be labelled -100");
  }
  if (plan_out) *plan_out = plan;
  if (plan.rows == 0) return model.hidden_states(input_ids, attention_mask);  // nothing to pack: all pads
  const auto dev = model.device();
  auto packed = pack_batch(plan, input_ids.to(dev));
  auto hidden = model.hidden_states(packed.input_ids, packed.segment_mask);  // (R, length, H)
  return unpack_rows(plan, packed, hidden);                                   // (N, T, H)
}

}  // namespace tdpo
