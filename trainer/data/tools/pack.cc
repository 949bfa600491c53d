#include "trainer/data/tools/pack.h"

#include <glob.h>

#include <algorithm>
#include <cstdio>
#include <atomic>
#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/shards.h"

namespace retina::trainer {
namespace fs = std::filesystem;
namespace {

constexpr char kStateFile[] = ".pack-state.json";

struct Decoded {
  absl::Status status;
  std::vector<uint8_t> pixels;  // patches * size * size
  std::vector<std::string> names;
};

Decoded DecodeFile(const std::string& path, const PackOptions& o) {
  Decoded d;
  absl::StatusOr<RawArray> raw = ReadArray(path);
  if (!raw.ok()) {
    d.status = raw.status();
    return d;
  }
  absl::StatusOr<Volume> v = ToImage(*raw, o.scaling);
  if (!v.ok()) {
    d.status = v.status();
    return d;
  }
  const int64_t h = v->shape[1], w = v->shape[2], s = o.size;
  if (h < s || w < s) {
    d.status = absl::InvalidArgumentError(absl::StrCat(path, ": ", w, "x", h, " is smaller than the ", s, "x", s, " patch"));
    return d;
  }
  const std::vector<int64_t> ys = PatchOrigins(h, s), xs = PatchOrigins(w, s);
  const std::string base = fs::path(path).filename().string();
  for (int64_t z = 0; z < v->shape[0]; ++z) {
    const uint8_t* plane = v->plane(z);
    for (int64_t y0 : ys) {
      for (int64_t x0 : xs) {
        for (int64_t y = 0; y < s; ++y) {
          const uint8_t* row = plane + (y0 + y) * w + x0;
          d.pixels.insert(d.pixels.end(), row, row + s);
        }
        d.names.push_back(absl::StrCat(base, v->shape[0] > 1 ? absl::StrCat(":z", z) : "", ":y", y0, ":x", x0));
      }
    }
  }
  return d;
}

// What identifies a pack run: the inputs and every option that changes output.
std::string RunKey(const std::vector<std::string>& files, const PackOptions& o) {
  std::string text = absl::StrCat(o.size, "|", o.shard_images, "|", static_cast<int>(o.scaling), "|", o.skip_bad, "|");
  for (const std::string& f : files) absl::StrAppend(&text, f, "\n");
  return Sha256Hex(text);
}

struct PackState {
  std::string key;
  int64_t next_file = 0;
  uint64_t sum = 0, sum_sq = 0, pixels = 0;
  int64_t skipped = 0;
  std::vector<ShardInfo> shards;

  std::string ToJson() const {
    nlohmann::ordered_json j;
    j["key"] = key;
    j["next_file"] = next_file;
    j["sum"] = sum;
    j["sum_sq"] = sum_sq;
    j["pixels"] = pixels;
    j["skipped"] = skipped;
    j["shards"] = nlohmann::ordered_json::array();
    for (const ShardInfo& s : shards) j["shards"].push_back(ShardInfoToJson(s));
    return j.dump(1);
  }
  static absl::StatusOr<PackState> FromJson(const std::string& text) {
    PackState st;
    try {
      const nlohmann::json j = nlohmann::json::parse(text);
      st.key = j.at("key");
      st.next_file = j.at("next_file");
      st.sum = j.at("sum");
      st.sum_sq = j.at("sum_sq");
      st.pixels = j.at("pixels");
      st.skipped = j.at("skipped");
      for (const auto& s : j.at("shards")) st.shards.push_back(ShardInfoFromJson(s));
    } catch (const nlohmann::json::exception& e) {
      return absl::DataLossError(absl::StrCat("unparseable pack state: ", e.what()));
    }
    return st;
  }
};

// Takes over an interrupted pack of the same inputs and options (its state
// file and shards) into `state`; FAILED_PRECONDITION for another run's,
// DATA_LOSS for a damaged shard.
absl::Status ResumeInterrupted(const PackOptions& o, size_t files, PackState* state, PackResult* result) {
  const absl::StatusOr<std::string> saved = ReadFile(o.out / kStateFile);
  if (!saved.ok()) return absl::OkStatus();  // a fresh pack
  ASSIGN_OR_RETURN(PackState previous, PackState::FromJson(*saved), (o.out / kStateFile).string());
  if (previous.key != state->key) {
    return absl::FailedPreconditionError(absl::StrCat(
        o.out.string(), ": holds an interrupted pack of different inputs or options; remove the folder "
                        "or rerun with the original ones"));
  }
  for (const ShardInfo& s : previous.shards) {  // cheap check; `verify` does the full one
    std::error_code ec;
    if (fs::file_size(o.out / s.file, ec) != s.bytes) {
      return absl::DataLossError(absl::StrCat((o.out / s.file).string(), ": shard of the interrupted pack is missing "
                                              "or damaged; remove the folder and pack again"));
    }
  }
  *state = previous;
  result->resumed_shards = static_cast<int64_t>(state->shards.size());
  RETINA_LOG(Info) << "resuming pack at file " << state->next_file << " of " << files << " (" << state->shards.size()
                   << " shards done)";
  return absl::OkStatus();
}

// Decodes files [begin, end) on `threads` threads.
std::vector<Decoded> DecodeFiles(const std::vector<std::string>& files, int64_t begin, int64_t end, const PackOptions& o) {
  std::vector<Decoded> decoded(end - begin);
  std::atomic<int64_t> next{begin};
  std::vector<std::thread> workers;
  for (int t = 0; t < o.threads; ++t) {
    workers.emplace_back([&] {
      for (int64_t i = next++; i < end; i = next++) decoded[i - begin] = DecodeFile(files[i], o);
    });
  }
  for (auto& w : workers) w.join();
  return decoded;
}

// The manifest of the finished pack: shards, count, mean and std of v/255.
DatasetManifest FinalManifest(const PackOptions& o, const PackState& state) {
  DatasetManifest m;
  m.name = o.out.filename().string();
  m.height = m.width = o.size;
  m.shards = state.shards;
  for (const ShardInfo& s : m.shards) m.count += s.count;
  const double n = static_cast<double>(state.pixels);
  m.mean = static_cast<double>(state.sum) / n / 255.0;
  m.std = std::sqrt(std::max(0.0, static_cast<double>(state.sum_sq) / n / (255.0 * 255.0) - m.mean * m.mean));
  m.source = o.input;
  return m;
}

}  // namespace

std::vector<int64_t> PatchOrigins(int64_t extent, int64_t size) {
  std::vector<int64_t> out;
  for (int64_t o = 0; o + size <= extent; o += size) out.push_back(o);
  if (!out.empty() && out.back() + size < extent) out.push_back(extent - size);
  return out;
}

absl::StatusOr<std::vector<std::string>> ListInputs(const std::string& input) {
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(input, ec)) {
    for (auto it = fs::recursive_directory_iterator(input, ec); it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) return absl::UnavailableError(absl::StrCat(input, ": cannot list: ", ec.message()));
      if (it->is_regular_file() && IsReadableImageName(it->path().filename().string())) files.push_back(it->path().string());
    }
  } else {
    glob_t g;
    const int rc = ::glob(input.c_str(), 0, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
    }
    globfree(&g);
    if (rc != 0 && rc != GLOB_NOMATCH) return absl::UnavailableError(absl::StrCat(input, ": glob failed"));
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    return absl::NotFoundError(absl::StrCat(input, ": no images found (.png, .tif/.tiff, .nii[.gz], .nrrd)"));
  }
  return files;
}

absl::StatusOr<PackResult> PackImages(const PackOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (o.size < 16 || o.shard_images < 1 || o.threads < 1) {
    return absl::InvalidArgumentError("--size must be >= 16, --shard-images and --threads >= 1");
  }
  ASSIGN_OR_RETURN(std::vector<std::string> files, ListInputs(o.input));
  RETURN_IF_ERROR(CreateDirectories(o.out));
  if (fs::exists(o.out / DatasetManifest::kFileName)) {
    return absl::AlreadyExistsError(absl::StrCat(o.out.string(), ": already packed (manifest.json exists); "
                                                 "choose another name or remove it"));
  }
  PackState state;
  state.key = RunKey(files, o);
  PackResult result;
  RETURN_IF_ERROR(ResumeInterrupted(o, files.size(), &state, &result));
  // Temporaries of a killed run.
  for (const auto& e : fs::directory_iterator(o.out)) {
    if (e.path().filename().string().rfind(".shard-", 0) == 0) fs::remove(e.path());
  }

  ProgressBar bar("pack", static_cast<int64_t>(files.size()), "files");
  ShardContents current;
  current.height = current.width = o.size;
  int64_t file = state.next_file;
  const int64_t batch = std::max(8, o.threads * 8);
  while (file < static_cast<int64_t>(files.size())) {
    const int64_t end = std::min<int64_t>(files.size(), file + batch);
    std::vector<Decoded> decoded = DecodeFiles(files, file, end, o);
    for (int64_t i = file; i < end; ++i) {
      Decoded& d = decoded[i - file];
      if (!d.status.ok()) {
        if (!o.skip_bad) return Annotate(d.status, "packing (use --skip-bad to skip such files)");
        RETINA_LOG(Warning) << "skipping: " << d.status.message();
        ++state.skipped;
      } else {
        for (uint8_t v : d.pixels) {
          state.sum += v;
          state.sum_sq += static_cast<uint64_t>(v) * v;
        }
        state.pixels += d.pixels.size();
        current.images.insert(current.images.end(), d.pixels.begin(), d.pixels.end());
        current.names.insert(current.names.end(), d.names.begin(), d.names.end());
      }
      if (current.count() >= o.shard_images || (i + 1 == static_cast<int64_t>(files.size()) && current.count() > 0)) {
        char name[32];
        std::snprintf(name, sizeof(name), "shard-%05zu.h5", state.shards.size());
        ASSIGN_OR_RETURN(ShardInfo info, WriteShard(o.out / name, current));
        state.shards.push_back(info);
        state.next_file = i + 1;
        RETURN_IF_ERROR(WriteFileAtomic(o.out / kStateFile, state.ToJson()));
        current.images.clear();
        current.names.clear();
        if (o.stop_after_shards >= 0 && static_cast<int64_t>(state.shards.size()) - result.resumed_shards >= o.stop_after_shards) {
          result.finished = false;
          return result;
        }
      }
      bar.Update(i + 1);
    }
    file = end;
  }
  bar.Finish();
  if (state.pixels == 0) return absl::FailedPreconditionError(absl::StrCat(o.input, ": no usable image (all skipped)"));

  result.manifest = FinalManifest(o, state);
  RETURN_IF_ERROR(WriteFileAtomic(o.out / DatasetManifest::kFileName, result.manifest.ToJson()));
  fs::remove(o.out / kStateFile);
  result.files = static_cast<int64_t>(files.size());
  result.skipped = state.skipped;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace retina::trainer
