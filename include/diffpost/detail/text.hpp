// Private to diffpost: not part of the public API, may change without notice.
//
// Splitting comma-separated lists ("1,1,2,2,4,4", "25,25,50", "dps,ddrm"): the one splitter behind the
// respacing specs, the model config lists and the tool's list flags, each of which decides what an empty item
// means.
#pragma once

#include <string_view>
#include <vector>

namespace diffpost::detail {

/// The pieces of `text` between commas, untrimmed: n commas give n + 1 pieces ("" gives one empty piece,
/// "a," gives "a" and ""). Views into `text`.
inline std::vector<std::string_view> split_commas(std::string_view text) {
  std::vector<std::string_view> pieces;
  for (size_t start = 0;;) {
    const size_t comma = text.find(',', start);
    pieces.push_back(
        text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    if (comma == std::string_view::npos) return pieces;
    start = comma + 1;
  }
}

/// `text` without leading and trailing spaces and tabs.
inline std::string_view trim_blanks(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return text.substr(0, 0);
  return text.substr(first, text.find_last_not_of(" \t") - first + 1);
}

}  // namespace diffpost::detail
