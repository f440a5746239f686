// Tensor on CUDA: uploads and downloads, dtype conversion, strided clones and copy_from into views
// (with broadcasting) give exactly what the CPU gives.
#include "backend/backend_harness.h"
#include "core/cuda.h"

namespace dseek::backend_test {
namespace {

TEST(BackendOps, TensorCopiesAndConversions) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(21);
  const Tensor x = rand({5, 7, 9}, rng, 3.0f);
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const Tensor want = x.to(dt);
    const Tensor got = x.to(Device::CUDA).to(dt);  // converted on the device
    EXPECT_TRUE(got.is_cuda());
    expect_close("tensor to(dtype)", x.shape(), dt, want, got, {0, 0});
    // Strided clone (a transposed view) on the device.
    expect_close("tensor transpose().clone()", x.shape(), dt, want.transpose(0, 2).clone(),
                 got.transpose(0, 2).clone(), {0, 0});
  }
  // copy_from into a slice of a poisoned tensor, converting f32 -> bf16, and a broadcast row.
  const Tensor cpu_dst = Tensor::poisoned({5, 12}, DType::BF16);
  const Tensor gpu_dst = Tensor::poisoned({5, 12}, DType::BF16, Device::CUDA);
  const Tensor part = rand({5, 4}, rng);
  cpu_dst.slice(1, 3, 7).copy_from(part);
  gpu_dst.slice(1, 3, 7).copy_from(part.to(Device::CUDA));
  const Tensor row = rand({1, 5}, rng);
  cpu_dst.slice(1, 7, 12).copy_from(row.expand(0, 5));
  gpu_dst.slice(1, 7, 12).copy_from(row.to(Device::CUDA).expand(0, 5));
  const std::vector<float> a = cpu_dst.to_vector(), b = gpu_dst.to_vector();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i])) {
      EXPECT_TRUE(std::isnan(b[i])) << i;  // untouched columns stay poisoned
    } else {
      EXPECT_EQ(a[i], b[i]) << i;
    }
  }
  std::printf("[backend] %-28s %-22s %-4s exact ok\n", "tensor copy_from (views)", "[5, 12]", "bf16");
  // Integer tensors travel unchanged.
  const Tensor ids = Tensor::from_ids({3, -1, 7, 1 << 30});
  const Tensor back = ids.to(Device::CUDA).to(Device::CPU);
  EXPECT_EQ(std::vector<int32_t>(back.data<int32_t>(), back.data<int32_t>() + 4),
            (std::vector<int32_t>{3, -1, 7, 1 << 30}));
}

// cuda::Background's misuse is an error, not a race: allocating inside the scope (the memory could
// go to the main stream while the background still uses it) and waiting for a mark never made.
// A copy queued in the scope is seen by the main stream once it waits for the scope's mark.
TEST(BackendOps, BackgroundStreamMisuseIsAnError) {
  DSEEK_REQUIRE_CUDA();
  const Tensor src = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {4}).to(Device::CUDA);
  const Tensor dst = Tensor::poisoned({4}, DType::F32, Device::CUDA);
  uint64_t mark = 0;
  {
    cuda::Background bg;
    try {
      Tensor::empty({4}, DType::F32, Device::CUDA);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("inside a Background scope"), std::string::npos)
          << e.what();
    }
    dst.copy_from(src);
    mark = bg.mark();
  }
  cuda::wait_background(mark);
  EXPECT_EQ(dst.to_vector(), (std::vector<float>{1, 2, 3, 4}));
  try {
    cuda::wait_background(mark + (uint64_t(1) << 40));  // far past every mark made
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("was never made"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dseek::backend_test
