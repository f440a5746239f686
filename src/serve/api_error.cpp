#include "serve/api_error.h"

#include <utility>

namespace dseek::serve {

ApiError::ApiError(int status, std::string message, std::string param, std::string code)
    : Error(std::move(message)),
      status_(status),
      param_(std::move(param)),
      code_(std::move(code)) {}

nlohmann::json ApiError::to_json() const {
  return error_body(status_, what(), param_, code_);
}

std::string error_type_for_status(int status) {
  switch (status) {
    case 400:
    case 404:
    case 405:
    case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return "server_error";
  }
}

nlohmann::json error_body(int status, const std::string& message, const std::string& param,
                          const std::string& code) {
  nlohmann::json error = {{"message", message},
                          {"type", error_type_for_status(status)},
                          {"param", nullptr},
                          {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  if (!code.empty()) error["code"] = code;
  return {{"error", std::move(error)}};
}

void invalid_field(const std::string& param, const std::string& what) {
  throw ApiError(400, "[serve] " + param + ": " + what, param);
}

}  // namespace dseek::serve
