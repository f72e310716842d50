// Padding-free packing: the sequences of a right-padded (N, T) batch are laid end to end in fewer rows (first-fit
// decreasing by length), the model runs once on the packed rows with a segment mask (each sequence gets positions
// from 0 and attends only to itself, see CausalLM::hidden_states), and the hidden states are put back in the (N, T)
// layout with differentiable index ops, so losses computed from them (and their gradients) equal the padded path.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "causal_lm.h"

namespace tdpo {

struct PackPlan {
  int64_t N = 0, T = 0;            // the padded batch
  int64_t rows = 0, length = 0;    // R packed rows of `length` (>= T) columns
  std::vector<int64_t> lengths;    // (N) tokens of each sequence
  std::vector<int64_t> row_of;     // (N) packed row of each sequence (-1 for an empty sequence)
  std::vector<int64_t> offset_of;  // (N) first column of each sequence in its packed row
  std::vector<int64_t> segment_of; // (N) segment id (1, 2, ... in the order placed in the row; 0 when empty)
  int64_t tokens() const;          // non-pad tokens of the batch (sum of lengths)
};

// Plans the packing of a right-padded (N, T) 0/1 mask (each row ones then zeros; a row of zeros is an empty
// sequence and is not placed). pack_length <= 0 means T; otherwise it must be >= T. First-fit decreasing: the
// sequences, longest first (ties by index), each go to the first row with room, else to a new row.
PackPlan plan_packing(const at::Tensor& attention_mask, int64_t pack_length = 0);

// The packed (R, length) inputs of a plan: ids (pad columns hold `pad_id`) and the segment mask (0 = pad,
// k = the k-th sequence of the row), both int64 on `input_ids`' device.
struct PackedBatch {
  at::Tensor input_ids;       // (R, length)
  at::Tensor segment_mask;    // (R, length)
  at::Tensor src_index;       // (M) flat indices into the (N*T) padded layout of the M non-pad tokens
  at::Tensor dst_index;       // (M) flat indices of the same tokens into the (R*length) packed layout
};
PackedBatch pack_batch(const PackPlan& plan, const at::Tensor& input_ids, int64_t pad_id = 0);

// packed (R, length, ...) -> (N, T, ...) in the padded layout, zeros at pads; differentiable w.r.t. `packed`.
at::Tensor unpack_rows(const PackPlan& plan, const PackedBatch& packed, const at::Tensor& packed_values);

// The model's (N, T, H) hidden states of a right-padded batch computed on the packed rows: equal to
// model.hidden_states(input_ids, attention_mask) at every non-pad position, zeros at pads. When `labels` (N, T) is
// given it must be -100 at every pad position (a loss must not read a pad's hidden state). pack_length as in
// plan_packing. `plan_out`, when given, receives the plan (rows before / after, for metrics and benchmarks).
at::Tensor packed_hidden_states(CausalLM& model, const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                const at::Tensor& labels = at::Tensor(), int64_t pack_length = 0,
                                PackPlan* plan_out = nullptr);

}  // namespace tdpo
