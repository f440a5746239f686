// Training checkpoints: XXH64 against the published vectors, bit-exact round trips, keep-last
// pruning, corrupt and incomplete checkpoints refused with the file named, stale temporaries
// ignored and cleaned, and a writer SIGKILLed at random moments never losing the last checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "cli_util.h"
#include "core/rng.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/checksum.h"

namespace fs = std::filesystem;
using namespace dseek;
using namespace dseek::testing;
using namespace dseek::train;

namespace {

// A checkpoint whose every value is derived from `step`, so a loaded one can be told apart.
CheckpointData make_checkpoint(int64_t step, int64_t big = 1000) {
  CheckpointData data;
  data.step = step;
  Rng rng(uint64_t(step) * 7919 + 1);
  auto random_tensor = [&](const Shape& shape) {
    Tensor t = Tensor::empty(shape);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = float(rng.normal());
    return t;
  };
  // Names out of alphabetical order: the load must keep the save order, not sort.
  data.model.emplace_back("model.layers.1.mlp.weight", random_tensor({big}));
  data.model.emplace_back("model.embed_tokens.weight", random_tensor({7, 5}));
  data.model.emplace_back("model.layers.0.mlp.gate.e_score_correction_bias", random_tensor({3}));
  data.optimizer.emplace_back("model.layers.1.mlp.weight.exp_avg", random_tensor({big}));
  data.optimizer.emplace_back("model.embed_tokens.weight.exp_avg_sq", random_tensor({7, 5}));
  data.state = {{"step", step},
                {"rng", {uint64_t(0xfedcba9876543210ull), uint64_t(step)}},
                {"data", {{"epoch", 1}, {"position", step * 4096}}}};
  return data;
}

bool bits_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

void expect_same(const CheckpointData& got, const CheckpointData& want) {
  EXPECT_EQ(got.step, want.step);
  auto same_list = [](const auto& a, const auto& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].first, b[i].first) << "tensor " << i;
      EXPECT_TRUE(bits_equal(a[i].second, b[i].second)) << a[i].first;
    }
  };
  same_list(got.model, want.model);
  same_list(got.optimizer, want.optimizer);
  EXPECT_EQ(got.state, want.state);
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void flip_byte(const fs::path& path, uint64_t offset) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekg(std::streamoff(offset));
  char c = 0;
  file.read(&c, 1);
  c = char(c ^ 0x10);
  file.seekp(std::streamoff(offset));
  file.write(&c, 1);
}

// A pid no process has (one that just exited and was reaped).
pid_t dead_pid() {
  pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  return pid;
}

}  // namespace

TEST(Checksum, Xxh64MatchesThePublishedVectors) {
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(xxh64("a", 1), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ull);
  const std::string text = "Nobody inspects the spammish repetition";  // 39 bytes: stripes + tail
  EXPECT_EQ(xxh64(text.data(), text.size()), 0xFBCEA83C8A378BF1ull);
  // xxHash's own sanity buffer (xsum_sanity_check.c): 101 bytes from a 32-bit generator.
  std::vector<unsigned char> buffer(101);
  uint32_t gen = 2654435761u;
  for (auto& b : buffer) {
    b = uint8_t(gen >> 24);
    gen *= gen;
  }
  EXPECT_EQ(xxh64(buffer.data(), 1), 0x4FCE394CC88952D8ull);
  EXPECT_EQ(xxh64(buffer.data(), 14), 0xCFFA8DB881BC3A3Dull);
  EXPECT_EQ(xxh64(buffer.data(), 101), 0x0EAB543384F878ADull);
  EXPECT_EQ(xxh64(buffer.data(), 101, 2654435761u), 0xCAA65939306F1E21ull);
  EXPECT_EQ(hex64(0x0EAB543384F878ADull), "0eab543384f878ad");
}

TEST(Checksum, StreamingInPiecesEqualsOneShot) {
  std::vector<unsigned char> data(1000);
  Rng rng(5);
  for (auto& b : data) b = uint8_t(rng.next_u64());
  const uint64_t whole = xxh64(data.data(), data.size());
  for (size_t piece : {1, 3, 7, 31, 32, 33, 100, 999}) {
    Xxh64 hash;
    for (size_t at = 0; at < data.size(); at += piece)
      hash.update(data.data() + at, std::min(piece, data.size() - at));
    EXPECT_EQ(hash.digest(), whole) << "piece " << piece;
  }
  TempDir dir;
  std::ofstream(dir.path / "f", std::ios::binary).write(reinterpret_cast<char*>(data.data()), 1000);
  uint64_t size = 0;
  EXPECT_EQ(xxh64_file((dir.path / "f").string(), &size), whole);
  EXPECT_EQ(size, 1000u);
}

TEST(Checkpoint, RoundTripIsBitExact) {
  TempDir run;
  CheckpointData data = make_checkpoint(123);
  // Values a lossy path would change: NaN payloads, -0, denormals, infinities.
  float* w = data.model[0].second.data<float>();
  uint32_t nan_payload = 0x7fc12345u;
  std::memcpy(&w[0], &nan_payload, 4);
  w[1] = -0.0f;
  w[2] = std::numeric_limits<float>::denorm_min();
  w[3] = -std::numeric_limits<float>::infinity();
  const std::string dir = save_checkpoint(run.path.string(), data, 3);
  EXPECT_EQ(dir, (run.path / "checkpoints" / "step-00000123").string());
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"manifest.json", "model.safetensors",
                                                    "optimizer.safetensors", "state.json"}));
  std::ifstream latest(run.path / "checkpoints" / "latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-00000123");
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), dir);
  expect_same(load_checkpoint(dir), data);
}

TEST(Checkpoint, EmptyOptimizerAndNames) {
  TempDir run;
  CheckpointData data = make_checkpoint(0);
  data.optimizer.clear();
  const std::string dir = save_checkpoint(run.path.string(), data, 0);
  EXPECT_EQ(fs::path(dir).filename(), "step-00000000");
  expect_same(load_checkpoint(dir), data);
  EXPECT_EQ(checkpoint_dir_name(7), "step-00000007");
  EXPECT_EQ(checkpoint_dir_name(123456789), "step-123456789");
  EXPECT_NE(error_of([] { checkpoint_dir_name(-1); }).find("non-negative"), std::string::npos);
  EXPECT_EQ(find_latest_checkpoint((run.path / "nothing-here").string()), "");
}

TEST(Checkpoint, RefusesNonF32Tensors) {
  TempDir run;
  CheckpointData data = make_checkpoint(1);
  data.optimizer.emplace_back("moment.bf16", Tensor::zeros({4}, DType::BF16));
  const std::string err = error_of([&] { save_checkpoint(run.path.string(), data, 0); });
  EXPECT_NE(err.find("optimizer.safetensors"), std::string::npos) << err;
  EXPECT_NE(err.find("moment.bf16"), std::string::npos) << err;
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), "");
}

TEST(Checkpoint, KeepLastPrunesOldestByStep) {
  TempDir run;
  const fs::path root = run.path / "checkpoints";
  for (int step = 1; step <= 5; ++step)
    save_checkpoint(run.path.string(), make_checkpoint(step * 10), 2);
  EXPECT_EQ(entries(root), (std::vector<std::string>{"latest", "step-00000040", "step-00000050"}));
  // A run resumed from an older step keeps what it just wrote, plus the newest other one.
  save_checkpoint(run.path.string(), make_checkpoint(45), 2);
  EXPECT_EQ(entries(root), (std::vector<std::string>{"latest", "step-00000045", "step-00000050"}));
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), (root / "step-00000045").string());
  // keep_last <= 0 keeps everything.
  for (int step = 6; step <= 8; ++step)
    save_checkpoint(run.path.string(), make_checkpoint(step * 10), 0);
  EXPECT_EQ(entries(root).size(), 6u);
  save_checkpoint(run.path.string(), make_checkpoint(90), 1);
  EXPECT_EQ(entries(root), (std::vector<std::string>{"latest", "step-00000090"}));
  expect_same(load_checkpoint((root / "step-00000090").string()), make_checkpoint(90));
}

TEST(Checkpoint, SavingAnExistingStepReplacesIt) {
  TempDir run;
  save_checkpoint(run.path.string(), make_checkpoint(5), 0);
  CheckpointData again = make_checkpoint(5);
  again.state["note"] = "second";
  again.model[1].second.data<float>()[0] = 42.0f;
  const std::string dir = save_checkpoint(run.path.string(), again, 0);
  expect_same(load_checkpoint(dir), again);
  EXPECT_EQ(entries(run.path / "checkpoints"),
            (std::vector<std::string>{"latest", "step-00000005"}));
}

TEST(Checkpoint, TruncatedOrFlippedFilesAreRefusedNamingTheFile) {
  TempDir run;
  save_checkpoint(run.path.string(), make_checkpoint(1), 0);
  const std::string newest = save_checkpoint(run.path.string(), make_checkpoint(2), 0);
  const fs::path model = fs::path(newest) / "model.safetensors";
  const uint64_t size = fs::file_size(model);

  flip_byte(model, size - 100);  // inside the data section: parses fine, only the checksum sees it
  std::string err = error_of([&] { load_checkpoint(newest); });
  EXPECT_NE(err.find(model.string()), std::string::npos) << err;
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  flip_byte(model, size - 100);
  expect_same(load_checkpoint(newest), make_checkpoint(2));

  fs::resize_file(model, size - 8);
  err = error_of([&] { load_checkpoint(newest); });
  EXPECT_NE(err.find(model.string()), std::string::npos) << err;
  EXPECT_NE(err.find("truncated"), std::string::npos) << err;
  // find_latest skips the truncated checkpoint (although `latest` names it) for the older one.
  EXPECT_EQ(find_latest_checkpoint(run.path.string()),
            (run.path / "checkpoints" / "step-00000001").string());

  const fs::path state = run.path / "checkpoints" / "step-00000001" / "state.json";
  std::ofstream(state, std::ios::app) << " ";
  err = error_of([&] { load_checkpoint(state.parent_path().string()); });
  EXPECT_NE(err.find(state.string()), std::string::npos) << err;
  EXPECT_NE(err.find("size mismatch"), std::string::npos) << err;
}

TEST(Checkpoint, MissingOrBrokenManifestIsRefused) {
  TempDir run;
  const std::string dir = save_checkpoint(run.path.string(), make_checkpoint(3), 0);
  const fs::path manifest = fs::path(dir) / "manifest.json";
  const std::string text = [&] {
    std::ifstream f(manifest);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }();

  std::ofstream(manifest, std::ios::trunc) << text.substr(0, text.size() / 2);
  std::string err = error_of([&] { load_checkpoint(dir); });
  EXPECT_NE(err.find(manifest.string()), std::string::npos) << err;
  EXPECT_NE(err.find("invalid JSON"), std::string::npos) << err;

  fs::remove(manifest);
  err = error_of([&] { load_checkpoint(dir); });
  EXPECT_NE(err.find(manifest.string()), std::string::npos) << err;
  EXPECT_NE(err.find("missing"), std::string::npos) << err;
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), "");

  err = error_of([&] { load_checkpoint((run.path / "nope").string()); });
  EXPECT_NE(err.find("not a directory"), std::string::npos) << err;
}

TEST(Checkpoint, StaleTemporariesAreIgnoredAndCleanedByTheNextSave) {
  TempDir run;
  const fs::path root = run.path / "checkpoints";
  const std::string good = save_checkpoint(run.path.string(), make_checkpoint(2), 0);
  // A crash mid-write of step 9: a complete-looking copy under the temporary name, and a crash
  // while replacing `latest`.
  const pid_t crashed = dead_pid();
  const fs::path stale = root / fmt::format("step-00000009.tmp-{}", crashed);
  fs::copy(good, stale);
  fs::create_directory(root / "step-00000010");  // no manifest: incomplete
  std::ofstream(root / fmt::format("latest.tmp-{}", crashed)) << "step-00000009\n";
  // Even a `latest` naming something bogus falls back to the highest complete step.
  std::ofstream(root / "latest", std::ios::trunc) << "step-00000010\n";
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), good);
  std::ofstream(root / "latest", std::ios::trunc) << "../../etc\n";
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), good);

  // A temporary of a live process other than us is left alone.
  const pid_t parent = ::getppid();
  const fs::path live = root / fmt::format("step-00000011.tmp-{}", parent);
  fs::create_directory(live);

  save_checkpoint(run.path.string(), make_checkpoint(3), 0);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_FALSE(fs::exists(root / fmt::format("latest.tmp-{}", crashed)));
  EXPECT_TRUE(fs::exists(live));
  EXPECT_EQ(find_latest_checkpoint(run.path.string()), (root / "step-00000003").string());
}

// A child saves large checkpoints in a loop and is SIGKILLed at random moments (mid-tensor,
// mid-manifest, mid-rename, mid-prune); after every kill the newest checkpoint must load and hold
// exactly what was saved for its step, and the step never goes back.
TEST(Checkpoint, SurvivesSigkillAtRandomMoments) {
  TempDir run;
  const int64_t big = 1 << 20;  // 4 MiB per large tensor, ~17 MiB per checkpoint
  const CheckpointData base = make_checkpoint(0, big);
  // Cheap per-step content: the base with every 1024th value of each tensor replaced by the step.
  auto at_step = [&](int64_t step) {
    CheckpointData data = base;
    data.step = step;
    data.state["step"] = step;
    for (auto* list : {&data.model, &data.optimizer}) {
      for (auto& [name, tensor] : *list) {
        tensor = tensor.clone();
        for (int64_t i = 0; i < tensor.numel(); i += 1024) tensor.data<float>()[i] = float(step);
      }
    }
    return data;
  };
  const auto start = std::chrono::steady_clock::now();
  save_checkpoint(run.path.string(), at_step(0), 2);
  const double save_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  Rng rng(2024);
  int64_t last_step = 0;
  const int rounds = 12;
  for (int round = 0; round < rounds; ++round) {
    const int64_t first = last_step + 1;
    int done[2];  // the child writes a byte after each completed save
    ASSERT_EQ(::pipe(done), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(done[0]);
      try {
        for (int64_t step = first;; ++step) {
          save_checkpoint(run.path.string(), at_step(step), 2);
          if (::write(done[1], "s", 1) != 1) break;
        }
      } catch (...) {
      }
      ::_exit(1);
    }
    ::close(done[1]);
    // Odd rounds first wait for one completed save (so the run must move forward), then every
    // round kills after a random delay of up to about two saves: kills land in every phase.
    if (round % 2 == 1) {
      char byte;
      ASSERT_EQ(::read(done[0], &byte, 1), 1);
    }
    const double delay_ms = round == 0 ? 0.0 : rng.uniform() * 2 * save_ms;
    std::this_thread::sleep_for(std::chrono::microseconds(int64_t(delay_ms * 1000)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ::close(done[0]);
    ASSERT_TRUE(WIFSIGNALED(status))
        << "the writer failed on its own (exit " << WEXITSTATUS(status) << ")";

    const std::string latest = find_latest_checkpoint(run.path.string());
    ASSERT_NE(latest, "") << "round " << round;
    CheckpointData loaded = load_checkpoint(latest);
    EXPECT_GE(loaded.step, round % 2 == 1 ? first : last_step) << "round " << round;
    expect_same(loaded, at_step(loaded.step));
    last_step = loaded.step;
  }
  EXPECT_GE(last_step, rounds / 2);
  // The next save clears what the killed writers left behind.
  save_checkpoint(run.path.string(), at_step(last_step + 1), 2);
  EXPECT_EQ(entries(run.path / "checkpoints"),
            (std::vector<std::string>{"latest", checkpoint_dir_name(last_step),
                                      checkpoint_dir_name(last_step + 1)}));
}
