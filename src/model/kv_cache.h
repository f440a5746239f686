// KVCache: what incremental decoding keeps per layer for the tokens seen so far, in the model's
// activation dtype on its device (f32 on the CPU; f32 or bf16 on the GPU, see model/placement.h).
//  - MLA models (deepseek_v2/v3) keep only the compressed latent: one row per token of
//    kv_lora_rank + qk_rope_head_dim values — the normalised c_kv, then the roped k_pe shared by
//    all heads (576 values per token per layer for V3, instead of 2·128·192 for full keys and
//    values).
//  - MHA/GQA models (llama, deepseek) keep roped keys and values: [max_tokens, Hkv·head_dim] each.
// Capacity is fixed at creation; running past it is an error. truncate(n) drops tokens n.. (for
// stop sequences, rewinding, and rejected speculative drafts).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace dseek {

class KVCache {
 public:
  // Row widths per layer: `key_width` values of keys (or latent) per token and `value_width` of
  // values (0 when values live inside the key row, as for MLA).
  struct LayerSpec {
    int64_t key_width = 0, value_width = 0;
  };
  KVCache(const std::vector<LayerSpec>& layers, int64_t max_tokens, DType dtype = DType::F32,
          Device device = Device::CPU);

  int64_t size() const { return size_; }
  int64_t capacity() const { return capacity_; }
  int64_t num_layers() const { return int64_t(keys_.size()); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  // Drops every token from position n on; n ≤ size().
  void truncate(int64_t n);
  void clear() { size_ = 0; }

  // Storage of a layer, [capacity, width] (values undefined when value_width was 0). Rows at and
  // beyond size() are scratch that the running forward fills before it calls advance().
  const Tensor& keys(int64_t layer) const { return keys_[size_t(layer)]; }
  const Tensor& values(int64_t layer) const { return values_[size_t(layer)]; }

  // For the model: throws unless `tokens` more fit; then marks them as cached.
  void check_room(int64_t tokens) const;
  void advance(int64_t tokens);

  // On a GPU: the positions size() .. size() + T − 1 of the rows a forward appends, i64 [T] on
  // the device (so the step's kernels read them there: a CUDA graph captured at one length then
  // replays at every other). Uploaded when the cache's length or T changed since the last call,
  // so the layers of one forward share one upload — and a caller that replays a graph calls it
  // before the launch. Throws unless T more tokens fit.
  Tensor device_positions(int64_t T);

  // Bytes held (all layers).
  size_t nbytes() const;

 private:
  std::vector<Tensor> keys_, values_;
  Tensor positions_;  // i64 [capacity] on the GPU; its first staged_T_ hold staged_from_ + t
  int64_t staged_from_ = -1, staged_T_ = 0;
  int64_t size_ = 0, capacity_ = 0;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
};

}  // namespace dseek
