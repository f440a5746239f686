// Views for batched_matmul tests (CPU and backend): each operand laid out in a contiguous tensor
// in a given order of its (batch, row, col) dims, optionally broadcast over the batch, and a
// plain-loop reference that reads the same views.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "ops/batched_matmul.h"

namespace dseek::test {

struct ViewCase {
  int64_t batch, m, n, k;
  std::array<int, 3> a, b, c;  // memory order of (0 batch, 1 row, 2 col), outermost first
  bool a_shared = false, b_shared = false;  // batch stride 0 (the tensor holds one matrix)
};

// Strides of a [batch, rows, cols] view laid out in `order`; elements in *numel.
inline ops::MatrixStrides layout(std::array<int, 3> order, int64_t batch, int64_t rows,
                                 int64_t cols, bool shared, int64_t* numel) {
  const int64_t extent[3] = {shared ? 1 : batch, rows, cols};
  int64_t stride[3] = {0, 0, 0}, step = 1;
  for (int j = 2; j >= 0; --j) {
    stride[order[size_t(j)]] = step;
    step *= extent[order[size_t(j)]];
  }
  *numel = step;
  return {shared ? 0 : stride[0], stride[1], stride[2]};
}

// C[b, i, j] = Σ_κ A[b, i, κ] · B[b, j, κ] in double, written through c's view (f32 tensors).
inline Tensor reference(const ViewCase& v, const Tensor& a, ops::MatrixStrides sa, const Tensor& b,
                        ops::MatrixStrides sb, ops::MatrixStrides sc, int64_t c_numel) {
  const std::vector<float> x = a.to_vector(), w = b.to_vector();
  std::vector<float> out(size_t(c_numel), 0.0f);
  for (int64_t bi = 0; bi < v.batch; ++bi)
    for (int64_t i = 0; i < v.m; ++i)
      for (int64_t j = 0; j < v.n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < v.k; ++q)
          s += double(x[size_t(bi * sa.batch + i * sa.row + q * sa.col)]) *
               double(w[size_t(bi * sb.batch + j * sb.row + q * sb.col)]);
        out[size_t(bi * sc.batch + i * sc.row + j * sc.col)] = float(s);
      }
  return Tensor::from_vector(out, {c_numel});
}

// Every unit-stride combination, a broadcast operand each side, extent-1 dims, odd sizes.
inline std::vector<ViewCase> view_cases() {
  return {
      {1, 5, 7, 3, {0, 1, 2}, {0, 1, 2}, {0, 1, 2}},
      {3, 17, 9, 33, {0, 1, 2}, {0, 1, 2}, {0, 1, 2}},
      {4, 33, 20, 12, {1, 0, 2}, {0, 1, 2}, {1, 0, 2}},   // grouped: x [T, g, d/g], y [T, g, n]
      {4, 33, 20, 12, {0, 2, 1}, {0, 2, 1}, {0, 2, 1}},   // every matrix column-major
      {2, 9, 70, 31, {2, 0, 1}, {1, 0, 2}, {2, 0, 1}},    // batch between the dims
      {37, 4, 24, 4, {0, 1, 2}, {0, 2, 1}, {0, 1, 2}, true, false},  // Kronecker: w1 shared
      {6, 19, 5, 8, {0, 1, 2}, {0, 1, 2}, {1, 0, 2}, false, true},   // B shared
      {5, 1, 9, 6, {0, 1, 2}, {0, 1, 2}, {0, 1, 2}},      // m = 1
      {5, 9, 1, 6, {0, 1, 2}, {0, 2, 1}, {0, 1, 2}},      // n = 1
      {2, 9, 6, 1, {0, 1, 2}, {0, 1, 2}, {0, 2, 1}},      // k = 1 (outer products)
      {1, 300, 130, 70, {0, 2, 1}, {0, 1, 2}, {0, 1, 2}},
      // k > 16 (cuBLASLt on a GPU, the cases above with k <= 16 take the direct kernel):
      {5, 40, 24, 40, {0, 1, 2}, {0, 1, 2}, {0, 1, 2}, true, false},  // A shared
      {7, 24, 40, 33, {0, 1, 2}, {0, 2, 1}, {1, 0, 2}, false, true},  // B shared
      {3, 40, 36, 20, {0, 2, 1}, {0, 2, 1}, {0, 2, 1}},                // column-major
      {4, 64, 48, 64, {1, 0, 2}, {0, 1, 2}, {1, 0, 2}},                // grouped layout
  };
}

}  // namespace dseek::test
