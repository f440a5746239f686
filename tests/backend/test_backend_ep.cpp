// Expert-parallel inference on the GPU (docs/DISTRIBUTED.md): 2 `mpirun` ranks sharing the GPU
// (or a GPU each, where there are 2), each with half of every MoE layer's routed experts on the
// device (the others' slots point at zero matrices) and the [T, D] partial sums going through the
// host for the MPI all-reduce (with a GPU each: NCCL's deterministic all-reduce on the devices).
// `dseek logits --device cuda --expert-parallel` equals one GPU process (f32: within 1e-5 of the
// logits' scale, and the transformers fixture within its tolerance; bf16: as close to
// transformers as one bf16 GPU process must be), and greedy `dseek generate` prints the same
// tokens. Skips without a CUDA device, MPI or mpirun.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backend_harness.h"
#include "cli_util.h"
#include "dist/process_group.h"
#include "model_fixtures.h"
#include "mpi_run.h"
#include "test_ops_util.h"

extern char** environ;

namespace dseek::backend_test {
namespace {

namespace fs = std::filesystem;
using Args = std::vector<std::string>;
using testing::CliRun;
using testing::TempDir;

using testing::find_mpirun;
using testing::join_ids;
using testing::max_abs_diff;
using testing::read_f32;
// The ranks run through tests/mpi_run.h.
CliRun run(const std::string& program, const Args& args) {
  return testing::mpi_run(program, args);
}

double rel_rms(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size() || want.empty()) return std::numeric_limits<double>::infinity();
  double diff2 = 0, want2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = double(got[i]) - double(want[i]);
    diff2 += d * d;
    want2 += double(want[i]) * double(want[i]);
  }
  const double r = std::sqrt(diff2 / std::max(want2, 1e-30));
  return std::isnan(r) ? std::numeric_limits<double>::infinity() : r;
}

class BackendExpertParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    DSEEK_REQUIRE_CUDA();
    if (!dist::mpi_available()) GTEST_SKIP() << "this dseek was built without MPI";
    mpirun_ = find_mpirun();
    if (mpirun_.empty()) GTEST_SKIP() << "mpirun not found (scripts/setup.sh installs OpenMPI)";
    f_ = testing::load_model_fixture("v3_bf16");
  }

  // `dseek logits --device cuda --dtype act` into a NaN-filled file; on 2 expert-parallel ranks
  // under mpirun, or one process.
  std::vector<float> logits(const std::string& act, int ranks) const {
    TempDir tmp("ep-gpu-logits");
    const fs::path out = tmp.path / "logits.bin";
    {
      std::vector<float> nan(f_.logits.size(), std::numeric_limits<float>::quiet_NaN());
      std::ofstream(out, std::ios::binary)
          .write(reinterpret_cast<const char*>(nan.data()), std::streamsize(nan.size() * 4));
    }
    Args args = {"logits", "--model",    f_.dir.string(), "--ids", join_ids(f_.input_ids),
                 "--out",  out.string(), "--device",      "cuda",  "--dtype",
                 act};
    const CliRun r = ranks > 1 ? mpirun(ranks, args) : run(DSEEK_BINARY, args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    last_err_ = r.err;
    return read_f32(out);
  }

  CliRun mpirun(int ranks, Args dseek_args) const {
    Args a = {"-np", std::to_string(ranks), "--bind-to", "none", "--oversubscribe", DSEEK_BINARY};
    a.insert(a.end(), dseek_args.begin(), dseek_args.end());
    a.push_back("--expert-parallel");
    return run(mpirun_, a);
  }

  std::string mpirun_;
  testing::ModelFixture f_;  // v3_bf16
  mutable std::string last_err_;  // stderr of the last logits() run
};

TEST_F(BackendExpertParallel, F32LogitsOnTwoRanksEqualOneGpu) {
  const std::vector<float> one = logits("f32", 1), two = logits("f32", 2);
  // Where the ranks ran and how their partial sums met: one GPU shared (through the host), or a
  // GPU each (through NCCL on the devices where its library loads).
  const size_t at = last_err_.find("expert parallel inference:");
  ASSERT_NE(at, std::string::npos) << last_err_;
  const std::string line = last_err_.substr(at, last_err_.find('\n', at) - at);
  std::printf("[backend] %s\n", line.c_str());
  EXPECT_NE(line.find(cuda::device_count() >= 2 ? "a GPU per rank" : "the ranks share GPU 0"),
            std::string::npos)
      << line;
  const double scale = max_abs_diff(one, std::vector<float>(one.size(), 0.0f));
  const double vs_one = max_abs_diff(two, one) / scale, vs_ref = max_abs_diff(two, f_.logits);
  std::printf(
      "[backend] expert parallel v3_bf16 f32 2 ranks: max|diff|/max|logit| vs one GPU "
      "%.2e, max abs vs transformers %.2e\n",
      vs_one, vs_ref);
  EXPECT_LE(vs_one, 1e-5);
  EXPECT_LE(vs_ref, f_.tolerance);
}

TEST_F(BackendExpertParallel, Bf16LogitsOnTwoRanksCloseToTransformers) {
  // The partial sums are rounded to bf16 before the sum (one process rounds once), so the bound
  // is the bf16 model's own (test_backend_model.cpp), not one process's bits.
  const std::vector<float> one = logits("bf16", 1), two = logits("bf16", 2);
  const double vs_one = rel_rms(two, one), vs_ref = rel_rms(two, f_.logits);
  std::printf(
      "[backend] expert parallel v3_bf16 bf16 2 ranks: rel_rms vs one GPU %.2e, vs "
      "transformers %.2e (one GPU vs transformers %.2e)\n",
      vs_one, vs_ref, rel_rms(one, f_.logits));
  EXPECT_LE(vs_ref, 0.2);
  EXPECT_LE(vs_one, 0.05);
}

TEST_F(BackendExpertParallel, GreedyGenerateOnTwoRanksEqualsTransformers) {
  const Args args = {"generate",
                     "--model",
                     f_.dir.string(),
                     "--ids",
                     join_ids(f_.greedy_prompt),
                     "--greedy",
                     "-n",
                     std::to_string(f_.greedy_continuation.size()),
                     "--print-ids",
                     "--device",
                     "cuda"};
  const CliRun one = run(DSEEK_BINARY, args), two = mpirun(2, args);
  ASSERT_EQ(one.exit_code, 0) << one.err;
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(two.out, join_ids(f_.greedy_continuation, " ") + "\n");
  EXPECT_EQ(two.out, one.out);
}

}  // namespace
}  // namespace dseek::backend_test
