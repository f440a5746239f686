#include "train/init_from.h"

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "model/safetensors.h"
#include "train/checkpoint.h"

namespace dseek::train {
namespace fs = std::filesystem;

namespace {

enum class SourceKind { Run, Checkpoint, Model };

SourceKind classify(const fs::path& source) {
  DSEEK_CHECK(fs::is_directory(source), "[init_from] {}: not a directory", source.string());
  if (fs::exists(source / "manifest.json")) return SourceKind::Checkpoint;
  if (fs::exists(source / "model.safetensors") ||
      fs::exists(source / "model.safetensors.index.json"))
    return SourceKind::Model;
  if (fs::is_directory(source / "checkpoints")) return SourceKind::Run;
  fail("[init_from] {}: neither a run directory (checkpoints/), a checkpoint (manifest.json) nor a "
       "model directory (model.safetensors)",
       source.string());
}

void copy_into(Param& p, const Tensor& t, const std::string& where) {
  DSEEK_CHECK(t.shape() == p.value.shape(),
              "[init_from] {}: tensor '{}' has shape {}, the model needs {}", where, p.name,
              shape_str(t.shape()), shape_str(p.value.shape()));
  const Tensor f32 = t.to(DType::F32);  // a contiguous copy, whatever the stored dtype
  std::memcpy(p.value.data<float>(), f32.data<float>(), p.value.nbytes());
}

}  // namespace

ModelConfig init_from_model_config(const std::string& source) {
  const fs::path path(source);
  switch (classify(path)) {
    case SourceKind::Checkpoint: {
      const fs::path run = fs::absolute(path).lexically_normal().parent_path().parent_path();
      DSEEK_CHECK(fs::exists(run / "config.json"),
                  "[init_from] {}: a checkpoint outside a run directory ({} has no config.json)",
                  source, run.string());
      return load_model_config((run / "config.json").string());
    }
    case SourceKind::Run:
    case SourceKind::Model:
      DSEEK_CHECK(fs::exists(path / "config.json"), "[init_from] {}: no config.json", source);
      return load_model_config((path / "config.json").string());
  }
  fail("[init_from] {}: unreachable", source);
}

std::string load_init_weights(const std::string& source, ParamSet& params) {
  const fs::path path(source);
  const SourceKind kind = classify(path);
  if (kind == SourceKind::Model) {
    const WeightStore store = WeightStore::open(source);
    for (Param& p : params.all()) {
      DSEEK_CHECK(store.has(p.name), "[init_from] {}: the model lacks tensor '{}'", source, p.name);
      // get_weight dequantises FP8 blocks; other dtypes come back as stored.
      copy_into(p, store.get_weight(p.name, p.value.shape()), store.file_of(p.name));
    }
    return fmt::format("model {}", source);
  }
  std::string ckpt = source;
  if (kind == SourceKind::Run) {
    ckpt = find_latest_checkpoint(source);
    DSEEK_CHECK(!ckpt.empty(), "[init_from] {}: the run has no complete checkpoint", source);
  }
  const CheckpointData data = load_checkpoint(ckpt);
  std::map<std::string, const Tensor*> by_name;
  for (const auto& [name, t] : data.model) by_name[name] = &t;
  for (Param& p : params.all()) {
    auto it = by_name.find(p.name);
    DSEEK_CHECK(it != by_name.end(), "[init_from] {}: checkpoint lacks tensor '{}'", ckpt, p.name);
    copy_into(p, *it->second, ckpt);
  }
  return fmt::format("checkpoint {} (step {})", ckpt, data.step);
}

}  // namespace dseek::train
