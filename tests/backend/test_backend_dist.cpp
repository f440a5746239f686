// The NCCL process group (dist/nccl_process_group.h) on real ranks, one GPU each: this binary
// relaunched under `mpirun -np 2`, each rank taking GPU `local rank` (on a machine with one GPU:
// one rank in this process, a communicator of one). Every collective against a reference computed
// on the host from every rank's inputs (outputs poisoned with NaN first), in NCCL's order and in
// the deterministic rank order, with equal and unequal blocks, empty blocks and HFReduce's staging
// through pinned host memory; and ZeRO-1 (train/data_parallel.h) over NCCL against AdamW on the
// summed gradients; and expert parallelism's MoE layer with its token exchange over NCCL
// (train/expert_exchange.h) against one GPU. Skips without a GPU or NCCL (and, for 2 ranks, MPI
// and mpirun).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend_harness.h"
#include "core/cuda.h"
#include "dist/nccl_process_group.h"
#include "dist/process_group.h"
#include "dist/rank_gpu.h"
#include "dist_params.h"
#include "mpi_run.h"
#include "train/data_parallel.h"
#include "train/expert_parallel.h"
#include "train/layers.h"
#include "train/optimizer.h"
#include "train/train_config.h"
#include "train/train_model.h"

namespace dseek::backend_test {
namespace {

using testing::expect_tensors_identical;
using testing::make_params;
using testing::random_rows;
using testing::rank_gradients;
using testing::summed_gradients;

// Runs `body` on min(2, GPUs) ranks: this test relaunched under mpirun on 2 GPUs, in this process
// (a group of one) on 1; skips without a GPU or NCCL. Under mpirun (launcher_world_size() > 1)
// it is the rank's part.
void on_gpu_ranks(const std::string& test, const std::function<void(bool under_mpi)>& body) {
  if (dist::launcher_world_size() > 1) {
    body(true);
    return;
  }
  if (!dist::nccl_available()) GTEST_SKIP() << "this dseek was built without NCCL";
  const int gpus = cuda::device_count();
  if (gpus == 0) GTEST_SKIP() << "no CUDA device here";
  if (gpus >= 2 && dist::mpi_available() && !testing::find_mpirun().empty()) {
    testing::run_test_on_ranks(test, 2);
    return;
  }
  std::printf("[backend] %d GPU%s: NCCL with one rank in this process\n", gpus,
              gpus == 1 ? "" : "s (no MPI)");
  body(false);
}

// Block sizes for N ranks from a two-rank pattern {a, b}: rank 0 gets a, the others b.
std::vector<int64_t> blocks(int N, int64_t a, int64_t b) {
  std::vector<int64_t> c(size_t(N), b);
  c[0] = a;
  return c;
}

// Rank r's input element i: distinct per rank and element, not integers (so the summation order
// shows in the bits).
float input(int r, int64_t i, int salt) {
  return std::sin(float(i + 1) * 0.37f + float(r) * 1.91f + float(salt)) * float(1 + r + i % 5);
}
std::vector<float> inputs(int r, int64_t n, int salt) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = input(r, i, salt);
  return v;
}
// Σ_r input(r, i) in rank order, f32 (what the deterministic mode must give bit for bit).
std::vector<float> rank_order_sum(int ranks, int64_t n, int salt) {
  std::vector<float> s = inputs(0, n, salt);
  for (int r = 1; r < ranks; ++r)
    for (int64_t i = 0; i < n; ++i) s[size_t(i)] += input(r, i, salt);
  return s;
}

Tensor on_gpu(const std::vector<float>& v) {
  return Tensor::from_vector(v, {int64_t(v.size())}).to(Device::CUDA);
}
Tensor poisoned_gpu(int64_t n) {
  return on_gpu(std::vector<float>(size_t(n), std::numeric_limits<float>::quiet_NaN()));
}
std::span<float> span_of(const Tensor& t) {
  return {t.data<float>(), size_t(t.numel())};
}

// Bitwise when `exact`, else within 1e-6 relative to the values' scale (NCCL's order).
void expect_sums(const std::vector<float>& got, const std::vector<float>& want, bool exact,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float scale = 0;
  for (float x : want) scale = std::max(scale, std::fabs(x));
  for (size_t i = 0; i < got.size(); ++i) {
    if (exact) {
      ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0)
          << what << "[" << i << "]: " << got[i] << " vs " << want[i];
    } else {
      ASSERT_LE(std::fabs(got[i] - want[i]), 1e-6f * scale + 1e-30f)
          << what << "[" << i << "]: " << got[i] << " vs " << want[i];
    }
  }
}

// The NCCL group over the MPI world (under mpirun) or over this process alone.
std::unique_ptr<dist::ProcessGroup> nccl_on_this_rank(bool under_mpi) {
  if (under_mpi) dist::init_world(nullptr, nullptr);
  dist::ProcessGroup& w = dist::world();
  dist::select_rank_gpu(w);  // before anything starts the CUDA runtime
  return dist::make_nccl_group(w);
}

void collectives_on_this_rank(bool under_mpi) {
  std::unique_ptr<dist::ProcessGroup> g = nccl_on_this_rank(under_mpi);
  const int rank = g->rank(), N = g->size();
  ASSERT_EQ(N, under_mpi ? 2 : 1);
  EXPECT_EQ(g->backend(), "nccl");
  EXPECT_EQ(g->device(), Device::CUDA);
  EXPECT_EQ(cuda::device_ordinal(), g->local_rank());

  for (int det = 0; det < 2; ++det) {
    SCOPED_TRACE(det ? "deterministic" : "NCCL order");
    g->set_deterministic(det != 0);
    const bool exact = det != 0;
    // all-reduce in place: 1, 7 and 100003 elements.
    for (int64_t n : {1, 7, 100003}) {
      const Tensor t = on_gpu(inputs(rank, n, 1));
      g->all_reduce_async(span_of(t))->wait();
      expect_sums(t.to_vector(), rank_order_sum(N, n, 1), exact, "all_reduce " + std::to_string(n));
    }
    // reduce-scatter, equal and unequal blocks (an empty one included).
    for (const std::vector<int64_t>& counts :
         {blocks(N, 5, 5), blocks(N, 3, 8), blocks(N, 0, 6), blocks(N, 70001, 3)}) {
      const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t(0));
      int64_t from = 0;
      for (int q = 0; q < rank; ++q) from += counts[size_t(q)];
      const Tensor send = on_gpu(inputs(rank, total, 2));
      const Tensor recv = poisoned_gpu(counts[size_t(rank)]);
      auto work = g->reduce_scatter_async(span_of(send), span_of(recv), counts);
      while (!work->test()) {
      }
      work->wait();
      const std::vector<float> all = rank_order_sum(N, total, 2);
      expect_sums(recv.to_vector(),
                  std::vector<float>(all.begin() + from, all.begin() + from + counts[size_t(rank)]),
                  exact, "reduce_scatter " + std::to_string(counts[0]));
    }
  }
  g->set_deterministic(false);

  // all-gather, equal and unequal blocks.
  for (const std::vector<int64_t>& counts :
       {blocks(N, 4, 4), blocks(N, 2, 9), blocks(N, 6, 0), blocks(N, 3, 65537)}) {
    const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t(0));
    const Tensor mine = on_gpu(inputs(rank, counts[size_t(rank)], 3));
    const Tensor all = poisoned_gpu(total);
    g->all_gather_async(span_of(mine), span_of(all), counts)->wait();
    std::vector<float> want;
    for (int q = 0; q < N; ++q) {
      const std::vector<float> b = inputs(q, counts[size_t(q)], 3);
      want.insert(want.end(), b.begin(), b.end());
    }
    expect_sums(all.to_vector(), want, true, "all_gather " + std::to_string(counts[0]));
    // ... and gathered on the last rank only.
    const int root = N - 1;
    const Tensor at_root = poisoned_gpu(rank == root ? total : 0);
    g->gather(span_of(mine), span_of(at_root), counts, root);
    if (rank == root) expect_sums(at_root.to_vector(), want, true, "gather");
  }

  // Broadcast from the last rank.
  {
    const Tensor t = on_gpu(inputs(rank, 1000, 4));
    g->broadcast_async(span_of(t), N - 1)->wait();
    expect_sums(t.to_vector(), inputs(N - 1, 1000, 4), true, "broadcast");
  }

  // All-to-all with an empty block: rank r sends (r + 2q + 1) % 4 elements to rank q, the block
  // for q holding input(r, ·, 10 + q).
  {
    auto count = [](int from, int to) { return int64_t((from + 2 * to + 1) % 4); };
    std::vector<int64_t> sc, rc;
    std::vector<float> send, want;
    for (int q = 0; q < N; ++q) {
      sc.push_back(count(rank, q));
      rc.push_back(count(q, rank));
      const std::vector<float> out = inputs(rank, sc.back(), 10 + q);
      send.insert(send.end(), out.begin(), out.end());
      const std::vector<float> in = inputs(q, rc.back(), 10 + rank);
      want.insert(want.end(), in.begin(), in.end());
    }
    const Tensor s = on_gpu(send);
    const Tensor r = poisoned_gpu(int64_t(want.size()));
    g->all_to_all_v(span_of(s), sc, span_of(r), rc);
    expect_sums(r.to_vector(), want, true, "all_to_all_v");
  }

  // Point to point, both directions at once (2 ranks).
  if (N == 2) {
    const int peer = 1 - rank;
    const Tensor out = on_gpu(inputs(rank, 4099, 5));
    const Tensor in = poisoned_gpu(4099);
    auto s = g->send_async(span_of(out), peer, 7);
    auto r = g->recv_async(span_of(in), peer, 7);
    s->wait();
    r->wait();
    expect_sums(in.to_vector(), inputs(peer, 4099, 5), true, "send/recv");
  }

  // HFReduce through pinned host memory: the same sums (one node of N ranks). Small buffers, and
  // buffers of several staging chunks (1M elements) whose blocks start inside a chunk.
  g->set_all_reduce_algorithm(dist::AllReduceAlgorithm::HfReduce);
  EXPECT_NE(g->all_reduce_description().find("through pinned host memory"), std::string::npos);
  struct Sizes {
    int64_t n, a, b;  // all-reduce elements; reduce-scatter blocks (rank 0: a, the others: b)
  };
  for (const Sizes z : {Sizes{30011, 7, 30004}, Sizes{2500007, 1500001, 1300000}})
    for (int det = 0; det < 2; ++det) {
      SCOPED_TRACE("hfreduce, " + std::to_string(z.n) + " elements, deterministic " +
                   std::to_string(det));
      dist::world().set_deterministic(det != 0);
      g->set_deterministic(det != 0);
      const Tensor t = on_gpu(inputs(rank, z.n, 6));
      g->all_reduce_async(span_of(t))->wait();
      expect_sums(t.to_vector(), rank_order_sum(N, z.n, 6), det != 0, "hfreduce all_reduce");
      const std::vector<int64_t> counts = blocks(N, z.a, z.b);
      const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t(0));
      const Tensor send = on_gpu(inputs(rank, total, 7));
      const Tensor recv = poisoned_gpu(counts[size_t(rank)]);
      g->reduce_scatter_async(span_of(send), span_of(recv), counts)->wait();
      const std::vector<float> all = rank_order_sum(N, total, 7);
      const int64_t from = rank == 0 ? 0 : z.a + z.b * (rank - 1);
      expect_sums(recv.to_vector(),
                  std::vector<float>(all.begin() + from, all.begin() + from + counts[size_t(rank)]),
                  det != 0, "hfreduce reduce_scatter");
    }
  g->set_all_reduce_algorithm(dist::AllReduceAlgorithm::Mpi);

  // Bad calls are errors naming the operation.
  const Tensor small = on_gpu({1, 2, 3});
  EXPECT_THROW(g->reduce_scatter_async(span_of(small), span_of(small), blocks(N, 1, 1)), Error);
  EXPECT_THROW(g->send_async(span_of(small), rank, 0), Error);
  g.reset();
  if (under_mpi) dist::finalize_world();
}

// This rank's rank_gradients at `step` into the GPU set `gpu` (made on the host in `host`).
void gpu_rank_gradients(train::ParamSet& gpu, train::ParamSet& host, int rank, int step) {
  rank_gradients(host, rank, step);
  for (size_t i = 0; i < gpu.size(); ++i)
    if (gpu.all()[i].trainable)
      train::copy_values(gpu.all()[i].grad, host.all()[i].grad, gpu.all()[i].name);
}

void zero_one_on_this_rank(bool under_mpi) {
  std::unique_ptr<dist::ProcessGroup> g = nccl_on_this_rank(under_mpi);
  const train::AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
  for (int det = 0; det < 2; ++det)
    for (int64_t bucket : {7, 64, 100000}) {
      SCOPED_TRACE("deterministic " + std::to_string(det) + ", bucket " + std::to_string(bucket));
      g->set_deterministic(det != 0);
      train::ParamSet a, b, scratch, mine;
      make_params(a);
      make_params(b);
      make_params(scratch);
      make_params(mine);
      train::AdamW reference(a, config);
      train::DataParallel dp(*g, b, config, 2, bucket);
      b.to(Device::CUDA);
      for (int step = 0; step < 3; ++step) {
        // The reference on the host: every rank's gradients summed in rank order, one AdamW step.
        // Unclipped here (max_norm 0: the GPU's double norm may differ from the host's in the
        // last bit, and so the clip factor); clipping is checked with a tolerance below.
        summed_gradients(a, scratch, g->size(), step);
        const double norm = train::clip_grad_norm(a, 0.0);
        reference.step(1e-2);
        // ZeRO-1 over NCCL: this rank's gradients on its GPU, reduced as backward would announce
        // its blocks.
        gpu_rank_gradients(b, mine, g->rank(), step);
        dp.arm();
        for (int64_t layer : {2, 1, 0}) dp.on_block_backward(layer);
        dp.reduce_gradients();
        EXPECT_NEAR(dp.clip_grad_norm(0.0), norm, 1e-12 * norm);
        dp.step(1e-2);
        for (size_t i = 0; i < a.size(); ++i) {
          const std::vector<float> want = a.all()[i].value.to_vector();
          const std::vector<float> got = b.all()[i].value.to_vector();
          EXPECT_EQ(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)), 0)
              << "rank " << g->rank() << " step " << step << ": " << a.all()[i].name;
        }
      }
      const auto gathered = dp.gather_state();
      if (g->rank() == 0) {
        expect_tensors_identical(gathered, reference.state_tensors(), "gathered moments");
      } else {
        EXPECT_TRUE(gathered.empty());
      }
      const auto full = reference.state_tensors();
      train::DataParallel again(*g, b, config, 2, bucket + 3);
      again.load_state(std::map<std::string, Tensor>(full.begin(), full.end()), 3);
      EXPECT_EQ(again.exp_avg_shard(), dp.exp_avg_shard());
      EXPECT_EQ(again.exp_avg_sq_shard(), dp.exp_avg_sq_shard());

      // Clipping: the norm of the summed gradients and the clipped step, within rounding.
      gpu_rank_gradients(b, mine, g->rank(), 9);
      summed_gradients(a, scratch, g->size(), 9);
      const double clipped = train::clip_grad_norm(a, 3.0);
      reference.step(1e-2);
      dp.reduce_gradients();
      EXPECT_NEAR(dp.clip_grad_norm(3.0), clipped, 1e-12 * clipped);
      dp.step(1e-2);
      for (size_t i = 0; i < a.size(); ++i) {
        const std::vector<float> want = a.all()[i].value.to_vector();
        const std::vector<float> got = b.all()[i].value.to_vector();
        for (size_t k = 0; k < want.size(); ++k)
          EXPECT_NEAR(got[k], want[k], 1e-6f * (1 + std::fabs(want[k]))) << a.all()[i].name;
      }
    }
  g.reset();
  if (under_mpi) dist::finalize_world();
}

// |a − b| ≤ rel·|b| + abs·max|b| elementwise, on host copies.
void expect_close(const Tensor& got, const Tensor& want, double rel, double abs,
                  const std::string& what) {
  const std::vector<float> a = got.to(DType::F32).to_vector(), b = want.to(DType::F32).to_vector();
  ASSERT_EQ(a.size(), b.size()) << what;
  double scale = 0;
  for (float x : b) scale = std::max(scale, double(std::fabs(x)));
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    bad += !(std::fabs(double(a[i]) - double(b[i])) <= rel * std::fabs(double(b[i])) + abs * scale);
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << a.size() << " differ (scale " << scale
                    << ")";
}

void expert_parallel_on_this_rank(bool under_mpi) {
  std::unique_ptr<dist::ProcessGroup> g = nccl_on_this_rank(under_mpi);
  const int N = g->size(), me = g->rank();

  // The group's parts (split: every rank together, then each alone), and bf16 rows through each:
  // rank p sends (p + 2q) % 3 + 1 rows to rank q, into a NaN-poisoned buffer. Values are small
  // integers and halves, exact in bf16.
  for (const bool alone : {false, true}) {
    SCOPED_TRACE(alone ? "split: each rank alone" : "split: all ranks");
    std::unique_ptr<dist::ProcessGroup> part = g->split(alone ? me : 0);
    const int n = part->size(), r = part->rank();
    EXPECT_EQ(part->backend(), "nccl");
    EXPECT_EQ(n, alone ? 1 : N);
    EXPECT_EQ(r, alone ? 0 : me);
    const int64_t cols = 3;
    std::vector<int64_t> sc(static_cast<size_t>(n)), rc(static_cast<size_t>(n));
    std::vector<float> send;
    for (int q = 0; q < n; ++q) {
      sc[size_t(q)] = (r + 2 * q) % 3 + 1;
      rc[size_t(q)] = (q + 2 * r) % 3 + 1;
      for (int64_t i = 0; i < sc[size_t(q)]; ++i)
        for (int64_t j = 0; j < cols; ++j)
          send.push_back(float(64 * r + 16 * q + 2 * i) + 0.5f * j);
    }
    int64_t total = 0;
    for (int64_t c : rc) total += c;
    const Tensor send_rows = Tensor::from_vector(send, {int64_t(send.size()) / cols, cols})
                                 .to(DType::BF16)
                                 .to(Device::CUDA);
    Tensor recv_rows =
        Tensor::from_vector(std::vector<float>(size_t(total * cols), std::nanf("")), {total, cols})
            .to(DType::BF16)
            .to(Device::CUDA);
    part->all_to_all_v_rows(send_rows, sc, recv_rows, rc);
    const std::vector<float> got = recv_rows.to(DType::F32).to_vector();
    size_t at = 0;
    for (int q = 0; q < n; ++q)
      for (int64_t i = 0; i < rc[size_t(q)]; ++i)
        for (int64_t j = 0; j < cols; ++j)
          EXPECT_EQ(got[at++], float(64 * q + 16 * r + 2 * i) + 0.5f * j) << "from rank " << q;
    // Host tensors are refused by a GPU group.
    EXPECT_THROW(part->all_to_all_v_rows(send_rows.to(Device::CPU), sc, recv_rows, rc), Error);
  }

  // The tiny preset's first MoE layer; rank r holds 13 + 8r of the batch's tokens, the reference
  // one GPU process all of them.
  for (const DType act : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(act == DType::F32 ? "f32" : "bf16");
    const ModelConfig cfg = train::preset_model_config("tiny", 300);
    const std::string prefix = "model.layers.1.mlp";
    ASSERT_TRUE(cfg.is_moe_layer(1));
    const RopeParams rope = rope_params(cfg);
    train::ParamSet ref_params, ep_params;
    train::TrainModel::init_params(cfg, 21, 0.1, ref_params);
    train::TrainModel::init_params(cfg, 21, 0.1, ep_params);
    for (train::ParamSet* ps : {&ref_params, &ep_params}) {
      ps->to(Device::CUDA);
      ps->set_compute_dtype(act);
    }
    std::vector<int64_t> first(size_t(N + 1), 0);
    for (int q = 0; q < N; ++q) first[size_t(q + 1)] = first[size_t(q)] + 13 + 8 * q;
    const int64_t T = first.back(), D = cfg.hidden_size;
    const Tensor x = random_rows(T, D, 3).to(act).to(Device::CUDA);
    const Tensor dy = random_rows(T, D, 4).to(act).to(Device::CUDA);
    train::BalanceOptions balance;
    balance.aux_loss = "expert";
    balance.alpha = 0.1;

    const train::LayerContext ref_ctx{cfg, rope, ref_params};
    train::MoeCache ref_cache;
    const Tensor ref_out = train::moe_forward(ref_ctx, prefix, x, {T}, balance, ref_cache);
    const Tensor ref_dx = train::moe_backward(ref_ctx, prefix, ref_cache, dy, 1.0f);

    const train::ExpertParallel ep = train::make_expert_parallel(*g, cfg, N);
    const train::LayerContext ep_ctx{cfg, rope, ep_params, &ep};
    train::MoeCache ep_cache;
    const int64_t lo = first[size_t(me)], hi = first[size_t(me + 1)];
    const Tensor x_mine = x.slice(0, lo, hi).contiguous();
    const Tensor dy_mine = dy.slice(0, lo, hi).contiguous();
    const Tensor out = train::moe_forward(ep_ctx, prefix, x_mine, {hi - lo}, balance, ep_cache);
    const Tensor dx = train::moe_backward(ep_ctx, prefix, ep_cache, dy_mine, 1.0f / float(N));
    EXPECT_TRUE(ep_cache.ops_path);
    EXPECT_EQ(ep_cache.exchange.recv_rows.size(), size_t(N));
    EXPECT_LE(ep_cache.exchange.max_ranks, train::node_limit(cfg, N));

    // Row for row the same GEMMs: f32 within summation order, bf16 within its rounding.
    const double rel = act == DType::F32 ? 1e-5 : 2e-2, abs = act == DType::F32 ? 1e-6 : 1e-2;
    expect_close(out, ref_out.slice(0, lo, hi), rel, abs, "output");
    expect_close(dx, ref_dx.slice(0, lo, hi), rel, abs, "input gradient");
    EXPECT_NEAR(ep_cache.aux_loss, ref_cache.aux_loss, 1e-6 * ref_cache.aux_loss);
    if (act != DType::F32) continue;

    // Gradients: the replicated ones summed over the ranks, each routed expert's on its owner
    // alone, the others untouched.
    const std::vector<int64_t> load = train::moe_expert_load(ref_cache);
    for (train::Param& p : ep_params.all()) {
      if (!p.trainable || p.name.rfind(prefix + ".", 0) != 0) continue;
      const train::Param& r = ref_params.at(p.name);
      const int64_t e = train::routed_expert_of(p.name);
      if (e < 0) {
        g->all_reduce(span_of(p.grad));
        expect_close(p.grad, r.grad, 1e-5, 1e-6, p.name);
      } else if (ep.owns(e)) {
        if (load[size_t(e)] > 0) expect_close(p.grad, r.grad, 1e-5, 1e-6, p.name);
      } else {
        const std::vector<float> v = p.grad.to_vector();
        EXPECT_EQ(std::count(v.begin(), v.end(), 0.0f), int64_t(v.size()))
            << p.name << " on a rank that does not own it";
      }
    }

    // The owned experts' AdamW on the GPU (ExpertShard) against AdamW over one GPU's parameters.
    const train::AdamWConfig config{0.9, 0.95, 1e-8, 0.1};
    train::AdamW reference(ref_params, config);
    reference.to(Device::CUDA);
    reference.step(1e-2);
    train::ExpertShard shard(ep, ep_params, config);
    shard.reduce_grads();
    int64_t owned = 0;
    for (const train::Param& p : ep_params.all()) {
      const int64_t e = train::routed_expert_of(p.name);
      owned += p.trainable && e >= 0 && ep.owns(e);
    }
    EXPECT_EQ(int64_t(shard.grads().size()), owned);
    EXPECT_GT(owned, 0);
    shard.step(1e-2);
    for (train::Param& p : ep_params.all()) {
      const int64_t e = train::routed_expert_of(p.name);
      if (e < 0 || !ep.owns(e) || p.name.rfind(prefix + ".", 0) != 0) continue;
      expect_close(p.value, ref_params.at(p.name).value, 0.0, 1e-5, p.name + " after a step");
    }
    // Its moments gathered on rank 0 (through NCCL) are AdamW's for the layer's experts.
    const auto state = shard.gather_state();
    if (me == 0) {
      std::map<std::string, Tensor> want;
      for (auto& [name, t] : reference.state_tensors()) want[name] = t;
      int64_t checked = 0;
      for (const auto& [name, t] : state) {
        if (name.find(prefix + ".experts.") == std::string::npos) continue;
        ASSERT_TRUE(want.count(name)) << name;
        expect_close(t, want.at(name), 1e-4, 1e-6, name);
        ++checked;
      }
      EXPECT_EQ(checked, 2 * 3 * cfg.n_routed_experts);
    } else {
      EXPECT_TRUE(state.empty());
    }
  }
  g.reset();
  if (under_mpi) dist::finalize_world();
}

// Expert parallelism over NCCL (2 ranks on 2 GPUs, or one rank in this process): the group's
// split parts move bf16 rows between the right ranks and places; the MoE layer with its routed
// experts spread over the ranks gives, for each rank's tokens, one GPU's outputs and input
// gradients (f32 within summation order, bf16 within its rounding) and balance loss, the
// replicated gradients summed, each expert's full gradient on its owner and none elsewhere; the
// owners' AdamW (ExpertShard, on the GPU) steps like AdamW over one GPU's parameters, and its
// moments gather on rank 0.
TEST(BackendNccl, ExpertParallelMoeEqualsOneGpu) {
  on_gpu_ranks("BackendNccl.ExpertParallelMoeEqualsOneGpu", expert_parallel_on_this_rank);
}

// NCCL's library loads at run time (no GPU needed) and has every function the group calls. Skips
// in a build without NCCL, or where no NCCL library is installed (the error then names where it
// looked: the multi-GPU tests below fail with it).
TEST(BackendNccl, LibraryLoadsAtRunTime) {
  if (!dist::nccl_available()) GTEST_SKIP() << "this dseek was built without NCCL";
  std::string version;
  try {
    version = dist::nccl_version();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("cannot load NCCL's library") == std::string::npos) throw;
    GTEST_SKIP() << what;
  }
  std::printf("[backend] NCCL %s loaded at run time\n", version.c_str());
  EXPECT_EQ(version.rfind("2.", 0), 0u) << version;
}

// Every collective of the NCCL group on 2 ranks, each on its own GPU (or one rank on a machine
// with one GPU), equals the host's sums of every rank's inputs: bitwise for the deterministic mode,
// the data movements and HFReduce's deterministic mode; within 1e-6 of the values' scale for
// NCCL's own reductions.
TEST(BackendNccl, CollectivesMatchHostReferences) {
  on_gpu_ranks("BackendNccl.CollectivesMatchHostReferences", collectives_on_this_rank);
}

// ZeRO-1 over NCCL, the parameters on each rank's GPU: after each step every rank's parameters
// equal, bit for bit, one host AdamW step on the sum of the ranks' gradients (buckets of 7, 64
// and all elements; NCCL's order and the deterministic one); the moments gathered on rank 0 are
// AdamW's and load back into each shard; a clipped step agrees within rounding.
TEST(BackendNccl, ZeroOneEqualsAdamWOnSummedGradients) {
  on_gpu_ranks("BackendNccl.ZeroOneEqualsAdamWOnSummedGradients", zero_one_on_this_rank);
}

}  // namespace
}  // namespace dseek::backend_test
