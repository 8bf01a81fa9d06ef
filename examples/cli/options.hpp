// The command line of the diffpost tool, on CLI11. Each command parses into a typed options struct; its
// flags are declared once, in tables of `Flag`s that drive the parsing, the --help text and the sweeps of
// `diffpost eval` (a sweep copies the struct and sets one field with the flag's own setter). Errors are one
// line that names the flag, the value and what was expected.
#pragma once

#include <diffpost/detail/text.hpp>

#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace diffpost::cli {

/// An error in the user's input (flags, files, values): main prints its message as one line and exits 1.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Strict integer parsing: the whole text must be an integer in [low, high]; `what` names the flag.
inline int64_t parse_int(const std::string& text, const std::string& what, int64_t low,
                         int64_t high = INT64_MAX) {
  int64_t value = 0;
  const auto* end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, value);
  if (text.empty() || result.ec != std::errc() || result.ptr != end)
    throw UsageError(fmt::format("{} must be an integer, got '{}'", what, text));
  if (value < low || value > high) {
    throw UsageError(high == INT64_MAX
                         ? fmt::format("{} must be >= {}, got {}", what, low, value)
                         : fmt::format("{} must be in [{}, {}], got {}", what, low, high, value));
  }
  return value;
}

/// Strict number parsing: the whole text must be a finite number in [low, high].
inline double parse_double(const std::string& text, const std::string& what, double low, double high) {
  double value = 0.0;
  const auto* end = text.data() + text.size();
  const auto result = std::from_chars(text.data(), end, value);
  if (text.empty() || result.ec != std::errc() || result.ptr != end || !std::isfinite(value))
    throw UsageError(fmt::format("{} must be a finite number, got '{}'", what, text));
  if (value < low || value > high)
    throw UsageError(fmt::format("{} must be in [{}, {}], got {}", what, low, high, value));
  return value;
}

/// The text if it is one of `choices`.
inline std::string parse_choice(const std::string& text, const std::string& what,
                                const std::vector<std::string>& choices) {
  for (const auto& choice : choices)
    if (choice == text) return text;
  throw UsageError(fmt::format("{} must be one of {}, got '{}'", what, fmt::join(choices, ", "), text));
}

/// Splits "a,b,c" into its non-empty, trimmed parts.
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  for (const auto piece : diffpost::detail::split_commas(text))
    if (const auto item = diffpost::detail::trim_blanks(piece); !item.empty()) parts.emplace_back(item);
  return parts;
}

/// The comma-separated items of a list flag, each at most once, at least one.
inline std::vector<std::string> unique_list(const std::string& text, const std::string& what) {
  std::vector<std::string> items;
  for (const auto& item : split_list(text)) {
    if (std::find(items.begin(), items.end(), item) != items.end())
      throw UsageError(fmt::format("{}: '{}' is listed twice", what, item));
    items.push_back(item);
  }
  if (items.empty()) throw UsageError(fmt::format("{} is empty", what));
  return items;
}

/// A number as the help text shows defaults (shortest form that reads back the same).
template <class T>
std::string default_text(const T& value) {
  return fmt::format("{}", value);
}

/// A flag bound to a field of the options struct `O`: `--name VALUE` (a switch when `value_name` is empty),
/// its help line, the default shown in --help, and a setter that checks the text and stores it, throwing
/// UsageError with a message that names the flag.
template <class O>
struct Flag {
  std::string name;
  std::string value_name;
  std::string help;
  std::string default_shown;
  std::function<void(O&, const std::string&)> set;
};

/// Flags under a heading of the help text.
template <class O>
struct FlagGroup {
  std::string title;
  std::vector<Flag<O>> flags;
};

/// The flags of every group, in order.
template <class O>
std::vector<Flag<O>> all_flags(const std::vector<FlagGroup<O>>& groups) {
  std::vector<Flag<O>> flags;
  for (const auto& group : groups) flags.insert(flags.end(), group.flags.begin(), group.flags.end());
  return flags;
}

/// Prints help in diffpost's layout: usage, the command's description, then each group of flags with the
/// value name, help and default.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_help(const CLI::App* app, std::string, CLI::AppFormatMode) const override {
    std::ostringstream out;
    out << "Usage: " << app->get_name() << " [options]";
    for (const auto* positional : app->get_options([](const CLI::Option* o) { return o->get_positional(); }))
      out << " [" << positional->get_type_name() << " ...]";
    out << "\n\n" << app->get_description() << "\n\n";
    for (const auto& group : app->get_groups()) {
      const auto options = app->get_options(
          [&](const CLI::Option* o) { return o->get_group() == group && o->nonpositional(); });
      if (options.empty()) continue;
      if (group != kUntitled) out << "\n" << group << ":\n";
      for (const auto* option : options) {
        std::string left = fmt::format("  {}", option->get_name());
        if (option->get_type_size() != 0) left += fmt::format(" {}", option->get_type_name());
        if (left.size() < 30)
          left.resize(30, ' ');
        else
          left += "\n" + std::string(30, ' ');
        out << left << option->get_description();
        if (!option->get_default_str().empty()) out << " (default: " << option->get_default_str() << ")";
        out << "\n";
      }
    }
    return out.str();
  }

  /// The group of --help, printed first without a heading.
  static constexpr const char* kUntitled = "Options";
};

/// A command's parser with diffpost's help layout; `name` ("diffpost restore") and `description` open its
/// --help. Unknown options are collected and reported by `parse`.
inline std::unique_ptr<CLI::App> make_app(const std::string& name, const std::string& description) {
  auto app = std::make_unique<CLI::App>(description, name);
  app->formatter(std::make_shared<HelpFormatter>());
  app->set_help_flag("--help", "show this help and exit");
  app->allow_extras();
  return app;
}

/// Declares `groups` on `app`, bound to `options`.
template <class O>
void declare(CLI::App& app, O& options, const std::vector<FlagGroup<O>>& groups) {
  for (const auto& group : groups) {
    for (const auto& flag : group.flags) {
      if (flag.value_name.empty()) {
        app.add_flag_callback(
               "--" + flag.name, [&options, set = flag.set] { set(options, ""); }, flag.help)
            ->group(group.title);
        continue;
      }
      app.add_option(
             "--" + flag.name,
             [&options, set = flag.set](const CLI::results_t& results) {
               set(options, results.back());
               return true;
             },
             flag.help)
          ->type_name(flag.value_name)
          ->default_str(flag.default_shown)
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast)
          ->group(group.title);
    }
  }
}

/// Parses the command's arguments (argv[2...]; argv[1] is the command). Returns false when --help was asked
/// for (the help has been printed). A value a setter refuses throws its UsageError; CLI11's own errors and
/// unknown options become UsageErrors too.
inline bool parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc - 1, argv + 1);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return false;
  } catch (const CLI::ParseError& e) {
    throw UsageError(fmt::format("{} (see {} --help)", e.what(), app.get_name()));
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
