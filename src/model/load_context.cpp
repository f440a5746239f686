#include "model/load_context.h"

namespace dseek {

Tensor LoadContext::weight(const std::string& name, const Shape& shape) {
  used_.insert(name);
  return place_weight(store_.get_weight(name, shape), placement_);
}

LinearWeight LoadContext::linear(const std::string& name, const Shape& shape) {
  used_.insert(name);
  return load_linear(store_, name, shape, placement_);
}

Tensor LoadContext::optional_weight(const std::string& name, const Shape& shape) {
  if (!store_.has(name)) return Tensor();
  return weight(name, shape);
}

void LoadContext::consume_prefix(const std::string& prefix) {
  prefixes_.push_back(prefix);
}

std::vector<std::string> LoadContext::unused() const {
  std::vector<std::string> out;
  const std::string scale_suffix = "_scale_inv";
  for (const std::string& name : store_.names()) {
    if (used_.count(name)) continue;
    bool consumed = false;
    for (const std::string& p : prefixes_) consumed |= name.compare(0, p.size(), p) == 0;
    // "<x>.weight_scale_inv" belongs to "<x>.weight".
    if (!consumed && name.size() > scale_suffix.size() &&
        name.compare(name.size() - scale_suffix.size(), scale_suffix.size(), scale_suffix) == 0)
      consumed = used_.count(name.substr(0, name.size() - scale_suffix.size())) != 0;
    if (!consumed) out.push_back(name);
  }
  return out;
}

}  // namespace dseek
