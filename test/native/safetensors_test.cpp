// Tests of native/core/safetensors and checkpoint_files: round trips, zero-copy mapping, sharding, atomic writes and
// every kind of malformed file (bytes written by hand), plus cross-checks against the Python parser in
// test/reference/ (an independent implementation of the format).
#include <gtest/gtest.h>

#include "error_expect.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "checkpoint_files.h"
#include "safetensors.h"

namespace fs = std::filesystem;
using tdpo::SafetensorsFile;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// A safetensors file from a header text and raw data bytes (header padded with spaces to 8-byte data alignment
// unless pad is false).
void write_raw(const std::string& path, std::string header, const std::string& data, bool pad = true) {
  if (pad) header.append((8 - header.size() % 8) % 8, ' ');
  uint64_t n = header.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

bool mapped_in_process(const std::string& path) {
  std::string maps = slurp("/proc/self/maps");
  return maps.find(fs::canonical(path).string()) != std::string::npos;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tdpo-st-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir = tmpl;
  }
  void TearDown() override { fs::remove_all(dir); }
  std::string file(const std::string& name) const { return dir + "/" + name; }
  // Expects opening a hand-written file to fail with a message naming the file and every given fragment.
  void expect_bad(const std::string& header, const std::string& data, std::vector<std::string> fragments,
                  bool pad = true) {
    const std::string p = file("bad" + std::to_string(counter++) + ".safetensors");
    write_raw(p, header, data, pad);
    std::string msg = error_of([&] { SafetensorsFile::open(p); });
    ASSERT_FALSE(msg.empty()) << "no error for header " << header;
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    for (const auto& f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
  std::string dir;
  int counter = 0;
};

std::vector<std::pair<std::string, at::Tensor>> every_dtype() {
  at::manual_seed(3);
  return {
      {"f32", at::randn({3, 5})},
      {"u8", at::randint(0, 256, {7}, at::kByte)},
      {"f16", at::randn({2, 3, 3}).to(at::kHalf)},
      {"bf16", at::randn({5}).to(at::kBFloat16)},
      {"f64", at::randn({4, 1}, at::kDouble)},
      {"i64", at::randint(-1000000000000LL, 1000000000000LL, {3}, at::kLong)},
      {"i32", at::randint(-100000, 100000, {3, 3}, at::kInt)},
      {"i8", at::randint(-128, 128, {5}, at::kChar)},
      {"bool", at::randint(0, 2, {9}, at::kLong).to(at::kBool)},
      {"scalar", at::scalar_tensor(2.5, at::kFloat)},
      {"empty", at::zeros({0, 4}, at::kHalf)},
  };
}

}  // namespace

TEST_F(SafetensorsTest, RoundTripsEveryDtypeInOrderWithMetadata) {
  auto tensors = every_dtype();
  const std::string p = file("all.safetensors");
  tdpo::save_safetensors(p, tensors, {{"format", "pt"}, {"note", "héllo"}});
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  ASSERT_EQ(f->entries().size(), tensors.size());
  EXPECT_EQ(f->data_start() % 8, 0u);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& e = f->entries()[i];
    EXPECT_EQ(e.name, tensors[i].first);  // header order = given order
    EXPECT_EQ(e.dtype, tensors[i].second.scalar_type()) << e.name;
    EXPECT_EQ(e.shape, tensors[i].second.sizes().vec()) << e.name;
    at::Tensor t = f->tensor(e.name);
    EXPECT_EQ(t.scalar_type(), tensors[i].second.scalar_type());
    EXPECT_TRUE(at::equal(t, tensors[i].second)) << e.name;
    EXPECT_EQ(e.begin % tensors[i].second.element_size(), 0u) << e.name << " not aligned for its dtype";
    if (e.end > e.begin) ranges.emplace_back(e.begin, e.end);
  }
  // No holes: the ranges tile [0, data size) exactly (what the Hugging Face reader requires).
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (auto& r : ranges) {
    EXPECT_EQ(r.first, at);
    at = r.second;
  }
  EXPECT_EQ(at, f->mapping_size() - f->data_start());
  EXPECT_EQ(f->metadata().size(), 2u);
  EXPECT_EQ(f->metadata().at("note"), "héllo");
  EXPECT_EQ(f->find("nope"), nullptr);
  std::string msg = error_of([&] { f->tensor("nope"); });
  EXPECT_NE(msg.find(p), std::string::npos);
  EXPECT_NE(msg.find("\"nope\""), std::string::npos);
}

TEST_F(SafetensorsTest, WritesNonContiguousTensorsAsTheirValues) {
  at::Tensor base = at::arange(12, at::kFloat).reshape({3, 4});
  at::Tensor t = base.t();  // (4, 3), not contiguous
  const std::string p = file("t.safetensors");
  tdpo::save_safetensors(p, {{"t", t}, {"slice", base.index({at::indexing::Slice(), 1})}});
  auto f = SafetensorsFile::open(p);
  EXPECT_TRUE(at::equal(f->tensor("t"), t));
  EXPECT_TRUE(at::equal(f->tensor("slice"), at::tensor({1.f, 5.f, 9.f})));
}

TEST_F(SafetensorsTest, TensorsViewTheMappingAndKeepItAlive) {
  at::Tensor w = at::randn({64, 33});
  const std::string p = file("z.safetensors");
  tdpo::save_safetensors(p, {{"w", w}});
  at::Tensor t;
  {
    auto f = SafetensorsFile::open(p);
    t = f->tensor("w");
    auto ptr = static_cast<const uint8_t*>(t.data_ptr());
    EXPECT_GE(ptr, f->mapping_begin() + f->data_start());
    EXPECT_LE(ptr + t.nbytes(), f->mapping_begin() + f->mapping_size());
    EXPECT_TRUE(mapped_in_process(p));
  }
  // The file object is gone; the tensor still holds the mapping.
  EXPECT_TRUE(mapped_in_process(p));
  EXPECT_TRUE(at::equal(t, w));
  // In-place changes stay private to this process (MAP_PRIVATE): the file keeps the saved values.
  t.mul_(2);
  EXPECT_TRUE(at::allclose(t, w * 2));
  t = at::Tensor();
  EXPECT_FALSE(mapped_in_process(p)) << "the file stays mapped after the last tensor went";
  EXPECT_TRUE(at::equal(SafetensorsFile::open(p)->tensor("w"), w));
}

TEST_F(SafetensorsTest, CopiesTensorsWhoseOffsetIsNotAlignedForTheirDtype) {
  // u8 [0, 2) then an F32 (2) at [2, 10): the float data sits 2 bytes past an 8-byte boundary.
  float vals[2] = {1.5f, -3.25f};
  std::string data = "\x07\x09" + std::string(reinterpret_cast<const char*>(vals), 8);
  const std::string p = file("u.safetensors");
  write_raw(p,
            R"({"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"x":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})",
            data);
  auto f = SafetensorsFile::open(p);
  at::Tensor x = f->tensor("x");
  auto ptr = static_cast<const uint8_t*>(x.data_ptr());
  EXPECT_FALSE(ptr >= f->mapping_begin() && ptr < f->mapping_begin() + f->mapping_size()) << "expected a copy";
  EXPECT_EQ(reinterpret_cast<uintptr_t>(ptr) % 4, 0u);
  EXPECT_EQ(x[0].item<float>(), 1.5f);
  EXPECT_EQ(x[1].item<float>(), -3.25f);
  EXPECT_EQ(f->tensor("b")[1].item<uint8_t>(), 9);
}

TEST_F(SafetensorsTest, WritesAtomicallyAndOverwritesUnderAnOpenMapping) {
  const std::string p = file("a.safetensors");
  tdpo::save_safetensors(p, {{"w", at::ones({4})}});
  at::Tensor old = SafetensorsFile::open(p)->tensor("w");
  tdpo::save_safetensors(p, {{"w", at::full({4}, 7.f)}});
  EXPECT_TRUE(at::equal(old, at::ones({4})));  // the old mapping still sees the old inode
  EXPECT_TRUE(at::equal(SafetensorsFile::open(p)->tensor("w"), at::full({4}, 7.f)));
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  // A failed write leaves neither the target nor a temporary file.
  const std::string q = dir + "/missing-subdir/x.safetensors";
  EXPECT_NE(error_of([&] { tdpo::save_safetensors(q, {{"w", at::ones({1})}}); }).find(q), std::string::npos);
}

TEST_F(SafetensorsTest, RejectsBadTensorsOnSave) {
  const std::string p = file("s.safetensors");
  EXPECT_NE(error_of([&] { tdpo::save_safetensors(p, {{"a", at::ones({1})}, {"a", at::ones({1})}}); }).find("\"a\""),
            std::string::npos);
  EXPECT_NE(error_of([&] { tdpo::save_safetensors(p, {{"c", at::ones({2}, at::kComplexFloat)}}); }).find("F32"),
            std::string::npos);
  EXPECT_FALSE(error_of([&] { tdpo::save_safetensors(p, {{"__metadata__", at::ones({1})}}); }).empty());
  EXPECT_FALSE(error_of([&] { tdpo::save_safetensors(p, {{"u", at::Tensor()}}); }).empty());
  EXPECT_FALSE(fs::exists(p));
}

TEST_F(SafetensorsTest, RejectsEachKindOfMalformedFile) {
  const std::string f8(8, '\0');  // 8 data bytes
  {  // shorter than 8 bytes
    const std::string p = file("short.safetensors");
    std::ofstream(p, std::ios::binary) << "abc";
    std::string msg = error_of([&] { SafetensorsFile::open(p); });
    EXPECT_NE(msg.find(p), std::string::npos) << msg;
    EXPECT_NE(msg.find("at least 8 bytes"), std::string::npos) << msg;
  }
  {  // header length past EOF, and absurd
    for (uint64_t n : {uint64_t(100), uint64_t(200) << 20}) {
      const std::string p = file("len" + std::to_string(n) + ".safetensors");
      std::ofstream out(p, std::ios::binary);
      out.write(reinterpret_cast<const char*>(&n), 8);
      out << "{}      ";
      out.close();
      std::string msg = error_of([&] { SafetensorsFile::open(p); });
      EXPECT_NE(msg.find(p), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(n)), std::string::npos) << msg;
    }
  }
  {
    const std::string p = file("missing.safetensors");
    EXPECT_NE(error_of([&] { SafetensorsFile::open(p); }).find(p), std::string::npos);
  }
  expect_bad("{\"a\": ", "", {"JSON"});
  expect_bad("[1, 2]", "", {"object"});
  expect_bad(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", f8, {"\"dtype\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", f8, {"\"shape\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[2]}})", f8, {"\"data_offsets\"", "\"w\""});
  expect_bad(R"({"w":[1]})", f8, {"\"w\""});
  expect_bad(R"({"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}})", f8, {"\"dtype\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", f8, {"\"shape\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", f8, {"\"shape\"[0]", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", f8, {"\"data_offsets\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0,8"}})", f8, {"\"data_offsets\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,8]}})", f8, {"\"data_offsets\"", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,8]}})", f8, {"F8_E4M3", "BF16", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", f8, {"\"shape\"[0]", ">= 0", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", f8, {"\"w\"", "8 data bytes"});
  expect_bad(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", f8, {"begin <= end", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", f8, {"12", "\"w\""});
  expect_bad(R"({"w":{"dtype":"F16","shape":[1099511627776,1099511627776,1099511627776],"data_offsets":[0,8]}})",
             f8, {"overflowing", "\"w\""});
  expect_bad(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
             f8, {"\"a\"", "\"b\"", "overlap"});
  expect_bad(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
             f8, {"Duplicate", "\"a\""});
  expect_bad(R"({"__metadata__":{"format":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f8,
             {"__metadata__", "format"});
  expect_bad(R"({"__metadata__":[],"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f8, {"__metadata__"});
  expect_bad(R"({"m":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x05", 2),
             {"BOOL", "\"m\""});
  // Edge cases that are valid: empty header, zero-size tensors sharing an offset, header not padded.
  const std::string ok = file("ok.safetensors");
  write_raw(ok, R"({"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"I64","shape":[0,3],"data_offsets":[4,4]}})",
            f8, false);
  auto f = SafetensorsFile::open(ok);
  EXPECT_EQ(f->tensor("z").sizes().vec(), (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(at::equal(f->tensor("w"), at::zeros({2})));
  write_raw(ok, "{}", "");
  EXPECT_TRUE(SafetensorsFile::open(ok)->entries().empty());
}

// ---- checkpoint folders ----

TEST_F(SafetensorsTest, CheckpointSingleFileAndShardsRoundTrip) {
  at::manual_seed(5);
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (int i = 0; i < 7; ++i) ts.emplace_back("layers." + std::to_string(i) + ".w", at::randn({10, 3 + i}));
  ts.emplace_back("bias", at::randn({5}).to(at::kBFloat16));
  int64_t total = 0;
  for (auto& t : ts) total += t.second.nbytes();

  tdpo::write_checkpoint(dir, ts);  // default 5 GB limit: one file
  EXPECT_TRUE(fs::exists(file("model.safetensors")));
  EXPECT_FALSE(fs::exists(file("model.safetensors.index.json")));
  auto r = tdpo::CheckpointReader::open(dir);
  EXPECT_EQ(r.names().size(), ts.size());
  EXPECT_EQ(SafetensorsFile::open(file("model.safetensors"))->metadata().at("format"), "pt");

  tdpo::write_checkpoint(dir, ts, 500);  // forces shards of at most 500 bytes (each tensor <= 400)
  EXPECT_FALSE(fs::exists(file("model.safetensors"))) << "stale single file left next to shards";
  auto index = nlohmann::json::parse(slurp(file("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  std::set<std::string> shard_names;
  for (auto& [k, v] : index["weight_map"].items()) shard_names.insert(v.get<std::string>());
  EXPECT_GT(shard_names.size(), 2u);
  const std::string n = std::to_string(shard_names.size());
  EXPECT_TRUE(shard_names.count("model-00001-of-0000" + n + ".safetensors")) << *shard_names.begin();
  for (const auto& s : shard_names) {
    auto f = SafetensorsFile::open(file(s));
    EXPECT_LE(f->mapping_size() - f->data_start(), 500u) << s;
    EXPECT_EQ(f->metadata().at("format"), "pt");
  }
  auto rs = tdpo::CheckpointReader::open(dir);
  ASSERT_EQ(rs.names().size(), ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    EXPECT_EQ(rs.names()[i], ts[i].first);
    EXPECT_TRUE(rs.has(ts[i].first));
    EXPECT_TRUE(at::equal(rs.tensor(ts[i].first), ts[i].second)) << ts[i].first;
    auto f = rs.file_of(ts[i].first);
    auto ptr = static_cast<const uint8_t*>(rs.tensor(ts[i].first).data_ptr());
    EXPECT_TRUE(ptr >= f->mapping_begin() && ptr < f->mapping_begin() + f->mapping_size()) << "not zero-copy";
  }
  std::string msg = error_of([&] { rs.tensor("lm_head.weight"); });
  EXPECT_NE(msg.find(dir), std::string::npos);
  EXPECT_NE(msg.find("lm_head.weight"), std::string::npos);

  // Fewer shards next time: the stale ones go; back to one file: the index goes.
  tdpo::write_checkpoint(dir, ts, 1000);
  std::set<std::string> listed;
  const auto index2 = nlohmann::json::parse(slurp(file("model.safetensors.index.json")));
  for (auto& [k, v] : index2["weight_map"].items()) listed.insert(v.get<std::string>());
  EXPECT_LT(listed.size(), shard_names.size());
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    EXPECT_EQ(name.find(".tmp-"), std::string::npos);
    if (name.rfind("model-", 0) == 0) EXPECT_TRUE(listed.count(name)) << "stale shard " << name;
  }
  EXPECT_EQ(tdpo::CheckpointReader::open(dir).names().size(), ts.size());
  tdpo::write_checkpoint(dir, ts);
  EXPECT_FALSE(fs::exists(file("model.safetensors.index.json")));
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_NE(e.path().filename().string().rfind("model-", 0), 0u);
}

TEST_F(SafetensorsTest, CheckpointErrorsNameTheFolderIndexAndShard) {
  std::string msg = error_of([&] { tdpo::CheckpointReader::open(dir); });
  EXPECT_NE(msg.find(dir), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  msg = error_of([&] { tdpo::CheckpointReader::open(dir + "/nope"); });
  EXPECT_NE(msg.find(dir + "/nope"), std::string::npos) << msg;

  tdpo::save_safetensors(file("s1.safetensors"), {{"a", at::ones({2})}});
  const std::string idx = file("model.safetensors.index.json");
  auto write_index = [&](const std::string& text) { std::ofstream(idx) << text; };
  write_index(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  msg = error_of([&] { tdpo::CheckpointReader::open(dir); });
  EXPECT_NE(msg.find(file("s2.safetensors")), std::string::npos) << msg;
  EXPECT_NE(msg.find(idx), std::string::npos) << msg;
  write_index(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
  msg = error_of([&] { tdpo::CheckpointReader::open(dir); });
  EXPECT_NE(msg.find("\"b\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("s1.safetensors"), std::string::npos) << msg;
  write_index(R"({"weight_map": {"a": "../s1.safetensors"}})");
  EXPECT_NE(error_of([&] { tdpo::CheckpointReader::open(dir); }).find("plain file name"), std::string::npos);
  write_index(R"({"weight_map": {"a": 3}})");
  EXPECT_NE(error_of([&] { tdpo::CheckpointReader::open(dir); }).find(idx), std::string::npos);
  write_index(R"({"weights": {}})");
  EXPECT_NE(error_of([&] { tdpo::CheckpointReader::open(dir); }).find("weight_map"), std::string::npos);
  write_index("{not json");
  EXPECT_NE(error_of([&] { tdpo::CheckpointReader::open(dir); }).find(idx), std::string::npos);
  write_index(R"({"weight_map": {"a": "s1.safetensors"}})");
  EXPECT_TRUE(at::equal(tdpo::CheckpointReader::open(dir).tensor("a"), at::ones({2})));

  EXPECT_FALSE(error_of([&] { tdpo::write_checkpoint(dir, {{"a", at::ones({1})}}, 0); }).empty());
  EXPECT_FALSE(error_of([&] { tdpo::write_checkpoint(dir, {{"a", at::ones({1})}, {"a", at::ones({1})}}); }).empty());
}

TEST_F(SafetensorsTest, CopiesFilesAtomically) {
  const std::string from = file("tokenizer.json"), to = file("out.json");
  std::string text = "{\"x\": \"\xe2\x82\xac\"}\n" + std::string(100000, 'z') + std::string(1, '\0') + "end";
  std::ofstream(from, std::ios::binary) << text;
  tdpo::copy_file_atomic(from, to);
  EXPECT_EQ(slurp(to), text);
  std::string msg = error_of([&] { tdpo::copy_file_atomic(file("none"), to); });
  EXPECT_NE(msg.find(file("none")), std::string::npos);
  EXPECT_EQ(slurp(to), text);
}

// ---- cross-checks with the independent Python implementation in test/reference ----

namespace {
bool python_torch_available() {
  static const bool ok = std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0;
  return ok;
}
std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  if (rc != 0) return "";
  return out;
}
}  // namespace

TEST_F(SafetensorsTest, PythonParserReadsWhatCppWrites) {
  if (!python_torch_available()) GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
  auto tensors = every_dtype();
  tdpo::write_checkpoint(dir, tensors, 64);  // sharded
  std::string out = run_capture("/usr/bin/python3 " TORCH_DPO_SOURCE_DIR "/test/reference/st_dump.py " + dir);
  ASSERT_FALSE(out.empty()) << "st_dump.py failed";
  auto j = nlohmann::json::parse(out);
  ASSERT_EQ(j.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(j.contains(name)) << name;
    EXPECT_EQ(j[name]["dtype"], tdpo::safetensors_dtype_name(t.scalar_type()));
    EXPECT_EQ(j[name]["shape"].get<std::vector<int64_t>>(), t.sizes().vec());
    at::Tensor d = t.to(at::kDouble);
    EXPECT_NEAR(j[name]["sum"].get<double>(), d.sum().item<double>(), 1e-9 * (1 + d.abs().sum().item<double>()));
    EXPECT_NEAR(j[name]["sumsq"].get<double>(), (d * d).sum().item<double>(),
                1e-9 * (1 + (d * d).sum().item<double>()));
  }
}

TEST_F(SafetensorsTest, CppReadsWhatMakeFixtureWrites) {
  if (!python_torch_available()) GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
  const std::vector<std::string> dtypes = {"float32", "bfloat16", "float16"};
  std::string lines, outs;
  for (const auto& dtype : dtypes) {
    lines += "--arch llama --out " + dir + "/fx-" + dtype + " --dtype " + dtype + " --shards 3 --seed 4\n";
    outs += " " + dir + "/fx-" + dtype;
  }
  std::ofstream(file("batch.txt")) << lines;
  std::string cmd = "/usr/bin/python3 " TORCH_DPO_SOURCE_DIR "/test/reference/make_fixture.py --batch < " +
                    file("batch.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::string dump = run_capture("/usr/bin/python3 " TORCH_DPO_SOURCE_DIR "/test/reference/st_dump.py" + outs);
  ASSERT_FALSE(dump.empty());
  auto all = nlohmann::json::parse(dump);
  for (const auto& dtype : dtypes) {
    SCOPED_TRACE(dtype);
    const std::string out = dir + "/fx-" + dtype;
    const auto& j = all[out];
    auto r = tdpo::CheckpointReader::open(out);
    EXPECT_EQ(r.files().size(), 3u);
    ASSERT_EQ(r.names().size(), j.size());
    for (const auto& name : r.names()) {
      at::Tensor t = r.tensor(name);
      EXPECT_EQ(j[name]["dtype"], tdpo::safetensors_dtype_name(t.scalar_type())) << name;
      at::Tensor d = t.to(at::kDouble);
      EXPECT_EQ(j[name]["shape"].get<std::vector<int64_t>>(), d.sizes().vec()) << name;
      EXPECT_NEAR(j[name]["sum"].get<double>(), d.sum().item<double>(), 1e-9 * (1 + d.abs().sum().item<double>()))
          << name;
      EXPECT_NEAR(j[name]["sumsq"].get<double>(), (d * d).sum().item<double>(),
                  1e-9 * (1 + (d * d).sum().item<double>()))
          << name;
    }
  }
}

// The float64 reference that model tests compare against checks itself against hand-derived values.
TEST_F(SafetensorsTest, PythonReferenceSelfCheckPasses) {
  if (!python_torch_available()) GTEST_SKIP() << "/usr/bin/python3 with torch is not available";
  std::string out = run_capture("/usr/bin/python3 " TORCH_DPO_SOURCE_DIR "/test/reference/selfcheck.py 2>&1");
  EXPECT_NE(out.find("all reference self-checks passed"), std::string::npos) << out;
}

namespace {
int64_t rss_kb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}
}  // namespace

TEST_F(SafetensorsTest, LargeFileIsMappedNotCopied) {
  const int64_t n = 16 << 20;  // 64 MB of float32
  const std::string p = file("big.safetensors");
  {
    at::Tensor big = at::arange(n, at::kFloat);
    auto t0 = std::chrono::steady_clock::now();
    tdpo::save_safetensors(p, {{"big", big}, {"small", at::ones({3})}});
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << "[ measure  ] save 64 MB: " << s * 1e3 << " ms (" << 64 / s << " MB/s, with fsync)\n";
  }
  const int64_t before = rss_kb();
  auto t0 = std::chrono::steady_clock::now();
  at::Tensor t = SafetensorsFile::open(p)->tensor("big");
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t after = rss_kb();
  std::cout << "[ measure  ] open + tensor() of 64 MB: " << s * 1e3 << " ms, RSS +" << (after - before) << " kB\n";
  EXPECT_LT(after - before, 8 * 1024) << "opening seems to have read or copied the data";
  EXPECT_EQ(t[n - 1].item<float>(), float(n - 1));
  EXPECT_EQ(t[12345].item<float>(), 12345.f);
}
