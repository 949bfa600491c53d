#include "trainer/data/writers.h"

#include <hdf5.h>
#include <tiffio.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "trainer/data/hdf5_handle.h"

namespace retina::trainer {

absl::Status WriteTiff(const std::string& path, const Volume& v, bool write_spacing) {
  const std::filesystem::path target(path);
  const std::filesystem::path tmp = target.parent_path() / UniqueTempName("." + target.filename().string() + ".");
  absl::Cleanup remove_tmp = [&] { ::unlink(tmp.c_str()); };
  {
    std::unique_ptr<TIFF, void (*)(TIFF*)> tif(TIFFOpen(tmp.c_str(), "w"), &TIFFClose);
    if (!tif) return absl::InternalError(absl::StrCat(tmp.string(), ": cannot create TIFF"));
    const std::string description = absl::StrCat("ImageJ=1.11a\nimages=", v.shape[0], "\nslices=", v.shape[0],
                                                 "\nunit=unit\nspacing=", v.spacing[0], "\n");
    for (int64_t z = 0; z < v.shape[0]; ++z) {
      TIFFSetField(tif.get(), TIFFTAG_IMAGEWIDTH, static_cast<uint32_t>(v.shape[2]));
      TIFFSetField(tif.get(), TIFFTAG_IMAGELENGTH, static_cast<uint32_t>(v.shape[1]));
      TIFFSetField(tif.get(), TIFFTAG_BITSPERSAMPLE, 8);
      TIFFSetField(tif.get(), TIFFTAG_SAMPLESPERPIXEL, 1);
      TIFFSetField(tif.get(), TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
      TIFFSetField(tif.get(), TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
      TIFFSetField(tif.get(), TIFFTAG_ROWSPERSTRIP, static_cast<uint32_t>(v.shape[1]));
      if (v.shape[0] > 1) {
        TIFFSetField(tif.get(), TIFFTAG_SUBFILETYPE, FILETYPE_PAGE);
        TIFFSetField(tif.get(), TIFFTAG_PAGENUMBER, static_cast<uint16_t>(z), static_cast<uint16_t>(v.shape[0]));
      }
      if (write_spacing) {
        TIFFSetField(tif.get(), TIFFTAG_XRESOLUTION, static_cast<float>(1.0 / v.spacing[2]));
        TIFFSetField(tif.get(), TIFFTAG_YRESOLUTION, static_cast<float>(1.0 / v.spacing[1]));
        TIFFSetField(tif.get(), TIFFTAG_RESOLUTIONUNIT, RESUNIT_NONE);
        if (z == 0) TIFFSetField(tif.get(), TIFFTAG_IMAGEDESCRIPTION, description.c_str());
      }
      const tmsize_t bytes = static_cast<tmsize_t>(v.shape[1] * v.shape[2]);
      if (TIFFWriteEncodedStrip(tif.get(), 0, const_cast<uint8_t*>(v.plane(z)), bytes) != bytes ||
          !TIFFWriteDirectory(tif.get())) {
        return absl::InternalError(absl::StrCat(tmp.string(), ": writing page ", z, " failed (disk full?)"));
      }
    }
  }
  RETURN_IF_ERROR(FsyncPath(tmp));
  RETURN_IF_ERROR(RenameDurable(tmp, target));
  std::move(remove_tmp).Cancel();
  return absl::OkStatus();
}

absl::Status WriteHdf5Volumes(const std::string& path,
                              const std::vector<std::pair<std::string, const Volume*>>& volumes,
                              const float* probabilities, int64_t channels) {
  if (volumes.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": nothing to write"));
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::filesystem::path target(path);
  const std::filesystem::path tmp = target.parent_path() / UniqueTempName("." + target.filename().string() + ".");
  absl::Cleanup remove_tmp = [&] { ::unlink(tmp.c_str()); };
  const auto fail = [&](const std::string& what) {
    return absl::InternalError(absl::StrCat(tmp.string(), ": writing ", what, " failed (disk full?)"));
  };
  {
    Hid file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (!file.ok()) return absl::InternalError(absl::StrCat(tmp.string(), ": cannot create HDF5 file"));
    for (const auto& [name, v] : volumes) {
      const hsize_t dims[3] = {static_cast<hsize_t>(v->shape[0]), static_cast<hsize_t>(v->shape[1]),
                               static_cast<hsize_t>(v->shape[2])};
      Hid space(H5Screate_simple(3, dims, nullptr), H5Sclose);
      Hid ds(H5Dcreate2(file.get(), name.c_str(), H5T_NATIVE_UINT8, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
             H5Dclose);
      if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, v->data.data()) < 0) {
        return fail(name);
      }
      const hsize_t three = 3;
      Hid aspace(H5Screate_simple(1, &three, nullptr), H5Sclose);
      Hid attr(H5Acreate2(ds.get(), "resolution", H5T_NATIVE_DOUBLE, aspace.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
      if (!attr.ok() || H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, v->spacing.data()) < 0) return fail(name + " spacing");
    }
    if (probabilities != nullptr) {
      const auto& s = volumes.front().second->shape;
      const hsize_t dims[4] = {static_cast<hsize_t>(channels), static_cast<hsize_t>(s[0]), static_cast<hsize_t>(s[1]),
                               static_cast<hsize_t>(s[2])};
      Hid space(H5Screate_simple(4, dims, nullptr), H5Sclose);
      Hid ds(H5Dcreate2(file.get(), "probabilities", H5T_NATIVE_FLOAT, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                        H5P_DEFAULT),
             H5Dclose);
      if (!ds.ok() || H5Dwrite(ds.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, probabilities) < 0) {
        return fail("probabilities");
      }
    }
  }
  RETURN_IF_ERROR(FsyncPath(tmp));
  RETURN_IF_ERROR(RenameDurable(tmp, target));
  std::move(remove_tmp).Cancel();
  return absl::OkStatus();
}

}  // namespace retina::trainer
