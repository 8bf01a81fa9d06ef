// The non-uniform ("nonlinear") blur of the DPS paper as a measurement operator: the blur network of bkse
// (KernelWizard, <diffpost/models/kernel_wizard.hpp>) with the published GOPRO_wVAE.pth weights, applied with
// a kernel latent. The DPS reference (DPS2022/diffusion-posterior-sampling, guided_diffusion/measurements.py,
// `NonlinearBlurOperator`) maps x from [-1, 1] to [0, 1], runs `adaptKernel(x, k)` and maps back, clamped.
//
// This header belongs to the io component (diffpost::io, <diffpost/io.hpp>), not to the core operators of
// <diffpost/operators.hpp>: its constructors read the weight file. The network module itself is core.
#pragma once

#include <diffpost/concepts.hpp>
#include <diffpost/detail/constant_cache.hpp>
#include <diffpost/detail/operator_checks.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/models/kernel_wizard.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace diffpost {

namespace detail {

/// What a state dict that does not fit a KernelWizard looks like: the configuration its shapes show, or why
/// it is not a KernelWizard at all. Appended to load errors.
inline std::string describe_kernel_wizard_file(const StateDict& state) {
  const auto* first = state.find("feature_extractor.0.weight");
  if (first == nullptr || first->dim() != 4) {
    for (const auto& [name, tensor] : state)
      if (name.rfind("module.", 0) == 0)
        return "The file's keys start with 'module.' (saved from a DataParallel wrapper); save "
               "model.module.state_dict() instead.";
    return "The file has no 'feature_extractor.0.weight' [nf, input_nc, 3, 3]: it is not a bkse KernelWizard "
           "state dict (DPS's nonlinear blur uses GOPRO_wVAE.pth, see docs/operators.md).";
  }
  auto count = [&](const std::string& prefix, const std::string& suffix) {
    int64_t n = 0;
    for (const auto& [name, tensor] : state)
      if (name.rfind(prefix, 0) == 0 && name.size() > suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        ++n;
    return n;
  };
  std::ostringstream out;
  out << "The file's shapes say: input_nc " << first->size(1) << ", nf " << first->size(0) << ", front_RBs "
      << count("feature_extractor.", ".conv1.weight") << ", back_RBs "
      << count("recon_trunk.", ".conv1.weight") << ", extractor n_blocks "
      << count("kernel_extractor.model.", ".conv_block.1.weight");
  if (const auto* last = state.find("kernel_extractor.model.16.weight"); last != nullptr && last->dim() == 4)
    out << ", kernel extractor output " << last->size(0) << " channels (2 kernel_dim with the VAE)";
  out << "; pass KernelWizardOptions with these values if the file is right.";
  return out.str();
}

}  // namespace detail

/// The configuration of the KernelWizard whose state dict is `state`, read from its shapes: input_nc and nf
/// from `feature_extractor.0.weight` [nf, input_nc, 3, 3]; front_RBs, back_RBs and the extractor's n_blocks
/// from the residual blocks' keys; from the kernel extractor's last convolution `kernel_extractor.model.16`
/// (c outputs), use_vae unless c is 8 nf (a code without the VAE fits the adapter as it is) and kernel_dim c
/// / 2 with the VAE, c without. Only a guess for load_kernel_wizard to check strictly: a file that is not a
/// KernelWizard still fails there, by key. Fails (c10::Error) when `feature_extractor.0.weight` is absent.
inline KernelWizardOptions kernel_wizard_options_of(const StateDict& state) {
  const auto* first = state.find("feature_extractor.0.weight");
  TORCH_CHECK(first != nullptr && first->dim() == 4,
              "kernel_wizard_options_of: ", detail::describe_kernel_wizard_file(state));
  auto count = [&](const std::string& prefix, const std::string& suffix) {
    int64_t n = 0;
    for (const auto& [name, tensor] : state)
      if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size() + suffix.size() &&
          name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        ++n;
    return n;
  };
  auto options = KernelWizardOptions{}
                     .input_nc(first->size(1))
                     .nf(first->size(0))
                     .front_RBs(count("feature_extractor.", ".conv1.weight"))
                     .back_RBs(count("recon_trunk.", ".conv1.weight"))
                     .extractor_n_blocks(count("kernel_extractor.model.", ".conv_block.1.weight"));
  if (const auto* last = state.find("kernel_extractor.model.16.weight");
      last != nullptr && last->dim() == 4) {
    const int64_t code = last->size(0);
    const bool vae = code != options.latent_channels();
    options.use_vae(vae).kernel_dim(vae ? std::max<int64_t>(code / 2, 1) : code);
  }
  return options;
}

/// Reads the KernelWizard weight file at `path` (GOPRO_wVAE.pth: `torch.save(state_dict)`, zip or legacy
/// format) into a network built with `options` (with its kernel extractor, whatever
/// `options.with_kernel_extractor()` says), strictly: every key of the reference module, the kernel
/// extractor's included, must be in the file with its shape, and the file may hold nothing else; otherwise a
/// c10::Error names the first missing, unexpected or mis-shaped key and the configuration the file's shapes
/// show. Parameters are float32 on the CPU, in eval mode.
inline KernelWizard load_kernel_wizard(const std::filesystem::path& path,
                                       const KernelWizardOptions& options = {}) {
  KernelWizard network(KernelWizardOptions(options).with_kernel_extractor(true));
  load_checkpoint(network, path, LoadOptions{}.describe_file(detail::describe_kernel_wizard_file));
  network->eval();
  return network;
}

/// Reads the KernelWizard weight file at `path` in whatever configuration its shapes show
/// (kernel_wizard_options_of), strictly as load_kernel_wizard: GOPRO_wVAE.pth gives the published
/// configuration, a small test file its own. For programs that take any bkse blur network, like the tool's
/// `--operator-weights`; a library user who knows the file passes its KernelWizardOptions instead.
inline KernelWizard load_kernel_wizard_as_saved(const std::filesystem::path& path) {
  const auto state = read_state_dict(path);
  KernelWizard network(kernel_wizard_options_of(state).with_kernel_extractor(true));
  load_state_dict(network, state, LoadOptions{}.describe_file(detail::describe_kernel_wizard_file));
  network->eval();
  return network;
}

/// Writes a KernelWizard of `options` (its kernel extractor included) with the reproducible random weights of
/// fill_random_kernel_wizard(seed) to `path`, in the layout of `torch.save(model.state_dict())`, the layout
/// of GOPRO_wVAE.pth: for tests and for trying the operator without the published file. The published
/// configuration makes a 461 MB file (115,265,475 parameters; about 4 s to draw and write on the 2-core CI
/// machine); KernelWizardOptions{}.nf(4).front_RBs(1).back_RBs(1).kernel_dim(8).extractor_n_blocks(1), which
/// has every kind of layer, makes a 0.6 MB one (146,431 parameters) that takes 128 x 128 images and a latent
/// of 32 channels. An existing file is replaced only with `SaveOptions{}.overwrite(true)`.
inline void write_random_kernel_wizard(const std::filesystem::path& path, uint64_t seed,
                                       const KernelWizardOptions& options = {},
                                       const SaveOptions& save = {}) {
  KernelWizard network(KernelWizardOptions(options).with_kernel_extractor(true));
  fill_random_kernel_wizard(*network, seed);
  save_checkpoint(network, path, save);
}

/// The non-uniform blur of the DPS paper's nonlinear deblurring task, y = A(x): x in [-1, 1] mapped to [0,
/// 1], blurred by the bkse KernelWizard's `adaptKernel(x, k)` = x + recon_trunk(adapter(feature_extractor(x),
/// k)) with a kernel latent k that encodes the blur, mapped back to [-1, 1] and clamped, as the DPS
/// reference. Not linear (a ForwardOperator only); differentiable in x (DPS backpropagates through the
/// network, whose parameters do not require grad). Images are [B, C, H, W] with C the network's input_nc (3)
/// and H, W multiples of 128; the latent is [1, 512, H/128, W/128] for all images or [B, 512, H/128, W/128],
/// one per image (512 = KernelWizardOptions::latent_channels()). Dtype and device come from x: the network is
/// copied to each device and dtype once and reused (copies of the operator share these copies; thread-safe).
///
/// The kernel latent is fixed for the operator's life by default, so the measurement and every guidance
/// gradient use the same blur. The reference draws a new latent on every call (DPS issue #7), so its
/// measurement and each step's gradient use different blurs; `redrawing_latent_every_call` reproduces that,
/// for comparing with its numbers only (docs/operators.md gives the measured difference).
class NonlinearBlurOperator {
 public:
  /// The reference's latent scale: k = 1.2 N(0, I), i.e. `torch.randn(1, 512, 2, 2) * 1.2` for 256 x 256.
  static constexpr double reference_latent_scale = 1.2;

  /// The network read from `weights_path` (load_kernel_wizard: strict) with the fixed kernel latent
  /// `kernel_latent` [1 or B, 8 nf, H/128, W/128].
  NonlinearBlurOperator(const std::string& weights_path, torch::Tensor kernel_latent,
                        const KernelWizardOptions& options = {})
      : NonlinearBlurOperator(*load_kernel_wizard(weights_path, options), std::move(kernel_latent)) {}

  /// The network read from `weights_path` with one latent for height x width images drawn from `generator`
  /// as the reference draws it (draw_kernel_latent with batch 1), used for every image.
  NonlinearBlurOperator(const std::string& weights_path, int64_t height, int64_t width,
                        at::Generator& generator, const KernelWizardOptions& options = {})
      : NonlinearBlurOperator(weights_path, checked_draw(1, height, width, generator, options), options) {}

  /// A network already in memory (with or without its kernel extractor; it is copied) and a fixed latent.
  NonlinearBlurOperator(const KernelWizardImpl& network, torch::Tensor kernel_latent)
      : shared_(std::make_shared<Shared>(network)), latent_(std::move(kernel_latent)) {
    check_latent_tensor(latent_, "NonlinearBlurOperator");
    latent_ = latent_.detach();
  }

  /// The reference's behaviour, for reproducing its numbers only: a new latent (draw_kernel_latent, one per
  /// image) drawn from `generator` on every call of forward, so that no two calls apply the same blur. The
  /// generator is shared (its state advances for every copy of the operator).
  static NonlinearBlurOperator redrawing_latent_every_call(const std::string& weights_path,
                                                           at::Generator generator,
                                                           const KernelWizardOptions& options = {}) {
    return redrawing_latent_every_call(*load_kernel_wizard(weights_path, options), std::move(generator));
  }

  /// The same for a network already in memory.
  static NonlinearBlurOperator redrawing_latent_every_call(const KernelWizardImpl& network,
                                                           at::Generator generator) {
    NonlinearBlurOperator op(std::make_shared<Shared>(network));
    op.generator_ = std::move(generator);
    return op;
  }

  /// Kernel latents for `batch` images of height x width as the reference draws them,
  /// `reference_latent_scale * randn(batch, 8 nf, height / 128, width / 128)` in float32 on the generator's
  /// device; with batch 1 and a CPU generator seeded s, the numbers of `torch.manual_seed(s);
  /// torch.randn(1, 512, 2, 2) * 1.2` for 256 x 256 images.
  static torch::Tensor draw_kernel_latent(int64_t batch, int64_t height, int64_t width,
                                          at::Generator& generator, const KernelWizardOptions& options = {}) {
    return checked_draw(batch, height, width, generator, options);
  }

  /// A copy with the fixed latent `kernel_latent` (sharing this operator's network copies): e.g. one operator
  /// per image of a run, each with its own latent, from one file read.
  [[nodiscard]] NonlinearBlurOperator with_kernel_latent(const torch::Tensor& kernel_latent) const {
    NonlinearBlurOperator op(shared_);
    check_latent_tensor(kernel_latent, "NonlinearBlurOperator::with_kernel_latent");
    op.latent_ = kernel_latent.detach();
    return op;
  }

  /// A copy (sharing this operator's network copies) that draws a new latent from `generator` on every call,
  /// as redrawing_latent_every_call: the reference's behaviour without reading the file again.
  [[nodiscard]] NonlinearBlurOperator redrawing_latent_from(at::Generator generator) const {
    NonlinearBlurOperator op(shared_);
    op.generator_ = std::move(generator);
    return op;
  }

  /// y = clamp(2 G((x + 1) / 2, k) - 1, -1, 1): [B, C, H, W] -> [B, C, H, W].
  [[nodiscard]] torch::Tensor forward(const torch::Tensor& x) const {
    detail::check_image_batch(x, "NonlinearBlurOperator::forward");
    check_kernel_wizard_image(x.sizes(), options(), "NonlinearBlurOperator::forward");
    torch::Tensor latent;
    if (generator_) {
      auto generator = *generator_;
      latent =
          checked_draw(x.size(0), x.size(2), x.size(3), generator, options()).to(x.device(), x.scalar_type());
    } else {
      check_kernel_latent(latent_, x.sizes(), options(), "NonlinearBlurOperator::forward");
      latent = latent_on(x);
    }
    auto network = network_on(x);
    const auto sharp = (x + 1.0) / 2.0;  // [-1, 1] -> [0, 1]
    return (network->adapt_kernel(sharp, latent) * 2.0 - 1.0).clamp(-1.0, 1.0);
  }

  /// The blurred measurement itself: the image a user has without deblurring (as BlurOperator's).
  [[nodiscard]] torch::Tensor naive_inverse(const torch::Tensor& y) const {
    detail::check_image_batch(y, "NonlinearBlurOperator::naive_inverse");
    return y;
  }

  /// The blur keeps the shape; fails unless the network can take `image_shape` (channels, multiples of 128)
  /// and, for a fixed latent, unless the latent fits it.
  [[nodiscard]] Shape measurement_shape(const Shape& image_shape) const {
    detail::check_image_shape(image_shape, "NonlinearBlurOperator::measurement_shape");
    check_kernel_wizard_image(image_shape, options(), "NonlinearBlurOperator::measurement_shape");
    if (!generator_)
      check_kernel_latent(latent_, image_shape, options(), "NonlinearBlurOperator::measurement_shape");
    return image_shape;
  }

  /// The fixed kernel latent as given; undefined when the operator redraws it on every call.
  [[nodiscard]] const torch::Tensor& kernel_latent() const { return latent_; }

  /// Whether a new latent is drawn on every call (the reference's behaviour).
  [[nodiscard]] bool redraws_latent() const { return generator_.has_value(); }

  /// The configuration of the network.
  [[nodiscard]] const KernelWizardOptions& options() const { return shared_->options; }

  /// Network copies made so far for the devices and dtypes of the inputs (CPU float32 uses the loaded one),
  /// shared by the copies of this operator; for tests and diagnostics.
  [[nodiscard]] int64_t networks_built() const { return shared_->copies.builds(); }

 private:
  // The loaded network (without its kernel extractor, CPU float32) and its copies for other devices and
  // dtypes.
  struct Shared {
    explicit Shared(const KernelWizardImpl& source)
        : network(kernel_applier_copy(source, torch::TensorOptions().dtype(torch::kFloat32))),
          options(source.options()) {}
    KernelWizard network;
    KernelWizardOptions options;
    detail::ConstantCache<KernelWizard> copies;
  };

  explicit NonlinearBlurOperator(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

  [[nodiscard]] KernelWizard network_on(const torch::Tensor& x) const {
    if (x.is_cpu() && x.scalar_type() == torch::kFloat32) return shared_->network;
    const auto options = detail::constant_options(x);
    return shared_->copies.get({"network", {}, options},
                               [&] { return kernel_applier_copy(*shared_->network, options); });
  }

  [[nodiscard]] torch::Tensor latent_on(const torch::Tensor& x) const {
    const auto options = detail::constant_options(x);
    return latents_->get({"latent", {}, options}, [&] { return latent_.to(options); });
  }

  void check_latent_tensor(const torch::Tensor& latent, const char* who) const {
    TORCH_CHECK(latent.defined() && latent.dim() == 4 && latent.size(1) == options().latent_channels(), who,
                ": expected a kernel latent [1 or B, ", options().latent_channels(), ", H/128, W/128], got ",
                latent.defined() ? c10::str(latent.sizes()) : std::string("an undefined tensor"));
    TORCH_CHECK(at::isFloatingType(latent.scalar_type()), who,
                ": the kernel latent must be floating point, got ", latent.scalar_type());
    TORCH_CHECK(torch::isfinite(latent).all().item<bool>(), who,
                ": the kernel latent has NaN or infinite values");
  }

  static torch::Tensor checked_draw(int64_t batch, int64_t height, int64_t width, at::Generator& generator,
                                    const KernelWizardOptions& options) {
    TORCH_CHECK(batch >= 1, "NonlinearBlurOperator::draw_kernel_latent: batch must be >= 1, got ", batch);
    check_kernel_wizard_image({batch, options.input_nc(), height, width}, options,
                              "NonlinearBlurOperator::draw_kernel_latent");
    const int64_t stride = KernelWizardOptions::latent_stride;
    return at::randn({batch, options.latent_channels(), height / stride, width / stride}, generator,
                     torch::TensorOptions().dtype(torch::kFloat32).device(generator.device())) *
           reference_latent_scale;
  }

  std::shared_ptr<Shared> shared_;
  torch::Tensor latent_;
  detail::TensorCache latents_ = detail::make_tensor_cache();  // latent_ on each device and dtype
  std::optional<at::Generator> generator_;
};

static_assert(ForwardOperator<NonlinearBlurOperator> && !LinearOperator<NonlinearBlurOperator> &&
              HasNaiveInverse<NonlinearBlurOperator>);

}  // namespace diffpost
