// The explicit tables from Hugging Face checkpoint keys to model parameters, with their layout transforms, and the
// checked transfer between checkpoint files and a CausalLM in both directions.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "causal_lm.h"
#include "model_config.h"

namespace tdpo {

class CheckpointReader;

enum class WeightLayout {
  kSame,       // file tensor == model tensor
  kTranspose,  // GPT-2 Conv1D: file (in, out), model (out, in)
};

struct WeightSpec {
  std::string key;                  // HF key in the checkpoint (also the parameter's name in named_parameters())
  std::vector<int64_t> file_shape;  // shape in the checkpoint file
  WeightLayout layout = WeightLayout::kSame;
  std::vector<int64_t> model_shape() const;
};

struct WeightMap {
  std::vector<WeightSpec> weights;   // every model parameter, in named_parameters() order
  std::vector<std::string> ignored;  // regexes of file keys that are known non-parameters (buffers, tied copies)
  bool is_ignored(const std::string& key) const;
  const WeightSpec* find(const std::string& key) const;
};

// The table for cfg.model_type: llama | mistral | qwen2 (one layout, with the config's biases) or gpt2.
// Unsupported model types throw naming the type and the supported ones.
WeightMap weight_map(const ModelConfig& cfg);

at::Tensor to_model_layout(const WeightSpec& spec, const at::Tensor& file_tensor);
at::Tensor to_file_layout(const WeightSpec& spec, const at::Tensor& model_tensor);

// Moves every tensor of `reader` into `model` (cast to dtype on device; zero-copy views when they already match).
// Every parameter must be found, every key consumed or explicitly ignored, every shape must match: errors name the
// key, the expected and received shapes, and `dir`. GPT-2 keys without the "transformer." prefix are accepted.
// causal_to_score: `model` has a score head but the checkpoint is a causal LM's: its "lm_head.weight" (if any) is
// dropped and "score.weight" is left for the caller to initialise.
void load_weights(CausalLM& model, const CheckpointReader& reader, const std::string& dir, c10::Device device,
                  c10::ScalarType dtype, bool causal_to_score = false);

// The model's parameters under HF keys in file layout, cast to `dtype`, contiguous on the CPU (for writing).
std::vector<std::pair<std::string, at::Tensor>> export_weights(const CausalLM& model, c10::ScalarType dtype);

}  // namespace tdpo
