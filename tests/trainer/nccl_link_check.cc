// Compiles a translation unit against NCCL's header and links libnccl, so
// the NCCL communicator's toolchain is exercised on machines without a GPU.
// Running it needs no GPU either: ncclGetVersion and ncclGetErrorString are
// host-only calls. Exit status 0 when the library's version equals the
// header's NCCL_VERSION_CODE.
#include <nccl.h>

#include <cstdio>

int main() {
  int version = 0;
  const ncclResult_t rc = ncclGetVersion(&version);
  if (rc != ncclSuccess) {
    std::fprintf(stderr, "ncclGetVersion failed: %s\n", ncclGetErrorString(rc));
    return 1;
  }
  std::printf("NCCL header %d, library %d\n", NCCL_VERSION_CODE, version);
  return version == NCCL_VERSION_CODE ? 0 : 1;
}
