// The SQLite results store of a synthesis run (see store.h).
#include "synth/store.h"

#include <sqlite3.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "synth/serialize.h"

namespace dseek::synth {

namespace {

constexpr const char* kFormat = "dseek-synth-store";
constexpr const char* kVersion = "1";

// A prepared statement, finalized on scope exit; errors name the store's file.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& path, const std::string& sql) : db_(db), path_(path) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr) != SQLITE_OK)
      fail("[synth store] {}: {} (in \"{}\")", path, sqlite3_errmsg(db), sql);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void bind(int i, const std::string& text) {
    check(sqlite3_bind_text(stmt_, i, text.c_str(), int(text.size()), SQLITE_TRANSIENT));
  }
  void bind(int i, int64_t value) { check(sqlite3_bind_int64(stmt_, i, value)); }
  void bind(int i, double value) {
    // SQLite stores NaN as NULL; NULL reads back as NaN (column_real).
    check(std::isnan(value) ? sqlite3_bind_null(stmt_, i) : sqlite3_bind_double(stmt_, i, value));
  }
  // True while there is a row.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("[synth store] {}: {}", path_, sqlite3_errmsg(db_));
  }
  std::string text(int i) const {
    const unsigned char* t = sqlite3_column_text(stmt_, i);
    return t ? std::string(reinterpret_cast<const char*>(t)) : std::string();
  }
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  int64_t integer(int i) const { return sqlite3_column_int64(stmt_, i); }
  double real(int i) const {
    return sqlite3_column_type(stmt_, i) == SQLITE_NULL ? std::numeric_limits<double>::quiet_NaN()
                                                        : sqlite3_column_double(stmt_, i);
  }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) fail("[synth store] {}: {}", path_, sqlite3_errmsg(db_));
  }
  sqlite3* db_;
  const std::string& path_;
  sqlite3_stmt* stmt_ = nullptr;
};

std::string hash_hex(uint64_t h) {
  return fmt::format("{:016x}", h);
}

uint64_t parse_hash(const std::string& text, const std::string& path) {
  DSEEK_CHECK(text.size() == 16 && text.find_first_not_of("0123456789abcdef") == std::string::npos,
              "[synth store] {}: bad candidate hash '{}'", path, text);
  return std::stoull(text, nullptr, 16);
}

}  // namespace

Store::Store(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DSEEK_CHECK(!ec && std::filesystem::is_directory(dir),
              "[synth store] cannot create directory {}: {}", dir,
              ec ? ec.message() : "not a directory");
  path_ = (std::filesystem::path(dir) / "synth.sqlite").string();
  if (sqlite3_open_v2(path_.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
      SQLITE_OK) {
    const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail("[synth store] {}: cannot open: {}", path_, why);
  }
  try {
    // The first read tells a foreign or corrupt file ("file is not a database").
    std::vector<std::string> tables;
    {
      Statement s(db_, path_, "SELECT name FROM sqlite_master WHERE type = 'table'");
      while (s.step()) tables.push_back(s.text(0));
    }
    if (tables.empty()) {
      exec("BEGIN IMMEDIATE");
      exec("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)");
      exec(
          "CREATE TABLE candidates (idx INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, key TEXT "
          "NOT NULL, operator TEXT NOT NULL, history TEXT NOT NULL, status TEXT NOT NULL, error "
          "TEXT NOT NULL, flops INTEGER NOT NULL, params INTEGER NOT NULL, latency_ms REAL, "
          "quality REAL, reward REAL NOT NULL)");
      set_meta("format", kFormat);
      set_meta("version", kVersion);
      exec("COMMIT");
      return;
    }
    bool has_meta = false, has_candidates = false;
    for (const auto& t : tables) {
      has_meta = has_meta || t == "meta";
      has_candidates = has_candidates || t == "candidates";
    }
    DSEEK_CHECK(has_meta && has_candidates,
                "[synth store] {}: a SQLite database, but not a dseek synth store (no meta and "
                "candidates tables)",
                path_);
    DSEEK_CHECK(meta("format") == kFormat, "[synth store] {}: format '{}', want '{}'", path_,
                meta("format"), kFormat);
    DSEEK_CHECK(meta("version") == kVersion, "[synth store] {}: version {}, this dseek reads {}",
                path_, meta("version"), kVersion);
  } catch (...) {
    sqlite3_close(db_);
    db_ = nullptr;
    throw;
  }
}

Store::~Store() {
  sqlite3_close(db_);
}

void Store::exec(const std::string& sql) const {
  char* message = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string why = message ? message : sqlite3_errmsg(db_);
    sqlite3_free(message);
    fail("[synth store] {}: {}", path_, why);
  }
}

std::string Store::meta(const std::string& name) const {
  Statement s(db_, path_, "SELECT value FROM meta WHERE name = ?1");
  s.bind(1, name);
  return s.step() ? s.text(0) : std::string();
}

void Store::set_meta(const std::string& name, const std::string& value) {
  Statement s(db_, path_, "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)");
  s.bind(1, name);
  s.bind(2, value);
  s.step();
}

std::string Store::settings() const {
  return meta("settings");
}

void Store::begin_run(const std::string& settings_json) {
  const std::string stored = settings();
  if (stored.empty()) {
    exec("BEGIN IMMEDIATE");
    set_meta("settings", settings_json);
    exec("COMMIT");
    return;
  }
  using json = nlohmann::ordered_json;
  json a, b;
  try {
    a = json::parse(stored);
  } catch (const json::exception& e) {
    fail("[synth store] {}: stored settings are not JSON: {}", path_, e.what());
  }
  b = json::parse(settings_json);
  for (const auto& [name, value] : b.items()) {
    const auto it = a.find(name);
    DSEEK_CHECK(it != a.end() && *it == value,
                "[synth store] {}: holds a run with other settings ({}: {} stored, {} now); "
                "resume with the same settings or use another directory",
                path_, name, it == a.end() ? "none" : it->dump(), value.dump());
  }
  for (const auto& [name, value] : a.items())
    DSEEK_CHECK(b.contains(name),
                "[synth store] {}: holds a run with setting {} = {}, not given now", path_, name,
                value.dump());
}

void Store::save(const Spec& spec, const std::vector<Candidate>& candidates) {
  exec("BEGIN IMMEDIATE");
  try {
    Statement s(db_, path_,
                "INSERT INTO candidates (idx, hash, key, operator, history, status, error, flops, "
                "params, latency_ms, quality, reward) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, "
                "?10, ?11, ?12)");
    for (const Candidate& c : candidates) {
      s.bind(1, c.index);
      s.bind(2, hash_hex(c.hash));
      s.bind(3, c.key);
      s.bind(4, operator_to_json(spec, c.op));
      s.bind(5, history_str(c.op, spec.vars));
      s.bind(6, c.status);
      s.bind(7, c.eval.error);
      s.bind(8, c.eval.flops);
      s.bind(9, c.eval.params);
      s.bind(10, c.status == "ok" ? c.eval.latency_ms : std::numeric_limits<double>::quiet_NaN());
      s.bind(11, c.status == "ok" ? c.eval.quality : std::numeric_limits<double>::quiet_NaN());
      s.bind(12, c.reward);
      s.step();
      s.reset();
    }
    exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

std::vector<StoredCandidate> Store::load() const {
  std::vector<StoredCandidate> out;
  Statement s(db_, path_,
              "SELECT idx, hash, key, operator, status, error, flops, params, latency_ms, quality, "
              "reward FROM candidates ORDER BY idx");
  while (s.step()) {
    StoredCandidate sc;
    Candidate& c = sc.candidate;
    c.index = s.integer(0);
    c.hash = parse_hash(s.text(1), path_);
    c.key = s.text(2);
    try {
      OperatorRecord rec = operator_from_json(s.text(3));
      sc.spec = std::move(rec.spec);
      c.op = std::move(rec.op);
    } catch (const Error& e) {
      fail("[synth store] {}: candidate {}: {}", path_, c.index, e.what());
    }
    c.status = s.text(4);
    c.eval.error = s.text(5);
    c.eval.flops = s.integer(6);
    c.eval.params = s.integer(7);
    c.eval.latency_ms = s.real(8);
    c.eval.quality = s.real(9);
    c.eval.ok = c.status == "ok";
    c.reward = s.real(10);
    DSEEK_CHECK(c.status == "ok" || c.status == "mismatch" || c.status == "error",
                "[synth store] {}: candidate {} has unknown status '{}'", path_, c.index, c.status);
    DSEEK_CHECK(!c.eval.ok || (std::isfinite(c.eval.quality) && std::isfinite(c.eval.latency_ms)),
                "[synth store] {}: candidate {} is ok without quality or latency", path_, c.index);
    out.push_back(std::move(sc));
  }
  return out;
}

std::map<uint64_t, Candidate> Store::load_known() const {
  std::map<uint64_t, Candidate> known;
  for (StoredCandidate& sc : load()) known.emplace(sc.candidate.hash, std::move(sc.candidate));
  return known;
}

}  // namespace dseek::synth
