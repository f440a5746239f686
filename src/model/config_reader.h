// ConfigReader: typed access to the keys of one JSON object of config.json, with errors that name
// the file and the dotted field ("[config] config.json: field 'rope_scaling.factor' must be a
// number, got string"). A JSON null reads as absent unless the caller gives a value for null.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dseek {

class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& object, std::string source, std::string prefix)
      : object_(object), source_(std::move(source)), prefix_(std::move(prefix)) {}

  const nlohmann::json& object() const { return object_; }
  const std::string& source() const { return source_; }
  bool has(const char* key) const { return object_.contains(key); }
  bool present(const char* key) const { return has(key) && !object_[key].is_null(); }

  int64_t integer(const char* key, int64_t if_absent) const;
  int64_t integer(const char* key, int64_t if_absent, int64_t if_null) const;
  double number(const char* key, double if_absent) const;
  bool boolean(const char* key, bool if_absent) const;
  std::string string(const char* key, const std::string& if_absent) const;
  std::vector<int64_t> integer_list(const char* key, const std::vector<int64_t>& if_absent) const;
  ConfigReader child(const char* key) const;  // the key must hold an object

 private:
  [[noreturn]] void type_error(const char* key, const char* expected) const;

  const nlohmann::json& object_;
  std::string source_;
  std::string prefix_;  // "rope_scaling." inside a nested object
};

}  // namespace dseek
