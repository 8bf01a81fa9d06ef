// The command line of the diffpost tool, on CLI11: every command binds its flags to the fields of a typed
// options struct (CLI11's add_option / add_flag), checks values with CLI11 validators (CLI::Range,
// CLI::IsMember and the two below, for what CLI11 lacks), and prints CLI11's help. Errors are one line that
// names the flag, the value and what was expected.
#pragma once

#include <diffpost/detail/text.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace diffpost::cli {

/// An error in the user's input (flags, files, values): main prints its message as one line and exits 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A number as the help text and the errors show it (shortest form that reads back the same).
template <class T>
std::string default_text(const T& value) {
  return fmt::format("{}", value);
}

/// Declares `flag` bound to `value` (CLI11's typed add_option) with the tool's conventions: the kind of value
/// in the help ("N", "X", "FILE"), the value it holds shown as the default, and the help's group it is listed
/// under. Validators are added to what it returns.
template <class T>
CLI::Option* add_value_option(CLI::App& app, const std::string& flag, T& value, const std::string& help,
                              const std::string& value_name, const std::string& group) {
  return app.add_option(flag, value, help)->type_name(value_name)->capture_default_str()->group(group);
}

/// A validator for floating-point flags: the whole text a finite number in [low, high] (CLI::Range lets NaN
/// through and prints its bounds with six decimals).
inline CLI::Validator finite_in(double low, double high) {
  return {[low, high](std::string& text) -> std::string {
            double value = 0.0;
            const auto* end = text.data() + text.size();
            const auto result = std::from_chars(text.data(), end, value);
            if (text.empty() || result.ec != std::errc() || result.ptr != end || !std::isfinite(value))
              return fmt::format("must be a finite number, got '{}'", text);
            if (value < low || value > high)
              return fmt::format("must be in [{}, {}], got {}", low, high, default_text(value));
            return {};
          },
          fmt::format("in [{}, {}]", low, high)};
}

/// A validator from a check that throws: the check's first message line is the validator's error.
template <class Check>
CLI::Validator checked_by(Check check, std::string description) {
  return {[check](std::string& text) -> std::string {
            try {
              check(text);
            } catch (const std::exception& e) {
              const std::string message = e.what();
              return message.substr(0, message.find('\n'));
            }
            return {};
          },
          std::move(description)};
}

/// Strict integer parsing of text that does not come through CLI11 (environment variables, the parts of
/// --shard K/N): the whole text must be an integer; `what` names it.
inline int64_t parse_integer(const std::string& text, const std::string& what) {
  int64_t value = 0;
  const auto* end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, value);
  if (text.empty() || result.ec != std::errc() || result.ptr != end)
    throw UsageError(fmt::format("{} must be an integer, got '{}'", what, text));
  return value;
}

/// The items of a list flag ("a,b,c"): each at most once, at least one. `what` names the flag.
inline void check_unique(const std::vector<std::string>& items, const std::string& what) {
  if (items.empty()) throw UsageError(fmt::format("{} is empty", what));
  for (size_t i = 0; i < items.size(); ++i)
    if (std::find(items.begin(), items.begin() + static_cast<std::ptrdiff_t>(i), items[i]) !=
        items.begin() + static_cast<std::ptrdiff_t>(i))
      throw UsageError(fmt::format("{}: '{}' is listed twice", what, items[i]));
}

/// Splits "a,b,c" into its non-empty, trimmed parts.
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  for (const auto piece : diffpost::detail::split_commas(text))
    if (const auto item = diffpost::detail::trim_blanks(piece); !item.empty()) parts.emplace_back(item);
  return parts;
}

/// A command's parser: `name` ("diffpost restore") and `description` open its --help. Unknown options and
/// arguments are collected and reported by `parse`.
inline std::unique_ptr<CLI::App> make_app(const std::string& name, const std::string& description) {
  auto app = std::make_unique<CLI::App>(description, name);
  app->set_help_flag("--help", "show this help and exit");
  app->option_defaults()->multi_option_policy(
      CLI::MultiOptionPolicy::TakeLast);  // a repeated flag: the last wins
  app->allow_extras();
  app->get_formatter()->column_width(34);
  return app;
}

/// Parses the command's arguments (argv[2...]; argv[1] is the command). Returns false when --help was asked
/// for (the help has been printed). CLI11's errors and unknown options become UsageErrors.
inline bool parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc - 1, argv + 1);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return false;
  } catch (const CLI::ParseError& e) {
    // CLI11 puts the flag before a validator's message; where the message names the flag itself, once is
    // enough ("--shard: --shard 3/2: ..." -> "--shard 3/2: ...").
    std::string message = e.what();
    if (const auto colon = message.find(": ");
        colon != std::string::npos && message.compare(colon + 2, colon, message, 0, colon) == 0)
      message.erase(0, colon + 2);
    throw UsageError(fmt::format("{} (see {} --help)", message, app.get_name()));
  }
  const auto extras = app.remaining();
  if (!extras.empty()) {
    throw UsageError(
        extras.front().starts_with("-")
            ? fmt::format("unknown option '{}' (see {} --help)", extras.front(), app.get_name())
            : fmt::format("unexpected argument '{}' (see {} --help)", extras.front(), app.get_name()));
  }
  return true;
}

/// Whether `--name` was given on the command line.
inline bool given(const CLI::App& app, const std::string& name) {
  return app.count("--" + name) > 0;
}

}  // namespace diffpost::cli
