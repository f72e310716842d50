// Hugging Face checkpoint folders: single-file or sharded safetensors, reading and writing.
#include "checkpoint_files.h"

#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

namespace tdpo {

namespace fs = std::filesystem;

namespace {

const char* kSingle = "model.safetensors";
const char* kIndex = "model.safetensors.index.json";

bool is_regular_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "Cannot read ", path);
  std::ostringstream s;
  s << in.rdbuf();
  TORCH_CHECK(!in.bad(), "Cannot read ", path);
  return s.str();
}

}  // namespace

CheckpointReader CheckpointReader::open(const std::string& dir) {
  using ojson = nlohmann::ordered_json;
  CheckpointReader r;
  r.dir_ = dir;
  struct stat st;
  TORCH_CHECK(::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode), "Expected a model folder at ", dir,
              " but it is not a readable directory");
  const std::string index_path = join(dir, kIndex);
  const std::string single_path = join(dir, kSingle);
  if (is_regular_file(index_path)) {
    ojson j;
    try {
      j = ojson::parse(read_text(index_path));
    } catch (const nlohmann::json::exception& e) {
      TORCH_CHECK(false, "Expected JSON in ", index_path, " but it does not parse: ", e.what());
    }
    TORCH_CHECK(j.is_object() && j.contains("weight_map"), "Expected an object with \"weight_map\" in ", index_path);
    const ojson& wm = j["weight_map"];
    TORCH_CHECK(wm.is_object(), "Expected an object {name: file} for \"weight_map\" in ", index_path,
                " but received a ", wm.type_name());
    TORCH_CHECK(!wm.empty(), "Expected at least one tensor in \"weight_map\" of ", index_path);
    std::map<std::string, size_t> file_index;
    for (const auto& item : wm.items()) {
      TORCH_CHECK(item.value().is_string(), "Expected a file name for \"weight_map\".\"", item.key(), "\" in ",
                  index_path, " but received ", item.value().dump());
      const std::string shard = item.value().get<std::string>();
      TORCH_CHECK(!shard.empty() && shard.find('/') == std::string::npos && shard.find('\\') == std::string::npos &&
                      shard != "." && shard != "..",
                  "Expected a plain file name in the model folder for \"weight_map\".\"", item.key(), "\" in ",
                  index_path, " but received \"", shard, "\"");
      auto it = file_index.find(shard);
      if (it == file_index.end()) {
        const std::string shard_path = join(dir, shard);
        TORCH_CHECK(is_regular_file(shard_path), "Missing shard ", shard_path, " (listed for \"", item.key(),
                    "\" in ", index_path, ")");
        it = file_index.emplace(shard, r.files_.size()).first;
        r.files_.push_back(SafetensorsFile::open(shard_path));
      }
      TORCH_CHECK(r.files_[it->second]->find(item.key()), "Tensor \"", item.key(), "\" is listed for ", shard,
                  " in ", index_path, " but that shard does not contain it");
      r.where_[item.key()] = it->second;
      r.names_.push_back(item.key());
    }
  } else if (is_regular_file(single_path)) {
    r.files_.push_back(SafetensorsFile::open(single_path));
    for (const auto& e : r.files_[0]->entries()) {
      r.where_[e.name] = 0;
      r.names_.push_back(e.name);
    }
  } else {
    TORCH_CHECK(false, "Expected ", kSingle, " or ", kIndex, " in the model folder ", dir,
                " but found neither (only safetensors checkpoints are supported, not pytorch_model.bin)");
  }
  return r;
}

std::vector<std::string> CheckpointReader::names() const { return names_; }

bool CheckpointReader::has(const std::string& name) const { return where_.count(name) != 0; }

std::shared_ptr<SafetensorsFile> CheckpointReader::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second];
}

at::Tensor CheckpointReader::tensor(const std::string& name) const {
  auto it = where_.find(name);
  TORCH_CHECK(it != where_.end(), "No tensor \"", name, "\" in the checkpoint in ", dir_, " (it has ",
              names_.size(), " tensors)");
  return files_[it->second]->tensor(name);
}

void write_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      int64_t max_shard_bytes) {
  TORCH_CHECK(max_shard_bytes > 0, "Expected max_shard_bytes > 0 but received ", max_shard_bytes, " (writing ",
              dir, ")");
  TORCH_CHECK(!tensors.empty(), "Expected at least one tensor to write a checkpoint to ", dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  TORCH_CHECK(!ec, "Cannot create the model folder ", dir, ": ", ec.message());
  std::set<std::string> seen;
  std::vector<int64_t> bytes(tensors.size());
  int64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(seen.insert(tensors[i].first).second, "Duplicate tensor \"", tensors[i].first, "\" (writing ", dir,
                ")");
    TORCH_CHECK(tensors[i].second.defined(), "Expected a defined tensor for \"", tensors[i].first, "\" (writing ",
                dir, ")");
    bytes[i] = tensors[i].second.numel() * static_cast<int64_t>(tensors[i].second.element_size());
    total += bytes[i];
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  std::set<std::string> written;
  if (total <= max_shard_bytes) {
    save_safetensors(join(dir, kSingle), tensors, meta);
    written.insert(kSingle);
  } else {
    // Greedy in order: start a new shard when the next tensor would push the current one past the limit.
    std::vector<std::vector<size_t>> shards(1);
    int64_t current = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!shards.back().empty() && current + bytes[i] > max_shard_bytes) {
        shards.emplace_back();
        current = 0;
      }
      shards.back().push_back(i);
      current += bytes[i];
    }
    const size_t n = shards.size();
    TORCH_CHECK(n <= 99999, "Too many shards (", n, ") for max_shard_bytes ", max_shard_bytes, " (writing ", dir, ")");
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    for (size_t s = 0; s < n; ++s) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
      std::vector<std::pair<std::string, at::Tensor>> part;
      for (size_t i : shards[s]) {
        part.push_back(tensors[i]);
        weight_map[tensors[i].first] = name;
      }
      save_safetensors(join(dir, name), part, meta);
      written.insert(name);
    }
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    std::string text = index.dump(2) + "\n";
    write_file_atomic(join(dir, kIndex), {{text.data(), text.size()}});
    written.insert(kIndex);
  }
  // Remove the other layout and stale shards, so a loader can not mix old and new weights.
  static const std::regex shard_re("model-[0-9]{5}-of-[0-9]{5}\\.safetensors");
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    bool stale = (name == kSingle || name == kIndex || std::regex_match(name, shard_re)) && !written.count(name);
    if (stale) {
      std::error_code rm;
      fs::remove(entry.path(), rm);
      TORCH_CHECK(!rm, "Cannot remove the stale file ", entry.path().string(), ": ", rm.message());
    }
  }
}

void copy_file_atomic(const std::string& from, const std::string& to) {
  TORCH_CHECK(is_regular_file(from), "Cannot copy ", from, " to ", to, ": the source is not a readable file");
  std::string text;
  try {
    text = read_text(from);
  } catch (const c10::Error&) {
    TORCH_CHECK(false, "Cannot copy ", from, " to ", to, ": reading the source failed");
  }
  write_file_atomic(to, {{text.data(), text.size()}});
}

}  // namespace tdpo
