// dist/nccl_process_group.h in a build without NCCL (no CUDA, or CMake did not find nccl.h).
#ifndef DSEEK_HAS_NCCL
#include "core/error.h"
#include "dist/nccl_process_group.h"

namespace dseek::dist {

bool nccl_available() {
  return false;
}

std::string nccl_version() {
  fail("[dist] this dseek was built without NCCL");
}

std::unique_ptr<ProcessGroup> make_nccl_group(ProcessGroup&) {
  fail(
      "[dist] this dseek was built without NCCL (configure with CUDA, cmake -DDSEEK_CUDA=ON, where "
      "nccl.h is in the CUDA toolkit, in NCCL_ROOT or in the nvidia-nccl Python package)");
}

}  // namespace dseek::dist
#endif
