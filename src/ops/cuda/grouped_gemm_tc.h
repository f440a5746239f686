// bf16 tensor-core grouped expert GEMMs (kernels in grouped_gemm_wgmma_kernels.cuh for Hopper and
// grouped_gemm_tc_kernels.cuh for the rest), called by the
// grouped_linear entry points of moe.cu when the activations are bf16 and the shapes fit
// (grouped_tc_takes); those keep the SIMT kernels for everything else. Same argument meanings as
// cuda_ops.h's grouped_linear*.
#pragma once

#include <cstdint>

namespace dseek::ops::cuda {

// Rows per tile of the tensor-core row kernels: the schedule tile_start handed to
// grouped_tc_rows counts tiles of this many rows.
constexpr int64_t kTcTileRows = 128;
constexpr int64_t kTcTileCols = 128;

// Which kernels the grouped GEMMs below run: Hopper's wgmma ones (true) or the mma.sync ones.
// The default is wgmma where grouped_wgmma_available() (sm_90a code in this build, a compute
// capability 9.x GPU), unless DSEEK_GROUPED_GEMM=mma is set in the environment.
// set_grouped_gemm_wgmma (tests and benchmarks comparing the two) throws for wgmma where it
// cannot run.
bool grouped_wgmma_available();
void set_grouped_gemm_wgmma(bool wgmma);
bool grouped_gemm_wgmma();

// Whether the Hopper kernels that have a warp-specialised form loading its tiles with the tensor
// memory accelerator run it (the default, where the operands suit tensor maps): the bf16 grouped
// wgrad here (grouped_gemm_tma_kernels.cuh) and the FP8 row GEMMs and wgrad (fp8_train_kernels.h)
// — or their cp.async forms (DSEEK_LOADS=cp_async in the environment, or set here). The two forms
// give the same values.
bool tma_loads();
void set_tma_loads(bool tma);

// Whether the tensor-core kernels take a GEMM whose contiguous extents are k and n (x/dy row
// lengths, ldw) and whose activation buffers are a and c: all multiples of 8 bf16, buffers
// 16-byte aligned (weights that are not aligned are read without cp.async, per expert).
bool grouped_tc_takes(const void* a, const void* c, int64_t k, int64_t n, int64_t ldw);

// C[m, :n_total] = A[m, :k_total] · B_e for every row m of expert e (rows offsets[e] ..
// offsets[e + 1]); forward (dx false): B(k, n) = W_e[n·ldw + k]; dx: B(k, n) = W_e[k·ldw + n].
// tile_start: the device schedule of kTcTileRows-row tiles (E + 1 entries); tiles: the grid's
// tile count, at least the most any routing of N rows can need.
// M: the rows of A and C. w_maps (nullable): the experts' tensor maps (expert_tma_maps), which
// the TMA kernel needs.
void grouped_tc_rows(bool dx, const void* A, int64_t M, const int64_t* offsets,
                     const int64_t* tile_start, int64_t E, int64_t tiles, const void* const* w,
                     int64_t ldw, int64_t n_total, int64_t k_total, void* C,
                     const void* w_maps = nullptr);

// Writes the tensor maps of E bf16 matrices [rows, cols] (`ld` apart; `matrices` their device
// addresses, in a host array) for the TMA row kernels into `out`: device memory of E ×
// kExpertMapBytes, 64-byte aligned. Returns false, writing nothing, where those kernels cannot run
// (no wgmma here) or a matrix does not suit a tensor map (alignment).
constexpr size_t kExpertMapBytes = 128;
bool expert_tma_maps(const void* const* matrices, int64_t E, int64_t rows, int64_t cols, int64_t ld,
                     void* out);

// dw[e][o, i] (+)= Σ_{rows r of e} dy[r, o]·x[r, i] (beta and squares as
// grouped_linear_backward_dw; the wgmma kernel sums the squares as it stores).
// N = offsets[E], the rows of x and dy.
void grouped_tc_dw(const void* x, const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                   int64_t out, int64_t in, float* const* dw, float beta,
                   double* squares = nullptr);
// grouped_tc_dw into bf16 matrices dw[e] (each value rounded once, after the beta sum in f32;
// `squares` of the stored values) by the TMA kernel, where it runs here: returns false, launching
// nothing, elsewhere (ops::grouped_linear_backward_dw then goes through f32 matrices).
bool grouped_tc_dw_bf16(const void* x, const void* dy, const int64_t* offsets, int64_t E, int64_t N,
                        int64_t out, int64_t in, void* const* dw, float beta,
                        double* squares = nullptr);

}  // namespace dseek::ops::cuda
