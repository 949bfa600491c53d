// ReadArray and OpenPlaneReader: the dispatch on the file name over the
// formats of this folder (one file each), and the held-volume reader.
#include <cstring>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "trainer/data/formats/format_util.h"
#include "trainer/data/formats/readers.h"
#include "trainer/data/formats/zarr.h"

namespace retina::trainer {

bool IsReadableImageName(const std::string& name) {
  const std::string l = Lower(name);
  for (const char* ext : {".png", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".nhdr"}) {
    if (absl::EndsWith(l, ext)) return true;
  }
  return false;
}

absl::StatusOr<RawArray> ReadArray(const std::string& spec) {
  const std::string l = Lower(spec);
  if (const std::optional<std::pair<std::string, std::string>> h5 = SplitHdf5Spec(spec)) {
    return ReadHdf5(h5->first, h5->second);
  }
  if (absl::EndsWith(l, ".h5") || absl::EndsWith(l, ".hdf5") || absl::EndsWith(l, ".hdf")) {
    return absl::InvalidArgumentError(absl::StrCat(spec, ": name the dataset, e.g. ", spec, ":/volumes/raw"));
  }
  if (absl::EndsWith(l, ".png")) return ReadPng(spec);
  if (absl::EndsWith(l, ".tif") || absl::EndsWith(l, ".tiff")) return ReadTiff(spec);
  if (absl::EndsWith(l, ".nii") || absl::EndsWith(l, ".nii.gz")) return ReadNifti(spec);
  if (absl::EndsWith(l, ".nrrd") || absl::EndsWith(l, ".nhdr")) return ReadNrrd(spec);
  return absl::InvalidArgumentError(absl::StrCat(
      spec, ": unknown format (known: .png, .tif/.tiff, .h5:/dataset, .nii/.nii.gz, .nrrd/.nhdr)"));
}

namespace {

class HeldPlaneReader : public PlaneReader {
 public:
  HeldPlaneReader(const Volume* v, Volume owned, const std::string& source) : owned_(std::move(owned)) {
    v_ = v != nullptr ? v : &owned_;
    header_.shape = v_->shape;
    header_.spacing = v_->spacing;
    header_.source = source;
  }
  void set_has_spacing(bool b) { header_.has_spacing = b; }
  void set_unit(const std::string& unit) { header_.unit = unit; }
  bool streaming() const override { return false; }
  absl::Status Read(int64_t z0, int64_t z1, uint8_t* dst) override {
    std::memcpy(dst, v_->plane(z0), static_cast<size_t>((z1 - z0) * v_->shape[1] * v_->shape[2]));
    return absl::OkStatus();
  }

 private:
  Volume owned_;
  const Volume* v_;
};

}  // namespace

std::unique_ptr<PlaneReader> VolumePlaneReader(const Volume& volume) {
  return std::make_unique<HeldPlaneReader>(&volume, Volume{}, "volume");
}

absl::StatusOr<std::unique_ptr<PlaneReader>> OpenPlaneReader(const std::string& spec, IntensityScaling scaling) {
  std::unique_ptr<PlaneReader> streaming;
  if (const std::optional<std::pair<std::string, std::string>> h5 = SplitHdf5Spec(spec)) {
    ASSIGN_OR_RETURN(streaming, OpenHdf5PlaneReader(h5->first, h5->second));
  } else if (absl::EndsWith(Lower(spec), ".tif") || absl::EndsWith(Lower(spec), ".tiff")) {
    ASSIGN_OR_RETURN(streaming, OpenTiffPlaneReader(spec));
  } else if (IsZarrPath(spec)) {
    return OpenZarrPlaneReader(spec);
  }
  if (streaming) return streaming;  // else not uint8: read whole and converted
  ASSIGN_OR_RETURN(RawArray raw, ReadArray(spec));
  ASSIGN_OR_RETURN(Volume v, ToImage(raw, scaling));
  auto reader = std::make_unique<HeldPlaneReader>(nullptr, std::move(v), raw.source);
  reader->set_has_spacing(raw.has_spacing);
  reader->set_unit(raw.unit);
  return std::unique_ptr<PlaneReader>(std::move(reader));
}

}  // namespace retina::trainer
