// bench_moe: MoE layer forward (gate + routed + shared experts) on random BF16 weights, experts
// run in parallel (OpenMP over experts) vs one after another (parallel linear kernels only).
//   bench_moe [--small]   default: a DeepSeek-V2-Lite layer (D 2048, 64 experts of 1408, top-6,
//                         2 shared); --small: D 512, 16 experts of 256, top-4, 1 shared
// Prints milliseconds per forward for several token counts (1 = decode).
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "model/moe.h"

using namespace dseek;

namespace {

Tensor random_weight(const Shape& shape, std::mt19937& rng, DType dtype) {
  std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
  std::vector<float> v(size_t(shape_numel(shape)));
  for (float& f : v) f = dist(rng);
  return Tensor::from_vector(v, shape).to(dtype);
}

double time_ms(const MoE& moe, const Tensor& x, int reps) {
  moe.forward(x);  // warm-up
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i) moe.forward(x);
  const std::chrono::duration<double, std::milli> elapsed =
      std::chrono::steady_clock::now() - start;
  return elapsed.count() / reps;
}

}  // namespace

int main(int argc, char** argv) {
  const bool small = argc > 1 && std::strcmp(argv[1], "--small") == 0;
  ModelConfig c;
  c.model_type = "deepseek_v2";
  c.hidden_size = small ? 512 : 2048;
  c.n_routed_experts = small ? 16 : 64;
  c.moe_intermediate_size = small ? 256 : 1408;
  c.num_experts_per_tok = small ? 4 : 6;
  c.n_shared_experts = small ? 1 : 2;
  const int64_t D = c.hidden_size, I = c.moe_intermediate_size, E = c.n_routed_experts;

  std::mt19937 rng(1);
  std::vector<Mlp> experts;
  for (int64_t e = 0; e < E; ++e) {
    experts.emplace_back(random_weight({I, D}, rng, DType::BF16),
                         random_weight({I, D}, rng, DType::BF16),
                         random_weight({D, I}, rng, DType::BF16));
  }
  const int64_t S = I * c.n_shared_experts;
  std::optional<Mlp> shared(std::in_place, random_weight({S, D}, rng, DType::BF16),
                            random_weight({S, D}, rng, DType::BF16),
                            random_weight({D, S}, rng, DType::BF16));
  MoE moe(Gate(c, random_weight({E, D}, rng, DType::BF16), {}), std::move(experts),
          std::move(shared));

  std::printf("MoE D=%lld E=%lld I=%lld K=%lld, %d threads\n", (long long)D, (long long)E,
              (long long)I, (long long)c.num_experts_per_tok, omp_get_max_threads());
  std::printf("%8s %18s %18s\n", "tokens", "parallel experts", "serial experts");
  for (int64_t T : {1, 16, 64, 256}) {
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> xv(size_t(T * D));
    for (float& f : xv) f = dist(rng);
    const Tensor x = Tensor::from_vector(xv, {T, D});
    const int reps = T <= 16 ? 10 : 3;
    moe.set_parallel_experts(true);
    const double par = time_ms(moe, x, reps);
    moe.set_parallel_experts(false);
    const double ser = time_ms(moe, x, reps);
    std::printf("%8lld %15.2f ms %15.2f ms\n", (long long)T, par, ser);
  }
  return 0;
}
