#include "train/dpo_reference.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/token_shards.h"

namespace dseek::train {

ReferenceLogps compute_reference_logps(TrainModel& model, const TrainBatches& batches,
                                       const LossOptions& options, dist::ProcessGroup& group) {
  // (chosen, rejected) of pair k at 2k, 2k + 1.
  std::vector<double> flat(2 * size_t(batches.num_pairs()), 0.0);
  LossOptions forward_only = options;
  forward_only.token_weights = nullptr;
  forward_only.mtp_lambda = 0.0;
  const std::vector<MicroBatch> rows = batches.all_rows();
  // The ranks take the rows in turn. Under expert parallelism every forward is collective (the
  // MoE layers exchange tokens), so every rank runs the same number of them: a rank past the last
  // row runs row 0 as a stand-in and keeps nothing of it.
  const size_t N = size_t(group.size()), rounds = (rows.size() + N - 1) / N;
  const bool lockstep = options.expert_parallel != nullptr;
  for (size_t round = 0; round < rounds; ++round) {
    const size_t k = round * N + size_t(group.rank());
    const bool stand_in = k >= rows.size();
    if (stand_in && !lockstep) break;
    const MicroBatch& b = rows[stand_in ? 0 : k];
    const SequenceLosses l = model.forward(b.inputs, b.targets, forward_only, b.segments);
    if (stand_in) continue;
    for (size_t i = 0; i < b.pairs.size(); ++i) {
      const DpoPair& p = b.pairs[i];
      const size_t at = 2 * size_t(b.pair_ids[i]);
      flat[at] = sequence_logp(l.token_logp, p.chosen_begin, p.chosen_end);
      flat[at + 1] = sequence_logp(l.token_logp, p.rejected_begin, p.rejected_end);
    }
  }
  if (group.size() > 1) group.all_reduce(std::span<double>(flat));
  ReferenceLogps ref;
  for (size_t k = 0; k < flat.size(); k += 2) ref.emplace_back(flat[k], flat[k + 1]);
  return ref;
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
