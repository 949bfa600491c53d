#include "trainer/data/tools/import.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "trainer/data/tools/pack.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/shards.h"
#include "trainer/data/formats/writers.h"

namespace retina::trainer {
namespace fs = std::filesystem;
namespace {

struct Pair {
  Volume image, mask;
  std::string name;
};

absl::StatusOr<Pair> LoadPair(const std::string& image_spec, const std::string& mask_spec, const ImportOptions& o,
                              const std::string& name) {
  ASSIGN_OR_RETURN(RawArray raw_image, ReadArray(image_spec));
  ASSIGN_OR_RETURN(RawArray raw_mask, ReadArray(mask_spec));
  Pair p;
  p.name = name;
  ASSIGN_OR_RETURN(p.image, ToImage(raw_image, o.scaling));
  ASSIGN_OR_RETURN(p.mask, ToMask(raw_mask, o.kind.labels));
  if (p.image.shape != p.mask.shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        image_spec, " is ", p.image.shape[0], "x", p.image.shape[1], "x", p.image.shape[2], " but its mask ", mask_spec,
        " is ", p.mask.shape[0], "x", p.mask.shape[1], "x", p.mask.shape[2], " (z x y x x)"));
  }
  const uint8_t top = *std::max_element(p.mask.data.begin(), p.mask.data.end());
  if (top >= o.kind.classes) {
    return absl::InvalidArgumentError(absl::StrCat(mask_spec, ": label ", static_cast<int>(top), " but ",
                                                   o.kind.name, " has ", o.kind.classes, " classes"));
  }
  return p;
}

// Image/mask pairs of a split: DIR/<split>/images + masks, or CREMI's HDF5 files.
absl::StatusOr<std::vector<Pair>> LoadSplit(const ImportOptions& o, const std::string& split) {
  const fs::path dir = o.input / split;
  std::vector<Pair> pairs;
  if (o.kind.name == "cremi") {
    std::vector<std::string> files;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string ext = e.path().extension().string();
      if (ext == ".h5" || ext == ".hdf" || ext == ".hdf5") files.push_back(e.path().string());
    }
    if (ec) return absl::NotFoundError(absl::StrCat(dir.string(), ": ", ec.message()));
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
      ASSIGN_OR_RETURN(Pair p, LoadPair(f + ":/volumes/raw", f + ":/volumes/labels/clefts", o, fs::path(f).stem().string()));
      pairs.push_back(std::move(p));
    }
  } else {
    ASSIGN_OR_RETURN(std::vector<std::string> images, ListInputs((dir / "images").string()));
    for (const std::string& image : images) {
      const fs::path rel = fs::relative(image, dir / "images");
      const fs::path mask = dir / "masks" / rel;
      if (!fs::exists(mask)) {
        return absl::NotFoundError(absl::StrCat(image, ": no mask ", mask.string(), " (masks must have the image's name)"));
      }
      ASSIGN_OR_RETURN(Pair p, LoadPair(image, mask.string(), o, rel.string()));
      pairs.push_back(std::move(p));
    }
  }
  if (pairs.empty()) return absl::NotFoundError(absl::StrCat(dir.string(), ": no image/mask pairs"));
  return pairs;
}

// A 2D plane of a volume along `axis` (0: xy at z=i, 1: xz at y=i, 2: yz at x=i).
struct Plane {
  int64_t h = 0, w = 0;
  std::vector<uint8_t> image, mask;
};
Plane Slice(const Pair& p, int axis, int64_t i) {
  const auto& s = p.image.shape;  // z, y, x
  Plane out;
  out.h = axis == 0 ? s[1] : s[0];
  out.w = axis == 2 ? s[1] : s[2];
  out.image.resize(out.h * out.w);
  out.mask.resize(out.h * out.w);
  for (int64_t r = 0; r < out.h; ++r) {
    for (int64_t c = 0; c < out.w; ++c) {
      const int64_t z = axis == 0 ? i : r, y = axis == 0 ? r : (axis == 1 ? i : c), x = axis == 2 ? i : c;
      const int64_t at = (z * s[1] + y) * s[2] + x;
      out.image[r * out.w + c] = p.image.data[at];
      out.mask[r * out.w + c] = p.mask.data[at];
    }
  }
  return out;
}

// Reflect-101 index into [0, n).
int64_t Reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  while (i < 0 || i >= n) i = i < 0 ? -i : 2 * (n - 1) - i;
  return i;
}

// Appends the size x size tiles of a plane (padded centred when smaller).
void AppendTiles(const Plane& p, int64_t size, const std::string& name, ShardContents* out) {
  const int64_t ph = std::max<int64_t>(0, size - p.h), pw = std::max<int64_t>(0, size - p.w);
  const int64_t h = p.h + ph, w = p.w + pw;
  auto at = [&](const std::vector<uint8_t>& v, int64_t y, int64_t x) {
    return v[Reflect(y - ph / 2, p.h) * p.w + Reflect(x - pw / 2, p.w)];
  };
  for (int64_t y0 : PatchOrigins(h, size)) {
    for (int64_t x0 : PatchOrigins(w, size)) {
      for (int64_t y = 0; y < size; ++y) {
        for (int64_t x = 0; x < size; ++x) {
          out->images.push_back(at(p.image, y0 + y, x0 + x));
          out->masks.push_back(at(p.mask, y0 + y, x0 + x));
        }
      }
      out->names.push_back(absl::StrCat(name, ":y", y0, ":x", x0));
    }
  }
}

absl::Status WriteTestItem(const fs::path& path, const Pair& p) {
  return WriteHdf5Volumes(path.string(), {{"image", &p.image}, {"mask", &p.mask}});
}

}  // namespace

absl::StatusOr<ImportKind> LookupImportKind(const std::string& name) {
  if (name == "cremi") return ImportKind{name, MaskConvention::kCremiClefts, false, 2};
  if (name == "guay") return ImportKind{name, MaskConvention::kClassIndex, false, 7};
  if (name == "kasthuri") return ImportKind{name, MaskConvention::kBinary, false, 2};
  if (name == "perez") return ImportKind{name, MaskConvention::kBinary, false, 2};
  if (name == "urocell") return ImportKind{name, MaskConvention::kClassIndex, true, 3};
  if (name == "folder") return ImportKind{name, MaskConvention::kBinary, false, 2};
  return absl::InvalidArgumentError(
      absl::StrCat("--kind: '", name, "' is not one of cremi, guay, kasthuri, perez, urocell, folder"));
}

namespace {

// Labelled tiles written into shards of one dataset directory.
class TileSet {
 public:
  TileSet(fs::path dir, const ImportOptions& o) : dir_(std::move(dir)), o_(o) {
    m_.name = dir_.filename().string();
    m_.labelled = true;
    m_.classes = o.kind.classes;
    m_.height = m_.width = o.size;
    m_.source = absl::StrCat(o.input.string(), " (", o.kind.name, ")");
    current_.height = current_.width = o.size;
  }
  absl::Status Add(const Plane& plane, const std::string& name) {
    if (m_.shards.empty() && current_.count() == 0) RETURN_IF_ERROR(CreateDirectories(dir_));
    for (uint8_t v : plane.image) {
      sum_ += v;
      sum_sq_ += static_cast<uint64_t>(v) * v;
    }
    pixels_ += plane.image.size();
    ++slices_;
    AppendTiles(plane, o_.size, name, &current_);
    if (current_.count() >= o_.shard_images) RETURN_IF_ERROR(Flush());
    return absl::OkStatus();
  }
  // Writes the last shard and the statistics; the caller writes the manifest.
  absl::StatusOr<DatasetManifest> Finish() {
    if (current_.count() > 0) RETURN_IF_ERROR(Flush());
    m_.mean = pixels_ > 0 ? static_cast<double>(sum_) / pixels_ / 255.0 : 0;
    m_.std = pixels_ > 0 ? std::sqrt(std::max(0.0, static_cast<double>(sum_sq_) / pixels_ / (255.0 * 255.0) - m_.mean * m_.mean)) : 0;
    return m_;
  }
  int64_t slices() const { return slices_; }
  const fs::path& dir() const { return dir_; }

 private:
  absl::Status Flush() {
    char name[32];
    std::snprintf(name, sizeof(name), "shard-%05zu.h5", m_.shards.size());
    ASSIGN_OR_RETURN(ShardInfo info, WriteShard(dir_ / name, current_));
    m_.shards.push_back(info);
    m_.count += info.count;
    current_.images.clear();
    current_.masks.clear();
    current_.names.clear();
    return absl::OkStatus();
  }
  fs::path dir_;
  const ImportOptions& o_;
  DatasetManifest m_;
  ShardContents current_;
  uint64_t sum_ = 0, sum_sq_ = 0, pixels_ = 0;
  int64_t slices_ = 0;
};

// The first z of each training item that goes to validation (shape[0] when
// none): the last `held` xy slices of the split, in reading order (items by
// name, z ascending), so validation slices never share voxels with training
// planes (xz/yz planes of isotropic volumes are cut below that z).
std::vector<int64_t> ValidationStarts(const std::vector<Pair>& items, int64_t held) {
  std::vector<int64_t> starts(items.size());
  for (size_t k = items.size(); k-- > 0;) {
    const int64_t nz = items[k].image.shape[0];
    const int64_t take = std::min(held, nz);
    starts[k] = nz - take;
    held -= take;
  }
  return starts;
}

// The item restricted to z < z_end.
Pair Head(const Pair& p, int64_t z_end) {
  Pair out;
  out.name = p.name;
  out.image = p.image;
  out.mask = p.mask;
  const int64_t plane = p.image.shape[1] * p.image.shape[2];
  for (Volume* v : {&out.image, &out.mask}) {
    v->shape[0] = z_end;
    v->data.resize(static_cast<size_t>(z_end * plane));
  }
  return out;
}

}  // namespace

absl::StatusOr<ImportResult> ImportBenchmark(const ImportOptions& o) {
  if (fs::exists(o.out / DatasetManifest::kFileName)) {
    return absl::AlreadyExistsError(absl::StrCat(o.out.string(), ": already exists"));
  }
  if (o.val_fraction < 0 || o.val_fraction >= 1) {
    return absl::InvalidArgumentError(absl::StrCat("--val-fraction: ", o.val_fraction, " is not in [0, 1)"));
  }
  if (o.val_items < 0) return absl::InvalidArgumentError(absl::StrCat("--val-items: ", o.val_items, " is negative"));
  if (o.val_items > 0 && o.val_fraction > 0) return absl::InvalidArgumentError("give --val-fraction or --val-items, not both");
  ImportResult result;
  // Training tiles (and the validation slices held out of them).
  ASSIGN_OR_RETURN(std::vector<Pair> train, LoadSplit(o, "train"));
  int64_t xy_slices = 0;
  for (const Pair& p : train) xy_slices += p.image.shape[0];
  const int64_t held = o.val_items > 0 ? o.val_items : static_cast<int64_t>(std::llround(o.val_fraction * xy_slices));
  if (held >= xy_slices) {
    return absl::InvalidArgumentError(absl::StrCat("--val-items/--val-fraction: ", held, " validation slices of ", xy_slices,
                                                   " leave nothing to train on"));
  }
  if ((o.val_items > 0 || o.val_fraction > 0) && held == 0) {
    return absl::InvalidArgumentError(absl::StrCat("--val-fraction ", o.val_fraction, " of ", xy_slices,
                                                   " slices holds out none; use --val-items"));
  }
  const std::vector<int64_t> val_start = ValidationStarts(train, held);
  const fs::path val_dir = o.out.parent_path() / (o.out.filename().string() + "-val");
  if (held > 0 && fs::exists(val_dir / DatasetManifest::kFileName)) {
    return absl::AlreadyExistsError(absl::StrCat(val_dir.string(), ": already exists"));
  }
  RETURN_IF_ERROR(CreateDirectories(o.out));
  TileSet train_tiles(o.out, o), val_tiles(val_dir, o);
  static constexpr const char* kAxis[] = {"xy", "xz", "yz"};
  for (size_t k = 0; k < train.size(); ++k) {
    const Pair& p = train[k];
    const bool volume = p.image.shape[0] > 1;
    const int64_t z0 = val_start[k];
    for (int64_t z = z0; z < p.image.shape[0]; ++z) {
      RETURN_IF_ERROR(val_tiles.Add(Slice(p, 0, z), volume ? absl::StrCat(p.name, ":xy", z) : p.name));
    }
    if (z0 == 0) continue;
    const Pair kept = z0 == p.image.shape[0] ? p : Head(p, z0);
    const std::vector<int> axes = volume && o.kind.isotropic ? std::vector<int>{0, 1, 2} : std::vector<int>{0};
    for (int axis : axes) {
      for (int64_t i = 0; i < kept.image.shape[axis]; ++i) {
        RETURN_IF_ERROR(train_tiles.Add(Slice(kept, axis, i), volume ? absl::StrCat(p.name, ":", kAxis[axis], i) : p.name));
      }
    }
  }
  ASSIGN_OR_RETURN(result.train, train_tiles.Finish());
  result.train_slices = train_tiles.slices();
  DatasetManifest& m = result.train;
  if (held > 0) {
    ASSIGN_OR_RETURN(result.val, val_tiles.Finish());
    result.val.mean = m.mean;  // validation is normalised like the training data
    result.val.std = m.std;
    result.val_slices = val_tiles.slices();
    RETURN_IF_ERROR(WriteFileAtomic(val_dir / DatasetManifest::kFileName, result.val.ToJson()));
  }

  // Held-out test items, unchanged.
  ASSIGN_OR_RETURN(std::vector<Pair> test, LoadSplit(o, "test"));
  const fs::path test_dir = o.out.parent_path() / (o.out.filename().string() + "-test");
  RETURN_IF_ERROR(CreateDirectories(test_dir));
  nlohmann::ordered_json items = nlohmann::ordered_json::array();
  for (size_t i = 0; i < test.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "item-%05zu.h5", i);
    RETURN_IF_ERROR(WriteTestItem(test_dir / name, test[i]));
    ASSIGN_OR_RETURN(FileDigest d, Sha256File(test_dir / name));
    const auto& s = test[i].image.shape;
    items.push_back({{"file", name}, {"source", test[i].name}, {"shape", {s[0], s[1], s[2]}},
                     {"spacing", {test[i].image.spacing[0], test[i].image.spacing[1], test[i].image.spacing[2]}},
                     {"bytes", d.size}, {"sha256", d.sha256}});
  }
  nlohmann::ordered_json tj;
  tj["format"] = "retina-test/1";
  tj["kind"] = o.kind.name;
  tj["classes"] = o.kind.classes;
  tj["mean"] = m.mean;  // the training data's normalisation
  tj["std"] = m.std;
  tj["items"] = items;
  RETURN_IF_ERROR(WriteFileAtomic(test_dir / "test.json", tj.dump(2) + "\n"));
  result.test_items = static_cast<int64_t>(test.size());
  // The training manifest last: the import is complete when it exists.
  RETURN_IF_ERROR(WriteFileAtomic(o.out / DatasetManifest::kFileName, m.ToJson()));
  return result;
}

namespace {

// An exclusive flock on <dataset>/.add.lock for the whole of an --add: two
// adds to one dataset (two people, or a person and a loop) run one after the
// other, each reading the manifest the other wrote.
class AddLock {
 public:
  static absl::StatusOr<AddLock> Take(const fs::path& dataset) {
    RETURN_IF_ERROR(CreateDirectories(dataset));
    const fs::path path = dataset / ".add.lock";
    const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) return absl::InternalError(absl::StrCat(path.string(), ": ", std::strerror(errno)));
    if (::flock(fd, LOCK_EX) != 0) {
      ::close(fd);
      return absl::InternalError(absl::StrCat(path.string(), ": flock: ", std::strerror(errno)));
    }
    return AddLock(fd);
  }
  AddLock(AddLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  AddLock& operator=(AddLock&&) = delete;
  ~AddLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }

 private:
  explicit AddLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace

absl::StatusOr<AddBlocksResult> AddLabelledBlocks(const AddBlocksOptions& a) {
  ASSIGN_OR_RETURN(const AddLock lock, AddLock::Take(a.dataset));
  DatasetManifest m;
  const bool exists = fs::exists(a.dataset / DatasetManifest::kFileName);
  if (exists) {
    ASSIGN_OR_RETURN(m, DatasetManifest::Load(a.dataset));
    if (!m.labelled) return absl::FailedPreconditionError(a.dataset.string() + ": not a labelled dataset");
    if (a.size != 0 && a.size != m.height) {
      return absl::InvalidArgumentError(absl::StrCat("--size: ", a.size, " but ", a.dataset.string(), " has tiles of ",
                                                     m.height, "x", m.width));
    }
    if (m.classes == 0 && a.classes == 0) {
      return absl::InvalidArgumentError(absl::StrCat(a.dataset.string(),
                                                     ": its manifest does not say how many classes; give --classes"));
    }
    if (m.classes != 0 && a.classes != 0 && a.classes != m.classes) {
      return absl::InvalidArgumentError(absl::StrCat("--classes: ", a.classes, " but ", a.dataset.string(), " has ",
                                                     m.classes));
    }
    if (m.classes == 0) m.classes = a.classes;
    if (m.versions.empty()) {  // a dataset from before versions: all of it is version 1
      m.versions.push_back({1, static_cast<int64_t>(m.shards.size()), m.count, m.mean, m.std,
                            m.VersionDigest(static_cast<int64_t>(m.shards.size())), m.source});
    }
  } else {
    if (a.size <= 0 || a.classes < 2) {
      return absl::InvalidArgumentError(absl::StrCat(a.dataset.string(),
                                                     ": a new dataset needs --size and --classes (at least 2)"));
    }
    m.name = a.dataset.filename().string();
    m.labelled = true;
    m.height = m.width = a.size;
    m.classes = a.classes;
    m.source = a.input.string();
  }
  // Every block is read and checked before anything is written.
  ImportOptions o;
  o.kind = {"the dataset", a.labels, false, m.classes};  // (the name is for LoadPair's messages)
  o.input = a.input;
  o.size = static_cast<int>(m.height);
  o.scaling = a.scaling;
  std::vector<Pair> pairs;
  {
    ASSIGN_OR_RETURN(std::vector<std::string> images, ListInputs((a.input / "images").string()), "--input");
    for (const std::string& image : images) {
      const fs::path rel = fs::relative(image, a.input / "images");
      const fs::path mask = a.input / "masks" / rel;
      if (!fs::exists(mask)) {
        return absl::NotFoundError(absl::StrCat(image, ": no mask ", mask.string(), " (masks must have the image's name)"));
      }
      ASSIGN_OR_RETURN(Pair p, LoadPair(image, mask.string(), o, rel.string()), image);
      if (p.image.shape[1] < m.height || p.image.shape[2] < m.width) {
        return absl::InvalidArgumentError(absl::StrCat(image, ": a block of ", p.image.shape[1], "x", p.image.shape[2],
                                                       " is smaller than the dataset's tiles (", m.height, "x", m.width,
                                                       "); label blocks at least that large"));
      }
      pairs.push_back(std::move(p));
    }
  }
  if (pairs.empty()) return absl::NotFoundError(absl::StrCat((a.input / "images").string(), ": no labelled blocks"));
  RETURN_IF_ERROR(CreateDirectories(a.dataset));
  AddBlocksResult r;
  ShardContents current;
  current.height = current.width = m.height;
  uint64_t sum = 0, sum_sq = 0, pixels = 0;
  auto flush = [&]() -> absl::Status {
    char name[32];
    std::snprintf(name, sizeof(name), "shard-%05zu.h5", m.shards.size());
    if (fs::exists(a.dataset / name)) {  // never overwrite: a leftover of an interrupted --add is not ours to reuse
      return absl::AlreadyExistsError(absl::StrCat((a.dataset / name).string(),
                                                   " exists but is not in the manifest (an interrupted --add?); "
                                                   "remove it and retry"));
    }
    ASSIGN_OR_RETURN(ShardInfo info, WriteShard(a.dataset / name, current));
    m.shards.push_back(info);
    m.count += info.count;
    r.tiles += info.count;
    current.images.clear();
    current.masks.clear();
    current.names.clear();
    return absl::OkStatus();
  };
  for (const Pair& p : pairs) {
    for (int64_t z = 0; z < p.image.shape[0]; ++z) {
      const Plane plane = Slice(p, 0, z);
      for (uint8_t v : plane.image) {
        sum += v;
        sum_sq += static_cast<uint64_t>(v) * v;
      }
      pixels += plane.image.size();
      AppendTiles(plane, m.height, p.image.shape[0] > 1 ? absl::StrCat(p.name, ":xy", z) : p.name, &current);
      if (current.count() >= a.shard_images) RETURN_IF_ERROR(flush());
    }
    ++r.blocks;
  }
  if (current.count() > 0) RETURN_IF_ERROR(flush());
  if (!exists) {
    m.mean = static_cast<double>(sum) / pixels / 255.0;
    m.std = std::sqrt(std::max(0.0, static_cast<double>(sum_sq) / pixels / (255.0 * 255.0) - m.mean * m.mean));
  }
  r.version = m.versions.empty() ? 1 : m.versions.back().version + 1;
  m.versions.push_back({r.version, static_cast<int64_t>(m.shards.size()), m.count, m.mean, m.std,
                        m.VersionDigest(static_cast<int64_t>(m.shards.size())),
                        absl::StrCat(a.input.string(), " (", r.blocks, " blocks)")});
  RETURN_IF_ERROR(WriteFileAtomic(a.dataset / DatasetManifest::kFileName, m.ToJson()));
  r.manifest = std::move(m);
  return r;
}

}  // namespace retina::trainer
