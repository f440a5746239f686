// `dseek tokenize` and `dseek detokenize`: the tokenizer from the command line.
//   dseek tokenize --tokenizer FILE_OR_DIR [--add-bos] [--] TEXT     (TEXT "-" reads stdin)
//     prints the ids, space-separated, on one line;
//   dseek detokenize --tokenizer FILE_OR_DIR [--skip-special] [--] IDS...
//     (ids space- or comma-separated) prints the text followed by a newline.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dseek::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer;
  bool add_bos = false;
  std::string text;
};

struct DetokenizeArgs {
  std::string tokenizer;
  bool skip_special = false;
  std::vector<std::string> ids;
};

void run_tokenize(const TokenizeArgs& args) {
  const Tokenizer tok = Tokenizer::load(args.tokenizer);
  std::string text = args.text;
  if (text == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  const std::vector<int32_t> ids = tok.encode(text, args.add_bos);
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += ' ';
    line += std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
}

std::vector<int32_t> parse_ids(const std::vector<std::string>& words) {
  std::vector<int32_t> ids;
  for (const std::string& word : words) {
    size_t pos = 0;
    while (pos <= word.size()) {
      size_t end = word.find_first_of(", \t\n", pos);
      if (end == std::string::npos) end = word.size();
      const std::string item = word.substr(pos, end - pos);
      if (!item.empty()) {
        size_t used = 0;
        long long value = 0;
        try {
          value = std::stoll(item, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        DSEEK_CHECK(used == item.size() && value >= INT32_MIN && value <= INT32_MAX,
                    "[detokenize] '{}' is not a token id", item);
        ids.push_back(int32_t(value));
      }
      pos = end + 1;
    }
  }
  return ids;
}

void run_detokenize(const DetokenizeArgs& args) {
  const Tokenizer tok = Tokenizer::load(args.tokenizer);
  const std::string text = tok.decode(parse_ids(args.ids), args.skip_special);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
}

}  // namespace

void add_tokenize_commands(CLI::App& app) {
  auto tokenize_args = std::make_shared<TokenizeArgs>();
  CLI::App* tokenize = app.add_subcommand("tokenize", "Print the token ids of a text");
  tokenize->add_option("--tokenizer", tokenize_args->tokenizer, "tokenizer.json or its directory")
      ->required();
  tokenize->add_flag("--add-bos", tokenize_args->add_bos, "Prepend the BOS token");
  tokenize->add_option("text", tokenize_args->text, "Text to tokenize (\"-\" reads stdin)")
      ->required();
  tokenize->callback([tokenize_args] { run_tokenize(*tokenize_args); });

  auto detokenize_args = std::make_shared<DetokenizeArgs>();
  CLI::App* detokenize = app.add_subcommand("detokenize", "Print the text of token ids");
  detokenize
      ->add_option("--tokenizer", detokenize_args->tokenizer, "tokenizer.json or its directory")
      ->required();
  detokenize->add_flag("--skip-special", detokenize_args->skip_special, "Leave out special tokens");
  detokenize->add_option("ids", detokenize_args->ids, "Token ids, space- or comma-separated")
      ->required();
  detokenize->callback([detokenize_args] { run_detokenize(*detokenize_args); });
}

}  // namespace dseek::cli
