// libFuzzer target: the safetensors parser must either accept a buffer or throw dseek::Error;
// anything else (a crash, a sanitizer report, another exception type) is a finding. Accepted
// files are read back tensor by tensor to exercise the views.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A private copy so the parser cannot rely on memory beyond `size`.
  std::shared_ptr<uint8_t[]> copy(new uint8_t[size ? size : 1]);
  if (size) std::memcpy(copy.get(), data, size);
  try {
    auto file = dseek::SafetensorsFile::from_buffer(copy, copy.get(), size, "fuzz.safetensors");
    for (const auto& [name, info] : file->tensors()) {
      dseek::Tensor t = file->get(name);
      if (t.numel() > 0 && t.numel() < 4096) (void)t.to_vector();
    }
  } catch (const dseek::Error&) {
  }
  return 0;
}
