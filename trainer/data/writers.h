// Writers for uint8 volumes: TIFF (one page per z plane, with X/Y resolution
// and ImageJ's z spacing when known) and PNG (a single plane).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "trainer/data/array.h"

namespace retina::trainer {

// Atomic: written to a temporary beside `path`, fsynced, renamed.
absl::Status WriteTiff(const std::string& path, const Volume& volume, bool write_spacing);

}  // namespace retina::trainer
