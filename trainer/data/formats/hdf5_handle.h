// RAII ownership of HDF5 identifiers (files, datasets, dataspaces, types,
// attributes, property lists): the matching H5?close runs on destruction.
#pragma once

#include <hdf5.h>

namespace retina::trainer {

class Hid {
 public:
  Hid(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Hid() { if (id_ >= 0) close_(id_); }
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

}  // namespace retina::trainer
