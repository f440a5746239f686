// Running dseek (or any program) the way the multi-rank tests do: under `mpirun`, with stdout and
// stderr in files. Shared by tests/test_train_dist.cpp, tests/test_infer_ep.cpp and
// tests/backend/test_backend_ep.cpp.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "cli_util.h"
#include "dist/process_group.h"

namespace dseek::testing {

// The mpirun on PATH, or "" (the tests then skip).
inline std::string find_mpirun() {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');)
    if (!dir.empty() && ::access((dir + "/mpirun").c_str(), X_OK) == 0) return dir + "/mpirun";
  return "";
}

// Starts `program args` with stdout and stderr into files, one OpenMP thread per process, passive
// waits and mpirun allowed as root; the pid, or -1 (and a test failure).
inline pid_t mpi_spawn(const std::string& program, const std::vector<std::string>& args,
                       const std::filesystem::path& out, const std::filesystem::path& err) {
  std::vector<std::string> argv_text = {program};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  // Under ASan (scripts/test.sh), OpenMPI's allocations that live until exit are suppressed by
  // library (tests/lsan_mpi.supp); LSan's default fast unwinder stops at OpenMPI's frames without
  // frame pointers, so the ranks unwind allocation stacks fully to reach the library names.
  // intercept_tls_get_addr=0: with 4 ranks OpenMPI's dlopened components get dynamic TLS whose
  // bounds GCC's LSan records wrongly (a "DTLS at 0x4030-0x400005132" range), and its exit-time
  // scan then faults in the tracer ("Tracer caught signal 11", exit 134). Not scanning dynamic TLS
  // loses nothing here: dseek's own thread_locals are static TLS, which LSan still scans.
  const std::string lsan = std::string("LSAN_OPTIONS=suppressions=") + DSEEK_SOURCE_DIR +
                           "/tests/lsan_mpi.supp:fast_unwind_on_malloc=0:intercept_tls_get_addr=0";
  return spawn_with_env(std::move(argv_text),
                        {"OMP_WAIT_POLICY=passive", "OMP_NUM_THREADS=1", "OMPI_ALLOW_RUN_AS_ROOT=1",
                         "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", lsan},
                        out, err);
}

// Runs `program args` (as mpi_spawn) to its end.
inline CliRun mpi_run(const std::string& program, const std::vector<std::string>& args) {
  TempDir io("mpi-io");
  const std::filesystem::path out = io.path / "out", err = io.path / "err";
  CliRun r;
  const pid_t pid = mpi_spawn(program, args, out, err);
  if (pid < 0) return r;
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = exit_code_of(status);
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Relaunches this test binary under `mpirun -np ranks`, each rank running only `test` (whose body,
// seeing a launcher's world size above 1, does its rank's part): every rank must pass it. Skips
// without MPI or mpirun.
inline void run_test_on_ranks(const std::string& test, int ranks) {
  if (!dist::mpi_available()) GTEST_SKIP() << "this dseek was built without MPI";
  const std::string mpirun = find_mpirun();
  if (mpirun.empty()) GTEST_SKIP() << "mpirun not found (scripts/setup.sh installs OpenMPI)";
  char self[4096];
  const ssize_t len = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  ASSERT_GT(len, 0);
  self[len] = '\0';
  const CliRun r =
      mpi_run(mpirun, {"-np", std::to_string(ranks), "--bind-to", "none", "--oversubscribe", self,
                       "--gtest_filter=" + test, "--gtest_color=no"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  size_t passed = 0;
  for (size_t at = r.out.find("[  PASSED  ] 1 test"); at != std::string::npos;
       at = r.out.find("[  PASSED  ] 1 test", at + 1))
    ++passed;
  EXPECT_EQ(passed, size_t(ranks)) << r.out;  // every rank ran and passed it
}

}  // namespace dseek::testing
