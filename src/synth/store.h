// The results store of a synthesis run: one SQLite file, DIR/synth.sqlite, holding the run's
// settings and every evaluated candidate (canonical hash and key, the operator as an operator
// file (serialize.h), FLOPs, parameters, latency, quality, reward, status and error). A search
// given the same DIR reads them back and resumes (search.h: it replays the run, taking stored
// results instead of evaluating again), so the stored results plus the settings (method, seed,
// task, ...) are the whole state of the search tree: its statistics are a deterministic
// function of them. Each round of results is written in one transaction, so a killed search
// leaves the file at a round boundary.
//
//   meta(name TEXT PRIMARY KEY, value TEXT)     format = dseek-synth-store, version = 1,
//                                               settings = the run's settings as JSON
//   candidates(idx INTEGER PRIMARY KEY, hash TEXT UNIQUE, key, operator, history, status, error,
//              flops, params, latency_ms, quality, reward)
//
// A file that is not SQLite, or SQLite without this schema, is an error naming the file.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "synth/search.h"

struct sqlite3;

namespace dseek::synth {

// A stored candidate with the spec its operator file carries (for show).
struct StoredCandidate {
  Candidate candidate;
  Spec spec;
};

class Store {
 public:
  // Opens DIR/synth.sqlite, creating DIR and the file if needed.
  explicit Store(const std::string& dir);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& path() const { return path_; }

  // The run's settings (a JSON text), "" for a new store.
  std::string settings() const;
  // Records the settings of a new store, or checks that a resumed run's settings equal the stored
  // ones (error naming the first field that differs).
  void begin_run(const std::string& settings_json);

  // Appends candidates (one transaction). `spec` is written into each operator file.
  void save(const Spec& spec, const std::vector<Candidate>& candidates);

  // Every stored candidate, in index order.
  std::vector<StoredCandidate> load() const;
  // The same, by hash (SearchHooks::known).
  std::map<uint64_t, Candidate> load_known() const;

 private:
  void exec(const std::string& sql) const;
  std::string meta(const std::string& name) const;
  void set_meta(const std::string& name, const std::string& value);

  std::string path_;
  sqlite3* db_ = nullptr;
};

}  // namespace dseek::synth
