#include "train/pipeline_parallel.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <span>

#include "core/error.h"

namespace dseek::train {
namespace {

// Message tags: a micro-batch's activation (even) and its gradient (odd) per step, wrapping
// below the fixed tags (messages between two ranks with one tag arrive in order, so a wrap only
// needs the tags of one direction to stay apart); then the embedding copy and validation.
constexpr int kStepTags = 32000;
constexpr int kEmbedGradTag = 32001, kEmbedValueTag = 32002, kValidationTag = 32003;
int forward_tag(int64_t i) {
  return int((2 * i) % kStepTags);
}
int backward_tag(int64_t i) {
  return int((2 * i + 1) % kStepTags);
}

const char* const kEmbed = "model.embed_tokens.weight";

int64_t numel_of(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::span<float> span_of(const Tensor& t) {
  DSEEK_CHECK(!t.is_cuda() && t.dtype() == DType::F32 && t.is_contiguous(),
              "[pipeline] messages are contiguous f32 host tensors");
  return {t.data<float>(), size_t(t.numel())};
}

// Layer index of "model.layers.<i>.mlp".
int64_t layer_of(const std::string& moe_prefix) {
  return std::stoll(moe_prefix.substr(std::string("model.layers.").size()));
}

}  // namespace

ModelPart PipelineLayout::owned() const {
  return {first_layer, last_layer, first(), last()};
}

ModelPart PipelineLayout::held() const {
  ModelPart part = owned();
  part.embedding = first() || (last() && shared_embedding);
  return part;
}

PipelineLayout make_pipeline_layout(const ModelConfig& config, int stages, int stage, int replicas,
                                    int replica) {
  const int64_t L = config.num_hidden_layers;
  DSEEK_CHECK(stages >= 1 && stages <= L,
              "[train] dist.pipeline_parallel {}: the model has {} layers, so at most {} stages "
              "(each stage needs one layer at least)",
              stages, L, L);
  DSEEK_CHECK(stage >= 0 && stage < stages && replica >= 0 && replica < replicas,
              "[pipeline] stage {} of {}, replica {} of {}", stage, stages, replica, replicas);
  PipelineLayout layout;
  layout.stages = stages;
  layout.stage = stage;
  layout.replicas = replicas;
  layout.replica = replica;
  const dist::Range layers = dist::even_share(L, stages, stage);
  layout.first_layer = layers.first;
  layout.last_layer = layers.first + layers.count;
  layout.shared_embedding =
      stages > 1 && (config.num_nextn_predict_layers > 0 || config.tie_word_embeddings);
  return layout;
}

std::vector<MicroBatch> split_micro_batch(const MicroBatch& batch, int64_t parts) {
  const int64_t N = batch.tokens();
  DSEEK_CHECK(parts >= 1 && N % parts == 0,
              "[train] dist.micro_batches {}: a batch of {} tokens does not split into {} equal "
              "micro-batches",
              parts, N, parts);
  const int64_t n = N / parts;
  std::vector<MicroBatch> out(static_cast<size_t>(parts));
  int64_t at = 0;  // token offset of the current segment
  size_t seg = 0;
  for (int64_t p = 0; p < parts; ++p) {
    MicroBatch& m = out[size_t(p)];
    m.inputs.assign(batch.inputs.begin() + p * n, batch.inputs.begin() + (p + 1) * n);
    m.targets.assign(batch.targets.begin() + p * n, batch.targets.begin() + (p + 1) * n);
    while (at < (p + 1) * n && seg < batch.segments.size()) {
      m.segments.push_back(batch.segments[seg]);
      at += batch.segments[seg++];
    }
    DSEEK_CHECK(at == (p + 1) * n,
                "[train] dist.micro_batches {}: micro-batch {} would end inside a sequence "
                "(token {}); the batch's sequences must split into equal micro-batches",
                parts, p, (p + 1) * n);
  }
  // DPO: each pair lies in one row (one sequence), so in one micro-batch; its token ranges move
  // to that micro-batch's positions.
  for (size_t i = 0; i < batch.pairs.size(); ++i) {
    DpoPair q = batch.pairs[i];
    const int64_t p = q.chosen_begin / n;
    DSEEK_CHECK(p < parts && q.rejected_end <= (p + 1) * n,
                "[train] DPO pair {} (tokens {}..{}) crosses micro-batches", i, q.chosen_begin,
                q.rejected_end);
    for (int64_t* t : {&q.chosen_begin, &q.chosen_end, &q.rejected_begin, &q.rejected_end})
      *t -= p * n;
    out[size_t(p)].pairs.push_back(q);
    if (i < batch.pair_ids.size()) out[size_t(p)].pair_ids.push_back(batch.pair_ids[i]);
  }
  return out;
}

PipelineStage::PipelineStage(dist::ProcessGroup& group, const PipelineLayout& layout,
                             TrainModel& model, ParamSet& params)
    : group_(group), layout_(layout), model_(model), params_(params) {
  DSEEK_CHECK(group.size() == layout.stages * layout.replicas &&
                  group.rank() == layout.rank_of(layout.stage, layout.replica),
              "[pipeline] stage {} of {} (replica {} of {}) on rank {} of {}", layout.stage,
              layout.stages, layout.replica, layout.replicas, group.rank(), group.size());
  // (collective over the world: every rank builds its stage)
  if (layout.replicas > 1) replicas_ = group.split(layout.stage);
  const int64_t L = model.config().num_hidden_layers;
  const std::vector<std::string>& moe = model.moe_layers();
  for (size_t j = 0; j < moe.size(); ++j) {
    const int64_t l = layer_of(moe[j]);
    if ((l >= layout.first_layer && l < layout.last_layer) || (layout.last() && l >= L))
      load_slots_.push_back(j);
  }
}

void PipelineStage::init_stage_params(const ModelConfig& config, const PipelineLayout& layout,
                                      uint64_t seed, double std, ParamSet& params) {
  TrainModel::init_params(config, seed, std, params, layout.owned());
  if (!(layout.last() && layout.shared_embedding)) return;
  // The copy: the embedding's own initial values, no optimizer state (not trainable), but a
  // gradient for the MTP modules / tied head to accumulate into.
  ParamSet embedding;
  TrainModel::init_params(config, seed, std, embedding, ModelPart{0, 0, true, false});
  Param& copy = params.add(kEmbed, embedding.value(kEmbed), false, false);
  copy.grad = Tensor::zeros(copy.value.shape());
}

int64_t PipelineStage::model_parameters() const {
  int64_t n = 0;
  for (const WeightSpec& spec : TrainModel::param_specs(model_.config()))
    if (!is_training_buffer(spec.name)) n += numel_of(spec.shape);
  return n;
}

Tensor PipelineStage::receive(int64_t rows, int peer, int tag) {
  Tensor x = Tensor::empty({rows, model_.config().hidden_size});
  group_.recv(span_of(x), peer, tag);
  return x;
}

void PipelineStage::send(const Tensor& x_in, int peer, int tag) {
  // Sends that have completed release their buffers; the rest stay alive until finish_sends.
  for (size_t i = 0; i < sends_.size();) {
    if (sends_[i]->test()) {
      sends_.erase(sends_.begin() + std::ptrdiff_t(i));
      sent_.erase(sent_.begin() + std::ptrdiff_t(i));
    } else {
      ++i;
    }
  }
  const Tensor x = x_in.contiguous();
  sends_.push_back(group_.send_async(span_of(x), peer, tag));
  sent_.push_back(x);
}

void PipelineStage::finish_sends() {
  for (auto& w : sends_) w->wait();
  sends_.clear();
  sent_.clear();
}

SequenceLosses PipelineStage::empty_losses() const {
  SequenceLosses s;
  s.expert_load.assign(model_.moe_layers().size(),
                       std::vector<int64_t>(size_t(model_.config().n_routed_experts), 0));
  return s;
}

void PipelineStage::accumulate(const SequenceLosses& part, SequenceLosses& sum) const {
  sum.total += part.total;
  sum.main_ce += part.main_ce;
  sum.main_tokens += part.main_tokens;
  sum.aux += part.aux;
  if (sum.mtp_ce.size() < part.mtp_ce.size()) sum.mtp_ce.resize(part.mtp_ce.size(), 0.0);
  for (size_t k = 0; k < part.mtp_ce.size(); ++k) sum.mtp_ce[k] += part.mtp_ce[k];
  DSEEK_CHECK(part.expert_load.size() == load_slots_.size(),
              "[pipeline] stage {}: {} expert loads for {} MoE layers", layout_.stage,
              part.expert_load.size(), load_slots_.size());
  for (size_t j = 0; j < load_slots_.size(); ++j) {
    std::vector<int64_t>& to = sum.expert_load[load_slots_[j]];
    for (size_t e = 0; e < to.size() && e < part.expert_load[j].size(); ++e)
      to[e] += part.expert_load[j][e];
  }
}

SequenceLosses PipelineStage::train_step(const std::vector<MicroBatch>& micro,
                                         const LossOptions& options, float loss_scale,
                                         DataParallel* replicas, const HeadOptions& head_options) {
  DSEEK_CHECK(!options.token_weights && !options.expert_parallel,
              "[pipeline] shared token weights and expert parallelism are not pipelined (DPO's "
              "are per micro-batch: head_options)");
  const int64_t M = int64_t(micro.size());
  const int s = layout_.stage, P = layout_.stages;
  const int prev = layout_.rank_of(s - 1, layout_.replica);
  const int next = layout_.rank_of(s + 1, layout_.replica);
  const int64_t first = layout_.first_layer, last = layout_.last_layer;
  std::vector<InFlight> state(static_cast<size_t>(M));
  SequenceLosses sum = empty_losses();

  auto forward = [&](int64_t i) {
    const MicroBatch& b = micro[size_t(i)];
    InFlight& f = state[size_t(i)];
    model_.check_batch(b.inputs, b.targets, b.segments);
    Tensor x = layout_.first() ? model_.embed_forward(b.inputs)
                               : receive(b.tokens(), prev, forward_tag(i));
    x = model_.blocks_forward(first, last, x, b.segments, options, f.blocks);
    SequenceLosses part;
    if (layout_.last()) {
      if (!head_options) {
        part = model_.head_forward(x, b.inputs, b.targets, options, b.segments, f.head);
      } else {  // (the head keeps what its backward needs: shares, weights)
        LossOptions own = options;
        head_options(i, own);
        part = model_.head_forward(x, b.inputs, b.targets, own, b.segments, f.head);
      }
    } else
      send(x, next, forward_tag(i));
    TrainModel::add_block_stats(f.blocks, part);
    if (layout_.last()) model_.add_mtp_stats(f.head, part);
    part.total += part.aux;
    accumulate(part, sum);
  };
  // The step's last backward announces its finished blocks to the replicas' reductions (the
  // stage's parameters follow DataParallel::on_block_backward's rule: the head and MTP modules
  // before the main layers, last to first; the embedding at the end).
  LossOptions last_options = options;
  if (replicas)
    last_options.on_block_backward = [replicas](int64_t layer) {
      replicas->on_block_backward(layer);
    };
  auto backward = [&](int64_t i) {
    const MicroBatch& b = micro[size_t(i)];
    InFlight& f = state[size_t(i)];
    if (replicas && i == M - 1) replicas->arm();
    const LossOptions& o = replicas && i == M - 1 ? last_options : options;
    Tensor dx = layout_.last() ? model_.head_backward(f.head, b.targets, o, loss_scale)
                               : receive(b.tokens(), next, backward_tag(i));
    dx = model_.blocks_backward(first, last, f.blocks, dx, o, loss_scale);
    if (layout_.first())
      model_.embed_backward(b.inputs, dx);
    else
      send(dx, prev, backward_tag(i));
    f = InFlight();  // its activations are no longer needed
  };

  // 1F1B: warm-up forwards, one forward and one backward in turn, the cool-down backwards.
  const int64_t warmup = std::min<int64_t>(P - s - 1, M);
  for (int64_t i = 0; i < warmup; ++i) forward(i);
  for (int64_t i = warmup; i < M; ++i) {
    forward(i);
    backward(i - warmup);
  }
  for (int64_t i = M - warmup; i < M; ++i) backward(i);
  finish_sends();
  return sum;
}

SequenceLosses PipelineStage::forward(const MicroBatch& b, const LossOptions& options) {
  const int s = layout_.stage;
  const int prev = layout_.rank_of(s - 1, layout_.replica);
  const int next = layout_.rank_of(s + 1, layout_.replica);
  model_.check_batch(b.inputs, b.targets, b.segments);
  Tensor x =
      layout_.first() ? model_.embed_forward(b.inputs) : receive(b.tokens(), prev, kValidationTag);
  std::vector<BlockCache> blocks;
  HeadCache head;
  x = model_.blocks_forward(layout_.first_layer, layout_.last_layer, x, b.segments, options,
                            blocks);
  SequenceLosses part;
  if (layout_.last())
    part = model_.head_forward(x, b.inputs, b.targets, options, b.segments, head);
  else
    send(x, next, kValidationTag);
  TrainModel::add_block_stats(blocks, part);
  if (layout_.last()) model_.add_mtp_stats(head, part);
  part.total += part.aux;
  SequenceLosses sum = empty_losses();
  accumulate(part, sum);
  sum.token_logp = std::move(part.token_logp);  // the last stage's (DPO's reference pass)
  finish_sends();
  return sum;
}

void PipelineStage::gather_embedding_grad() {
  if (!layout_.shared_embedding) return;
  // The copy's gradient (MTP modules, tied head) joins the first stage's.
  const int first_rank = layout_.rank_of(0, layout_.replica);
  const int last_rank = layout_.rank_of(layout_.stages - 1, layout_.replica);
  if (layout_.last()) {
    group_.send(span_of(params_.grad(kEmbed)), first_rank, kEmbedGradTag);
  } else if (layout_.first()) {
    const Tensor& grad = grad_to_add(params_.at(kEmbed));  // any row (Param::grad_rows)
    const Tensor other = Tensor::empty(grad.shape());
    group_.recv(span_of(other), last_rank, kEmbedGradTag);
    float* g = grad.data<float>();
    const float* o = other.data<float>();
    for (int64_t i = 0; i < grad.numel(); ++i) g[i] += o[i];
  }
}

void PipelineStage::send_embedding_values() {
  if (!layout_.shared_embedding) return;
  const int first_rank = layout_.rank_of(0, layout_.replica);
  const int last_rank = layout_.rank_of(layout_.stages - 1, layout_.replica);
  if (layout_.first())
    group_.send(span_of(params_.value(kEmbed)), last_rank, kEmbedValueTag);
  else if (layout_.last())
    group_.recv(span_of(params_.value(kEmbed)), first_rank, kEmbedValueTag);
}

double PipelineStage::optimizer_step(AdamW& optimizer, double lr, double max_norm) {
  DSEEK_CHECK(layout_.replicas == 1,
              "[pipeline] {} pipelines: their stages step with DataParallel over the replicas",
              layout_.replicas);
  gather_embedding_grad();
  // The global norm: every stage's trainable gradients once (the copy is not trainable).
  const double local = grad_norm(params_);
  std::vector<double> squares = {local * local};
  group_.all_reduce(std::span<double>(squares));
  const double norm = std::sqrt(squares[0]);
  optimizer.step(lr, clip_factor(norm, max_norm));
  send_embedding_values();
  return norm;
}

double PipelineStage::optimizer_step(DataParallel& optimizer, double lr, double max_norm) {
  gather_embedding_grad();
  optimizer.reduce_gradients();
  // The stage's Σ g² over its replicas' shards (the same on each replica; replica 0 counts it),
  // summed over the stages.
  const double stage = optimizer.grad_sum_of_squares();
  std::vector<double> squares = {layout_.replica == 0 ? stage : 0.0};
  group_.all_reduce(std::span<double>(squares));
  const double norm = std::sqrt(squares[0]);
  optimizer.scale_gradients(clip_factor(norm, max_norm));
  optimizer.step(lr);
  params_.refresh_compute();
  send_embedding_values();
  return norm;
}

void PipelineStage::gather_checkpoint(const std::vector<std::pair<std::string, Tensor>>& state,
                                      CheckpointData& ck) {
  const ModelConfig& c = model_.config();
  const std::vector<WeightSpec> specs = TrainModel::param_specs(c);
  const int P = layout_.stages;
  // Stage q's block: per owned tensor in order, its value, then (trainable) exp_avg, exp_avg_sq.
  auto floats_of = [](const WeightSpec& spec) {
    return numel_of(spec.shape) * (is_training_buffer(spec.name) ? 1 : 3);
  };
  // Replica 0's stages are ranks 0..P−1; the other replicas hold the same values and send none.
  std::vector<int64_t> counts(size_t(P * layout_.replicas), 0);
  for (int q = 0; q < P; ++q) {
    const ModelPart part = make_pipeline_layout(c, P, q).owned();
    for (const WeightSpec& spec : specs)
      if (in_part(c, part, spec.name)) counts[size_t(q)] += floats_of(spec);
  }
  const std::map<std::string, Tensor> moments(state.begin(), state.end());
  std::vector<float> mine;
  mine.reserve(size_t(counts[size_t(group_.rank())]));
  auto append = [&mine](const Tensor& t) {
    const Tensor h = t.contiguous();
    const float* p = h.data<float>();
    mine.insert(mine.end(), p, p + h.numel());
  };
  for (const WeightSpec& spec : specs) {
    if (layout_.replica != 0 || !in_part(c, layout_.owned(), spec.name)) continue;
    append(params_.value(spec.name));
    if (is_training_buffer(spec.name)) continue;
    append(moments.at("exp_avg." + spec.name));
    append(moments.at("exp_avg_sq." + spec.name));
  }
  int64_t total = 0;
  for (int64_t n : counts) total += n;
  const bool root = group_.rank() == 0;
  std::vector<float> all(root ? size_t(total) : 0);
  group_.gather(mine, all, counts, 0);
  ck.model.clear();
  ck.optimizer.clear();
  if (!root) return;
  // The stages' blocks follow one another in stage order, and within a block the tensors are in
  // the specs' order; stage q owns a contiguous run of the specs (embedding and its layers first,
  // the last stage's layers, final norm, head and MTP modules last), so one walk reads them all.
  std::map<std::string, Tensor> values, avg, avg_sq;
  size_t at = 0;
  auto take = [&](const Shape& shape) {
    const int64_t n = numel_of(shape);
    std::vector<float> v(all.begin() + std::ptrdiff_t(at), all.begin() + std::ptrdiff_t(at + n));
    at += size_t(n);
    return Tensor::from_vector(v, shape);
  };
  for (int q = 0; q < P; ++q) {
    const ModelPart part = make_pipeline_layout(c, P, q).owned();
    for (const WeightSpec& spec : specs) {
      if (!in_part(c, part, spec.name)) continue;
      values[spec.name] = take(spec.shape);
      if (is_training_buffer(spec.name)) continue;
      avg[spec.name] = take(spec.shape);
      avg_sq[spec.name] = take(spec.shape);
    }
  }
  DSEEK_CHECK(at == all.size(), "[pipeline] checkpoint gather: read {} of {} floats", at,
              all.size());
  for (const WeightSpec& spec : specs) {
    ck.model.emplace_back(spec.name, values.at(spec.name));
    if (is_training_buffer(spec.name)) continue;
    ck.optimizer.emplace_back("exp_avg." + spec.name, avg.at(spec.name));
    ck.optimizer.emplace_back("exp_avg_sq." + spec.name, avg_sq.at(spec.name));
  }
}

}  // namespace dseek::train
