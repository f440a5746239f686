// libFuzzer target: config.json parsing must either produce a valid config or throw
// dseek::Error. Accepted configs are pushed through everything derived from them (round trip to
// JSON, parameter and KV-cache accounting, softmax scale) so overflow or UB there is caught too.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "model/config.h"
#include "model/param_count.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    dseek::ModelConfig c = dseek::parse_model_config(text, "fuzz/config.json");
    (void)c.softmax_scale();
    dseek::ModelConfig back =
        dseek::parse_model_config(dseek::model_config_to_json(c), "roundtrip");
    if (!(back == c)) __builtin_trap();  // the writer and the parser disagree
    (void)dseek::count_params(c);
    (void)dseek::kv_cache_bytes_per_token(c, dseek::DType::BF16);
  } catch (const dseek::Error&) {
  }
  return 0;
}
