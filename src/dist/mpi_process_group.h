// The MPI process group (MPI_COMM_WORLD). Only process_group.cpp uses this header: the rest of
// dseek goes through dist::world(). In a build without MPI these functions throw / do nothing.
#pragma once

#include <memory>

#include "dist/process_group.h"

namespace dseek::dist {

// MPI_Init_thread (serialized if offered, at least funneled) and the group over MPI_COMM_WORLD.
std::unique_ptr<ProcessGroup> make_mpi_world(int* argc, char*** argv);
void finalize_mpi();
[[noreturn]] void abort_mpi(int exit_code);

}  // namespace dseek::dist
