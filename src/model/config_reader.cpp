#include "model/config_reader.h"

#include "core/error.h"

namespace dseek {

void ConfigReader::type_error(const char* key, const char* expected) const {
  fail("[config] {}: field '{}{}' must be {}, got {}", source_, prefix_, key, expected,
       object_[key].type_name());
}

int64_t ConfigReader::integer(const char* key, int64_t if_absent) const {
  if (!present(key)) return if_absent;
  const nlohmann::json& v = object_[key];
  if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
  if (v.is_number_unsigned()) {
    DSEEK_CHECK(v.get<uint64_t>() <= uint64_t(INT64_MAX), "[config] {}: field '{}{}' is too large",
                source_, prefix_, key);
    return int64_t(v.get<uint64_t>());
  }
  type_error(key, "an integer");
}

int64_t ConfigReader::integer(const char* key, int64_t if_absent, int64_t if_null) const {
  if (has(key) && object_[key].is_null()) return if_null;
  return integer(key, if_absent);
}

double ConfigReader::number(const char* key, double if_absent) const {
  if (!present(key)) return if_absent;
  if (!object_[key].is_number()) type_error(key, "a number");
  return object_[key].get<double>();
}

bool ConfigReader::boolean(const char* key, bool if_absent) const {
  if (!present(key)) return if_absent;
  if (!object_[key].is_boolean()) type_error(key, "true or false");
  return object_[key].get<bool>();
}

std::string ConfigReader::string(const char* key, const std::string& if_absent) const {
  if (!present(key)) return if_absent;
  if (!object_[key].is_string()) type_error(key, "a string");
  return object_[key].get<std::string>();
}

std::vector<int64_t> ConfigReader::integer_list(const char* key,
                                                const std::vector<int64_t>& if_absent) const {
  if (!present(key)) return if_absent;
  const nlohmann::json& v = object_[key];
  if (!v.is_array()) type_error(key, "a list of integers");
  std::vector<int64_t> out;
  for (const auto& item : v) {
    DSEEK_CHECK(item.is_number_integer() &&
                    (!item.is_number_unsigned() || item.get<uint64_t>() <= uint64_t(INT64_MAX)),
                "[config] {}: field '{}{}' must be a list of integers, got {}", source_, prefix_,
                key, v.dump());
    out.push_back(item.get<int64_t>());
  }
  return out;
}

ConfigReader ConfigReader::child(const char* key) const {
  DSEEK_CHECK(has(key), "[config] {}: field '{}{}' is missing", source_, prefix_, key);
  if (!object_[key].is_object()) type_error(key, "an object");
  return ConfigReader(object_[key], source_, prefix_ + key + ".");
}

}  // namespace dseek
