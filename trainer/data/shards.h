// HDF5 shard files and the memory-mapped dataset view the loader reads.
//
// A shard holds contiguous (unchunked, uncompressed) uint8 datasets
// images [N, H, W], optionally masks [N, H, W], names [N] (variable-length
// strings: the source file and patch of each sample) and crc32 [N] (uint32:
// zlib's CRC-32 of each sample's image bytes followed by its mask bytes), so
// h5py reads it as is and readers can mmap the pixel data directly.
//
// Integrity as a job reads: every sample is checked against its crc32 each
// time the loader copies it (CheckSample); a shard without crc32 (packed by an
// older version) is checked once against the manifest's SHA-256 when the
// dataset is opened.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dataset_manifest.h"

namespace retina::trainer {

// The directory of data.dataset / data.val_dataset `name` (the field `key`,
// for errors): a path when it holds '/', else a dataset of the store (a safe
// name: common/store_layout.h). One resolver for training, evaluation and
// prediction.
absl::StatusOr<std::filesystem::path> ResolveDataset(const std::string& name, const std::filesystem::path& store,
                                                     const std::string& key);

struct ShardContents {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint8_t> images;  // N * H * W
  std::vector<uint8_t> masks;   // empty, or N * H * W
  std::vector<std::string> names;
  int64_t count() const { return static_cast<int64_t>(names.size()); }
};

// Writes `contents` to `path` atomically (temporary, fsync, rename, fsync dir)
// and returns its size and SHA-256.
absl::StatusOr<ShardInfo> WriteShard(const std::filesystem::path& path, const ShardContents& contents);

// A read-only memory mapping of a whole file.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  const uint8_t* data_;
  size_t size_;
};

// A packed dataset: manifest + every shard mapped. Thread-safe for reads.
class ShardedDataset {
 public:
  // Opens datasets/<name> (a directory). With verify, every shard's SHA-256
  // is checked first and every sample's CRC-32 after (reads everything twice).
  // `version`: the dataset as of that version (0 = latest; dataset_manifest.h).
  static absl::StatusOr<std::unique_ptr<ShardedDataset>> Open(const std::filesystem::path& dir, bool verify,
                                                               int version = 0);

  const DatasetManifest& manifest() const { return manifest_; }
  int64_t size() const { return manifest_.count; }
  int64_t height() const { return manifest_.height; }
  int64_t width() const { return manifest_.width; }
  bool labelled() const { return manifest_.labelled; }
  // Pixel pointers of sample i in [0, size()): H * W bytes each.
  const uint8_t* image(int64_t i) const;
  const uint8_t* mask(int64_t i) const;  // nullptr when unlabelled
  // OK when sample i's bytes match its stored crc32 (or the shard has none
  // and passed its SHA-256 at open); DATA_LOSS naming the shard and sample.
  absl::Status CheckSample(int64_t i) const;
  // CheckSample for every sample (reads everything once): DATA_LOSS naming
  // each damaged shard with its first damaged sample and their count. A
  // shard's SHA-256 in the manifest can be recomputed by whoever changed the
  // shard; the per-sample CRC-32s inside it are what verify trusts as well.
  // `checked` (optional) counts the samples that carried a CRC-32.
  absl::Status CheckAllSamples(int64_t* checked = nullptr) const;

 private:
  struct Shard {
    std::unique_ptr<MappedFile> file;
    const uint8_t* images = nullptr;
    const uint8_t* masks = nullptr;
    int64_t first = 0;  // global index of its first sample
    std::string path;
    std::vector<uint32_t> crc32;  // per sample; empty for shards without
  };
  std::pair<const Shard*, int64_t> Locate(int64_t i) const;

  DatasetManifest manifest_;
  std::vector<Shard> shards_;
};

}  // namespace retina::trainer
