// A terminal progress bar for long runs (sampling, restoration, training): one line on stderr that is
// redrawn in place with a bar, the count, the rate, the elapsed time, the ETA and free-form trailing text
// such as the current loss. When stderr is not a terminal (a log file, a pipe, CI) it prints a plain line
// every few seconds instead, so logs stay readable. It only reads the wall clock: it never touches tensors,
// so it adds no device synchronisation to the loop it reports on.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>

#include <fmt/core.h>
#include <unistd.h>

namespace diffpost {

/// Progress of `total` units of work labelled `label`, drawn on stderr. Call `update(n)` as work completes,
/// optionally with trailing text (e.g. `fmt::format("loss {:.4f}", loss)`), and `finish()` at the end (the
/// destructor finishes too). On a terminal the line is redrawn at most every 0.1 s; elsewhere a line is
/// printed every `log_interval` (default 10 s) and at the end. A `total` of 0 means unknown: no bar and no
/// ETA are shown. Not thread-safe; one bar per loop.
class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  /// A bar for `total` units (0 = unknown) labelled `label`, starting its clock now. `interactive` chooses
  /// between redrawing in place and periodic log lines; by default it is whether stderr is a terminal.
  ProgressBar(int64_t total, std::string label, bool interactive = ::isatty(::fileno(stderr)) != 0)
      : total_(std::max<int64_t>(total, 0)),
        label_(std::move(label)),
        interactive_(interactive),
        start_(Clock::now()),
        last_draw_(start_) {}

  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  ~ProgressBar() {
    try {
      finish();
    } catch (...) {
      // Formatting the last line failed (out of memory): the bar is only output, and a destructor, which may
      // run while another exception unwinds the stack, must not throw.
    }
  }

  /// Sets the number of completed units to `done` and the trailing text to `text`, and redraws if the last
  /// redraw (or log line) is old enough.
  void update(int64_t done, std::string text = {}) {
    done_ = done;
    if (!text.empty()) text_ = std::move(text);
    if (due()) draw(Clock::now(), false);
  }

  /// Whether the next `update` will redraw: a caller whose trailing text needs a device sync (a loss, a
  /// residual) computes it only then.
  [[nodiscard]] bool due() const {
    const double since = seconds_between(last_draw_, Clock::now());
    return interactive_ ? since >= kRedrawInterval : since >= log_interval_;
  }

  /// Draws the final state and ends the line; later calls do nothing.
  void finish() {
    if (finished_) return;
    finished_ = true;
    draw(Clock::now(), true);
  }

  /// Seconds between log lines when stderr is not a terminal.
  ProgressBar& log_interval(double seconds) {
    log_interval_ = seconds;
    return *this;
  }

  /// `seconds` as `1:02:03` or `02:03`; `--:--` when not finite.
  static std::string format_duration(double seconds) {
    if (!std::isfinite(seconds) || seconds < 0) return "--:--";
    const auto s = static_cast<int64_t>(std::llround(seconds));
    if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
    return fmt::format("{:02}:{:02}", s / 60, s % 60);
  }

  /// The text of the progress line at `elapsed` seconds, without carriage return or newline; what `draw`
  /// prints, exposed for tests.
  [[nodiscard]] std::string line(double elapsed) const {
    const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
    // Rates below one unit per second read better as seconds per unit.
    const std::string rate_text = rate >= 1.0 || rate == 0.0 ? fmt::format("{:.2f} it/s", rate)
                                                             : fmt::format("{:.2f} s/it", 1.0 / rate);
    std::string out = label_.empty() ? std::string{} : label_ + " ";
    if (total_ > 0) {
      const double fraction = std::clamp(static_cast<double>(done_) / static_cast<double>(total_), 0.0, 1.0);
      constexpr int width = 24;
      const int filled = static_cast<int>(fraction * width);
      out += fmt::format("{:3.0f}% [{}{}] {}/{}", 100.0 * fraction, std::string(filled, '#'),
                         std::string(width - filled, '.'), done_, total_);
      const double remaining = rate > 0 ? static_cast<double>(total_ - done_) / rate : NAN;
      out += fmt::format(" {} {} elapsed, ETA {}", rate_text, format_duration(elapsed),
                         format_duration(remaining));
    } else {
      out += fmt::format("{} {} {} elapsed", done_, rate_text, format_duration(elapsed));
    }
    if (!text_.empty()) out += " | " + text_;
    return out;
  }

 private:
  static double seconds_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  }

  void draw(Clock::time_point now, bool final) {
    // A log line identical in count to the previous one adds nothing at the end of a run.
    if (final && !interactive_ && drawn_once_ && drawn_done_ == done_) return;
    last_draw_ = now;
    drawn_once_ = true;
    drawn_done_ = done_;
    const auto text = line(seconds_between(start_, now));
    if (interactive_) {
      // \r plus clear-to-end-of-line redraws in place; the final draw ends the line.
      std::fprintf(stderr, "\r%s\x1b[K%s", text.c_str(), final ? "\n" : "");
    } else {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
    std::fflush(stderr);
  }

  int64_t total_;
  int64_t done_ = 0;
  std::string label_;
  std::string text_;
  bool interactive_;
  bool finished_ = false;
  bool drawn_once_ = false;
  int64_t drawn_done_ = 0;
  static constexpr double kRedrawInterval = 0.1;  // seconds between redraws on a terminal
  double log_interval_ = 10.0;
  Clock::time_point start_;
  Clock::time_point last_draw_;
};

}  // namespace diffpost
