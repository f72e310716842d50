// safetensors reader (private mmap, zero-copy tensors) and atomic writer.
#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; big-endian hosts are not supported");

namespace tdpo {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100000000;  // 100 MB (the Hugging Face limit): larger headers are corrupt

struct DtypeName {
  const char* name;
  c10::ScalarType type;
};
const DtypeName kDtypes[] = {
    {"F32", c10::kFloat}, {"F16", c10::kHalf}, {"BF16", c10::kBFloat16}, {"F64", c10::kDouble}, {"I64", c10::kLong},
    {"I32", c10::kInt},   {"I8", c10::kChar},  {"U8", c10::kByte},       {"BOOL", c10::kBool}};

std::string accepted_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += (s.empty() ? "" : "|") + std::string(d.name);
  return s;
}

std::string sys_error() { return std::strerror(errno); }

}  // namespace

struct SafetensorsFile::Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr) munmap(addr, size);
  }
};

c10::ScalarType safetensors_dtype_from_name(const std::string& name, const std::string& where) {
  for (const auto& d : kDtypes)
    if (name == d.name) return d.type;
  TORCH_CHECK(false, "Expected dtype ", accepted_dtypes(), " for ", where, " but received \"", name, "\"");
}

std::string safetensors_dtype_name(c10::ScalarType dtype) {
  for (const auto& d : kDtypes)
    if (dtype == d.type) return d.name;
  TORCH_CHECK(false, "safetensors: dtype ", c10::toString(dtype), " can not be saved; supported: ", accepted_dtypes());
}

SafetensorsFile::~SafetensorsFile() = default;

const uint8_t* SafetensorsFile::mapping_begin() const { return static_cast<const uint8_t*>(mapping_->addr); }
size_t SafetensorsFile::mapping_size() const { return mapping_->size; }

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  using ojson = nlohmann::ordered_json;
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const std::string where = "safetensors file " + path;

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  TORCH_CHECK(fd >= 0, "Cannot open ", where, ": ", sys_error());
  struct stat st;
  if (fstat(fd, &st) != 0) {
    std::string err = sys_error();
    ::close(fd);
    TORCH_CHECK(false, "Cannot stat ", where, ": ", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    TORCH_CHECK(false, "Expected a regular file for ", where, " but it is not one");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    TORCH_CHECK(false, "Expected at least 8 bytes (the header length) in ", where, " but the file has ", file_size);
  }
  auto mapping = std::make_shared<Mapping>();
  // Private and writable: in-place changes to a loaded tensor stay in this process and never reach the file.
  void* addr = mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  std::string mmap_err = addr == MAP_FAILED ? sys_error() : "";
  ::close(fd);
  TORCH_CHECK(addr != MAP_FAILED, "Cannot mmap ", where, " (", file_size, " bytes): ", mmap_err);
  mapping->addr = addr;
  mapping->size = file_size;
  f->mapping_ = mapping;
  const uint8_t* base = static_cast<const uint8_t*>(addr);

  uint64_t header_len = 0;
  std::memcpy(&header_len, base, 8);  // little-endian u64 (host is little-endian, checked at compile time)
  TORCH_CHECK(header_len <= kMaxHeaderBytes, "Expected a header length of at most ", kMaxHeaderBytes, " bytes in ",
              where, " but received ", header_len, " (corrupt or not a safetensors file)");
  TORCH_CHECK(header_len <= file_size - 8, "Expected the header (", header_len, " bytes) to fit in ", where,
              " but the file has only ", file_size - 8, " bytes after the length field");
  f->data_start_ = 8 + header_len;
  const uint64_t data_size = file_size - f->data_start_;

  // Parse, recording top-level keys in order so that duplicate names are caught (a JSON object keeps the last one).
  std::vector<std::string> top_keys;
  std::set<std::string> seen;
  std::string duplicate;
  ojson::parser_callback_t cb = [&](int depth, ojson::parse_event_t event, ojson& parsed) {
    if (event == ojson::parse_event_t::key && depth == 1) {
      std::string k = parsed.get<std::string>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
      top_keys.push_back(k);
    }
    return true;
  };
  ojson header;
  const char* hb = reinterpret_cast<const char*>(base + 8);
  try {
    header = ojson::parse(hb, hb + header_len, cb);
  } catch (const nlohmann::json::exception& e) {
    TORCH_CHECK(false, "Expected a JSON header in ", where, " but it does not parse: ", e.what());
  }
  TORCH_CHECK(header.is_object(), "Expected the header of ", where, " to be a JSON object but received a ",
              header.type_name());
  TORCH_CHECK(duplicate.empty(), "Duplicate tensor name \"", duplicate, "\" in the header of ", where);

  struct Range {
    uint64_t begin, end;
    size_t entry;
  };
  std::vector<Range> ranges;
  for (const auto& item : header.items()) {
    const std::string& name = item.key();
    const ojson& v = item.value();
    if (name == "__metadata__") {
      TORCH_CHECK(v.is_object(), "Expected an object of strings for \"__metadata__\" in ", where,
                  " but received a ", v.type_name());
      for (const auto& m : v.items()) {
        TORCH_CHECK(m.value().is_string(), "Expected a string for \"__metadata__\".\"", m.key(), "\" in ", where,
                    " but received a ", m.value().type_name());
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string key = "tensor \"" + name + "\" in " + where;
    TORCH_CHECK(v.is_object(), "Expected an object with dtype, shape, data_offsets for ", key, " but received a ",
                v.type_name());
    TORCH_CHECK(v.contains("dtype"), "Missing field \"dtype\" for ", key);
    TORCH_CHECK(v.contains("shape"), "Missing field \"shape\" for ", key);
    TORCH_CHECK(v.contains("data_offsets"), "Missing field \"data_offsets\" for ", key);
    const ojson& jd = v["dtype"];
    TORCH_CHECK(jd.is_string(), "Expected a string for \"dtype\" of ", key, " but received a ", jd.type_name());
    SafetensorEntry e;
    e.name = name;
    e.dtype = safetensors_dtype_from_name(jd.get<std::string>(), "\"dtype\" of " + key);
    const ojson& js = v["shape"];
    TORCH_CHECK(js.is_array(), "Expected an array of integers for \"shape\" of ", key, " but received a ",
                js.type_name());
    uint64_t numel = 1;
    bool overflow = false;
    for (size_t d = 0; d < js.size(); ++d) {
      const ojson& dim = js[d];
      TORCH_CHECK(dim.is_number_integer(), "Expected an integer for \"shape\"[", d, "] of ", key, " but received ",
                  dim.dump());
      TORCH_CHECK(dim.is_number_unsigned() || dim.get<int64_t>() >= 0, "Expected a dimension >= 0 for \"shape\"[",
                  d, "] of ", key, " but received ", dim.dump());
      uint64_t n = dim.get<uint64_t>();
      TORCH_CHECK(n <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), "Dimension \"shape\"[", d,
                  "] of ", key, " is too large: ", n);
      e.shape.push_back(static_cast<int64_t>(n));
      overflow = overflow || __builtin_mul_overflow(numel, n, &numel);
    }
    const ojson& jo = v["data_offsets"];
    TORCH_CHECK(jo.is_array() && jo.size() == 2 && jo[0].is_number_integer() && jo[1].is_number_integer(),
                "Expected [begin, end] integers for \"data_offsets\" of ", key, " but received ", jo.dump());
    TORCH_CHECK((jo[0].is_number_unsigned() || jo[0].get<int64_t>() >= 0) &&
                    (jo[1].is_number_unsigned() || jo[1].get<int64_t>() >= 0),
                "Expected non-negative \"data_offsets\" for ", key, " but received ", jo.dump());
    e.begin = jo[0].get<uint64_t>();
    e.end = jo[1].get<uint64_t>();
    TORCH_CHECK(e.begin <= e.end, "Expected begin <= end in \"data_offsets\" of ", key, " but received ", jo.dump());
    TORCH_CHECK(e.end <= data_size, "Expected \"data_offsets\" of ", key, " to end within the ", data_size,
                " data bytes but received ", jo.dump());
    uint64_t want = 0;
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(c10::elementSize(e.dtype)), &want);
    TORCH_CHECK(!overflow && want == e.end - e.begin, "Expected ", key, " (", jd.get<std::string>(), ", shape ",
                js.dump(), ") to take ", overflow ? std::string("an overflowing number of") : std::to_string(want),
                " bytes but its \"data_offsets\" ", jo.dump(), " span ", e.end - e.begin);
    if (e.dtype == c10::kBool) {
      const uint8_t* p = base + f->data_start_ + e.begin;
      for (uint64_t i = 0; i < numel; ++i)
        TORCH_CHECK(p[i] <= 1, "Expected BOOL bytes 0 or 1 in ", key, " but element ", i, " is ", int(p[i]));
    }
    f->index_[name] = f->entries_.size();
    ranges.push_back({e.begin, e.end, f->entries_.size()});
    f->entries_.push_back(std::move(e));
  }

  // Overlaps: sort the non-empty ranges and compare neighbours.
  ranges.erase(std::remove_if(ranges.begin(), ranges.end(), [](const Range& r) { return r.begin == r.end; }),
               ranges.end());
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& a = f->entries_[ranges[i - 1].entry];
    const auto& b = f->entries_[ranges[i].entry];
    TORCH_CHECK(ranges[i].begin >= ranges[i - 1].end, "Tensors \"", a.name, "\" [", a.begin, ", ", a.end, ") and \"",
                b.name, "\" [", b.begin, ", ", b.end, ") overlap in ", where);
  }
  return f;
}

const SafetensorEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorEntry* e = find(name);
  TORCH_CHECK(e, "No tensor \"", name, "\" in safetensors file ", path_, " (it has ", entries_.size(), " tensors)");
  auto options = at::TensorOptions().dtype(e->dtype).device(c10::kCPU);
  uint8_t* p = static_cast<uint8_t*>(mapping_->addr) + data_start_ + e->begin;
  const size_t align = c10::elementSize(e->dtype);
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    // Not aligned for its dtype: kernels may assume alignment, so hand out a copy.
    at::Tensor t = at::empty(e->shape, options);
    if (e->end > e->begin) std::memcpy(t.data_ptr(), p, e->end - e->begin);
    return t;
  }
  std::shared_ptr<Mapping> keep = mapping_;
  return at::from_blob(p, e->shape, [keep](void*) mutable { keep.reset(); }, options);
}

void write_file_atomic(const std::string& path, const std::vector<std::pair<const void*, size_t>>& pieces) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TORCH_CHECK(fd >= 0, "Cannot create ", tmp, " (writing ", path, "): ", sys_error());
  auto fail = [&](const std::string& what) {
    std::string err = sys_error();
    ::close(fd);
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, "Cannot ", what, " ", tmp, " (writing ", path, "): ", err);
  };
  for (const auto& piece : pieces) {
    const char* p = static_cast<const char*>(piece.first);
    size_t left = piece.second;
    while (left > 0) {
      ssize_t n = ::write(fd, p, std::min<size_t>(left, 1u << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("write");
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  if (::fsync(fd) != 0) fail("fsync");
  if (::close(fd) != 0) {
    std::string err = sys_error();
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, "Cannot close ", tmp, " (writing ", path, "): ", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = sys_error();
    ::unlink(tmp.c_str());
    TORCH_CHECK(false, "Cannot rename ", tmp, " to ", path, ": ", err);
  }
  // Make the rename itself durable.
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  if (dir.empty()) dir = "/";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  using ojson = nlohmann::ordered_json;
  std::set<std::string> names;
  std::vector<at::Tensor> data(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, t] = tensors[i];
    const std::string key = "tensor \"" + name + "\" (writing " + path + ")";
    TORCH_CHECK(!name.empty(), "Expected a non-empty name for tensor ", i, " (writing ", path, ")");
    TORCH_CHECK(name != "__metadata__", "The name \"__metadata__\" is reserved (writing ", path, ")");
    TORCH_CHECK(names.insert(name).second, "Duplicate ", key);
    TORCH_CHECK(t.defined(), "Expected a defined tensor for ", key);
    TORCH_CHECK(t.layout() == c10::kStrided, "Expected a dense (strided) tensor for ", key, " but received layout ",
                t.layout());
    safetensors_dtype_name(t.scalar_type());  // throws for unsupported dtypes
    data[i] = t.detach().to(c10::kCPU).contiguous();
  }
  // Data layout: by element size, largest first (stable), without holes -> every tensor aligned for its dtype.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return data[a].element_size() > data[b].element_size();
  });
  std::vector<uint64_t> begin(tensors.size()), end(tensors.size());
  uint64_t offset = 0;
  for (size_t i : order) {
    begin[i] = offset;
    offset += static_cast<uint64_t>(data[i].numel()) * data[i].element_size();
    end[i] = offset;
  }
  ojson header = ojson::object();
  if (!metadata.empty()) {
    ojson m = ojson::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    ojson entry = ojson::object();
    entry["dtype"] = safetensors_dtype_name(data[i].scalar_type());
    entry["shape"] = data[i].sizes().vec();
    entry["data_offsets"] = {begin[i], end[i]};
    header[tensors[i].first] = entry;
  }
  std::string text = header.dump();
  text.append((8 - (text.size() % 8)) % 8, ' ');  // data starts at 8 + len(text), a multiple of 8
  uint64_t len = text.size();
  std::vector<std::pair<const void*, size_t>> pieces;
  pieces.emplace_back(&len, 8);
  pieces.emplace_back(text.data(), text.size());
  for (size_t i : order)
    if (end[i] > begin[i]) pieces.emplace_back(data[i].data_ptr(), end[i] - begin[i]);
  write_file_atomic(path, pieces);
}

}  // namespace tdpo
