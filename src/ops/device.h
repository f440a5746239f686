// Device rules shared by the ops: all tensors of one op call live on one device (the op runs
// there and returns its results there); on the CPU activations are f32, on the GPU f32 or bf16.
#pragma once

#include <initializer_list>
#include <string_view>

#include "core/tensor.h"

namespace dseek::ops {

// The device of the defined tensors among `tensors`; a mix is an error naming the op.
Device op_device(std::string_view op, std::initializer_list<const Tensor*> tensors);

// The activation dtype x brings: f32 anywhere, bf16 on the GPU; anything else is an error.
DType activation_dtype(std::string_view op, const Tensor& x);

// For a CUDA tensor reaching an op in a build without CUDA (cannot happen through Tensor, which
// cannot allocate GPU memory there, but keeps every call path total).
[[noreturn]] void cuda_not_built(std::string_view op);

}  // namespace dseek::ops
