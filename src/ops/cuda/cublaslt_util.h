// What the two cuBLASLt users (linear.cpp: bf16/f32 GEMMs; fp8_cublaslt.cpp: block-scaled FP8)
// share: one handle and one workspace for the process, and the descriptors of a problem as one
// owning object. Host code only.
//
// GEMMs on dseek's main stream never overlap, so one workspace serves them all; a GEMM on the
// side stream of a core/cuda.h Fork gets the side's own workspace. A problem's descriptors are
// built once and kept with the algorithm the heuristic chose for it (the callers key them by
// everything the descriptors hold), so a call only sets its pointers and enqueues the GEMM:
// building and destroying five descriptors per GEMM was host time on every one of a decode step's
// few hundred GEMMs.
#pragma once

#include <cublasLt.h>

#include <cstddef>

namespace dseek::ops::cuda {

inline constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;  // NVIDIA's recommendation for Hopper

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;  // kLtWorkspaceBytes on the device
};

// The handle and the current stream's workspace (the main stream's, or a Fork side's). Created on
// first use and never destroyed: at process exit the CUDA context may already be gone.
// Throws dseek::Error ("[cublasLt] ...") if the handle cannot be created.
const LtContext& lt_context();

// CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET for a plan made now: cuda::compute_sms() where SMs are kept
// for the background stream (cuda::keep_sms_for_background), else 0 (the device's count). Part of
// each plan's key, so plans for both counts are kept.
int lt_sm_target();

// Owns the descriptors of one problem.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  LtDescriptors() = default;
  LtDescriptors(const LtDescriptors&) = delete;
  LtDescriptors& operator=(const LtDescriptors&) = delete;
  ~LtDescriptors() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

// Owns a heuristic query's preference.
struct LtPreference {
  cublasLtMatmulPreference_t pref = nullptr;
  LtPreference() = default;
  LtPreference(const LtPreference&) = delete;
  LtPreference& operator=(const LtPreference&) = delete;
  ~LtPreference() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
  }
};

}  // namespace dseek::ops::cuda
