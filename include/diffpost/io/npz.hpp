// numpy's .npz archives (a zip of .npy arrays, as numpy.savez and numpy.savez_compressed write them), read
// and written without Python, and the FID statistics files of pytorch-fid (mseitzer/pytorch-fid,
// fid_score.py: `np.savez_compressed(path, mu=mu, sigma=sigma)`, read back with `np.load(path)["mu"]`,
// `["sigma"]`), which is how published dataset statistics are shared. The zip container is
// io/detail/zip_archive.hpp's (stored and deflated records), the arrays are parsed by io/detail/npy.hpp; see
// docs/metrics.md.
#pragma once

#include <torch/torch.h>

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/detail/atomic_file.hpp>
#include <diffpost/io/detail/npy.hpp>
#include <diffpost/io/detail/zip_archive.hpp>

#include <fmt/format.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

namespace diffpost {

/// Reads every array of the .npz archive at `path` (numpy.savez or savez_compressed; stored or deflated
/// records, zip64 included) into a StateDict, in the archive's order, each under its name without ".npy", as
/// a contiguous CPU tensor of its numpy dtype and shape (float16/32/64, int8/16/32/64, uint8, bool,
/// complex64/128; big-endian and Fortran-ordered arrays converted). Throws c10::Error naming the path, and
/// the array where there is one, when the file is missing, not a zip archive, corrupt or truncated, holds a
/// record that is not a .npy array, an object array (pickled Python objects, never read), a structured or
/// unsupported dtype, or an array whose data does not match its header.
inline StateDict read_npz(const std::filesystem::path& path) {
  const std::string context = "npz file " + detail::quoted(path);
  std::error_code error;
  TORCH_CHECK(std::filesystem::exists(path, error), context, " does not exist");
  TORCH_CHECK(std::filesystem::is_regular_file(path, error), context, " is not a regular file");
  {
    std::ifstream probe(path, std::ios::binary);
    TORCH_CHECK(probe.good(), context, " cannot be opened for reading");
    std::array<char, 4> head{};
    probe.read(head.data(), 4);
    const std::string_view first(head.data(), static_cast<size_t>(probe.gcount()));
    TORCH_CHECK(first != std::string_view("PK\x05\x06", 4), context,
                " is an empty zip archive: it holds no arrays");
    TORCH_CHECK(first == std::string_view("PK\x03\x04", 4), context,
                " is not a .npz archive: it does not start like a zip file (numpy.savez writes zip files; a "
                "single array saved by numpy.save is a .npy file)");
  }
  detail::ZipArchiveReader archive(path, context, detail::ZipLayout::flat);
  StateDict arrays(detail::quoted(path));
  for (const auto& record : archive.records()) {
    constexpr std::string_view suffix = ".npy";
    const bool is_array = record.name.size() > suffix.size() && record.name.ends_with(suffix);
    TORCH_CHECK(is_array, context, " holds the record '", record.name,
                "', which is not a .npy array (numpy.savez names every array <name>.npy)");
    const auto name = record.name.substr(0, record.name.size() - suffix.size());
    TORCH_CHECK(!arrays.contains(name), context, " holds array '", name, "' twice");
    const auto bytes = archive.read_string(record);
    arrays.insert(name, detail::decode_npy(bytes, fmt::format("{} array '{}'", context, name)));
  }
  return arrays;
}

/// Writes `arrays` to `path` as numpy.savez does (one stored `<name>.npy` record per array, .npy format
/// 1.0, little-endian, C order), so that `numpy.load(path)[name]` returns each one. Tensors are written from
/// the CPU with their dtype (float16/32/64, int8/16/32/64, uint8, bool, complex64/128; others are refused).
/// The file appears complete or not at all; an existing file is replaced only with
/// `SaveOptions{}.overwrite(true)`. Throws c10::Error on an empty or unusable name or an unsupported dtype.
inline void write_npz(const std::filesystem::path& path, const StateDict& arrays,
                      const SaveOptions& options = {}) {
  TORCH_CHECK(!arrays.empty(), "write_npz: no arrays to write to ", detail::quoted(path));
  std::vector<std::string> encoded;
  encoded.reserve(arrays.size());
  for (const auto& [name, tensor] : arrays) {
    TORCH_CHECK(!name.empty() && name.find('\0') == std::string::npos && name.find('/') == std::string::npos,
                "write_npz: array name '", name, "' cannot be a record name (empty, or holds '/' or NUL)");
    TORCH_CHECK(tensor.defined(), "write_npz: array '", name, "' is an undefined tensor");
    encoded.push_back(detail::encode_npy(tensor));
  }
  detail::write_file_atomically(path, options.overwrite(), "write_npz",
                                "pass SaveOptions{}.overwrite(true) to replace it", [&](std::ostream& file) {
                                  detail::ZipArchiveWriter writer(file, "");
                                  size_t i = 0;
                                  for (const auto& [name, tensor] : arrays) {
                                    writer.write_record(name + ".npy", encoded[i].data(), encoded[i].size());
                                    ++i;
                                  }
                                  writer.finish();
                                });
}

/// The arrays of a pytorch-fid statistics file: `mu` [D] and `sigma` [D, D], float64 on the CPU. Build the
/// metric's GaussianStatistics from them with `GaussianStatistics::from_tensors(mu, sigma)`
/// (metrics/frechet.hpp).
struct FidStatisticsArrays {
  torch::Tensor mu;     ///< [D] feature mean
  torch::Tensor sigma;  ///< [D, D] feature covariance
};

/// Reads the FID statistics in the .npz file at `path`, as pytorch-fid's `compute_statistics_of_path` does
/// for a path ending in .npz: the arrays `mu` [D] and `sigma` [D, D] (floating point, converted to float64;
/// other arrays are ignored, as pytorch-fid ignores them). Throws c10::Error naming the path when an array is
/// missing, of the wrong shape or type, or holds NaN or infinite values, and for every read_npz error.
inline FidStatisticsArrays read_fid_statistics(const std::filesystem::path& path) {
  const auto arrays = read_npz(path);
  const std::string context = "FID statistics file " + detail::quoted(path);
  const auto* mu = arrays.find("mu");
  const auto* sigma = arrays.find("sigma");
  TORCH_CHECK(mu != nullptr && sigma != nullptr, context, " lacks the array '",
              mu == nullptr ? "mu" : "sigma",
              "' (it holds: ", arrays.empty() ? std::string("nothing") : c10::Join(", ", arrays.keys()),
              "); pytorch-fid writes them with python -m pytorch_fid --save-stats DIR FILE.npz");
  TORCH_CHECK(at::isFloatingType(mu->scalar_type()) && at::isFloatingType(sigma->scalar_type()), context,
              ": 'mu' and 'sigma' must be floating-point arrays, got ", mu->scalar_type(), " and ",
              sigma->scalar_type());
  TORCH_CHECK(mu->dim() == 1 && mu->size(0) >= 1, context, ": 'mu' has shape ", mu->sizes(),
              ", expected [D] (2048 for Inception pool3 features)");
  TORCH_CHECK(sigma->dim() == 2 && sigma->size(0) == mu->size(0) && sigma->size(1) == mu->size(0), context,
              ": 'sigma' has shape ", sigma->sizes(), " but 'mu' has ", mu->size(0), " entries; expected [",
              mu->size(0), ", ", mu->size(0), "]");
  FidStatisticsArrays statistics{mu->to(torch::kFloat64), sigma->to(torch::kFloat64)};
  TORCH_CHECK(torch::isfinite(statistics.mu).all().item<bool>() &&
                  torch::isfinite(statistics.sigma).all().item<bool>(),
              context, ": 'mu' or 'sigma' holds NaN or infinite values");
  return statistics;
}

/// Writes FID statistics `mu` [D] and `sigma` [D, D] (any floating dtype and device; written as float64) to
/// `path` in pytorch-fid's layout (arrays `mu` and `sigma`), readable by `python -m pytorch_fid FILE.npz DIR`
/// and by read_fid_statistics. Replaces an existing file only with `SaveOptions{}.overwrite(true)`
/// (pytorch-fid's --save-stats refuses to). Throws c10::Error naming the shapes when they do not fit.
inline void write_fid_statistics(const std::filesystem::path& path, const torch::Tensor& mu,
                                 const torch::Tensor& sigma, const SaveOptions& options = {}) {
  TORCH_CHECK(mu.defined() && sigma.defined() && mu.dim() == 1 && sigma.dim() == 2 &&
                  sigma.size(0) == mu.size(0) && sigma.size(1) == mu.size(0) && mu.size(0) >= 1,
              "write_fid_statistics: expected mu [D] and sigma [D, D], got ",
              mu.defined() ? c10::str(mu.sizes()) : std::string("undefined"), " and ",
              sigma.defined() ? c10::str(sigma.sizes()) : std::string("undefined"));
  TORCH_CHECK(at::isFloatingType(mu.scalar_type()) && at::isFloatingType(sigma.scalar_type()),
              "write_fid_statistics: mu and sigma must be floating point, got ", mu.scalar_type(), " and ",
              sigma.scalar_type());
  StateDict arrays;
  arrays.insert("mu", mu.detach().to(torch::kCPU, torch::kFloat64));
  arrays.insert("sigma", sigma.detach().to(torch::kCPU, torch::kFloat64));
  write_npz(path, arrays, options);
}

}  // namespace diffpost
