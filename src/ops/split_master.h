// An f32 master weight kept as two 16-bit halves: its bf16 compute copy (the upper half, rounded)
// and the 16 low bits of the f32. Mixed-precision training keeps an f32 master beside a bf16 copy
// that the GEMMs multiply; stored apart they take 6 bytes a parameter and the optimizer reads 4
// and writes 6. Split, they take 4: the update reads 4 and writes 4, and the copy needs no pass of
// its own. The master is not rounded: join(split(x)) is x, bit for bit (NaN stays NaN).
//
// The copy rounds half away from zero where Tensor::to(BF16) rounds half to even: adding 0x8000
// to the f32 bits carries into the upper half exactly when the low half is ≥ 0x8000, so the low
// half alone says whether the upper half was rounded up (then it is one below: for either sign,
// the bits' magnitude grew by one). Round-to-nearest-even could not be undone that way (a tie
// rounded down and a tie rounded up both end even). The two differ only where the low half is
// exactly 0x8000: one value in 65,536.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "ops/split_bits.h"

namespace dseek::ops {

// Checks a split master: high BF16 and low (BF16-typed storage of raw bits, not numbers: there
// is no 16-bit integer dtype) contiguous, of one shape and device; throws naming `what`.
void check_split(const Tensor& high, const Tensor& low, const std::string& what);
// Writes value's halves (value f32 contiguous; high, low as check_split wants, value's shape and
// device).
void split_master(const Tensor& value, const Tensor& high, const Tensor& low);
// The f32 master (a new contiguous tensor on their device) from its halves.
Tensor join_master(const Tensor& high, const Tensor& low);

}  // namespace dseek::ops
