// Errors of the OpenAI-compatible API: an HTTP status plus the body OpenAI's clients parse,
// {"error": {"message", "type", "param", "code"}}. Request validation throws ApiError naming the
// field at fault in `param` and in the message ("messages[2].content: expected a string").
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace dseek::serve {

class ApiError : public Error {
 public:
  // `message` starts with "[serve] " like every dseek::Error; the JSON body carries it unchanged.
  ApiError(int status, std::string message, std::string param = "", std::string code = "");
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  nlohmann::json to_json() const;

 private:
  int status_;
  std::string param_, code_;
};

// The OpenAI error "type" of a status: 400/404/405/413 invalid_request_error, 401
// authentication_error, 429 rate_limit_error, 503 service_unavailable_error, others server_error.
std::string error_type_for_status(int status);

// The body of an error response; `param` and `code` become null when empty.
nlohmann::json error_body(int status, const std::string& message, const std::string& param = "",
                          const std::string& code = "");

// A 400 for field `param`: "[serve] <param>: <what>".
[[noreturn]] void invalid_field(const std::string& param, const std::string& what);

}  // namespace dseek::serve
