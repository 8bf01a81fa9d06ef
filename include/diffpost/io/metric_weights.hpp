// The weights of the perceptual metrics, read from the files Python users already have and loaded strictly:
// torchvision's AlexNet and VGG16 (`alexnet-owt-7be5be79.pth`, `vgg16-397923af.pth`) and lpips's linear
// heads (`weights/v0.1/alex.pth`, `vgg.pth`) for LPIPS (metrics/lpips.hpp), pytorch-fid's
// `pt_inception-2015-12-05-6726825d.pth` for FID and KID (metrics/fid_inception.hpp). Files are found where
// torch.hub and pip put them, or given by path; nothing is ever downloaded. The Python packages load the
// lpips heads with strict=False, so a wrong file silently leaves random heads (PerceptualSimilarity issue
// #106); here every load checks every key and shape and names what does not match. docs/metrics.md.
#pragma once

#include <torch/torch.h>

#include <diffpost/io/checkpoint.hpp>
#include <diffpost/metrics/fid_inception.hpp>
#include <diffpost/metrics/lpips.hpp>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>
#include <vector>

namespace diffpost {

/// torchvision's AlexNet weights (`torchvision.models.alexnet(weights="IMAGENET1K_V1")`), the LPIPS 'alex'
/// backbone.
inline constexpr const char* kAlexNetWeightsFile = "alexnet-owt-7be5be79.pth";
/// torchvision's VGG16 weights (`torchvision.models.vgg16(weights="IMAGENET1K_V1")`), the LPIPS 'vgg'
/// backbone.
inline constexpr const char* kVgg16WeightsFile = "vgg16-397923af.pth";
/// pytorch-fid's FID Inception weights (ported from TensorFlow's 2015-12-05 graph).
inline constexpr const char* kFidInceptionWeightsFile = "pt_inception-2015-12-05-6726825d.pth";

/// The folder torch.hub downloads weights into, as `torch.hub.get_dir()` + "/checkpoints" computes it:
/// `$TORCH_HOME/hub/checkpoints`, else `$XDG_CACHE_HOME/torch/hub/checkpoints`, else
/// `~/.cache/torch/hub/checkpoints` ($HOME). torchvision and pytorch-fid keep their downloads there.
inline std::filesystem::path torch_hub_checkpoints_folder() {
  const auto from_env = [](const char* name) -> std::string {
    const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once, nobody sets it here
    return value != nullptr ? std::string(value) : std::string();
  };
  std::filesystem::path torch_home;
  if (auto home = from_env("TORCH_HOME"); !home.empty()) {
    torch_home = home;
  } else if (auto cache = from_env("XDG_CACHE_HOME"); !cache.empty()) {
    torch_home = std::filesystem::path(cache) / "torch";
  } else {
    torch_home = std::filesystem::path(from_env("HOME")) / ".cache" / "torch";
  }
  return torch_home / "hub" / "checkpoints";
}

/// The file name of the backbone weights of `network` in torch.hub's folder.
inline const char* lpips_backbone_weights_file(LpipsNetwork network) {
  return network == LpipsNetwork::alex ? kAlexNetWeightsFile : kVgg16WeightsFile;
}

/// The places pip installs lpips's heads (`<site-packages>/lpips/weights/v0.1/<alex|vgg>.pth`: the package
/// ships them), in the order they are searched: the active virtual environment ($VIRTUAL_ENV) and conda
/// environment ($CONDA_PREFIX), the user's site-packages (~/.local), /usr/local and /usr; every python3.*
/// folder of each, site-packages and dist-packages (Debian).
inline std::vector<std::filesystem::path> lpips_heads_candidates(LpipsNetwork network) {
  namespace fs = std::filesystem;
  const auto from_env = [](const char* name) -> std::string {
    const char* value = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once, nobody sets it here
    return value != nullptr ? std::string(value) : std::string();
  };
  std::vector<fs::path> prefixes;
  for (const char* variable : {"VIRTUAL_ENV", "CONDA_PREFIX"}) {
    if (auto prefix = from_env(variable); !prefix.empty()) prefixes.emplace_back(prefix);
  }
  if (auto home = from_env("HOME"); !home.empty()) prefixes.push_back(fs::path(home) / ".local");
  prefixes.emplace_back("/usr/local");
  prefixes.emplace_back("/usr");
  const auto tail =
      fs::path("lpips") / "weights" / "v0.1" / (std::string(lpips_network_name(network)) + ".pth");
  std::vector<fs::path> candidates;
  for (const auto& prefix : prefixes) {
    std::error_code error;
    const auto lib = prefix / "lib";
    if (!fs::is_directory(lib, error)) continue;
    std::vector<fs::path> pythons;
    for (const auto& entry : fs::directory_iterator(lib, error)) {
      const auto name = entry.path().filename().string();
      if (name == "python3" || name.rfind("python3.", 0) == 0) pythons.push_back(entry.path());
    }
    std::sort(pythons.begin(), pythons.end());
    for (const auto& python : pythons) {
      for (const char* packages : {"site-packages", "dist-packages"})
        candidates.push_back(python / packages / tail);
    }
  }
  return candidates;
}

namespace detail {

inline bool is_regular_file(const std::filesystem::path& path) {
  std::error_code error;
  return std::filesystem::is_regular_file(path, error);
}

}  // namespace detail

/// The path of `file_name` in torch_hub_checkpoints_folder(), for the weights of `what` (e.g. "the LPIPS
/// 'alex' backbone"). Throws c10::Error, one line, when it is not there: the file, the folder searched, how
/// Python fetches it (`python_command`) and `how_to_pass` ("pass its path explicitly" by default; a program
/// names its flag).
inline std::filesystem::path find_torch_hub_weights(
    const std::string& file_name, const std::string& what, const std::string& python_command,
    const std::string& how_to_pass = "pass its path explicitly") {
  const auto folder = torch_hub_checkpoints_folder();
  auto path = folder / file_name;
  TORCH_CHECK(detail::is_regular_file(path), "the weights of ", what, " ('", file_name, "') are not in ",
              folder.string(), " ($TORCH_HOME/hub/checkpoints, where torch.hub keeps them; ", python_command,
              " downloads them there); ", how_to_pass, ". diffpost never downloads.");
  return path;
}

/// torchvision's backbone weights for LPIPS with `network`, from torch.hub's folder (find_torch_hub_weights).
inline std::filesystem::path find_lpips_backbone_weights(
    LpipsNetwork network, const std::string& how_to_pass = "pass its path explicitly") {
  const bool alex = network == LpipsNetwork::alex;
  return find_torch_hub_weights(
      lpips_backbone_weights_file(network),
      std::string("the LPIPS '") + lpips_network_name(network) + "' backbone",
      alex ? "python3 -c 'import torchvision; torchvision.models.alexnet(weights=\"IMAGENET1K_V1\")'"
           : "python3 -c 'import torchvision; torchvision.models.vgg16(weights=\"IMAGENET1K_V1\")'",
      how_to_pass);
}

/// lpips's linear heads for `network`, from the lpips package that pip installed (lpips_heads_candidates).
/// Throws c10::Error, one line, when none is found: the file, the places searched, where lpips keeps it and
/// `how_to_pass`.
inline std::filesystem::path find_lpips_heads_weights(
    LpipsNetwork network, const std::string& how_to_pass = "pass its path explicitly") {
  const auto candidates = lpips_heads_candidates(network);
  for (const auto& candidate : candidates) {
    if (detail::is_regular_file(candidate)) return candidate;
  }
  std::string prefixes;
  for (const auto& candidate : candidates) {
    // <prefix>/lib/python3.X/<packages>/lpips/weights/v0.1/<net>.pth: name the python3.X folders searched.
    const auto folder =
        candidate.parent_path().parent_path().parent_path().parent_path().parent_path().string();
    if (prefixes.find(folder) == std::string::npos) prefixes += (prefixes.empty() ? "" : ", ") + folder;
  }
  TORCH_CHECK(false, "the LPIPS '", lpips_network_name(network), "' linear heads (lpips/weights/v0.1/",
              lpips_network_name(network),
              ".pth, shipped inside the lpips Python package: pip install lpips) "
              "were not found in the site-packages of ",
              prefixes.empty() ? std::string("any python3 installation") : prefixes, "; ", how_to_pass,
              " (python3 -c 'import lpips, os; print(os.path.dirname(lpips.__file__))' shows the folder). "
              "diffpost never downloads.");
  return {};
}

/// pytorch-fid's Inception weights, from torch.hub's folder (find_torch_hub_weights).
inline std::filesystem::path find_fid_inception_weights(
    const std::string& how_to_pass = "pass its path explicitly") {
  return find_torch_hub_weights(kFidInceptionWeightsFile, "the FID Inception",
                                "the first run of python3 -m pytorch_fid DIR1 DIR2", how_to_pass);
}

namespace detail {

/// The keys of torchvision's classifier in `network`'s weight file: present in torchvision's files, not
/// part of LPIPS.
inline const std::unordered_set<std::string>& torchvision_classifier_keys(LpipsNetwork network) {
  static const std::unordered_set<std::string> alex = {"classifier.1.weight", "classifier.1.bias",
                                                       "classifier.4.weight", "classifier.4.bias",
                                                       "classifier.6.weight", "classifier.6.bias"};
  static const std::unordered_set<std::string> vgg = {"classifier.0.weight", "classifier.0.bias",
                                                      "classifier.3.weight", "classifier.3.bias",
                                                      "classifier.6.weight", "classifier.6.bias"};
  return network == LpipsNetwork::alex ? alex : vgg;
}

/// A module holding the given children of another under their own names, so that load_state_dict matches
/// (and names in its errors) exactly their keys, e.g. `features.0.weight`, and fills the originals.
inline std::shared_ptr<torch::nn::Module> view_of_children(torch::nn::Module& module,
                                                           const std::vector<std::string>& names) {
  auto view = std::make_shared<torch::nn::Module>();
  const auto children = module.named_children();
  for (const auto& name : names) view->register_module(name, children[name]);
  return view;
}

}  // namespace detail

/// Loads torchvision's backbone weights `state` (the state dict of `torchvision.models.alexnet()` or
/// `vgg16()`, as in alexnet-owt-7be5be79.pth / vgg16-397923af.pth) into `lpips`: every `features.<index>`
/// weight and bias LPIPS uses must be there with its shape; torchvision's `classifier.*` tensors may be there
/// and are ignored; any other key is refused. Nothing is copied unless all of it matches. Throws c10::Error
/// naming the file, the first mismatch and the missing, unexpected and mis-shaped keys.
inline void load_lpips_backbone(Lpips& lpips, const StateDict& state) {
  const auto& classifier = detail::torchvision_classifier_keys(lpips->network());
  StateDict features(state.origin());
  for (const auto& [name, tensor] : state) {
    if (!classifier.contains(name)) features.insert(name, tensor);
  }
  auto view = detail::view_of_children(*lpips, {"features"});
  const std::string expected =
      lpips->network() == LpipsNetwork::alex ? kAlexNetWeightsFile : kVgg16WeightsFile;
  load_state_dict(*view, features,
                  LoadOptions{}.describe_file([expected, network = lpips->network()](const StateDict&) {
                    return std::string("LPIPS '") + lpips_network_name(network) + "' expects torchvision's " +
                           expected + " (features.* used, classifier.* ignored)";
                  }));
}

/// `load_lpips_backbone(lpips, read_state_dict(path))`.
inline void load_lpips_backbone(Lpips& lpips, const std::filesystem::path& path) {
  load_lpips_backbone(lpips, read_state_dict(path));
}

/// Loads lpips's linear heads `state` (`lin0.model.1.weight` ... `lin4.model.1.weight`, [1, C, 1, 1], as in
/// lpips's weights/v0.1/alex.pth and vgg.pth, legacy torch.save files) into `lpips`: exactly those five keys
/// with their shapes, nothing else. lpips itself loads them with strict=False, which turns a wrong file into
/// random heads; here it is an error naming the file and the missing, unexpected and mis-shaped keys.
inline void load_lpips_heads(Lpips& lpips, const StateDict& state) {
  auto view = detail::view_of_children(*lpips, {"lin0", "lin1", "lin2", "lin3", "lin4"});
  load_state_dict(*view, state, LoadOptions{}.describe_file([network = lpips->network()](const StateDict&) {
    return std::string("LPIPS '") + lpips_network_name(network) + "' expects lpips's weights/v0.1/" +
           lpips_network_name(network) + ".pth (lin0.model.1.weight ... lin4.model.1.weight)";
  }));
}

/// `load_lpips_heads(lpips, read_state_dict(path))`.
inline void load_lpips_heads(Lpips& lpips, const std::filesystem::path& path) {
  load_lpips_heads(lpips, read_state_dict(path));
}

/// Where `load_lpips` reads from; an empty path means "find it" (find_lpips_backbone_weights,
/// find_lpips_heads_weights).
struct LpipsWeightPaths {
  TORCH_ARG(std::filesystem::path, backbone) = {};
  TORCH_ARG(std::filesystem::path, heads) = {};
};

/// LPIPS with `network`, its weights loaded strictly from `paths` (or found where torch.hub and pip put
/// them), on the CPU in float32; move it with `->to(device)`. Throws c10::Error when a file is missing (one
/// line saying where it was looked for) or does not match.
inline Lpips load_lpips(LpipsNetwork network, const LpipsWeightPaths& paths = {}) {
  Lpips lpips(network);
  load_lpips_backbone(lpips,
                      paths.backbone().empty() ? find_lpips_backbone_weights(network) : paths.backbone());
  load_lpips_heads(lpips, paths.heads().empty() ? find_lpips_heads_weights(network) : paths.heads());
  return lpips;
}

/// Loads pytorch-fid's Inception weights `state` (pt_inception-2015-12-05-6726825d.pth: the state dict of
/// torchvision's Inception3 with 1008 classes and no AuxLogits) into `inception`: every convolution and
/// batch-norm tensor with its shape; `fc.weight` [1008, 2048] and `fc.bias` may be there and are ignored
/// (a 1000-class fc is torchvision's ImageNet Inception, whose features are not FID's, and is refused);
/// `*.num_batches_tracked` may be absent (files saved before PyTorch 0.4.1 lack it, and batch norm at
/// evaluation never reads it). Any other key is refused. Nothing is copied unless all of it matches.
inline void load_fid_inception_weights(FidInceptionV3& inception, const StateDict& state) {
  const std::string context = state.origin().empty() ? std::string("the state dict") : state.origin();
  if (const auto* fc = state.find("fc.weight")) {
    TORCH_CHECK(fc->dim() == 2 && fc->size(0) == 1008, context, " has an fc layer of shape ", fc->sizes(),
                ": not pytorch-fid's FID Inception (1008 classes, ", kFidInceptionWeightsFile,
                "); torchvision's ImageNet Inception v3 gives different features and FIDs");
  }
  StateDict filtered(state.origin());
  for (const auto& [name, tensor] : state) {
    if (name != "fc.weight" && name != "fc.bias") filtered.insert(name, tensor);
  }
  const auto model = diffpost::state_dict(*inception);
  for (const auto& [name, tensor] : model) {
    constexpr std::string_view counter = "num_batches_tracked";
    if (name.ends_with(counter) && !filtered.contains(name)) filtered.insert(name, torch::zeros_like(tensor));
  }
  load_state_dict(*inception, filtered, LoadOptions{}.describe_file([](const StateDict&) {
    return std::string("FID expects pytorch-fid's ") + kFidInceptionWeightsFile +
           " (torchvision Inception3 keys, 1008 classes, no AuxLogits)";
  }));
}

/// `load_fid_inception_weights(inception, read_state_dict(path))`.
inline void load_fid_inception_weights(FidInceptionV3& inception, const std::filesystem::path& path) {
  load_fid_inception_weights(inception, read_state_dict(path));
}

/// pytorch-fid's Inception with its weights loaded strictly from `path` (empty: find_fid_inception_weights),
/// on the CPU in float32, in evaluation mode; move it with `->to(device)`.
inline FidInceptionV3 load_fid_inception(const std::filesystem::path& path = {}) {
  FidInceptionV3 inception;
  load_fid_inception_weights(inception, path.empty() ? find_fid_inception_weights() : path);
  return inception;
}

}  // namespace diffpost
