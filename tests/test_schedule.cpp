// LR schedules at their boundaries (end of warm-up, decay start, 80% / 90%, last step, past the
// end), monotonicity of each piece, and invalid settings; piecewise-constant StepSchedule parsing.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/error.h"
#include "train/schedule.h"

using namespace dseek;
using namespace dseek::train;

namespace {

LrSchedule make(const std::string& kind, int64_t warmup, int64_t total) {
  LrSchedule s;
  s.kind = kind;
  s.peak_lr = 1e-3;
  s.min_lr = 1e-4;
  s.warmup_steps = warmup;
  s.total_steps = total;
  return s;
}

// Non-decreasing on [from, to] when `up`, else non-increasing.
void expect_monotonic(const LrSchedule& s, int64_t from, int64_t to, bool up) {
  for (int64_t i = from; i < to; ++i) {
    if (up)
      EXPECT_LE(s.at(i), s.at(i + 1)) << s.kind << " step " << i;
    else
      EXPECT_GE(s.at(i), s.at(i + 1)) << s.kind << " step " << i;
  }
}

std::string error_of(const LrSchedule& s) {
  try {
    s.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string parse_error(const std::string& text) {
  try {
    StepSchedule::parse(text);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Schedule, WarmupIsLinearAndReachesPeakOnItsLastStep) {
  for (const char* kind : {"constant", "cosine", "wsd", "multistep"}) {
    const LrSchedule s = make(kind, 10, 100);
    EXPECT_DOUBLE_EQ(s.at(0), 1e-4) << kind;  // 1e-3 · 1/10
    EXPECT_DOUBLE_EQ(s.at(4), 5e-4) << kind;
    EXPECT_DOUBLE_EQ(s.at(9), 1e-3) << kind;
    EXPECT_DOUBLE_EQ(s.at(10), 1e-3) << kind;  // first step after warm-up is still the peak
    expect_monotonic(s, 0, 9, true);
  }
  EXPECT_DOUBLE_EQ(make("constant", 0, 5).at(0), 1e-3);  // no warm-up
}

TEST(Schedule, Constant) {
  const LrSchedule s = make("constant", 10, 100);
  EXPECT_DOUBLE_EQ(s.at(50), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(99), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(1000), 1e-3);
}

TEST(Schedule, Cosine) {
  const LrSchedule s = make("cosine", 10, 111);  // decay over steps 10..110, span 100
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(60), 5.5e-4);  // halfway: (peak + min) / 2
  // u = 1/4: min + (peak − min)·(1 + cos(π/4))/2
  EXPECT_DOUBLE_EQ(s.at(35), 1e-4 + 9e-4 * (1.0 + std::sqrt(0.5)) / 2.0);
  EXPECT_DOUBLE_EQ(s.at(110), 1e-4);  // last step: exactly min_lr
  EXPECT_DOUBLE_EQ(s.at(5000), 1e-4);
  expect_monotonic(s, 10, 120, false);
}

TEST(Schedule, WarmupStableDecay) {
  LrSchedule s = make("wsd", 10, 105);  // decay from step round(0.8·105) = 84, span 20
  EXPECT_DOUBLE_EQ(s.at(50), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(83), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(84), 1e-3);  // u = 0
  EXPECT_LT(s.at(85), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(94), 5.5e-4);  // halfway
  EXPECT_DOUBLE_EQ(s.at(104), 1e-4);   // last step
  EXPECT_DOUBLE_EQ(s.at(105), 1e-4);
  expect_monotonic(s, 10, 84, true);  // flat (non-decreasing and non-increasing)
  expect_monotonic(s, 10, 110, false);

  s.decay_start = 0.5;  // from step round(52.5) = 53 (llround rounds half away from zero)
  EXPECT_DOUBLE_EQ(s.at(52), 1e-3);
  EXPECT_LT(s.at(54), 1e-3);
  s.decay_start = 1.0;  // never decays
  EXPECT_DOUBLE_EQ(s.at(104), 1e-3);
}

TEST(Schedule, Multistep) {
  const LrSchedule s = make("multistep", 10, 100);
  EXPECT_DOUBLE_EQ(s.at(79), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(80), 0.316e-3);  // 80% of the steps
  EXPECT_DOUBLE_EQ(s.at(89), 0.316e-3);
  EXPECT_DOUBLE_EQ(s.at(90), 1e-4);  // 90%
  EXPECT_DOUBLE_EQ(s.at(99), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(200), 1e-4);
  expect_monotonic(s, 10, 120, false);

  const LrSchedule odd = make("multistep", 0, 101);  // 80.8 and 90.9: the next whole steps
  EXPECT_DOUBLE_EQ(odd.at(80), 1e-3);
  EXPECT_DOUBLE_EQ(odd.at(81), 0.316e-3);
  EXPECT_DOUBLE_EQ(odd.at(90), 0.316e-3);
  EXPECT_DOUBLE_EQ(odd.at(91), 1e-4);
}

TEST(Schedule, InvalidSettingsNameTheField) {
  EXPECT_NE(error_of(make("linear", 0, 10)).find("unknown kind 'linear'"), std::string::npos);
  LrSchedule s = make("cosine", 0, 10);
  s.peak_lr = 0.0;
  EXPECT_NE(error_of(s).find("peak_lr"), std::string::npos);
  s = make("cosine", 0, 10);
  s.min_lr = 2e-3;
  EXPECT_NE(error_of(s).find("min_lr"), std::string::npos);
  s.kind = "multistep";  // min_lr unused there
  EXPECT_EQ(error_of(s), "(no error)");
  EXPECT_NE(error_of(make("cosine", 0, 0)).find("total_steps"), std::string::npos);
  EXPECT_NE(error_of(make("cosine", 11, 10)).find("warmup_steps"), std::string::npos);
  EXPECT_NE(error_of(make("cosine", -1, 10)).find("warmup_steps"), std::string::npos);
  s = make("wsd", 0, 10);
  s.decay_start = 0.0;
  EXPECT_NE(error_of(s).find("decay_start"), std::string::npos);
  s.decay_start = 1.5;
  EXPECT_NE(error_of(s).find("decay_start"), std::string::npos);
  s = make("wsd", 90, 100);  // decay would start at 80, inside the warm-up
  EXPECT_NE(error_of(s).find("inside the 90 warm-up steps"), std::string::npos) << error_of(s);
  EXPECT_THROW(make("cosine", 0, 10).at(-1), Error);
  EXPECT_THROW(make("bogus", 0, 10).at(0), Error);  // at() validates
}

TEST(Schedule, StepScheduleParse) {
  const StepSchedule constant = StepSchedule::parse("0.3");
  EXPECT_DOUBLE_EQ(constant.at(0), 0.3);
  EXPECT_DOUBLE_EQ(constant.at(1'000'000), 0.3);
  EXPECT_EQ(constant.str(), "0.3");

  const StepSchedule mtp = StepSchedule::parse("0.3,0.1@800");
  EXPECT_DOUBLE_EQ(mtp.at(0), 0.3);
  EXPECT_DOUBLE_EQ(mtp.at(799), 0.3);
  EXPECT_DOUBLE_EQ(mtp.at(800), 0.1);
  EXPECT_DOUBLE_EQ(mtp.at(5000), 0.1);
  EXPECT_EQ(mtp.str(), "0.3,0.1@800");

  const StepSchedule three = StepSchedule::parse(" 1e-3@0 , 0@10, 2.5 @ 20 ");
  EXPECT_DOUBLE_EQ(three.at(9), 1e-3);
  EXPECT_DOUBLE_EQ(three.at(10), 0.0);
  EXPECT_DOUBLE_EQ(three.at(19), 0.0);
  EXPECT_DOUBLE_EQ(three.at(20), 2.5);
  EXPECT_EQ(three.str(), "0.001,0@10,2.5@20");
  EXPECT_EQ(StepSchedule::parse(three.str()).str(), three.str());

  EXPECT_DOUBLE_EQ(StepSchedule(0.01).at(7), 0.01);
  EXPECT_DOUBLE_EQ(StepSchedule().at(7), 0.0);
}

TEST(Schedule, StepScheduleErrorsQuoteTheText) {
  EXPECT_NE(parse_error("").find("does not start with a number"), std::string::npos);
  EXPECT_NE(parse_error("abc").find("'abc'"), std::string::npos);
  EXPECT_NE(parse_error("nan").find("'nan'"), std::string::npos);
  EXPECT_NE(parse_error("0.3,").find("'0.3,'"), std::string::npos);
  EXPECT_NE(parse_error("0.3x").find("'0.3x'"), std::string::npos);
  EXPECT_NE(parse_error("0.3,0.1").find("needs '@<step>'"), std::string::npos);
  EXPECT_NE(parse_error("0.3,0.1@-5").find("piece '0.1@-5' has no valid step"), std::string::npos);
  EXPECT_NE(parse_error("0.3,0.1@x").find("no valid step"), std::string::npos);
  EXPECT_NE(parse_error("0.3,0.1@800,0.2@800").find("must be after step 800"), std::string::npos);
  EXPECT_NE(parse_error("0.3@5").find("from step 0, not 5"), std::string::npos);
}
