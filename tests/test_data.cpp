// Data pipeline: shards on disk, corrupt shards, the loader's packing, shuffling, split and
// exact resume, the corpus reader and the FIM transform.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "cli_util.h"
#include "core/error.h"
#include "data/corpus_reader.h"
#include "data/fim.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_shards.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace dseek;
using namespace dseek::testing;

namespace {

// Documents with distinct, recognisable tokens: doc d holds d*100+1 ... d*100+len.
std::vector<std::vector<int32_t>> make_docs(int n) {
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < n; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < 3 + (d * 7) % 11; ++i) doc.push_back(d * 100 + i + 1);
    docs.push_back(doc);
  }
  return docs;
}

void write_docs(const fs::path& dir, const std::vector<std::vector<int32_t>>& docs,
                int64_t shard_tokens) {
  ShardWriter writer(dir.string(), 10000, 0, 9999, shard_tokens);
  for (const auto& doc : docs) {
    writer.append(std::vector<int32_t>(doc.begin(), doc.begin() + long(doc.size() / 2)));
    writer.append(std::vector<int32_t>(doc.begin() + long(doc.size() / 2), doc.end()));
    writer.end_document();
  }
  writer.finish();
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace

TEST(TokenShards, RoundTripAcrossShards) {
  TempDir tmp;
  auto docs = make_docs(40);
  write_docs(tmp.path, docs, 50);
  auto ds = TokenDataset::open(tmp.path.string());
  ASSERT_EQ(ds->num_documents(), 40);
  EXPECT_GT(ds->index()["shards"].size(), 3u);
  for (int d = 0; d < 40; ++d) {
    int64_t len = 0;
    const uint32_t* t = ds->document(d, &len);
    ASSERT_EQ(len, int64_t(docs[d].size()));
    for (int64_t i = 0; i < len; ++i) EXPECT_EQ(int32_t(t[i]), docs[d][size_t(i)]);
  }
  // A second prepare into the same place is refused rather than mixed in.
  EXPECT_THROW(ShardWriter(tmp.path.string(), 10000, 0, 1), Error);
}

TEST(TokenShards, CorruptShardsAreClearErrors) {
  auto expect_error = [](const fs::path& dir, const std::string& needle) {
    try {
      TokenDataset::open(dir.string());
      FAIL() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {
    TempDir tmp;
    expect_error(tmp.path, "no index.json");
  }
  {
    TempDir tmp;
    write_docs(tmp.path, make_docs(5), 1000);
    fs::resize_file(tmp.path / "shard-00000.bin", 12);
    expect_error(tmp.path, "shard-00000.bin");
  }
  {
    TempDir tmp;
    write_docs(tmp.path, make_docs(5), 1000);
    std::string bad(8, '\0');
    bad[0] = 2;  // one document ending at token 2: leaves the rest uncovered
    write_bytes(tmp.path / "shard-00000.docs", bad);
    expect_error(tmp.path, "shard-00000.docs");
  }
  {
    TempDir tmp;
    write_docs(tmp.path, make_docs(5), 1000);
    std::fstream f(tmp.path / "shard-00000.bin", std::ios::in | std::ios::out | std::ios::binary);
    uint32_t huge = 123456;
    f.write(reinterpret_cast<const char*>(&huge), 4);
    f.close();
    expect_error(tmp.path, "outside the vocabulary");
  }
  {
    TempDir tmp;
    write_docs(tmp.path, make_docs(5), 1000);
    write_bytes(tmp.path / "index.json", "{\"format\": \"dseek-tokens-v1\", \"shards\": 3");
    expect_error(tmp.path, "not valid JSON");
  }
}

TEST(DataLoader, EveryTrainingTokenIsATargetOncePerEpoch) {
  TempDir tmp;
  auto docs = make_docs(30);
  write_docs(tmp.path, docs, 64);
  auto ds = TokenDataset::open(tmp.path.string());
  DataLoader loader(ds, {.seq_len = 7, .batch_size = 3, .seed = 5, .val_fraction = 0.2});
  EXPECT_GT(loader.validation_documents(), 0);
  EXPECT_EQ(loader.train_documents() + loader.validation_documents(), 30);
  // Count targets over exactly one epoch's worth of windows.
  std::map<int32_t, int> seen;
  int64_t targets = 0;
  while (targets + 7 * 3 < loader.train_tokens()) {
    auto batch = loader.next_batch();
    for (int b = 0; b < 3; ++b) {
      for (int t = 1; t <= 7; ++t) {
        int32_t tok = batch[size_t(b * 8 + t)];
        if (tok != 0) ++seen[tok];  // EOS (0) appears once per document
      }
    }
    targets += 21;
  }
  for (const auto& [tok, count] : seen) EXPECT_EQ(count, 1) << tok;
  // Windows are contiguous: the last input of one row is followed by the first target of the next.
  DataLoader again(ds, {.seq_len = 7, .batch_size = 2, .seed = 5, .val_fraction = 0.2});
  auto b1 = again.next_batch();
  EXPECT_EQ(b1[7], b1[8]);  // row 0's last target == row 1's first input
}

TEST(DataLoader, ResumeFromAPositionReplaysTheSameBatches) {
  TempDir tmp;
  write_docs(tmp.path, make_docs(25), 1000);
  auto ds = TokenDataset::open(tmp.path.string());
  LoaderOptions opts{.seq_len = 9, .batch_size = 4, .seed = 11, .val_fraction = 0.1};
  DataLoader a(ds, opts);
  for (int i = 0; i < 13; ++i) a.next_batch();  // crosses epoch boundaries
  LoaderPosition saved = LoaderPosition::from_json(a.position().to_json());
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 5; ++i) expected.push_back(a.next_batch());
  DataLoader b(ds, opts);
  b.seek(saved);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(b.next_batch(), expected[size_t(i)]) << i;
  EXPECT_GT(saved.epoch, 0);
  // Other seeds shuffle differently; the validation split does not depend on the seed.
  DataLoader c(ds, {.seq_len = 9, .batch_size = 4, .seed = 12, .val_fraction = 0.1});
  DataLoader d(ds, opts);
  EXPECT_NE(c.next_batch(), d.next_batch());
  EXPECT_EQ(c.validation_documents(), d.validation_documents());
  ASSERT_GT(c.num_validation_sequences(), 0);
  EXPECT_EQ(c.validation_sequence(0), d.validation_sequence(0));
  EXPECT_THROW(b.seek({.epoch = 0, .doc_cursor = 1000, .token_offset = 0}), Error);
}

// A data-parallel rank's slice of a batch is those rows of the whole batch, and the position
// moves past the whole batch either way (windows crossing documents and epochs).
TEST(DataLoader, SlicesOfABatchAreItsRows) {
  TempDir tmp;
  write_docs(tmp.path, make_docs(9), 1000);
  auto ds = TokenDataset::open(tmp.path.string());
  const LoaderOptions opts{.seq_len = 6, .batch_size = 5, .seed = 3, .val_fraction = 0.1};
  DataLoader whole(ds, opts), sliced(ds, opts);
  const int64_t T1 = opts.seq_len + 1;
  struct Slice {
    int64_t first, count;
  };
  int epochs_crossed = 0;
  for (int step = 0; step < 40; ++step) {
    const std::vector<int32_t> all = whole.next_batch();
    const Slice cut[] = {{0, 5}, {0, 2}, {2, 3}, {4, 1}, {1, 0}, {3, 2}};
    const Slice c = cut[step % 6];
    const std::vector<int32_t> part = sliced.next_batch(c.first, c.count);
    ASSERT_EQ(int64_t(part.size()), c.count * T1) << "step " << step;
    EXPECT_TRUE(std::equal(part.begin(), part.end(), all.begin() + c.first * T1))
        << "step " << step << ", rows [" << c.first << ", " << c.first + c.count << ")";
    EXPECT_EQ(sliced.position(), whole.position()) << "step " << step;
    epochs_crossed = int(whole.position().epoch);
  }
  EXPECT_GE(epochs_crossed, 2);  // the windows crossed epochs (and so documents)
  EXPECT_THROW(sliced.next_batch(4, 2), Error);
  EXPECT_THROW(sliced.next_batch(-1, 1), Error);
}

TEST(CorpusReader, JsonlSeparatorsAndErrors) {
  TempDir tmp;
  write_bytes(tmp.path / "a.jsonl",
              "{\"text\": \"first\"}\n\n{\"text\": \"second\"}\n{\"text\": 3}\n");
  CorpusReader bad_field({(tmp.path / "a.jsonl").string()}, {});
  CorpusPiece p;
  ASSERT_TRUE(bad_field.next(p));
  EXPECT_EQ(p.text, "first");
  ASSERT_TRUE(bad_field.next(p));
  EXPECT_EQ(p.text, "second");
  try {
    bad_field.next(p);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("a.jsonl:4"), std::string::npos) << e.what();
  }
  write_bytes(tmp.path / "f.txt", "one\nfortune\n%\ntwo\n%\n%\nthree");
  CorpusOptions opts;
  opts.separator_line = "%";
  CorpusReader fortunes({(tmp.path / "f.txt").string()}, opts);
  std::vector<std::string> docs;
  std::string current;
  while (fortunes.next(p)) {
    current += p.text;
    if (p.document_end) docs.push_back(std::exchange(current, ""));
  }
  EXPECT_EQ(docs, (std::vector<std::string>{"one\nfortune\n", "two\n", "three"}));
  write_bytes(tmp.path / "bad.txt", std::string("ok\n\xff\xfe\n"));
  CorpusReader utf8({(tmp.path / "bad.txt").string()}, {});
  EXPECT_THROW(utf8.next(p), Error);
  EXPECT_THROW(CorpusReader({(tmp.path / "missing").string()}, {}), Error);
}

TEST(Fim, SplitKeepsTextAndCharacterBoundaries) {
  Rng rng(3);
  std::string doc = "int main() { return 0; } // héllo 世界";
  for (int i = 0; i < 200; ++i) {
    FimSplit s = fim_split(doc, rng);
    EXPECT_EQ(s.prefix + s.middle + s.suffix, doc);
    EXPECT_TRUE(is_valid_utf8(s.prefix) && is_valid_utf8(s.middle) && is_valid_utf8(s.suffix));
  }
}

TEST(Fim, PrepareWithCoderTokenizerWritesBothOrders) {
  std::string tok =
      std::string(DSEEK_SOURCE_DIR) + "/../shared/tokenizers/deepseek-coder.tokenizer.json";
  if (!fs::exists(tok)) GTEST_SKIP() << "shared tokenizers not present";
  Tokenizer tokenizer = Tokenizer::load(tok);
  FimTokens ft = FimTokens::from_tokenizer(tokenizer);
  FimSplit split{"def f(x):\n    ", "return x + 1", "\n"};
  auto psm = fim_encode(tokenizer, split, ft, FimMode::PSM);
  auto spm = fim_encode(tokenizer, split, ft, FimMode::SPM);
  EXPECT_EQ(psm.front(), ft.begin);
  EXPECT_EQ(spm.front(), ft.hole);
  EXPECT_EQ(tokenizer.decode(psm),
            "<｜fim▁begin｜>def f(x):\n    <｜fim▁hole｜>\n<｜fim▁end｜>return x + 1");
  EXPECT_EQ(tokenizer.decode(spm),
            "<｜fim▁hole｜>\n<｜fim▁begin｜>def f(x):\n    <｜fim▁end｜>return x + 1");

  TempDir tmp;
  fs::create_directories(tmp.path / "src");
  for (int i = 0; i < 20; ++i) {
    write_bytes(tmp.path / "src" / fmt::format("f{}.py", i),
                fmt::format("def f{}(x):\n    return x * {}\n", i, i));
  }
  PrepareOptions opts;
  opts.tokenizer = tok;
  opts.inputs = {(tmp.path / "src").string()};
  opts.out_dir = (tmp.path / "data").string();
  opts.fim = {.rate = 1.0, .spm_rate = 0.5};
  opts.progress = false;
  PrepareSummary s = prepare_data(opts);
  EXPECT_EQ(s.documents, 20);
  EXPECT_EQ(s.fim_documents, 20);
  auto ds = TokenDataset::open(opts.out_dir);
  int psm_count = 0, spm_count = 0;
  for (int64_t d = 0; d < ds->num_documents(); ++d) {
    int64_t len = 0;
    const uint32_t* t = ds->document(d, &len);
    psm_count += int32_t(t[0]) == ft.begin;
    spm_count += int32_t(t[0]) == ft.hole;
  }
  EXPECT_EQ(psm_count + spm_count, 20);
  EXPECT_GT(psm_count, 2);
  EXPECT_GT(spm_count, 2);
}
