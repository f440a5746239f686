#include "train/dpo_reference.h"

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "data/token_shards.h"

namespace dseek::train {

namespace {

// Rows turn, turn + turns, turn + 2·turns, … of the data set through `forward` (token log-probs
// of the main head, or nothing where this rank holds no head); the pairs of the rows a rank ran
// filled in, zeros elsewhere, then summed over `group` (each pair filled once: exact).
// `lockstep`: every rank runs the same number of forwards (a rank past the last row runs row 0 as
// a stand-in and keeps nothing of it), for forwards that are collective over the group.
ReferenceLogps reference_over(
    const TrainBatches& batches, dist::ProcessGroup& group, size_t turn, size_t turns,
    bool lockstep,
    const std::function<std::optional<std::vector<double>>(const MicroBatch&)>& forward) {
  std::vector<double> flat(2 * size_t(batches.num_pairs()), 0.0);  // (chosen, rejected) at 2k
  const std::vector<MicroBatch> rows = batches.all_rows();
  const size_t rounds = (rows.size() + turns - 1) / turns;
  for (size_t round = 0; round < rounds; ++round) {
    const size_t k = round * turns + turn;
    const bool stand_in = k >= rows.size();
    if (stand_in && !lockstep) break;
    const MicroBatch& b = rows[stand_in ? 0 : k];
    const std::optional<std::vector<double>> logp = forward(b);
    if (stand_in || !logp) continue;
    for (size_t i = 0; i < b.pairs.size(); ++i) {
      const DpoPair& p = b.pairs[i];
      const size_t at = 2 * size_t(b.pair_ids[i]);
      flat[at] = sequence_logp(*logp, p.chosen_begin, p.chosen_end);
      flat[at + 1] = sequence_logp(*logp, p.rejected_begin, p.rejected_end);
    }
  }
  if (group.size() > 1) group.all_reduce(std::span<double>(flat));
  ReferenceLogps ref;
  for (size_t k = 0; k < flat.size(); k += 2) ref.emplace_back(flat[k], flat[k + 1]);
  return ref;
}

LossOptions forward_only(const LossOptions& options) {
  LossOptions o = options;
  o.token_weights = nullptr;
  o.mtp_lambda = 0.0;
  o.token_logp = true;  // what the pass is for
  return o;
}

}  // namespace

ReferenceLogps compute_reference_logps(TrainModel& model, const TrainBatches& batches,
                                       const LossOptions& options, dist::ProcessGroup& group) {
  // Under expert parallelism every forward is collective (the MoE layers exchange tokens).
  const LossOptions o = forward_only(options);
  return reference_over(batches, group, size_t(group.rank()), size_t(group.size()),
                        options.expert_parallel != nullptr, [&](const MicroBatch& b) {
                          return std::optional<std::vector<double>>(
                              model.forward(b.inputs, b.targets, o, b.segments).token_logp);
                        });
}

ReferenceLogps compute_reference_logps(PipelineStage& stage, const PipelineLayout& layout,
                                       const TrainBatches& batches, const LossOptions& options,
                                       dist::ProcessGroup& group) {
  const LossOptions o = forward_only(options);
  return reference_over(batches, group, size_t(layout.replica), size_t(layout.replicas), false,
                        [&](const MicroBatch& b) {
                          SequenceLosses l = stage.forward(b, o);
                          return layout.last() ? std::optional(std::move(l.token_logp))
                                               : std::nullopt;
                        });
}

void save_reference_logps(const std::string& path, const ReferenceLogps& ref) {
  nlohmann::json chosen = nlohmann::json::array(), rejected = nlohmann::json::array();
  for (const auto& [c, r] : ref) {
    chosen.push_back(c);
    rejected.push_back(r);
  }
  write_file_atomic(path, nlohmann::json{{"pairs", ref.size()}, {"chosen", chosen}, {"rejected", rejected}}.dump() + "\n");
}

ReferenceLogps load_reference_logps(const std::string& path, int64_t pairs) {
  std::ifstream in(path);
  DSEEK_CHECK(in.good(), "[dpo] {}: cannot read the cached reference log-probs", path);
  std::stringstream ss;
  ss << in.rdbuf();
  ReferenceLogps ref;
  try {
    const nlohmann::json j = nlohmann::json::parse(ss.str());
    const auto& c = j.at("chosen");
    const auto& r = j.at("rejected");
    DSEEK_CHECK(c.size() == size_t(pairs) && r.size() == size_t(pairs),
                "[dpo] {}: {} reference pairs, the data set has {}", path, c.size(), pairs);
    for (size_t i = 0; i < c.size(); ++i) ref.emplace_back(c[i].get<double>(), r[i].get<double>());
  } catch (const nlohmann::json::exception& e) {
    fail("[dpo] {}: {}", path, e.what());
  }
  return ref;
}

}  // namespace dseek::train
