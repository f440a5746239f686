// embedding on CUDA against the CPU op: the gather from every stored table dtype into f32 or bf16
// activations, and the deterministic scatter-add backward with repeated ids (overwritten and
// accumulated). Both are exact: the gather converts each value once, rounding as the CPU's
// Tensor::to does, and the backward adds the same rows in the same order as the CPU loop.
#include <algorithm>

#include "backend/backend_harness.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/embedding.h"

namespace dseek::backend_test {
namespace {

struct EmbeddingCase {
  int64_t V, D, T;
};
const std::vector<EmbeddingCase> kCases = {{1, 1, 1},       {5, 7, 1},      {19, 7, 13},
                                           {1000, 64, 257}, {50, 111, 300}, {1000, 7168, 257}};

// T ids in [0, V): mostly random (many repeats when T > V), with runs of one id at the start and
// the end (the first and last sorted positions) and the largest id.
std::vector<int32_t> make_ids(int64_t V, int64_t T, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, int32_t(V - 1));
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (int32_t& id : ids) id = dist(rng);
  if (T >= 4) {
    ids[0] = ids[2] = 0;
    ids[1] = ids[size_t(T - 1)] = int32_t(V - 1);
  }
  return ids;
}

TEST(BackendOps, Embedding) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(51);
  for (DType table_dtype : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
    for (DType act : kActDtypes) {
      for (const EmbeddingCase& c : kCases) {
        const Shape shape{c.T, c.D};
        const Tensor table = rand({c.V, c.D}, rng, 3.0f).to(table_dtype);
        const std::vector<int32_t> ids = make_ids(c.V, c.T, rng);
        const Tensor want = rounded(ops::embedding(table, ids), act);
        const Tensor tg = table.to(Device::CUDA);
        const Tensor got = ops::embedding(tg, ids, act);
        EXPECT_EQ(got.dtype(), act);
        EXPECT_TRUE(got.is_cuda());
        const std::string name = "embedding " + std::string(dtype_name(table_dtype)) + " table";
        expect_close(name, shape, act, want, got, {0, 0});
#ifdef DSEEK_HAS_CUDA
        const Tensor id_tensor = Tensor::from_ids(ids).to(Device::CUDA);
        Tensor out = Tensor::poisoned(shape, act, Device::CUDA);
        ops::cuda::embedding(tg.raw(), table_dtype, id_tensor.data<int32_t>(), c.T, c.D, out.raw(),
                             act);
        expect_close(name + " (poisoned out)", shape, act, want, out, {0, 0});
#endif
      }
    }
  }
}

TEST(BackendOps, EmbeddingErrors) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(52);
  const Tensor table = rand({4, 3}, rng).to(Device::CUDA);
  try {
    ops::embedding(table, {1, 4});
    FAIL() << "out-of-range id accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 4 at position 1"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ops::embedding(table, {-1}), Error);
  EXPECT_THROW(ops::embedding(table, {0}, DType::F16), Error);
  EXPECT_THROW(ops::embedding(table.to(Device::CPU), {0}, DType::BF16), Error);
  const Tensor empty = ops::embedding(table, {}, DType::BF16);
  EXPECT_EQ(empty.shape(), (Shape{0, 3}));
  EXPECT_TRUE(empty.is_cuda());
  Tensor dtable = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  EXPECT_THROW(
      ops::embedding_backward_accumulate({0, 4}, rand({2, 3}, rng).to(Device::CUDA), dtable),
      Error);
  EXPECT_THROW(ops::embedding_backward_accumulate({0, 1}, rand({2, 3}, rng), dtable), Error);
}

TEST(BackendOps, EmbeddingBackward) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(53);
  for (DType act : kActDtypes) {
    for (const EmbeddingCase& c : kCases) {
      for (bool one_id : {false, true}) {
        const Shape shape{c.V, c.D};
        std::vector<int32_t> ids = make_ids(c.V, c.T, rng);
        if (one_id) std::fill(ids.begin(), ids.end(), int32_t(c.V / 2));  // one run of T rows
        const Tensor dy = rand({c.T, c.D}, rng, 2.0f);
        const Tensor dyr = rounded(dy, act), dyg = on_gpu(dy, act);
        const std::string name = std::string("embedding_backward") + (one_id ? " one id" : "") +
                                 " T=" + std::to_string(c.T);
        // Overwriting form: rows never looked up are 0.
        const Tensor want = ops::embedding_backward(ids, dyr, c.V);
        const Tensor got = ops::embedding_backward(ids, dyg, c.V);
        EXPECT_EQ(got.dtype(), DType::F32);
        EXPECT_TRUE(got.is_cuda());
        expect_close(name, shape, act, want, got, {0, 0});
        // Accumulating form, from a known non-zero table.
        const Tensor base = rand(shape, rng);
        Tensor want_acc = base.clone();
        ops::embedding_backward_accumulate(ids, dyr, want_acc);
        Tensor got_acc = base.to(Device::CUDA);
        ops::embedding_backward_accumulate(ids, dyg, got_acc);
        expect_close(name + " (+=)", shape, act, want_acc, got_acc, {0, 0});
        // Deterministic: a second run gives the same bits.
        Tensor again = base.to(Device::CUDA);
        ops::embedding_backward_accumulate(ids, dyg, again);
        expect_close(name + " (rerun)", shape, act, got_acc, again, {0, 0});
      }
    }
  }
}

}  // namespace
}  // namespace dseek::backend_test
