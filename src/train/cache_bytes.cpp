// Bytes held by the training caches (see cache_bytes.h).
#include "train/cache_bytes.h"

#include <algorithm>
#include <cstdint>
#include <tuple>

namespace dseek::train {
namespace {

// The memory spans of the tensors met (merged at the end, so memory shared by several handles
// counts once) and the bytes of host vectors.
class Bytes {
 public:
  void add(const Tensor& t) {
    if (!t.defined() || t.numel() == 0) return;
    // Element 0 to the last element (cache tensors are views with non-negative strides).
    int64_t last = 0;
    for (int d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.strides()[size_t(d)];
    const auto begin = reinterpret_cast<uintptr_t>(t.raw());
    spans_.push_back({t.device(), begin, begin + uintptr_t(last + 1) * dtype_size(t.dtype())});
  }
  void add(const ops::Fp8Tensor& t) {
    add(t.data);
    add(t.scale);
  }
  void add(const LinearInput& in) {
    add(in.x);
    add(in.fp8.x);
  }
  void add(const GroupedInput& in) {
    add(in.x);
    add(in.fp8.x);
  }
  template <typename T>
  void add(const std::vector<T>& v) {
    host_ += int64_t(v.size() * sizeof(T));
  }

  int64_t total() {
    std::sort(spans_.begin(), spans_.end());
    int64_t bytes = host_;
    for (size_t i = 0; i < spans_.size();) {
      const Span& s = spans_[i];
      uintptr_t end = s.end;
      size_t j = i + 1;
      for (; j < spans_.size() && spans_[j].device == s.device && spans_[j].begin < end; ++j)
        end = std::max(end, spans_[j].end);
      bytes += int64_t(end - s.begin);
      i = j;
    }
    return bytes;
  }

 private:
  struct Span {
    Device device;
    uintptr_t begin, end;
    bool operator<(const Span& o) const {
      return std::tie(device, begin, end) < std::tie(o.device, o.begin, o.end);
    }
  };
  std::vector<Span> spans_;
  int64_t host_ = 0;
};

void add(Bytes& b, const MlpCache& c) {
  b.add(c.x);
  b.add(c.gate);
  b.add(c.up);
  b.add(c.inner);
  for (const synth::SynthLayerCache* s : {&c.synth_gate, &c.synth_up, &c.synth_down})
    for (const Tensor& r : s->lowered.registers) b.add(r);
}

void add(Bytes& b, const AttentionCache& c) {
  b.add(c.x);
  b.add(c.q_a);
  b.add(c.q_a_normed);
  b.add(c.kv_a);
  b.add(c.c_kv);
  b.add(c.q);
  b.add(c.k);
  b.add(c.v);
  b.add(c.attn);
  b.add(c.segments);
}

void add(Bytes& b, const ExchangeCounts& c) {
  for (const std::vector<int64_t>* v : {&c.send_rows, &c.recv_rows, &c.recv_per_expert, &c.recv_at})
    b.add(*v);
}

void add(Bytes& b, const MoeCache& c) {
  b.add(c.x);
  const MoeHostCache& h = c.host;
  b.add(h.routing.expert_ids);
  b.add(h.routing.weights);
  b.add(h.routing.scores);
  b.add(h.offsets);
  b.add(h.slots);
  for (const MlpCache& e : h.experts) add(b, e);
  b.add(h.expert_out);
  add(b, h.ep_counts);
  b.add(c.x_router);
  for (const Tensor* t : {&c.routing.ids, &c.routing.weights, &c.routing.scores,
                          &c.dispatch.offsets, &c.dispatch.order, &c.dispatch.position})
    b.add(*t);
  b.add(c.x_perm);
  b.add(c.gate);
  b.add(c.up);
  b.add(c.inner);
  b.add(c.y_perm);
  add(b, c.shared);
  b.add(c.aux_grad_scores);
  add(b, c.exchange);
  b.add(c.exchange.owner_order);
  b.add(c.exchange.source_order);
  b.add(c.exchange.offsets);
}

void add(Bytes& b, const BlockCache& c) {
  b.add(c.x);
  b.add(c.h);
  add(b, c.attn);
  if (c.is_moe)
    add(b, c.moe);
  else
    add(b, c.mlp);
}

}  // namespace

int64_t cache_bytes(const BlockCache& cache) {
  Bytes b;
  add(b, cache);
  return b.total();
}

int64_t cache_bytes(const std::vector<BlockCache>& caches) {
  Bytes b;
  for (const BlockCache& c : caches) add(b, c);
  return b.total();
}

}  // namespace dseek::train
