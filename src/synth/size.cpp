// Symbolic sizes: monomial arithmetic, evaluation and printing (see size.h).
#include "synth/size.h"

#include <fmt/format.h>

#include <numeric>

#include "core/error.h"

namespace dseek::synth {

int Vars::add(const std::string& name, VarKind kind) {
  DSEEK_CHECK(count() < kMaxVars, "[synth] too many size variables: {} (at most {})", count() + 1,
              kMaxVars);
  for (const auto& n : names) DSEEK_CHECK(n != name, "[synth] duplicate size variable: {}", name);
  names.push_back(name);
  kinds.push_back(kind);
  return count() - 1;
}

namespace {

Size normalised(Size s) {
  DSEEK_CHECK(s.den != 0 && s.num != 0, "[synth] size constant {}/{} is not positive", s.num,
              s.den);
  if (s.den < 0) {
    s.num = -s.num;
    s.den = -s.den;
  }
  const int64_t g = std::gcd(s.num, s.den);
  s.num /= g;
  s.den /= g;
  return s;
}

// Exponents are int8: a product of synthesised sizes stays far below this, so overflow is a bug.
int8_t add_exp(int a, int b) {
  const int e = a + b;
  DSEEK_CHECK(e >= -100 && e <= 100, "[synth] size exponent out of range: {}", e);
  return int8_t(e);
}

}  // namespace

Size Size::constant(int64_t value) {
  Size s;
  s.num = value;
  return normalised(s);
}

Size Size::var(int index) {
  DSEEK_CHECK(index >= 0 && index < kMaxVars, "[synth] size variable index out of range: {}",
              index);
  Size s;
  s.exp[size_t(index)] = 1;
  return s;
}

Size Size::operator*(const Size& other) const {
  Size s;
  for (int i = 0; i < kMaxVars; ++i)
    s.exp[size_t(i)] = add_exp(exp[size_t(i)], other.exp[size_t(i)]);
  s.num = num * other.num;
  s.den = den * other.den;
  return normalised(s);
}

Size Size::operator/(const Size& other) const {
  Size s;
  for (int i = 0; i < kMaxVars; ++i)
    s.exp[size_t(i)] = add_exp(exp[size_t(i)], -other.exp[size_t(i)]);
  s.num = num * other.den;
  s.den = den * other.num;
  return normalised(s);
}

std::strong_ordering Size::operator<=>(const Size& other) const {
  if (auto c = exp <=> other.exp; c != 0) return c;
  if (auto c = num <=> other.num; c != 0) return c;
  return den <=> other.den;
}

bool Size::is_one() const {
  return *this == Size{};
}

int Size::bare_var() const {
  int found = -1;
  for (int i = 0; i < kMaxVars; ++i) {
    if (exp[size_t(i)] == 0) continue;
    if (exp[size_t(i)] != 1 || found >= 0) return -1;
    found = i;
  }
  return found >= 0 && num == 1 && den == 1 ? found : -1;
}

bool Size::is_coefficient_only(const Vars& vars) const {
  for (int i = 0; i < vars.count(); ++i)
    if (vars.kinds[size_t(i)] == VarKind::primary && exp[size_t(i)] != 0) return false;
  return true;
}

bool Size::primary_nonnegative(const Vars& vars) const {
  for (int i = 0; i < vars.count(); ++i)
    if (vars.kinds[size_t(i)] == VarKind::primary && exp[size_t(i)] < 0) return false;
  return true;
}

std::optional<int64_t> Size::eval(const Valuation& values) const {
  // Numerator and denominator separately, in 128 bits: a quotient is exact only if it divides.
  __int128 top = num, bottom = den;
  const __int128 limit = __int128(1) << 62;
  for (int i = 0; i < kMaxVars; ++i) {
    const int e = exp[size_t(i)];
    if (e == 0) continue;
    DSEEK_CHECK(size_t(i) < values.size(), "[synth] no value for size variable {}", i);
    const int64_t v = values[size_t(i)];
    DSEEK_CHECK(v > 0, "[synth] size variable {} has non-positive value {}", i, v);
    for (int k = 0; k < (e > 0 ? e : -e); ++k) {
      (e > 0 ? top : bottom) *= v;
      if (top > limit || bottom > limit) return std::nullopt;
    }
  }
  if (top <= 0 || top % bottom != 0) return std::nullopt;
  return int64_t(top / bottom);
}

std::string Size::str(const Vars& vars) const {
  std::string up = num != 1 ? fmt::format("{}", num) : "";
  std::string down = den != 1 ? fmt::format("{}", den) : "";
  for (int i = 0; i < kMaxVars; ++i) {
    const int e = exp[size_t(i)];
    if (e == 0) continue;
    const std::string name = i < vars.count() ? vars.names[size_t(i)] : fmt::format("v{}", i);
    const std::string factor =
        (e == 1 || e == -1) ? name : fmt::format("{}^{}", name, e > 0 ? e : -e);
    std::string& side = e > 0 ? up : down;
    side += (side.empty() ? "" : "*") + factor;
  }
  if (up.empty()) up.push_back('1');
  if (down.empty()) return up;
  // "a/b*c" would read as (a/b)*c; parenthesise a compound denominator.
  return down.find('*') == std::string::npos ? up + "/" + down : up + "/(" + down + ")";
}

bool is_legal(const Size& size, const Vars& vars, const std::vector<Valuation>& values) {
  if (!size.primary_nonnegative(vars)) return false;
  for (const auto& v : values)
    if (!size.eval(v)) return false;
  return true;
}

bool divides(const Size& a, const Size& b, const Vars& vars, const std::vector<Valuation>& values) {
  return is_legal(b / a, vars, values);
}

}  // namespace dseek::synth
