// The [N, C, H, W] → [N, C_out, H, W] problem of the known convolution designs (conv_designs.h)
// and the synthesis tests: its variables (N, C, C_out, H, W primary; the kernel size k a
// coefficient) and the k×k window's actions. One declaration, as linear_problem.h is for the
// linear layers.
#pragma once

#include <vector>

#include "synth/operator.h"
#include "synth/size.h"

namespace dseek::synth {

struct ConvProblem {
  Vars vars;
  int N = vars.add("N", VarKind::primary);
  int C = vars.add("C", VarKind::primary);
  int Cout = vars.add("C_out", VarKind::primary);
  int H = vars.add("H", VarKind::primary);
  int W = vars.add("W", VarKind::primary);
  int k = vars.add("k", VarKind::coefficient);
  Size sN = Size::var(N), sC = Size::var(C), sCout = Size::var(Cout), sH = Size::var(H),
       sW = Size::var(W), sk = Size::var(k);

  // The centred k×k window over H and W: frontier dims `h` and `h + 1` (H, W) unfolded with two
  // new reductions of extent k shared into weight `w`; the window dims land at the frontier's end
  // (position `end`) before each Unfold takes them.
  std::vector<Action> window(int h, int end, int w) const {
    return {reduce_action(sk), share_action(end, w), unfold_action(h, end),
            reduce_action(sk), share_action(end, w), unfold_action(h + 1, end)};
  }
};

}  // namespace dseek::synth
