// Training checkpoints: everything needed to resume a run bit-exactly, written so that a crash at
// any moment (power loss included) leaves the previous checkpoint usable.
//
//   RUN_DIR/checkpoints/step-00000123/model.safetensors      named f32 tensors: every parameter
//                                                            and buffer, under its HF name
//   RUN_DIR/checkpoints/step-00000123/optimizer.safetensors  named f32 tensors (moments, ...)
//   RUN_DIR/checkpoints/step-00000123/state.json             the caller's JSON (step, RNG, data
//                                                            position, ...)
//   RUN_DIR/checkpoints/step-00000123/manifest.json          written last: {"format":
//       "dseek-checkpoint-v1", "step", "checksum": "xxh64", "files": [{"name", "bytes", "xxh64"}]}
//   RUN_DIR/checkpoints/latest                               text: the newest directory's name
//
// Crash safety. A checkpoint is written into "step-00000123.tmp-<pid>", every file is fsynced,
// the manifest goes last, the directory is fsynced and then renamed to its final name in one
// atomic step (the parent is fsynced too), and only then is `latest` replaced atomically. So a
// directory named step-* with a manifest is always complete, a *.tmp-* directory is always an
// abandoned write (ignored, and removed by the next save), and `latest` only ever names a
// complete checkpoint. Pruning renames a directory to *.tmp-* before deleting it, so a half-
// deleted checkpoint never looks complete either. Saving a step that already exists swaps the
// new directory in atomically (renameat2 RENAME_EXCHANGE) before the old one is deleted.
//
// Integrity. The manifest records each file's size and XXH64 (train/checksum.h); loading checks
// both before parsing, so a truncated or bit-flipped file is refused with the file named, never
// resumed from.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace dseek::train {

struct CheckpointData {
  int64_t step = 0;
  // Named tensors in save order (load returns them in the same order). Must be f32; save copies
  // tensors on the GPU to the host, one file's worth at a time. Load returns CPU tensors.
  std::vector<std::pair<std::string, Tensor>> model, optimizer;
  nlohmann::json state = nlohmann::json::object();
};

// "step-00000123" (8 digits, more when the step needs them, so names sort like steps up to 10^8).
std::string checkpoint_dir_name(int64_t step);

// Writes a checkpoint of `data` under run_dir/checkpoints (created if needed), points `latest` at
// it, then deletes all but the newest keep_last complete checkpoints by step (keep_last <= 0:
// keep all; the one just written is always kept) and any stale *.tmp-* entries left by crashed
// writers. Returns the checkpoint directory's path. On failure throws and leaves the previous
// checkpoints and `latest` as they were.
std::string save_checkpoint(const std::string& run_dir, const CheckpointData& data, int keep_last);

// The newest complete checkpoint directory of a run ("" when there is none): the one `latest`
// names if it is complete (its manifest parses and the file sizes match), else the highest step-*
// directory that is. *.tmp-* directories are never considered.
std::string find_latest_checkpoint(const std::string& run_dir);

// Loads and verifies a checkpoint directory: the manifest must be present and parse, every file
// it lists must have the recorded size ("truncated") and checksum ("checksum mismatch"), the
// safetensors files must parse and hold f32 tensors only, state.json must parse. Any problem is a
// dseek::Error naming the file and what is wrong. Tensors are owned f32 copies in save order.
CheckpointData load_checkpoint(const std::string& checkpoint_dir);

}  // namespace dseek::train
