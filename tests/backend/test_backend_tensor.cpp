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

// Same-dtype copies whose innermost dimension is contiguous move whole rows in words of up to 16
// bytes (core/cuda/tensor_copy.cu): MLA's key assembly (a head slice of kv_b's product beside the
// shared k_pe broadcast to every head), row lengths that allow 16-, 8-, 4-, 2-byte words or none,
// views that start off a word boundary, and contiguous() of slices, bit for bit the CPU's copies
// into poisoned tensors (untouched elements stay poisoned).
TEST(BackendOps, TensorRowCopiesOfViews) {
  DSEEK_REQUIRE_CUDA();
  std::mt19937 rng(23);
  auto same = [](const char* what, const Tensor& cpu, const Tensor& gpu) {
    const std::vector<float> a = cpu.to_vector(), b = gpu.to_vector();
    ASSERT_EQ(a.size(), b.size()) << what;
    size_t bad = 0;
    for (size_t i = 0; i < a.size(); ++i)
      bad += std::isnan(a[i]) ? !std::isnan(b[i]) : !(a[i] == b[i]);
    EXPECT_EQ(bad, 0u) << what;
    std::printf("[backend] %-28s %-22s %-4s %s\n", "tensor row copy", what,
                std::string(dtype_name(cpu.dtype())).c_str(), bad ? "FAIL" : "exact ok");
  };
  for (DType dt : {DType::BF16, DType::F32})
    for (auto [T, H, nope, rope] :
         {std::array<int64_t, 4>{37, 5, 16, 8}, {9, 3, 3, 5}, {64, 16, 128, 64}, {3, 2, 1, 1}}) {
      const int64_t qk = nope + rope;
      const Tensor kv = rand({T, H, nope + 7}, rng).to(dt), kpe = rand({T, 1, rope}, rng).to(dt);
      const Tensor kvg = kv.to(Device::CUDA), kpeg = kpe.to(Device::CUDA);
      const Tensor want = Tensor::poisoned({T, H, qk + 2}, dt);
      const Tensor got = Tensor::poisoned({T, H, qk + 2}, dt, Device::CUDA);
      want.slice(2, 0, nope).copy_from(kv.slice(2, 0, nope));
      got.slice(2, 0, nope).copy_from(kvg.slice(2, 0, nope));
      want.slice(2, nope, qk).copy_from(kpe.expand(1, H));
      got.slice(2, nope, qk).copy_from(kpeg.expand(1, H));
      const std::string shape = describe_shape({T, H, nope, rope});
      same(("k = [kv_nope; k_pe] " + shape).c_str(), want, got);
      // Off a word boundary: the views start one element in.
      same(("slice(2, 1, ..).contiguous() " + shape).c_str(), kv.slice(2, 1, nope + 1).contiguous(),
           kvg.slice(2, 1, nope + 1).contiguous());
      const Tensor want2 = Tensor::poisoned({T, H, nope + 3}, dt);
      const Tensor got2 = Tensor::poisoned({T, H, nope + 3}, dt, Device::CUDA);
      want2.slice(2, 1, nope + 1).copy_from(kv.slice(2, 2, nope + 2));
      got2.slice(2, 1, nope + 1).copy_from(kvg.slice(2, 2, nope + 2));
      same(("copy_from, both off words " + shape).c_str(), want2, got2);
      // A transposed view keeps the element-wise kernel (its innermost stride is not 1).
      same(("transpose(0, 1).contiguous() " + shape).c_str(), kv.transpose(0, 1).contiguous(),
           kvg.transpose(0, 1).contiguous());
    }
  // Integers (4-byte words) through contiguous() of a row slice.
  std::vector<int32_t> ids(6 * 10);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i * 7919 % 1000) - 500;
  const Tensor idt = Tensor::from_ids(ids).reshape({6, 10});
  const Tensor back = idt.to(Device::CUDA).slice(1, 3, 9).contiguous().to(Device::CPU);
  const Tensor ref = idt.slice(1, 3, 9).contiguous();
  EXPECT_EQ(std::vector<int32_t>(back.data<int32_t>(), back.data<int32_t>() + 36),
            std::vector<int32_t>(ref.data<int32_t>(), ref.data<int32_t>() + 36));
}

// cuda::keep_sms_for_background: the main stream's persistent kernels and cuBLASLt plans leave
// SMs to the background stream until the main stream has waited for the given mark, then have
// them all again.
TEST(BackendOps, KeptSmsReturnOnceTheMainStreamWaits) {
  DSEEK_REQUIRE_CUDA();
  cuda::keep_sms_for_background(0, 0);  // whatever an earlier test's update left
  const int all = cuda::compute_sms();
  ASSERT_GT(all, 8);
  uint64_t first = 0, second = 0;
  {
    cuda::Background bg;
    first = bg.mark();
    second = bg.mark();
  }
  cuda::keep_sms_for_background(8, second);
  EXPECT_EQ(cuda::compute_sms(), all - 8);
  cuda::wait_background(first);  // not the last update yet
  EXPECT_EQ(cuda::compute_sms(), all - 8);
  {
    cuda::Fork fork(true);  // a side stream's wait does not release them
    {
      cuda::Fork::Side side(fork);
      cuda::wait_background(second);
    }
    fork.join();
  }
  EXPECT_EQ(cuda::compute_sms(), all - 8);
  cuda::wait_background(second);
  EXPECT_EQ(cuda::compute_sms(), all);
  cuda::keep_sms_for_background(0, 0);
  EXPECT_EQ(cuda::compute_sms(), all);
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
