// Test helper: builds tiny Hugging Face checkpoints with test/reference/make_fixture.py and their float64 reference
// outputs with test/reference/reference.py, all in ONE /usr/bin/python3 process (importing torch once), into a
// cached temporary folder.
#pragma once
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace tdpo_test {

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline std::string make_temp_dir(const std::string& tag) {
  std::string tmpl = (std::filesystem::temp_directory_path() / ("tdpo_" + tag + "_XXXXXX")).string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
  return std::string(buf.data());
}

// Empty when /usr/bin/python3 imports torch; else the reason to skip.
inline const std::string& python_torch_missing() {
  static const std::string reason = []() -> std::string {
    if (!std::filesystem::exists("/usr/bin/python3")) return "/usr/bin/python3 is missing";
    if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0)
      return "/usr/bin/python3 cannot import torch";
    return "";
  }();
  return reason;
}

struct FixtureCase {
  std::string name;
  std::vector<std::string> args;  // make_fixture.py arguments besides --out
};

struct FixtureSet {
  std::string root;                          // cache folder; root/<name> is a checkpoint with ref.json
  nlohmann::json input;                      // reference.py input (sequences, generate)
  std::map<std::string, nlohmann::json> ref; // name -> reference.py output
  std::string error;                         // non-empty when building failed
  std::string skip;                          // non-empty when /usr/bin/python3 with torch is missing (no cache)
  std::string dir(const std::string& name) const { return root + "/" + name; }
};

// Runs make_fixture.make(args) and reference.run(dir, input) for every case in one Python process. The result is
// cached in <tmp>/tdpo_<tag>_<hash of the reference scripts, cases and input> so that the separate processes ctest
// starts for each test build it once; a folder is only published (renamed into place) once complete.
inline FixtureSet build_fixtures(const std::string& tag, const std::vector<FixtureCase>& cases,
                                 const nlohmann::json& input) {
  FixtureSet fs;
  fs.input = input;
  const std::string ref_dir = std::string(TORCH_DPO_SOURCE_DIR) + "/test/reference";
  std::string key_text = input.dump();
  for (const char* f : {"make_fixture.py", "reference.py", "st_io.py"}) key_text += read_text(ref_dir + "/" + f);
  for (const auto& c : cases) {
    key_text += "|" + c.name;
    for (const auto& a : c.args) key_text += " " + a;
  }
  std::ostringstream key;
  key << std::hex << std::hash<std::string>{}(key_text);
  const std::string cached = (std::filesystem::temp_directory_path() / ("tdpo_" + tag + "_" + key.str())).string();
  auto load_refs = [&](const std::string& root) {
    fs.root = root;
    for (const auto& c : cases) fs.ref[c.name] = nlohmann::json::parse(read_text(fs.dir(c.name) + "/ref.json"));
  };
  if (std::filesystem::exists(cached + "/complete")) {
    load_refs(cached);
    return fs;
  }
  fs.skip = python_torch_missing();
  if (!fs.skip.empty()) return fs;
  const std::string work = make_temp_dir(tag + "_build");
  nlohmann::json jobs = nlohmann::json::array();
  for (const auto& c : cases) {
    auto args = c.args;
    args.push_back("--out");
    args.push_back(work + "/" + c.name);
    jobs.push_back({{"dir", work + "/" + c.name}, {"args", args}});
  }
  write_text(work + "/jobs.json", jobs.dump());
  write_text(work + "/input.json", input.dump());
  write_text(work + "/driver.py",
             "import json, sys\n"
             "sys.path.insert(0, sys.argv[1])\n"
             "import make_fixture, reference\n"
             "jobs = json.load(open(sys.argv[2]))\n"
             "inp = json.load(open(sys.argv[3]))\n"
             "for j in jobs:\n"
             "    make_fixture.make(j['args'])\n"
             "    json.dump(reference.run(j['dir'], inp), open(j['dir'] + '/ref.json', 'w'))\n");
  const std::string cmd = "/usr/bin/python3 " + work + "/driver.py " + ref_dir + " " + work + "/jobs.json " + work +
                          "/input.json > " + work + "/driver.log 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    fs.error = "fixture driver failed: " + cmd + "\n" + read_text(work + "/driver.log");
    return fs;
  }
  write_text(work + "/complete", "");
  std::error_code ec;
  std::filesystem::rename(work, cached, ec);  // fails when another process published first: use theirs
  if (ec) std::filesystem::remove_all(work, ec);
  load_refs(cached);
  return fs;
}

}  // namespace tdpo_test
