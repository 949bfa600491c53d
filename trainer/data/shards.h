// HDF5 shard files and the memory-mapped dataset view the loader reads.
//
// A shard holds contiguous (unchunked, uncompressed) uint8 datasets
// images [N, H, W], optionally masks [N, H, W], and names [N] (variable-length
// strings: the source file and patch of each sample), so h5py reads it as is
// and readers can mmap the pixel data directly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dataset_manifest.h"

namespace retina::trainer {

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
  // is checked first (reads everything once).
  static absl::StatusOr<std::unique_ptr<ShardedDataset>> Open(const std::filesystem::path& dir, bool verify);

  const DatasetManifest& manifest() const { return manifest_; }
  int64_t size() const { return manifest_.count; }
  int64_t height() const { return manifest_.height; }
  int64_t width() const { return manifest_.width; }
  bool labelled() const { return manifest_.labelled; }
  // Pixel pointers of sample i in [0, size()): H * W bytes each.
  const uint8_t* image(int64_t i) const;
  const uint8_t* mask(int64_t i) const;  // nullptr when unlabelled

 private:
  struct Shard {
    std::unique_ptr<MappedFile> file;
    const uint8_t* images = nullptr;
    const uint8_t* masks = nullptr;
    int64_t first = 0;  // global index of its first sample
  };
  std::pair<const Shard*, int64_t> Locate(int64_t i) const;

  DatasetManifest manifest_;
  std::vector<Shard> shards_;
};

}  // namespace retina::trainer
