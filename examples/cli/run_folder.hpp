// What a run of `diffpost restore` or `diffpost eval` keeps in its output folder so that it can be sharded
// over processes, resumed after an interruption, and merged: the run's settings (.diffpost/run.yaml), and one
// record per finished batch (.diffpost/records/...) holding its scores and the sizes and CRC-32s of the files
// it wrote. The summary files are always made from the records, by the run itself when it is one process, by
// `diffpost merge` when it was sharded, so that both give the same bytes.
#pragma once

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/detail/atomic_file.hpp>

#include <yaml-cpp/yaml.h>
#include <zlib.h>

#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "options.hpp"

namespace diffpost::cli {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------------
// Shards
// ---------------------------------------------------------------------------------------------------------------

/// The part of a run one process does: the batches b with b % count == index.
struct Shard {
  int64_t index = 0;
  int64_t count = 1;
  std::string origin = "single process";  ///< where the numbers came from, for messages
  std::optional<int64_t> local_rank;      ///< the process's rank on its node, when the launcher says

  [[nodiscard]] bool owns(int64_t batch) const { return batch % count == index; }
  [[nodiscard]] std::string text() const { return fmt::format("{}/{}", index, count); }
};

/// Reads an environment variable as an integer; nullopt when unset, an error naming it when not a number.
inline std::optional<int64_t> environment_integer(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return parse_integer(value, fmt::format("--shard auto: ${}", name));
}

/// Shard `index` of `count` after checking them; `what` says where they came from.
inline Shard checked_shard(int64_t index, int64_t count, std::string what) {
  if (count < 1) throw UsageError(fmt::format("{}: the number of shards must be >= 1, got {}", what, count));
  if (index < 0 || index >= count)
    throw UsageError(
        fmt::format("{}: shard {} does not exist among {} shards (0 ... {})", what, index, count, count - 1));
  return {index, count, std::move(what), std::nullopt};
}

/// The shard of `--shard auto`, from the launcher's environment: torchrun (RANK, WORLD_SIZE, LOCAL_RANK), a
/// Slurm job array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; times
/// SLURM_NTASKS when each array task runs several `srun` tasks), Slurm `srun` (SLURM_PROCID, SLURM_NTASKS,
/// SLURM_LOCALID), Open MPI (OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK) or MPICH / Intel MPI (PMI_RANK,
/// PMI_SIZE, MPI_LOCALRANKID), in that order. A launcher that sets its rank without its size (or the
/// reverse) is an error; no launcher at all means one process doing everything.
inline Shard shard_from_environment() {
  const auto pair = [](const char* rank_name,
                       const char* size_name) -> std::optional<std::pair<int64_t, int64_t>> {
    const auto rank = environment_integer(rank_name);
    const auto size = environment_integer(size_name);
    if (!rank && !size) return std::nullopt;
    if (!rank || !size)
      throw UsageError(
          fmt::format("--shard auto: ${} is set but ${} is not; the launcher's environment is "
                      "incomplete (or pass --shard K/N)",
                      rank ? rank_name : size_name, rank ? size_name : rank_name));
    return std::pair{*rank, *size};
  };
  const auto with_local = [](Shard shard, const char* local_name) {
    shard.local_rank = environment_integer(local_name);
    return shard;
  };
  if (const auto torchrun = pair("RANK", "WORLD_SIZE")) {
    return with_local(checked_shard(torchrun->first, torchrun->second,
                                    fmt::format("--shard auto (torchrun: RANK={}, WORLD_SIZE={})",
                                                torchrun->first, torchrun->second)),
                      "LOCAL_RANK");
  }
  const auto tasks = pair("SLURM_PROCID", "SLURM_NTASKS");
  if (const auto array = pair("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")) {
    const auto first = environment_integer("SLURM_ARRAY_TASK_MIN").value_or(0);
    const auto step = environment_integer("SLURM_ARRAY_TASK_STEP").value_or(1);
    if (step != 1)
      throw UsageError(
          fmt::format("--shard auto: the Slurm array has step {} (SLURM_ARRAY_TASK_STEP); use a "
                      "contiguous --array, e.g. --array=0-{}",
                      step, array->second - 1));
    const int64_t per_task = tasks ? tasks->second : 1;
    const int64_t within = tasks ? tasks->first : 0;
    return with_local(checked_shard((array->first - first) * per_task + within, array->second * per_task,
                                    fmt::format("--shard auto (Slurm array: SLURM_ARRAY_TASK_ID={}, "
                                                "SLURM_ARRAY_TASK_MIN={}, SLURM_ARRAY_TASK_COUNT={}{})",
                                                array->first, first, array->second,
                                                tasks ? fmt::format(", SLURM_PROCID={}, SLURM_NTASKS={}",
                                                                    tasks->first, tasks->second)
                                                      : std::string())),
                      "SLURM_LOCALID");
  }
  if (tasks) {
    return with_local(checked_shard(tasks->first, tasks->second,
                                    fmt::format("--shard auto (Slurm: SLURM_PROCID={}, SLURM_NTASKS={})",
                                                tasks->first, tasks->second)),
                      "SLURM_LOCALID");
  }
  if (const auto mpi = pair("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")) {
    return with_local(checked_shard(mpi->first, mpi->second,
                                    fmt::format("--shard auto (Open MPI: OMPI_COMM_WORLD_RANK={}, "
                                                "OMPI_COMM_WORLD_SIZE={})",
                                                mpi->first, mpi->second)),
                      "OMPI_COMM_WORLD_LOCAL_RANK");
  }
  if (const auto pmi = pair("PMI_RANK", "PMI_SIZE")) {
    return with_local(
        checked_shard(pmi->first, pmi->second,
                      fmt::format("--shard auto (MPI: PMI_RANK={}, PMI_SIZE={})", pmi->first, pmi->second)),
        "MPI_LOCALRANKID");
  }
  return {};
}

/// Parses --shard: "K/N" (K counts from 0) or "auto".
inline Shard parse_shard(const std::string& text) {
  if (text == "auto") return shard_from_environment();
  const auto slash = text.find('/');
  if (slash == std::string::npos)
    throw UsageError(fmt::format("--shard expects K/N (shard K of N, K from 0) or auto, got '{}'", text));
  const auto what = fmt::format("--shard {}", text);
  return checked_shard(parse_integer(text.substr(0, slash), what + ": K"),
                       parse_integer(text.substr(slash + 1), what + ": N"), what);
}

// ---------------------------------------------------------------------------------------------------------------
// Interruption
// ---------------------------------------------------------------------------------------------------------------

/// Thrown between steps after SIGINT or SIGTERM, so that a run stops at a clean point.
struct Interrupted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace interruption {
inline std::atomic<int>& pending_signal() {
  static std::atomic<int> signal_number{0};
  return signal_number;
}
extern "C" inline void record_signal(int signal_number) {
  pending_signal().store(signal_number);
}
}  // namespace interruption

/// While alive, SIGINT and SIGTERM are recorded instead of killing the process; `check` throws Interrupted
/// once one arrived. The previous handlers come back on destruction.
class InterruptGuard {
 public:
  InterruptGuard() {
    interruption::pending_signal().store(0);
    previous_int_ = std::signal(SIGINT, interruption::record_signal);
    previous_term_ = std::signal(SIGTERM, interruption::record_signal);
  }
  ~InterruptGuard() {
    std::signal(SIGINT, previous_int_);
    std::signal(SIGTERM, previous_term_);
  }
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

  /// Throws Interrupted when a signal arrived.
  static void check() {
    if (const int signal_number = interruption::pending_signal().load(); signal_number != 0)
      throw Interrupted(signal_number == SIGINT ? "interrupted (SIGINT)" : "terminated (SIGTERM)");
  }

 private:
  void (*previous_int_)(int) = SIG_DFL;
  void (*previous_term_)(int) = SIG_DFL;
};

// ---------------------------------------------------------------------------------------------------------------
// The run folder
// ---------------------------------------------------------------------------------------------------------------

/// CRC-32 and size of a file, or nullopt when it cannot be read.
inline std::optional<std::pair<int64_t, int64_t>> file_checksum(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.good()) return std::nullopt;
  uLong crc = crc32(0L, Z_NULL, 0);
  int64_t size = 0;
  std::vector<char> buffer(1 << 16);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto got = in.gcount();
    if (got <= 0) break;
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buffer.data()), static_cast<uInt>(got));
    size += got;
  }
  if (in.bad()) return std::nullopt;
  return std::pair{static_cast<int64_t>(crc), size};
}

/// A run of `restore` or `eval` as .diffpost/run.yaml keeps it: the command, its settings (the options given,
/// in CLI11's configuration format, from which `diffpost merge` reads the run back), the command line its
/// summaries show, its identity (every option's effective value but those that do not change the outputs),
/// and the layout of its records.
struct RunSettings {
  std::string command;                ///< "restore" or "eval"
  std::string settings;               ///< the options given, as CLI11 writes a configuration file
  std::string command_line;           ///< without the flags that do not change the outputs
  std::vector<std::string> identity;  ///< "name=value" lines; two runs with equal lines give equal outputs
  int64_t batches = 0;                ///< per task (and sweep point)
  std::vector<std::string> units;     ///< record folders: tasks, or sweep point / task
};

/// The flags that do not change what a run computes, left out of its identity and of its summaries'
/// command line, so that a sharded run merged and a single run name the same command.
inline bool changes_outputs(const std::string& name) {
  static const std::set<std::string> neutral{"--help",  "--threads", "--shard", "--resume",
                                             "--force", "--verbose", "--out"};
  return neutral.count(name) == 0;
}

/// "diffpost COMMAND" and the arguments argv[2...] without the flags that do not change the outputs.
inline std::string canonical_command(const CLI::App& app, const std::string& command, int argc, char** argv) {
  std::string text = "diffpost " + command;
  for (int i = 2; i < argc; ++i) {
    const std::string argument = argv[i];
    const auto name = argument.substr(0, argument.find('='));
    if (name.starts_with("--") && !changes_outputs(name)) {
      const auto* option = app.get_option_no_throw(name);
      if (name == argument && option != nullptr && option->get_expected_min() > 0) ++i;  // skip its value too
      continue;
    }
    text += " " + argument;
  }
  return text;
}

/// The settings of the run parsed by `app` (`command` "restore" or "eval"; argv[2...] are its arguments).
inline RunSettings run_settings(const CLI::App& app, const std::string& command, int argc, char** argv,
                                int64_t batches, std::vector<std::string> units) {
  RunSettings settings{command,
                       app.config_to_str(false, false),
                       canonical_command(app, command, argc, argv),
                       {},
                       batches,
                       std::move(units)};
  for (const auto* option : app.get_options()) {
    const auto name = option->get_name();
    if (!changes_outputs(name)) continue;
    std::string value = option->get_default_str();
    if (option->count() > 0) {
      value.clear();
      for (const auto& result : option->results()) value += (value.empty() ? "" : ",") + result;
    }
    // A CUDA run draws other sampling noise than a CPU run; which CUDA device does not matter.
    if (name == "--device") value = value.starts_with("cuda") ? "cuda" : value;
    settings.identity.push_back(name + "=" + value);
  }
  return settings;
}

/// An output folder of `restore` or `eval`. Without --force, nothing there is replaced: a run into a folder
/// that holds another run's files stops before it starts, unless --resume continues that run (same
/// settings). With --force the new outputs are written into `.diffpost/staging` and moved over the old ones
/// only when the run is complete, so an interrupted run leaves the folder as it was. Several shards may
/// write into one folder at once; each batch's outputs are written before its record, so a batch with a
/// valid record is complete.
class RunFolder {
 public:
  RunFolder(fs::path out, RunSettings settings, Shard shard, bool force, bool resume)
      : out_(std::move(out)),
        settings_(std::move(settings)),
        shard_(std::move(shard)),
        force_(force),
        resume_(resume) {
    if (force_ && resume_) throw UsageError("--force and --resume exclude each other: --force starts over");
    if (force_ && shard_.count > 1)
      throw UsageError(
          fmt::format("--force cannot be combined with sharding ({}): shards share the folder; "
                      "empty it first, or use --resume",
                      shard_.origin));
    std::error_code error;
    fs::create_directories(meta(), error);
    if (error)
      throw UsageError(fmt::format("cannot create output folder '{}': {}", out_.string(), error.message()));
    const auto probe = meta() / fmt::format("write-test-{}", static_cast<long>(::getpid()));
    {
      std::ofstream test(probe);
      if (!test.good()) throw UsageError(fmt::format("output folder '{}' is not writable", out_.string()));
    }
    fs::remove(probe, error);
    if (force_) {
      work_ = meta() / fmt::format("staging-{}", static_cast<long>(::getpid()));
      fs::remove_all(work_, error);
      fs::create_directories(work_ / ".diffpost", error);
      if (error) throw UsageError(fmt::format("cannot create '{}': {}", work_.string(), error.message()));
      const auto text = settings_text();
      diffpost::detail::write_file_atomically(work_ / ".diffpost" / "run.yaml", true, "diffpost", "",
                                              [&](std::ostream& stream) { stream << text; });
    } else {
      work_ = out_;
      claim_settings();
    }
  }

  /// The run in `out` as its run.yaml describes it, for `diffpost merge` (nothing is written).
  static RunFolder existing(const fs::path& out) {
    const auto path = out / ".diffpost" / "run.yaml";
    std::error_code error;
    if (!fs::is_regular_file(path, error))
      throw UsageError(
          fmt::format("'{}' holds no diffpost run to merge ({} is missing)", out.string(), path.string()));
    return RunFolder(out, read_run_settings(path));
  }

  /// Where this run writes (the output folder, or the staging folder under --force).
  [[nodiscard]] const fs::path& dir() const noexcept { return work_; }
  [[nodiscard]] const fs::path& out() const noexcept { return out_; }
  [[nodiscard]] const Shard& shard() const noexcept { return shard_; }
  [[nodiscard]] const RunSettings& settings() const noexcept { return settings_; }
  [[nodiscard]] bool resuming() const noexcept { return resume_; }

  /// The record of batch `batch` of `unit`.
  [[nodiscard]] fs::path record_path(const std::string& unit, int64_t batch) const {
    return work_ / ".diffpost" / "records" / unit / fmt::format("batch-{:06}.pt", batch);
  }

  /// The record of a finished batch whose files are all intact, or nullopt (never run, interrupted, or a
  /// file changed or truncated since: then the batch is done again).
  [[nodiscard]] std::optional<StateDict> finished(const std::string& unit, int64_t batch) const {
    const auto path = record_path(unit, batch);
    std::error_code error;
    if (!fs::is_regular_file(path, error)) return std::nullopt;
    StateDict record;
    try {
      record = read_state_dict(path);
    } catch (const c10::Error&) {
      return std::nullopt;
    }
    for (const auto& [key, value] : record) {
      if (!key.starts_with("file:")) continue;
      const auto checksum = file_checksum(work_ / key.substr(5));
      if (!checksum || value.numel() != 2 || checksum->first != value[0].item<int64_t>() ||
          checksum->second != value[1].item<int64_t>())
        return std::nullopt;
    }
    return record;
  }

  /// Writes the record of a finished batch: `record` plus the checksum of each of `files` (relative to
  /// `dir()`), which must exist.
  void finish(const std::string& unit, int64_t batch, StateDict record,
              const std::vector<std::string>& files) const {
    for (const auto& file : files) {
      const auto checksum = file_checksum(work_ / file);
      TORCH_CHECK(checksum.has_value(), "cannot read back '", (work_ / file).string(), "'");
      record.insert("file:" + file, torch::tensor({checksum->first, checksum->second}, torch::kLong));
    }
    record.insert("shard", torch::tensor({shard_.index, shard_.count}, torch::kLong));
    const auto path = record_path(unit, batch);
    fs::create_directories(path.parent_path());
    save_state_dict(record, path, SaveOptions{}.overwrite(true));
  }

  /// Checks that every batch of every unit has a record, written by one shard plan; names the missing or
  /// overlapping shards otherwise.
  void check_complete() const {
    std::set<int64_t> counts;
    std::vector<std::string> missing;
    for (const auto& unit : settings_.units) {
      for (int64_t batch = 0; batch < settings_.batches; ++batch) {
        const auto record = finished(unit, batch);
        if (!record) {
          missing.push_back(fmt::format("{} batch {}", unit, batch));
          continue;
        }
        const auto* shard = record->find("shard");
        if (shard && shard->numel() == 2) counts.insert(shard->data_ptr<int64_t>()[1]);
      }
    }
    if (counts.size() > 1)
      throw UsageError(
          fmt::format("'{}' holds batches of shard plans with different shard counts ({}): the shards "
                      "overlap; rerun into an empty folder",
                      out_.string(), fmt::join(counts, " and ")));
    if (!missing.empty()) {
      std::set<std::string> shards;
      const int64_t count = counts.empty() ? 1 : *counts.begin();
      for (const auto& unit : settings_.units)
        for (int64_t batch = 0; batch < settings_.batches; ++batch)
          if (!finished(unit, batch)) shards.insert(fmt::format("{}/{}", batch % count, count));
      throw UsageError(fmt::format(
          "'{}' is incomplete: {} of {} batches have no valid record ({}{}); run shard(s) "
          "{} (with --resume) first",
          out_.string(), missing.size(), settings_.batches * static_cast<int64_t>(settings_.units.size()),
          fmt::join(missing.begin(), missing.begin() + std::min<size_t>(missing.size(), 4), ", "),
          missing.size() > 4 ? ", ..." : "", fmt::join(shards, ", ")));
    }
  }

  /// Under --force: moves the staged outputs over the old ones (signals are held back meanwhile, so the
  /// folder is never left half old, half new). Otherwise nothing to do.
  void commit() const {
    if (!force_) return;
    sigset_t block, previous;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &previous);
    std::error_code error;
    fs::remove_all(out_ / ".diffpost" / "records", error);
    for (auto it = fs::recursive_directory_iterator(work_); it != fs::recursive_directory_iterator(); ++it) {
      const auto relative = fs::relative(it->path(), work_);
      const auto target = out_ / relative;
      if (it->is_directory()) {
        fs::create_directories(target, error);
        continue;
      }
      fs::rename(it->path(), target, error);
      if (error) {
        pthread_sigmask(SIG_SETMASK, &previous, nullptr);
        throw UsageError(fmt::format("cannot move '{}' to '{}': {}", it->path().string(), target.string(),
                                     error.message()));
      }
    }
    fs::remove_all(work_, error);
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  }

  /// After an interruption under --force: drops the staged outputs, leaving the folder as it was.
  void abandon() const {
    if (!force_) return;
    std::error_code error;
    fs::remove_all(work_, error);
  }

 private:
  RunFolder(fs::path out, RunSettings settings)
      : out_(out), work_(std::move(out)), settings_(std::move(settings)), force_(false), resume_(true) {}

  [[nodiscard]] fs::path meta() const { return out_ / ".diffpost"; }

  [[nodiscard]] std::string settings_text() const {
    YAML::Emitter yaml;
    yaml << YAML::BeginMap;
    yaml << YAML::Key << "command" << YAML::Value << settings_.command;
    yaml << YAML::Key << "settings" << YAML::Value << YAML::Literal << settings_.settings;
    yaml << YAML::Key << "command_line" << YAML::Value << settings_.command_line;
    yaml << YAML::Key << "batches" << YAML::Value << settings_.batches;
    yaml << YAML::Key << "units" << YAML::Value << YAML::Flow << settings_.units;
    yaml << YAML::Key << "identity" << YAML::Value << settings_.identity;
    yaml << YAML::EndMap;
    return std::string(yaml.c_str()) + "\n";
  }

  /// Writes .diffpost/run.yaml, or checks that the run there is this one: --resume and other shards must
  /// continue the same run.
  void claim_settings() const {
    const auto path = meta() / "run.yaml";
    const auto text = settings_text();
    std::error_code error;
    if (!fs::exists(path, error)) {
      try {
        diffpost::detail::write_file_atomically(path, false, "diffpost", "",
                                                [&](std::ostream& out) { out << text; });
        return;
      } catch (const c10::Error&) {
        // Another shard wrote it first: compare below.
      }
    }
    const auto existing = read_run_settings(path);
    if (existing.identity != settings_.identity || existing.command != settings_.command) {
      std::string difference = "the command differs";
      for (size_t i = 0; i < std::min(existing.identity.size(), settings_.identity.size()); ++i) {
        if (existing.identity[i] != settings_.identity[i]) {
          difference = fmt::format("it has {}, this run {}", existing.identity[i], settings_.identity[i]);
          break;
        }
      }
      throw UsageError(
          fmt::format("'{}' holds another run ({}); choose another --out, or --force to replace it",
                      out_.string(), difference));
    }
    if (shard_.count == 1 && !resume_)
      throw UsageError(fmt::format(
          "'{}' already holds this run; pass --resume to finish it, or --force to redo it", out_.string()));
  }

 public:
  /// Reads a run.yaml.
  static RunSettings read_run_settings(const fs::path& path) {
    try {
      const auto yaml = YAML::LoadFile(path.string());
      RunSettings settings;
      settings.command = yaml["command"].as<std::string>();
      settings.settings = yaml["settings"].as<std::string>();
      settings.command_line = yaml["command_line"].as<std::string>();
      settings.batches = yaml["batches"].as<int64_t>();
      settings.units = yaml["units"].as<std::vector<std::string>>();
      settings.identity = yaml["identity"].as<std::vector<std::string>>();
      return settings;
    } catch (const YAML::Exception& e) {
      throw UsageError(fmt::format("'{}' is not a diffpost run description: {}", path.string(), e.what()));
    }
  }

 private:
  fs::path out_;
  fs::path work_;
  RunSettings settings_;
  Shard shard_;
  bool force_;
  bool resume_;
};

/// Runs this process's batches in `folder` with interrupts caught: `work()` does them and returns how many
/// finished ones it kept (--resume); then a single process makes the summaries with `finalize()` (its exit
/// status) and commits, while a shard says how to merge. On SIGINT/SIGTERM the staging of --force is
/// dropped and the Interrupted error says what is left.
template <class Work, class Finalize>
int run_batches(const RunFolder& folder, bool force, Work&& work, Finalize&& finalize) {
  InterruptGuard interrupts;
  const auto& shard = folder.shard();
  try {
    const int64_t skipped = work();
    if (skipped > 0) fmt::print("resumed: {} finished batch(es) kept\n", skipped);
    if (shard.count > 1) {
      fmt::print("shard {} done ({}); when every shard is done: diffpost merge {}\n", shard.text(),
                 shard.origin, folder.out().string());
      return 0;
    }
    const int status = finalize();
    folder.commit();
    return status;
  } catch (const Interrupted& e) {
    folder.abandon();
    throw Interrupted(
        fmt::format("{}: {}", e.what(),
                    force ? fmt::format("'{}' is as it was", folder.out().string())
                          : std::string("the finished batches are kept; rerun with --resume to finish")));
  }
}

}  // namespace diffpost::cli
