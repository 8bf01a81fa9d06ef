// A small command-line parser for the diffpost tool: declared flags with help text, strict number parsing,
// and errors that fit on one line.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <sstream>
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

/// One declared flag: `--name VALUE` (or a switch without a value), its help line and default.
struct Flag {
  std::string name;
  std::string value_name;  ///< empty for a switch
  std::string help;
  std::string default_value;
};

/// The flags and positional arguments of one subcommand, declared first, then parsed from argv.
class ArgParser {
 public:
  ArgParser(std::string command, std::string summary, std::string positional_help = {})
      : command_(std::move(command)),
        summary_(std::move(summary)),
        positional_help_(std::move(positional_help)) {
    add_switch("help", "show this help and exit");
  }

  /// Declares a flag taking a value; `default_value` is shown in the help and returned when it is absent.
  ArgParser& add(const std::string& name, const std::string& value_name, const std::string& help,
                 const std::string& default_value = {}) {
    flags_.push_back({name, value_name, help, default_value});
    return *this;
  }

  /// Declares a switch (no value).
  ArgParser& add_switch(const std::string& name, const std::string& help) {
    flags_.push_back({name, "", help, ""});
    return *this;
  }

  /// Starts a titled group of flags in the help text.
  ArgParser& section(const std::string& title) {
    flags_.push_back({"", "", title, ""});
    return *this;
  }

  /// Parses argv[first ...]; `--name value`, `--name=value` and switches; everything else is positional.
  void parse(int argc, char** argv, int first) {
    for (int i = first; i < argc; ++i) {
      std::string_view arg = argv[i];
      if (arg == "--") {
        for (++i; i < argc; ++i) positional_.emplace_back(argv[i]);
        break;
      }
      if (!arg.starts_with("--") || arg.size() == 2) {
        if (arg.starts_with("-") && arg.size() > 1 && !std::isdigit(static_cast<unsigned char>(arg[1])))
          throw UsageError(
              fmt::format("unknown option '{}' (options start with --; see {} --help)", arg, command_));
        positional_.emplace_back(arg);
        continue;
      }
      std::string name(arg.substr(2));
      std::optional<std::string> value;
      if (const auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      }
      const Flag* flag = find(name);
      if (!flag) throw UsageError(fmt::format("unknown option '--{}' (see {} --help)", name, command_));
      if (flag->value_name.empty()) {
        if (value) throw UsageError(fmt::format("option '--{}' takes no value", name));
        values_[name] = "1";
        continue;
      }
      if (!value) {
        if (i + 1 >= argc)
          throw UsageError(fmt::format("option '--{}' needs a value {}", name, flag->value_name));
        value = argv[++i];
      }
      values_[name] = *value;
    }
  }

  /// Sets `--name` as if it had been given (a sweep point of `diffpost eval` is the parsed flags with one
  /// value replaced).
  void set(const std::string& name, const std::string& value) { values_[checked(name).name] = value; }

  [[nodiscard]] bool has(const std::string& name) const { return values_.count(checked(name).name) > 0; }
  [[nodiscard]] bool flag(const std::string& name) const { return has(name); }

  /// The value of `--name`, or its declared default.
  [[nodiscard]] std::string get(const std::string& name) const {
    const auto& declared = checked(name);
    const auto it = values_.find(name);
    return it != values_.end() ? it->second : declared.default_value;
  }

  /// The value as an integer in [low, high]; errors name the flag and the accepted range.
  [[nodiscard]] int64_t get_int(const std::string& name, int64_t low, int64_t high = INT64_MAX) const {
    return parse_int(get(name), "--" + name, low, high);
  }

  /// The value as a finite number in [low, high].
  [[nodiscard]] double get_double(const std::string& name, double low, double high) const {
    return parse_double(get(name), "--" + name, low, high);
  }

  /// The value as one of `choices`.
  [[nodiscard]] std::string get_choice(const std::string& name,
                                       const std::vector<std::string>& choices) const {
    const auto value = get(name);
    for (const auto& choice : choices)
      if (choice == value) return value;
    throw UsageError(fmt::format("--{} must be one of {}, got '{}'", name, fmt::join(choices, ", "), value));
  }

  [[nodiscard]] const std::vector<std::string>& positional() const { return positional_; }

  /// The help text: usage line, summary, then every flag with its value name, default and help.
  [[nodiscard]] std::string help() const {
    std::ostringstream out;
    out << "Usage: " << command_ << " [options]" << (positional_help_.empty() ? "" : " " + positional_help_)
        << "\n\n"
        << summary_ << "\n\n";
    for (const auto& f : flags_) {
      if (f.name.empty()) {
        out << "\n" << f.help << ":\n";
        continue;
      }
      std::string left = "  --" + f.name + (f.value_name.empty() ? "" : " " + f.value_name);
      if (left.size() < 30)
        left.resize(30, ' ');
      else
        left += "\n" + std::string(30, ' ');
      out << left << f.help;
      if (!f.default_value.empty()) out << " (default: " << f.default_value << ")";
      out << "\n";
    }
    return out.str();
  }

  [[nodiscard]] const std::string& command() const { return command_; }

  /// Strict integer parsing: the whole text must be an integer in [low, high].
  static int64_t parse_int(const std::string& text, const std::string& what, int64_t low,
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
  static double parse_double(const std::string& text, const std::string& what, double low, double high) {
    double value = 0.0;
    const auto* end = text.data() + text.size();
    const auto result = std::from_chars(text.data(), end, value);
    if (text.empty() || result.ec != std::errc() || result.ptr != end || !std::isfinite(value))
      throw UsageError(fmt::format("{} must be a finite number, got '{}'", what, text));
    if (value < low || value > high)
      throw UsageError(fmt::format("{} must be in [{}, {}], got {}", what, low, high, value));
    return value;
  }

 private:
  [[nodiscard]] const Flag* find(const std::string& name) const {
    for (const auto& f : flags_)
      if (!f.name.empty() && f.name == name) return &f;
    return nullptr;
  }
  [[nodiscard]] const Flag& checked(const std::string& name) const {
    const Flag* f = find(name);
    if (!f) throw std::logic_error("diffpost cli: flag --" + name + " was not declared");
    return *f;
  }

  std::string command_;
  std::string summary_;
  std::string positional_help_;
  std::vector<Flag> flags_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

/// Splits "a,b,c" into its non-empty, trimmed parts.
inline std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, ',');) {
    const auto first = part.find_first_not_of(" \t");
    if (first == std::string::npos) continue;
    parts.push_back(part.substr(first, part.find_last_not_of(" \t") - first + 1));
  }
  return parts;
}

}  // namespace diffpost::cli
