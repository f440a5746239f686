// Helpers shared by the tests that run the built dseek binary (DSEEK_BINARY) or need scratch
// files: reading a file whole, a scratch directory per test, and running dseek with its exit code,
// stdout and stderr captured, either without a shell (arguments pass as they are) or through one
// (for tests written as shell command lines).
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

namespace dseek::testing {

// The whole file as bytes; empty when it cannot be opened (the tests then fail on its content).
inline std::string slurp(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream ss;
  ss << file.rdbuf();
  return ss.str();
}

// A fresh, empty scratch directory per instance, removed with everything in it by the destructor.
// The name holds the pid and a process-wide counter, so tests running at the same time (ctest -j
// runs one process per test) and several instances in one test never share a directory.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix = "test") {
    static std::atomic<int> counter{0};
    path = std::filesystem::temp_directory_path() /
           ("dseek-" + prefix + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;  // a destructor must not throw; a leftover directory is harmless
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;  // two owners would remove the directory twice
  TempDir& operator=(const TempDir&) = delete;
};

// What one run of dseek did: its exit code (see exit_code_of) and everything it wrote.
struct CliRun {
  int exit_code = -1;
  std::string out, err;
};

// The exit code from a wait status, or 128 + the signal that killed the process (the shell's
// convention), so a crash is a nonzero code that names the signal; -1 for anything else.
inline int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Starts `argv_text` (the program's path first; no shell, so arguments hold spaces, quotes and
// newlines as they are) with stdin from /dev/null, stdout and stderr into the files `out` and
// `err`, and our environment with each "NAME=value" of `env_overrides` replacing any inherited
// NAME; returns the pid to wait for, or -1 (and a test failure) when it cannot start. spawn_dseek
// and mpi_spawn (mpi_run.h) are this with their own overrides.
inline pid_t spawn_with_env(std::vector<std::string> argv_text,
                            const std::vector<std::string>& env_overrides,
                            const std::filesystem::path& out, const std::filesystem::path& err) {
  std::vector<char*> argv;
  for (std::string& a : argv_text) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<std::string> env_text = env_overrides;
  for (char** e = environ; *e; ++e) {
    bool replaced = false;
    for (const std::string& s : env_overrides)
      replaced |= std::strncmp(*e, s.c_str(), s.find('=') + 1) == 0;
    if (!replaced) env_text.push_back(*e);
  }
  std::vector<char*> env;
  for (std::string& e : env_text) env.push_back(e.data());
  env.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "posix_spawn " << argv[0] << ": " << std::strerror(rc);
  return rc == 0 ? pid : -1;
}

// Starts the dseek binary with `args` as spawn_with_env does; returns the pid to wait for, or -1.
// Tests that signal the process or run several at once use this; the others use run_dseek.
inline pid_t spawn_dseek(const std::vector<std::string>& args, const std::filesystem::path& out,
                         const std::filesystem::path& err) {
  std::vector<std::string> argv_text = {DSEEK_BINARY};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  // OpenMP threads that sleep rather than spin while waiting: on a loaded 2-core machine spinning
  // workers starve each other (a 2-thread run became 10× slower).
  return spawn_with_env(std::move(argv_text), {"OMP_WAIT_POLICY=passive"}, out, err);
}

// Runs the dseek binary with `args` (no shell) to its end, stdin from /dev/null; returns its exit
// code, stdout and stderr. The primary way to run dseek in a test.
inline CliRun run_dseek(const std::vector<std::string>& args) {
  TempDir io("cli");
  CliRun run;
  const pid_t pid = spawn_dseek(args, io.path / "out", io.path / "err");
  if (pid < 0) return run;
  int status = 0;
  ::waitpid(pid, &status, 0);
  run.exit_code = exit_code_of(status);
  run.out = slurp(io.path / "out");
  run.err = slurp(io.path / "err");
  return run;
}

// Runs `DSEEK_BINARY <command_line_args>` through /bin/sh (for tests written as shell command
// lines: the caller quotes the arguments, and may add its own redirects), with `stdin_text` as
// stdin and passive OpenMP waits as spawn_dseek has; returns its exit code, stdout and stderr.
// A separate name rather than a run_dseek overload: a braced list of two string literals would
// pick std::string's iterator-pair constructor.
inline CliRun run_dseek_shell(const std::string& command_line_args,
                              const std::string& stdin_text = "") {
  TempDir io("cli");
  std::ofstream(io.path / "in", std::ios::binary) << stdin_text;
  const std::string cmd = "OMP_WAIT_POLICY=passive " + std::string(DSEEK_BINARY) + " " +
                          command_line_args + " < " + (io.path / "in").string() + " > " +
                          (io.path / "out").string() + " 2> " + (io.path / "err").string();
  const int status = std::system(cmd.c_str());
  CliRun run;
  run.exit_code = status == -1 ? -1 : exit_code_of(status);  // -1: no shell could start
  run.out = slurp(io.path / "out");
  run.err = slurp(io.path / "err");
  return run;
}

}  // namespace dseek::testing
