// The results store (synth/store.h): candidates round-trip; a search interrupted after N
// evaluations and resumed from the store evaluates exactly the candidates of one uninterrupted
// run, none twice; a failed write leaves no part of its round; foreign, corrupt and mismatched
// files are errors naming the file.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "cli_util.h"
#include "synth/cost.h"
#include "synth/search.h"
#include "synth/store.h"
#include "synth/task.h"
#include "test_synth_util.h"
#include "test_util.h"

using namespace dseek;
using namespace dseek::synth;
using dseek::synth::test::CountingEvaluator;
using dseek::synth::test::small_task;
using dseek::testing::error_of;
using dseek::testing::TempDir;

namespace {

SearchOptions options(const Task& task, SearchMethod m) {
  SearchOptions o;
  o.method = m;
  o.budget = 30;
  o.batch = 7;
  o.seed = 4;
  o.ref_flops = flops(task.baseline, task.spec.valuations[0]);
  o.admissible = task.admissible;
  return o;
}

SearchResult run(Store& store, const Task& task, const Evaluator& eval, const SearchOptions& o) {
  const auto known = store.load_known();
  SearchHooks hooks;
  hooks.known = &known;
  hooks.save = [&](const std::vector<Candidate>& round) { store.save(task.spec, round); };
  return search(task.spec, eval, o, hooks);
}

}  // namespace

TEST(SynthStore, RoundTripsEveryField) {
  TempDir dir;
  const Task task = small_task();
  CountingEvaluator counting(3);
  Store store(dir.path.string());
  const SearchResult r =
      run(store, task, counting.fn(task.spec), options(task, SearchMethod::sample));
  ASSERT_EQ(r.candidates.size(), 30u);
  const std::vector<StoredCandidate> back = Store(dir.path.string()).load();
  ASSERT_EQ(back.size(), r.candidates.size());
  int errors = 0;
  for (size_t i = 0; i < back.size(); ++i) {
    const Candidate &a = r.candidates[i], &b = back[i].candidate;
    EXPECT_EQ(b.index, a.index);
    EXPECT_EQ(b.hash, a.hash);
    EXPECT_EQ(b.key, a.key);
    EXPECT_EQ(canonical_key(b.op, back[i].spec.vars), a.key);  // the operator file replays
    EXPECT_EQ(b.status, a.status);
    EXPECT_EQ(b.eval.error, a.eval.error);
    EXPECT_EQ(b.eval.flops, a.eval.flops);
    EXPECT_EQ(b.eval.params, a.eval.params);
    EXPECT_EQ(b.reward, a.reward);
    if (a.status == "ok") {
      EXPECT_EQ(b.eval.quality, a.eval.quality);
      EXPECT_EQ(b.eval.latency_ms, a.eval.latency_ms);
    } else {
      ++errors;
      EXPECT_TRUE(std::isnan(b.eval.quality));
    }
  }
  EXPECT_GT(errors, 0);
}

TEST(SynthStore, ResumeAfterInterruptEvaluatesTheUninterruptedSet) {
  for (SearchMethod m : {SearchMethod::mcts, SearchMethod::sample}) {
    const Task task = small_task();
    TempDir whole_dir, parts_dir;
    CountingEvaluator whole_count(3), parts_count(3);
    Store whole(whole_dir.path.string());
    const SearchResult full = run(whole, task, whole_count.fn(task.spec), options(task, m));
    ASSERT_EQ(full.candidates.size(), 30u);

    SearchOptions o = options(task, m);
    o.max_evaluations = 11;  // inside the second round of 7
    SearchResult first;
    {
      Store parts(parts_dir.path.string());
      first = run(parts, task, parts_count.fn(task.spec), o);
    }
    EXPECT_TRUE(first.interrupted);
    EXPECT_EQ(first.evaluated, 11);
    EXPECT_EQ(first.candidates.size(), 11u);
    o.max_evaluations = -1;
    Store parts(parts_dir.path.string());  // reopened, as a new process would
    ASSERT_EQ(parts.load().size(), 11u);
    const SearchResult second = run(parts, task, parts_count.fn(task.spec), o);
    EXPECT_FALSE(second.interrupted);
    EXPECT_EQ(second.evaluated, 19);
    std::vector<uint64_t> want, got;
    for (const auto& c : full.candidates) want.push_back(c.hash);
    for (const auto& c : second.candidates) got.push_back(c.hash);
    EXPECT_EQ(got, want) << method_name(m);  // same candidates, same order
    std::vector<uint64_t> stored;
    for (const auto& sc : parts.load()) stored.push_back(sc.candidate.hash);
    EXPECT_EQ(stored, want);
    for (const auto& [h, n] : parts_count.calls) EXPECT_EQ(n, 1) << "evaluated twice";
    EXPECT_EQ(parts_count.calls.size(), 30u);
    // Nothing left: a third call evaluates nothing and returns the same run.
    const SearchResult third = run(parts, task, parts_count.fn(task.spec), o);
    EXPECT_EQ(third.evaluated, 0);
    EXPECT_EQ(third.candidates.size(), 30u);
  }
}

TEST(SynthStore, AFailedRoundLeavesNothingBehind) {
  TempDir dir;
  const Task task = small_task();
  CountingEvaluator counting(3);
  Store store(dir.path.string());
  const SearchResult r =
      run(store, task, counting.fn(task.spec), options(task, SearchMethod::sample));
  ASSERT_EQ(store.load().size(), 30u);
  // A round whose last row collides with a stored hash: the whole round is rolled back.
  std::vector<Candidate> round = {r.candidates[0], r.candidates[1], r.candidates[2]};
  round[0].index = 100;
  round[0].hash ^= 0x1234;
  round[1].index = 101;
  round[1].hash ^= 0x5678;
  round[2].index = 102;  // hash unchanged: UNIQUE violation
  const std::string err = error_of([&] { store.save(task.spec, round); });
  EXPECT_NE(err.find("[synth store] " + store.path()), std::string::npos) << err;
  EXPECT_NE(err.find("UNIQUE"), std::string::npos) << err;
  EXPECT_EQ(store.load().size(), 30u);
  EXPECT_EQ(Store(dir.path.string()).load().size(), 30u);
}

TEST(SynthStore, ForeignCorruptAndMismatchedFilesAreErrorsNamingTheFile) {
  TempDir dir;
  const std::string file = (dir.path / "synth.sqlite").string();
  { std::ofstream(file) << "this is not a database, it is a text file of some length ........."; }
  std::string err = error_of([&] { Store s(dir.path.string()); });
  EXPECT_NE(err.find("[synth store] " + file), std::string::npos) << err;
  EXPECT_NE(err.find("not a database"), std::string::npos) << err;

  std::filesystem::remove(file);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE songs (title TEXT)", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  err = error_of([&] { Store s(dir.path.string()); });
  EXPECT_NE(err.find(file + ": a SQLite database, but not a dseek synth store"), std::string::npos)
      << err;

  std::filesystem::remove(file);
  {
    Store s(dir.path.string());
    s.begin_run(R"({"task":"lm-proj","seed":1})");
    s.begin_run(R"({"task":"lm-proj","seed":1})");  // the same settings resume
  }
  Store s(dir.path.string());
  err = error_of([&] { s.begin_run(R"({"task":"lm-proj","seed":2})"); });
  EXPECT_NE(err.find(file + ": holds a run with other settings (seed: 1 stored, 2 now)"),
            std::string::npos)
      << err;

  // A directory that cannot be created (a file is in the way).
  err = error_of([&] { Store t((dir.path / "synth.sqlite" / "sub").string()); });
  EXPECT_NE(err.find("[synth store] cannot create directory"), std::string::npos) << err;
}
