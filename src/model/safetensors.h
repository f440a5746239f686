// Safetensors I/O. Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data section. Files are memory-mapped; tensors are borrowed views into the mapping.
// Every malformed input (truncated file, oversized/invalid header, offsets out of range or
// overlapping, shape/size mismatch, unknown dtype) raises dseek::Error naming the file and tensor.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dseek {

struct TensorInfo {
  DType dtype = DType::F32;
  Shape shape;
  size_t begin = 0, end = 0;  // byte offsets within the data section
};

// One .safetensors file, memory-mapped read-only.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // Parses from a buffer (used by the fuzzer and tests); `source` names it in errors.
  static std::shared_ptr<SafetensorsFile> from_buffer(std::shared_ptr<void> owner, const void* data,
                                                      size_t size, const std::string& source);

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  Tensor get(const std::string& name) const;  // borrowed view; throws if missing

 private:
  std::string path_;
  std::shared_ptr<void> owner_;  // the mapping
  const char* data_ = nullptr;   // start of the data section
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All weights of a checkpoint directory: one model.safetensors, or shards listed in
// model.safetensors.index.json ("weight_map": name -> file). open() also accepts the path of a
// single .safetensors file.
class WeightStore {
 public:
  static WeightStore open(const std::string& dir);

  bool has(const std::string& name) const;
  std::vector<std::string> names() const;
  // Borrowed view in the stored dtype. Throws "[weights] <dir>: missing tensor '<name>'".
  Tensor get(const std::string& name) const;
  // As get(), and checks the shape: "[weights] <file>: tensor '<name>' has shape [..], expected
  // [..]".
  Tensor get(const std::string& name, const Shape& expected_shape) const;
  // A weight ready for compute: F32/BF16/F16 as stored; an F8_E4M3 weight with a sibling
  // '<name minus .weight>.weight_scale_inv' is dequantised (128×128 blocks) into BF16.
  Tensor get_weight(const std::string& name, const Shape& expected_shape) const;
  // An F8_E4M3 weight kept as stored (memory-mapped, never dequantised) with its block scales as
  // f32 [ceil(rows/128), ceil(cols/128)] (converted when stored as BF16): the operands of
  // ops::linear_fp8. Errors name the tensor and its file: not F8_E4M3, wrong shape, a missing or
  // misshaped '<name>_scale_inv', or a block size other than 128×128 (the FP8 GEMM's).
  struct Fp8Weight {
    Tensor weight, scale_inv;
  };
  Fp8Weight get_fp8_weight(const std::string& name, const Shape& expected_shape) const;
  // Which file holds a tensor (for error messages).
  std::string file_of(const std::string& name) const;
  const std::string& dir() const { return dir_; }
  // FP8 block size used by get_weight (config.json quantization_config.weight_block_size).
  void set_fp8_block_size(int64_t block_rows, int64_t block_cols);
  // Whether the FP8 blocks are 128×128, the only size get_fp8_weight (the FP8 GEMM) takes.
  bool fp8_blocks_128() const { return block_rows_ == 128 && block_cols_ == 128; }
  // The distinct files of the checkpoint (one, or every shard).
  std::vector<std::shared_ptr<SafetensorsFile>> files() const;

 private:
  std::string dir_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> by_name_;
  int64_t block_rows_ = 128, block_cols_ = 128;
};

// Dequantises an FP8 E4M3 weight [rows, cols] with scales [ceil(rows/br), ceil(cols/bc)] (f32 or
// bf16) into `out_dtype` (BF16 or F32): w[i][j] = fp8(w[i][j]) * scale[i/br][j/bc].
Tensor dequantize_fp8_blocks(const Tensor& weight, const Tensor& scale_inv, int64_t block_rows,
                             int64_t block_cols, DType out_dtype, const std::string& name);

// Writes tensors (in the given order) to `path` atomically: a temporary file in the same
// directory, fsync, then rename, so a crash or full disk never leaves a half-written file.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace dseek
