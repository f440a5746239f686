// A synthesised operator in place of MLP projections (see synth_override.h).
#include "train/synth_override.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "model/init_weights.h"
#include "ops/activation.h"
#include "synth/cost.h"
#include "synth/interpreter.h"
#include "synth/lower.h"

namespace dseek::train {
namespace {

// Site -> the projections it replaces, and the part of the name under "model.layers.<l>.".
struct SiteInfo {
  std::string site;
  std::string under;  // "mlp" or "mlp.shared_experts"
  std::vector<std::string> projs;
};

const std::vector<SiteInfo>& site_table() {
  static const std::vector<SiteInfo> table = [] {
    std::vector<SiteInfo> t;
    const std::vector<std::string> all = {"gate_proj", "up_proj", "down_proj"};
    for (const auto& [site, under] : {std::pair<std::string, std::string>{"mlp", "mlp"},
                                      {"shared_experts", "mlp.shared_experts"}}) {
      for (const std::string& p : all) t.push_back({site + "." + p, under, {p}});
      t.push_back({site, under, all});
    }
    return t;
  }();
  return table;
}

// "model.layers.<digits>.<under>.<proj>.weight" for one of the site's projections.
bool matches(const SiteInfo& s, const std::string& name) {
  const std::string head = "model.layers.";
  if (name.rfind(head, 0) != 0) return false;
  size_t at = head.size();
  const size_t digits = at;
  while (at < name.size() && name[at] >= '0' && name[at] <= '9') ++at;
  if (at == digits || at >= name.size() || name[at] != '.') return false;
  const std::string rest = name.substr(at + 1);
  for (const std::string& p : s.projs)
    if (rest == s.under + "." + p + ".weight") return true;
  return false;
}

// The first size of the operator that is not a positive integer under `v`, printed, or "".
std::string bad_size(const synth::Operator& op, const synth::Vars& vars,
                     const synth::Valuation& v) {
  auto bad = [&](const synth::Size& s) { return !s.eval(v).has_value(); };
  for (const auto& s : op.output)
    if (bad(s)) return s.str(vars);
  for (const auto& s : op.reduce)
    if (bad(s)) return s.str(vars);
  for (const auto& d : op.input)
    if (bad(d.size)) return d.size.str(vars);
  for (const auto& w : op.weights)
    for (const auto& d : w)
      if (bad(d.size)) return d.size.str(vars);
  for (const auto& e : op.exprs)
    for (const synth::Size* s : {&e.size, &e.size2})
      if (bad(*s)) return s->str(vars);
  return "";
}

std::string valuation_str(const synth::Vars& vars, const synth::Valuation& v, int skip) {
  std::string out;
  for (int i = 0; i < vars.count(); ++i) {
    if (i == skip) continue;
    out += fmt::format("{}{} = {}", out.empty() ? "" : ", ", vars.names[size_t(i)], v[size_t(i)]);
  }
  return out;
}

std::string dims_str(const std::vector<synth::Size>& sizes, const synth::Vars& vars) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + sizes[i].str(vars);
  return out + "]";
}

}  // namespace

const std::vector<std::string>& synth_override_sites() {
  static const std::vector<std::string> sites = [] {
    std::vector<std::string> out;
    for (const SiteInfo& s : site_table()) out.push_back(s.site);
    return out;
  }();
  return sites;
}

std::string synth_override_sites_list() {
  std::string out;
  for (const std::string& s : synth_override_sites()) out += (out.empty() ? "" : ", ") + s;
  return out;
}

SynthOverride::SynthOverride(synth::OperatorRecord record, std::string source, std::string site,
                             const ModelConfig& config)
    : record_(std::move(record)), source_(std::move(source)), site_(std::move(site)) {
  const SiteInfo* info = nullptr;
  for (const SiteInfo& s : site_table())
    if (s.site == site_) info = &s;
  DSEEK_CHECK(info, "[train] train.synth_override.site: '{}' is not one of {}", site_,
              synth_override_sites_list());
  const synth::Operator& op = record_.op;
  const synth::Vars& vars = record_.spec.vars;
  DSEEK_CHECK(op.complete && !op.output.empty() && !op.input.empty(),
              "[train] {}: the operator is not complete", source_);
  token_var_ = op.output[0].bare_var();
  DSEEK_CHECK(token_var_ >= 0 && vars.kinds[size_t(token_var_)] == synth::VarKind::primary,
              "[train] {}: the operator's first output dim {} is not a token count (a primary "
              "variable such as T)",
              source_, op.output[0].str(vars));
  DSEEK_CHECK(!record_.spec.valuations.empty(), "[train] {}: the spec has no valuation", source_);
  for (const synth::Valuation& v : record_.spec.valuations)
    DSEEK_CHECK(int(v.size()) == vars.count(),
                "[train] {}: a valuation of {} values for {} variables", source_, v.size(),
                vars.count());

  // The valuation at one shape: the file's own, else the first one with the site's sizes put in.
  auto fit = [&](int64_t d_in, int64_t d_out, const std::string& where) {
    std::string seen;
    for (synth::Valuation v : record_.spec.valuations) {
      v[size_t(token_var_)] = 1;
      if (!bad_size(op, vars, v).empty()) continue;
      const int64_t in = shape_numel(synth::concrete_shape(op.input, v));
      const int64_t out = shape_numel(synth::concrete_shape(op.output, v));
      if (in == d_in && out == d_out) return v;
      seen += fmt::format("{}[T, {}] -> [T, {}]", seen.empty() ? "" : ", ", in, out);
    }
    std::string why = fmt::format("its valuations give {}", seen.empty() ? "no legal size" : seen);
    const int x = op.input.size() == 2 ? op.input[1].size.bare_var() : -1;
    const int y = op.output.size() == 2 ? op.output[1].bare_var() : -1;
    if (x >= 0 && y >= 0 && x != token_var_ && y != token_var_ &&
        vars.kinds[size_t(x)] == synth::VarKind::primary &&
        vars.kinds[size_t(y)] == synth::VarKind::primary && (x != y || d_in == d_out)) {
      synth::Valuation v = record_.spec.valuations[0];
      v[size_t(token_var_)] = 1;
      v[size_t(x)] = d_in;
      v[size_t(y)] = d_out;
      const std::string bad = bad_size(op, vars, v);
      if (bad.empty()) return v;
      why += fmt::format("; with {} the size {} is not a positive integer",
                         valuation_str(vars, v, token_var_), bad);
    } else {
      std::vector<synth::Size> input;
      for (const auto& d : op.input) input.push_back(d.size);
      why += fmt::format(
          "; the site's sizes cannot be put into its input {} and output {} (not "
          "[T, X] -> [T, Y] over primary variables X, Y that can take them)",
          dims_str(input, vars), dims_str(op.output, vars));
    }
    fail("[train] {}: the operator does not fit {} ([T, {}] -> [T, {}]): {}", source_, where, d_in,
         d_out, why);
  };

  for (const WeightSpec& spec : checkpoint_layout(config)) {
    if (!matches(*info, spec.name)) continue;
    DSEEK_CHECK(spec.shape.size() == 2, "[train] {}: not a matrix", spec.name);
    const int64_t d_out = spec.shape[0], d_in = spec.shape[1];
    size_t index = fits_.size();
    for (size_t i = 0; i < fits_.size(); ++i)
      if (fits_[i].d_in == d_in && fits_[i].d_out == d_out) index = i;
    if (index == fits_.size()) {
      Fit f;
      f.d_in = d_in;
      f.d_out = d_out;
      f.values = fit(d_in, d_out, spec.name);
      try {
        f.layer = std::make_unique<synth::SynthLayer>(op, vars, f.values, token_var_, 0);
      } catch (const Error& e) {
        fail("[train] {}: at {}: {}", source_, spec.name, e.what());
      }
      fits_.push_back(std::move(f));
    }
    proj_[spec.name] = index;
    order_.push_back(spec.name);
  }
  DSEEK_CHECK(!order_.empty(),
              "[train] train.synth_override.site {}: the model ({}) has no such projection ({})",
              site_, config.model_type,
              info->under == "mlp" ? "every MLP layer is MoE" : "no MoE layer with shared experts");
}

std::unique_ptr<SynthOverride> SynthOverride::load(const std::string& file, const std::string& site,
                                                   const ModelConfig& config) {
  std::ifstream in(file, std::ios::binary);
  DSEEK_CHECK(in.good(), "[train] train.synth_override.file {}: cannot read", file);
  std::stringstream ss;
  ss << in.rdbuf();
  synth::OperatorRecord record;
  try {
    record = synth::operator_from_json(ss.str());
  } catch (const Error& e) {
    fail("[train] train.synth_override.file {}: {}", file, e.what());
  }
  return std::make_unique<SynthOverride>(std::move(record), file, site, config);
}

std::string SynthOverride::json() const {
  return synth::operator_to_json(record_.spec, record_.op);
}

const SynthOverride::Fit& SynthOverride::fit_of(const std::string& weight_name) const {
  auto it = proj_.find(weight_name);
  DSEEK_CHECK(it != proj_.end(), "[train] {} is not replaced by the synthesised operator",
              weight_name);
  return fits_[it->second];
}

std::vector<std::string> SynthOverride::param_names(const std::string& weight_name) const {
  const Fit& f = fit_of(weight_name);
  const std::string base =
      weight_name.substr(0, weight_name.size() - std::string(".weight").size());
  std::vector<std::string> out;
  for (size_t w = 0; w < f.layer->weights().size(); ++w)
    out.push_back(base + ".synth.w" + std::to_string(w));
  return out;
}

std::vector<Shape> SynthOverride::param_shapes(const std::string& weight_name) const {
  std::vector<Shape> out;
  for (const Tensor& w : fit_of(weight_name).layer->weights()) out.push_back(w.shape());
  return out;
}

void SynthOverride::replace_params(ParamSet& params, uint64_t seed, double init_std) const {
  DSEEK_CHECK(params.device() == Device::CPU,
              "[train] synth override: replace the parameters before moving them to a device");
  for (const std::string& name : order_)
    DSEEK_CHECK(params.has(name), "[train] synth override: the parameters lack '{}'", name);
  ParamSet out;
  for (const Param& p : params.all()) {
    if (!replaces(p.name)) {
      out.add(p.name, p.value, p.trainable, p.decay);
      continue;
    }
    const Fit& f = fit_of(p.name);
    // A fresh draw per replaced weight (the fit's own layer only holds plans).
    synth::SynthLayer draw(record_.op, record_.spec.vars, f.values, token_var_,
                           seed ^ fnv1a64(p.name));
    const size_t W = draw.weights().size();
    const float gain =
        W == 0 ? 1.0f : float(std::pow(init_std * std::sqrt(double(f.d_in)), 1.0 / double(W)));
    const std::vector<std::string> names = param_names(p.name);
    for (size_t w = 0; w < W; ++w) {
      std::vector<float> v = draw.weights()[w].to_vector();
      for (float& x : v) x *= gain;
      out.add(names[w], Tensor::from_vector(v, draw.weights()[w].shape()), true, true);
    }
  }
  params = std::move(out);
}

Tensor SynthOverride::forward(ParamSet& params, const std::string& weight_name, const Tensor& x,
                              synth::SynthLayerCache& cache) {
  const Fit& f = fit_of(weight_name);
  DSEEK_CHECK(x.dim() == 2 && x.size(1) == f.d_in,
              "[train] {} (synthesised): input {}, need [N, {}]", weight_name, shape_str(x.shape()),
              f.d_in);
  const Tensor xf = x.dtype() == DType::F32 ? x.contiguous() : x.to(DType::F32);
  std::vector<Tensor> weights;
  for (const std::string& n : param_names(weight_name)) weights.push_back(params.value(n));
  cache.tokens = x.size(0);
  const Tensor y = synth::lowered_forward(f.layer->plan(cache.tokens), xf, weights, &cache.lowered)
                       .reshape({cache.tokens, f.d_out});
  return x.dtype() == DType::F32 ? y : y.to(x.dtype());
}

Tensor SynthOverride::backward(ParamSet& params, const std::string& weight_name,
                               const synth::SynthLayerCache& cache, const Tensor& dy) {
  const Fit& f = fit_of(weight_name);
  DSEEK_CHECK(dy.dim() == 2 && dy.size(0) == cache.tokens && dy.size(1) == f.d_out,
              "[train] {} (synthesised): dy {}, need [{}, {}]", weight_name, shape_str(dy.shape()),
              cache.tokens, f.d_out);
  const Tensor dyf = dy.dtype() == DType::F32 ? dy.contiguous() : dy.to(DType::F32);
  const synth::LoweredGrads g =
      synth::lowered_backward(f.layer->plan(cache.tokens), cache.lowered, dyf);
  const std::vector<std::string> names = param_names(weight_name);
  for (size_t w = 0; w < names.size(); ++w)
    ops::add_inplace(grad_to_add(params.at(names[w])), g.dweights[w]);
  const Tensor dx = g.dinput.reshape({cache.tokens, f.d_in});
  return dy.dtype() == DType::F32 ? dx : dx.to(dy.dtype());
}

SynthOverride::Cost SynthOverride::cost(const std::string& weight_name) const {
  const Fit& f = fit_of(weight_name);
  Cost c;
  c.d_in = f.d_in;
  c.d_out = f.d_out;
  c.params = synth::param_count(record_.op, f.values);
  c.flops = synth::flops(record_.op, f.values);  // T = 1 in the fit's valuation
  c.dense_params = f.d_in * f.d_out;
  c.dense_flops = 2 * f.d_in * f.d_out;
  return c;
}

}  // namespace dseek::train
