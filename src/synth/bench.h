// Operators at a real model's projection shapes: latency, FLOPs and parameters of each operator at
// each shape, and its speed-up against the dense layer there (`dseek synth bench`).
//
// Operators: the known designs, built through the IR like any candidate (dense; low rank with
// r = d/4 and d/8, d = min(d_in, d_out); grouped with g = 2, 4, 8), operator files and the best
// candidates of a search. Their sizes are symbolic: at each shape an operator [T, X] → [T, Y]
// (X, Y primary variables) takes T = tokens, X = d_in, Y = d_out and keeps its other variables'
// values (a file's first valuation: its coefficients), and every size must then be a positive
// integer; a shape where one is not (a group count that does not divide d_out) is a row with a
// note, not a failure of the table.
//
// Each (shape, operator) is lowered (lower.h) and timed by synth/evaluate.h's measure_latency:
// warm-up runs, then timed runs (device synchronised before the clock is read), medians; a time
// cap per row keeps a pathologically slow lowering (element-wise gathers) from stalling the
// table. An operator whose lowered tensors at the shape would exceed a size limit is skipped with
// a note before anything is allocated.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "synth/serialize.h"

namespace dseek::synth {

struct BenchShape {
  std::string name;  // "q_proj"
  int64_t d_in = 0, d_out = 0;
};

// "v2-lite": DeepSeek-V2-Lite's projections (d_model 2048): q_proj 2048→3072, o_proj 2048→2048,
// the expert / shared-expert FFN 2048→1408 and 1408→2048, the dense FFN 2048→10944. Else a
// comma-separated list of [NAME=]D_INxD_OUT ("2048x3072,kv=2048x576"). Throws on a malformed list.
std::vector<BenchShape> parse_bench_shapes(const std::string& text);

struct BenchOperator {
  std::string label;      // "dense", "low rank r=d/4", "grouped g=2", the file, "top1 0795675a"
  OperatorRecord record;  // the operator and its variables; valuations[0] holds its coefficients
  // Built-in low rank: the coefficient `rank_var` is min(d_in, d_out) / rank_div at each shape.
  int rank_var = -1;
  int64_t rank_div = 0;
};

// A known design's name, "kind" or "kind/N" (known_operator, known_conv_operator): the kind, N
// (0 unless a positive number of at most 6 digits follows the slash) and whether there is no
// slash at all.
struct KnownName {
  std::string kind;
  int64_t n = 0;
  bool plain = true;
};
KnownName parse_known_name(const std::string& name);
// The names of a comma-separated list ("a,b/2" → {"a", "b/2"}; an empty item stays, and fails
// as a name).
std::vector<std::string> split_known_names(const std::string& list);

// A known design by name: "dense", "lowrank/N" (r = min(d_in, d_out) / N at each shape) or
// "grouped/N" (g = N), built through the IR (the action lists of docs/SYNTH.md, "The IR").
// Throws on another name.
BenchOperator known_operator(const std::string& name);
// A comma-separated list of known designs; "default" is dense,lowrank/4,lowrank/8,grouped/2,
// grouped/4,grouped/8. Dense must come first (the reference of every speed-up).
std::vector<BenchOperator> known_operators(const std::string& list);

// The valuation of `op` at [tokens, d_in] → [tokens, d_out]; throws dseek::Error naming the
// operator, the shape and the size that is not a positive integer.
Valuation bench_valuation(const BenchOperator& op, int64_t tokens, const BenchShape& shape);

struct BenchOptions {
  Device device = Device::CPU;
  DType dtype = DType::F32;  // bf16: forward in bf16 (a GPU)
  int64_t tokens = 4096;
  bool backward = false;  // also time forward + backward (f32)
  int warmup = 2, runs = 10;
  double row_ms = 3000.0;  // time cap of one row's timed runs (each of forward, forward+backward)
  // Skip an operator whose lowered plan would hold a tensor (or gather index) of more elements.
  int64_t max_elements = int64_t(1) << 30;
  // bf16: also run the forward in f32 on the same inputs and report the largest difference
  // relative to the f32 output's largest magnitude (a check of the bf16 path).
  bool check = true;
};

struct BenchRow {
  std::string shape, op;
  int64_t d_in = 0, d_out = 0;
  bool ok = false;
  std::string note;  // why not ok, or "3 runs (time cap)"
  int64_t flops = 0, params = 0;
  double forward_ms = 0.0, train_ms = 0.0;  // train_ms: forward + backward (options.backward)
  int runs = 0;
  // Against the dense operator at the same shape (0 when it has no timing).
  double speedup = 0.0, train_speedup = 0.0, flops_ratio = 0.0;
  double bf16_rel_diff = -1.0;  // options.check with bf16; −1 when not measured
  std::string plan;             // the lowered steps in one line (gathers and contractions)
};

// Every operator at every shape, shape by shape; `progress` is told each finished row.
std::vector<BenchRow> run_bench(const std::vector<BenchOperator>& ops,
                                const std::vector<BenchShape>& shapes, const BenchOptions& options,
                                const std::function<void(const BenchRow&)>& progress = nullptr);

// The rows as a markdown table (one header line saying device, dtype and tokens), and as JSON.
std::string bench_markdown(const std::vector<BenchRow>& rows, const BenchOptions& options);
std::string bench_json(const std::vector<BenchRow>& rows, const BenchOptions& options);

}  // namespace dseek::synth
