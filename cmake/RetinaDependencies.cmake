# Finds every third-party dependency once, with an actionable message when one
# is missing, and defines imported targets the folders link against:
#   torch (libtorch), retina::nccl, MPI::MPI_CXX, HDF5::HDF5, ...
# Sets RETINA_HAVE_MPI, RETINA_HAVE_CUDA, RETINA_HAVE_NCCL.

set(_retina_setup_hint "run scripts/setup (Debian/Ubuntu) to install it")

# --- common/: Abseil, yaml-cpp, OpenSSL, nlohmann-json, CLI11 ---------------
find_package(absl CONFIG QUIET)
if(NOT absl_FOUND)
  message(FATAL_ERROR "Abseil not found: install libabsl-dev (${_retina_setup_hint}) "
                      "or set absl_DIR")
endif()
find_package(yaml-cpp CONFIG QUIET)
if(NOT yaml-cpp_FOUND)
  message(FATAL_ERROR "yaml-cpp not found: install libyaml-cpp-dev (${_retina_setup_hint})")
endif()
find_package(CLI11 CONFIG QUIET)
if(NOT CLI11_FOUND)
  message(FATAL_ERROR "CLI11 not found: install libcli11-dev (${_retina_setup_hint})")
endif()
find_package(OpenSSL QUIET)
if(NOT OpenSSL_FOUND)
  message(FATAL_ERROR "OpenSSL not found: install libssl-dev (${_retina_setup_hint})")
endif()
find_package(nlohmann_json 3 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  message(FATAL_ERROR "nlohmann-json not found: install nlohmann-json3-dev (${_retina_setup_hint})")
endif()
find_package(Threads REQUIRED)

# --- trainer/: libtorch -----------------------------------------------------
find_package(Torch QUIET)
if(NOT Torch_FOUND)
  message(FATAL_ERROR
    "libtorch not found: install libtorch-dev (${_retina_setup_hint}), or point "
    "Torch_DIR (or CMAKE_PREFIX_PATH) at a libtorch distribution, e.g. "
    "-DTorch_DIR=/opt/libtorch/share/cmake/Torch")
endif()
# TorchConfig puts its flags in TORCH_CXX_FLAGS (e.g. the C++11 ABI define);
# apply them to our targets only, through an interface target.
add_library(retina_torch INTERFACE)
target_link_libraries(retina_torch INTERFACE ${TORCH_LIBRARIES})
separate_arguments(_retina_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
target_compile_options(retina_torch INTERFACE ${_retina_torch_flags})

# libzip: reading NumPy .npz archives (ImageNet ViT weights). Through
# pkg-config: Debian's libzip CMake config references tools it does not ship.
find_package(PkgConfig QUIET)
if(PkgConfig_FOUND)
  pkg_check_modules(RETINA_LIBZIP QUIET IMPORTED_TARGET libzip)
endif()
if(NOT RETINA_LIBZIP_FOUND)
  message(FATAL_ERROR "libzip not found: install libzip-dev and pkg-config (${_retina_setup_hint})")
endif()

# --- trainer/data: image and volume formats ----------------------------------
find_package(PNG QUIET)
find_package(TIFF QUIET)
find_package(HDF5 COMPONENTS C QUIET)
find_package(ZLIB QUIET)
find_path(RETINA_NIFTI_INCLUDE_DIR nifti/nifti2_io.h)
find_library(RETINA_NIFTI_LIBRARY nifti2)
find_library(RETINA_ZNZ_LIBRARY znz)
find_path(RETINA_TEEM_INCLUDE_DIR teem/nrrd.h)
find_library(RETINA_TEEM_LIBRARY teem)
find_path(RETINA_BLOSC_INCLUDE_DIR blosc.h)
find_library(RETINA_BLOSC_LIBRARY blosc)
foreach(_dep PNG TIFF HDF5 ZLIB)
  if(NOT ${_dep}_FOUND)
    message(FATAL_ERROR "${_dep} not found: install libpng-dev libtiff-dev libhdf5-dev zlib1g-dev "
                        "(${_retina_setup_hint})")
  endif()
endforeach()
if(NOT RETINA_NIFTI_INCLUDE_DIR OR NOT RETINA_NIFTI_LIBRARY OR NOT RETINA_ZNZ_LIBRARY)
  message(FATAL_ERROR "niftilib not found: install libnifti2-dev (${_retina_setup_hint})")
endif()
if(NOT RETINA_TEEM_INCLUDE_DIR OR NOT RETINA_TEEM_LIBRARY)
  message(FATAL_ERROR "teem (NRRD) not found: install libteem-dev (${_retina_setup_hint})")
endif()
if(NOT RETINA_BLOSC_INCLUDE_DIR OR NOT RETINA_BLOSC_LIBRARY)
  message(FATAL_ERROR "blosc (Zarr chunks) not found: install libblosc-dev (${_retina_setup_hint})")
endif()
add_library(retina_formats INTERFACE)
target_include_directories(retina_formats SYSTEM INTERFACE
  ${RETINA_NIFTI_INCLUDE_DIR}/nifti ${RETINA_TEEM_INCLUDE_DIR} ${RETINA_BLOSC_INCLUDE_DIR} ${HDF5_INCLUDE_DIRS})
target_link_libraries(retina_formats INTERFACE PNG::PNG TIFF::TIFF ${HDF5_C_LIBRARIES}
  ${RETINA_NIFTI_LIBRARY} ${RETINA_ZNZ_LIBRARY} ${RETINA_TEEM_LIBRARY} ${RETINA_BLOSC_LIBRARY} ZLIB::ZLIB)

# --- CUDA: follows the libtorch we build against ---------------------------
set(RETINA_HAVE_CUDA OFF)
if(RETINA_WITH_CUDA STREQUAL "ON" OR RETINA_WITH_CUDA STREQUAL "AUTO")
  if(TARGET torch_cuda OR CAFFE2_USE_CUDA OR TORCH_CUDA_LIBRARIES)
    set(RETINA_HAVE_CUDA ON)
  elseif(RETINA_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "RETINA_WITH_CUDA=ON but libtorch at ${Torch_DIR} was built "
                        "without CUDA: point Torch_DIR at a CUDA libtorch")
  endif()
endif()

# --- NCCL: header + library, from CUDA_HOME, /usr/local/cuda or the system -----
set(RETINA_HAVE_NCCL OFF)
if(NOT RETINA_WITH_NCCL STREQUAL "OFF")
  set(_nccl_hints $ENV{NCCL_HOME} $ENV{CUDA_HOME} /usr/local/cuda)
  find_path(RETINA_NCCL_INCLUDE_DIR nccl.h HINTS ${_nccl_hints} PATH_SUFFIXES include)
  find_library(RETINA_NCCL_LIBRARY nccl HINTS ${_nccl_hints} PATH_SUFFIXES lib64 lib)
  find_path(RETINA_CUDART_INCLUDE_DIR cuda_runtime.h HINTS ${_nccl_hints} PATH_SUFFIXES include)
  find_library(RETINA_CUDART_LIBRARY cudart HINTS ${_nccl_hints} PATH_SUFFIXES lib64 lib)
  if(RETINA_NCCL_INCLUDE_DIR AND RETINA_NCCL_LIBRARY AND RETINA_CUDART_INCLUDE_DIR
     AND RETINA_CUDART_LIBRARY)
    set(RETINA_HAVE_NCCL ON)
    add_library(retina::nccl INTERFACE IMPORTED)
    # SYSTEM: CUDA headers are not ours to warn about.
    set_target_properties(retina::nccl PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${RETINA_NCCL_INCLUDE_DIR};${RETINA_CUDART_INCLUDE_DIR}"
      INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${RETINA_NCCL_INCLUDE_DIR};${RETINA_CUDART_INCLUDE_DIR}"
      INTERFACE_LINK_LIBRARIES "${RETINA_NCCL_LIBRARY};${RETINA_CUDART_LIBRARY}")
  elseif(RETINA_WITH_NCCL STREQUAL "ON")
    message(FATAL_ERROR "RETINA_WITH_NCCL=ON but nccl.h/libnccl/libcudart were not found: "
                        "set NCCL_HOME or CUDA_HOME (e.g. /usr/local/cuda)")
  endif()
endif()

# --- MPI ---------------------------------------------------------------------
set(RETINA_HAVE_MPI OFF)
if(NOT RETINA_WITH_MPI STREQUAL "OFF")
  find_package(MPI COMPONENTS C QUIET)
  if(MPI_C_FOUND)
    set(RETINA_HAVE_MPI ON)
  elseif(RETINA_WITH_MPI STREQUAL "ON")
    message(FATAL_ERROR "RETINA_WITH_MPI=ON but no MPI was found: install libopenmpi-dev "
                        "(${_retina_setup_hint}) or load your cluster's MPI module")
  endif()
endif()

# --- Test peers: Debian's python3 with torch, h5py, ... ------------------------
# The tests call a Python that has PyTorch; prefer the system one, where Debian's
# python3-torch lives, over a pyenv/conda python3 earlier on PATH.
find_program(RETINA_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT RETINA_PYTHON3)
  find_program(RETINA_PYTHON3 NAMES python3)
endif()
