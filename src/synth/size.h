// Symbolic sizes for operator synthesis (Syno, ASPLOS'24, section 4): every dimension size is a
// monomial  c · Π v_i^e_i  over primary variables (the input/output sizes of the layer, e.g. T,
// d_in, d_out, C, H) and coefficients (small user-allowed factors such as a kernel size k, a group
// count g or a rank r), with integer exponents and a rational constant c. Sizes stay symbolic so
// one synthesised operator fits every layer of a network; they are checked against concrete
// valuations (one per layer shape) that must give positive integers.
#pragma once

#include <array>
#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dseek::synth {

inline constexpr int kMaxVars = 8;

enum class VarKind { primary, coefficient };

// The variables of one synthesis problem, by index.
struct Vars {
  std::vector<std::string> names;
  std::vector<VarKind> kinds;

  int add(const std::string& name, VarKind kind);  // returns the new variable's index
  int count() const { return int(names.size()); }
};

// Concrete values of the variables, by index (size == Vars::count()).
using Valuation = std::vector<int64_t>;

struct Size {
  std::array<int8_t, kMaxVars> exp{};  // exponent of each variable
  int64_t num = 1;                     // the constant num/den, kept in lowest terms, den > 0
  int64_t den = 1;

  static Size constant(int64_t value);
  static Size var(int index);

  Size operator*(const Size& other) const;
  Size operator/(const Size& other) const;
  bool operator==(const Size& other) const = default;
  // Any total order (for sorting keys); not the order of the values.
  std::strong_ordering operator<=>(const Size& other) const;

  bool is_one() const;
  // The variable this size is exactly (one variable, exponent 1, constant 1), else −1.
  int bare_var() const;
  // True if the size contains only coefficients and constants (no primary variable).
  bool is_coefficient_only(const Vars& vars) const;
  // True if no primary variable has a negative exponent (C/g is fine, g/C is not a size).
  bool primary_nonnegative(const Vars& vars) const;
  // The concrete value, or nullopt if it is not a positive integer under `values`.
  std::optional<int64_t> eval(const Valuation& values) const;
  // "T*d_in/g", "2*k^2", "1".
  std::string str(const Vars& vars) const;
};

// b / a is a legal size: no primary variable in the denominator, and a positive integer under
// every valuation. This is Syno's divisibility: symbolic in the layer sizes, concrete for the rest.
bool divides(const Size& a, const Size& b, const Vars& vars, const std::vector<Valuation>& values);

// A size is legal in an operator when it is a positive integer under every valuation and no
// primary variable has a negative exponent.
bool is_legal(const Size& size, const Vars& vars, const std::vector<Valuation>& values);

}  // namespace dseek::synth
