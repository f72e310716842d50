// A Hugging Face model folder's weights: model.safetensors, or shards listed by model.safetensors.index.json.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "safetensors.h"

namespace tdpo {

class CheckpointReader {
 public:
  // Opens dir/model.safetensors.index.json with its shards when present, else dir/model.safetensors. Errors name the
  // folder, the index file and the shard or key at fault.
  static CheckpointReader open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // all tensor names (file order; weight_map order for an index)
  bool has(const std::string& name) const;
  at::Tensor tensor(const std::string& name) const;  // zero-copy when aligned; error names dir + key if absent
  // The file holding `name` (nullptr if absent) and every opened file.
  std::shared_ptr<SafetensorsFile> file_of(const std::string& name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::vector<std::string> names_;
  std::map<std::string, size_t> where_;  // name -> index into files_
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
};

// Writes dir/model.safetensors, or, when the total byte size exceeds max_shard_bytes, shards
// "model-00001-of-0000N.safetensors" (filled in order, each at most max_shard_bytes unless one tensor alone is
// larger) and model.safetensors.index.json ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}).
// Creates dir if needed. Each file is written atomically with metadata {"format": "pt"}. Afterwards files of the
// other layout and stale shards ("model-NNNNN-of-MMMMM.safetensors" not written now) are removed from dir so that
// loaders do not pick up old weights.
void write_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      int64_t max_shard_bytes = 5LL << 30);

// Copies a file (tokenizer files etc.) atomically; errors name both paths.
void copy_file_atomic(const std::string& from, const std::string& to);

}  // namespace tdpo
