// Reading and writing the safetensors format: an 8-byte little-endian header length N, N bytes of JSON describing
// each tensor (dtype, shape, data_offsets relative to the end of the header), then the raw little-endian bytes.
// Files are read through a private memory mapping so that tensors view the file without copying it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace tdpo {

struct SafetensorEntry {
  std::string name;
  c10::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range relative to the first byte after the header
};

// "F32" "F16" "BF16" "F64" "I64" "I32" "I8" "U8" "BOOL" <-> ScalarType. The parse throws naming `where` and the
// accepted names; the name throws for a dtype safetensors can not hold here.
c10::ScalarType safetensors_dtype_from_name(const std::string& name, const std::string& where);
std::string safetensors_dtype_name(c10::ScalarType dtype);

class SafetensorsFile {
 public:
  // Maps and validates the whole file; every error names the file and the key/field at fault.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorEntry>& entries() const { return entries_; }  // in header order
  const SafetensorEntry* find(const std::string& name) const;              // nullptr if absent
  // A CPU tensor viewing the mapping (it keeps the mapping alive); a copy when the data is not aligned for its dtype.
  at::Tensor tensor(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The mapped bytes (for tests and diagnostics): [mapping_begin(), mapping_begin() + mapping_size()).
  const uint8_t* mapping_begin() const;
  size_t mapping_size() const;
  uint64_t data_start() const { return data_start_; }  // file offset of the first data byte (8 + header length)

  struct Mapping;  // an mmap region, unmapped when the last holder goes

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes `bytes` pieces to path + ".tmp-<pid>", fsyncs, renames onto `path` and fsyncs the folder. Nothing is left
// behind on failure. Errors name the path and the system error.
void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces);

// Writes atomically. Tensors are made contiguous on the CPU and written in their dtype; the header lists them in the
// given order. Data begins 8-byte aligned and the tensors are laid out without holes (the layout the Hugging Face
// reader demands), ordered by element size from largest to smallest (stable for equal sizes), so each tensor starts
// at an offset aligned for its dtype.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace tdpo
