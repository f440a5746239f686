// The search's evaluator with latency on the GPU (synth/evaluate.h): the device decides where the
// lowered forward is timed, so a CUDA evaluator scores the same candidates as a CPU one — equal
// FLOPs, parameters and teacher-fit quality (the fit runs on the CPU) — with a positive latency,
// and a short search with it evaluates every candidate successfully on 2 jobs.
#include "backend/backend_harness.h"
#include "synth/cost.h"
#include "synth/evaluate.h"
#include "synth/search.h"
#include "synth/task.h"

namespace dseek::backend_test {
namespace {

using namespace dseek::synth;

TEST(BackendSynthSearch, CudaLatencyEvaluatorMatchesTheCpuScores) {
  DSEEK_REQUIRE_CUDA();
  TaskOptions to;
  to.d_in = 64;
  to.d_out = 96;
  to.tokens = 257;
  to.coeffs = {{"g", 4}};
  to.max_depth = 6;
  const Task task = make_task(to);
  AnalyticOptions cpu, gpu;
  cpu.fit.steps = gpu.fit.steps = 20;
  cpu.latency_runs = gpu.latency_runs = 3;
  gpu.device = Device::CUDA;
  const Evaluator on_cpu = make_analytic_evaluator(task, cpu);
  const Evaluator on_gpu = make_analytic_evaluator(task, gpu);

  SearchOptions o;
  o.budget = 12;
  o.batch = 4;
  o.jobs = 2;
  o.ref_flops = flops(task.baseline, task.spec.valuations[0]);
  o.admissible = task.admissible;
  const SearchResult r = search(task.spec, on_gpu, o);
  ASSERT_EQ(r.candidates.size(), 12u);
  for (const Candidate& c : r.candidates) {
    ASSERT_EQ(c.status, "ok") << c.eval.error;
    const Evaluation want = on_cpu(c.op, task.spec.valuations[0]);
    ASSERT_TRUE(want.ok) << want.error;
    EXPECT_EQ(c.eval.flops, want.flops);
    EXPECT_EQ(c.eval.params, want.params);
    EXPECT_EQ(c.eval.quality, want.quality);
    EXPECT_GT(c.eval.latency_ms, 0.0);
    std::printf("%-90s cpu %8.4f ms  cuda %8.4f ms\n", history_str(c.op, task.spec.vars).c_str(),
                want.latency_ms, c.eval.latency_ms);
  }
}

}  // namespace
}  // namespace dseek::backend_test
