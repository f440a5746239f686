// Symbolic sizes (synth/size.h): products and quotients of monomials, divisibility against
// valuations, substitution and printing.
#include <gtest/gtest.h>

#include "core/error.h"
#include "synth/size.h"

using namespace dseek;
using namespace dseek::synth;

namespace {

struct Fixture {
  Vars vars;
  int T, din, g, k;
  Fixture() {
    T = vars.add("T", VarKind::primary);
    din = vars.add("d_in", VarKind::primary);
    g = vars.add("g", VarKind::coefficient);
    k = vars.add("k", VarKind::coefficient);
  }
};

}  // namespace

TEST(SynthSize, ProductsQuotientsAndPrinting) {
  Fixture f;
  const Size T = Size::var(f.T), din = Size::var(f.din), g = Size::var(f.g), k = Size::var(f.k);
  EXPECT_EQ((T * din).str(f.vars), "T*d_in");
  EXPECT_EQ((din / g).str(f.vars), "d_in/g");
  EXPECT_EQ((k * k * Size::constant(2)).str(f.vars), "2*k^2");
  EXPECT_EQ((din / (g * k)).str(f.vars), "d_in/(g*k)");
  EXPECT_EQ((Size::constant(3) / Size::constant(6)).str(f.vars), "1/2");
  EXPECT_TRUE((T / T).is_one());
  EXPECT_EQ((din / g) * g, din);
  EXPECT_FALSE(din == T);
  EXPECT_TRUE((din / g).primary_nonnegative(f.vars));
  EXPECT_FALSE((g / din).primary_nonnegative(f.vars));
  EXPECT_TRUE((g * k).is_coefficient_only(f.vars));
  EXPECT_FALSE((g * T).is_coefficient_only(f.vars));
}

TEST(SynthSize, EvalSubstitutesAndRejectsNonIntegers) {
  Fixture f;
  const Valuation v{5, 12, 4, 3};  // T, d_in, g, k
  const Size din = Size::var(f.din), g = Size::var(f.g), k = Size::var(f.k);
  EXPECT_EQ((din / g).eval(v), 3);
  EXPECT_EQ((Size::var(f.T) * k * k).eval(v), 45);
  EXPECT_EQ((din / (g * k)).eval(v), 1);
  EXPECT_FALSE((din / (g * g)).eval(v).has_value());  // 12 / 16
  EXPECT_FALSE((Size::constant(1) / Size::constant(2)).eval(v).has_value());
  EXPECT_EQ((Size::constant(3) / Size::constant(2) * Size::constant(2)).eval(v), 3);
}

TEST(SynthSize, DivisibilityIsSymbolicInPrimariesAndConcreteInCoefficients) {
  Fixture f;
  const std::vector<Valuation> layers{{5, 12, 4, 3}, {7, 24, 4, 3}};
  const Size T = Size::var(f.T), din = Size::var(f.din), g = Size::var(f.g), k = Size::var(f.k);
  EXPECT_TRUE(divides(g, din, f.vars, layers));       // d_in/g: 3 and 6
  EXPECT_TRUE(divides(g * k, din, f.vars, layers));   // 1 and 2
  EXPECT_FALSE(divides(g * g, din, f.vars, layers));  // 12/16
  EXPECT_FALSE(divides(T, din, f.vars, layers));      // T in a denominator is never a size
  EXPECT_FALSE(divides(din, g, f.vars, layers));
  EXPECT_TRUE(is_legal(T * din / g, f.vars, layers));
  EXPECT_FALSE(is_legal(T / k, f.vars, layers));  // 5/3
}

TEST(SynthSize, RejectsBadVariables) {
  Vars vars;
  vars.add("T", VarKind::primary);
  EXPECT_THROW(vars.add("T", VarKind::coefficient), Error);
  for (int i = 1; i < kMaxVars; ++i) vars.add("v" + std::to_string(i), VarKind::primary);
  EXPECT_THROW(vars.add("one_too_many", VarKind::primary), Error);
  EXPECT_THROW(Size::constant(0), Error);
}
