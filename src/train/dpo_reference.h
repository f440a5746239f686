// The frozen reference of DPO: log π_ref(y|x) summed over each pair's chosen and rejected response
// tokens, computed once with the initial weights (the SFT model the run starts from) before the
// first step and cached in the run directory (reference_logps.json), so no second model is kept in
// memory and a resumed run uses exactly the values the run started with.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "dist/process_group.h"
#include "train/pipeline_parallel.h"
#include "train/train_batches.h"
#include "train/train_model.h"

namespace dseek::train {

using ReferenceLogps = std::vector<std::pair<double, double>>;  // (chosen, rejected) by pair id

// Forward passes over every row of the data set (no gradients). Collective over `group`: rank r
// of N runs the batches i with i mod N = r, and an f64 all-reduce gives every rank all pairs
// (each filled by one rank, zeros elsewhere: the sum is exact).
// Under expert parallelism (options.expert_parallel) every rank runs the same number of forwards,
// which are collective (a rank past the last row runs a stand-in).
ReferenceLogps compute_reference_logps(TrainModel& model, const TrainBatches& batches,
                                       const LossOptions& options, dist::ProcessGroup& group);
// Pipeline parallelism: the rows go to the pipelines in turn (row i to pipeline i mod R), each
// through its stages; the last stages fill their rows' pairs and the all-reduce over `group` (the
// world) gives every rank all of them. Collective over the world.
ReferenceLogps compute_reference_logps(PipelineStage& stage, const PipelineLayout& layout,
                                       const TrainBatches& batches, const LossOptions& options,
                                       dist::ProcessGroup& group);
void save_reference_logps(const std::string& path, const ReferenceLogps& ref);
// Throws naming the file unless it holds exactly `pairs` pairs.
ReferenceLogps load_reference_logps(const std::string& path, int64_t pairs);

}  // namespace dseek::train
