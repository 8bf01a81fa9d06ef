// Choosing where and in which precision a program runs: device strings ("cpu", "cuda", "cuda:1") checked
// against the machine, and the numeric precision of the network (fp32, tf32, bf16, fp16) with the global
// TF32 switches it implies. What a command-line tool's `--device` and `--precision` flags need.
//
// The library itself never moves or converts anything behind the caller's back: tensors stay where they are
// made, and the model computes where its parameters live. These helpers turn a user's words into a checked
// torch::Device and dtype, with one-line errors that say what the machine has.
#pragma once

#include <torch/cuda.h>
#include <torch/torch.h>

#include <ATen/Context.h>
#include <ATen/detail/CUDAHooksInterface.h>

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

namespace diffpost {

/// True when the LibTorch at hand was built with CUDA (whether or not a GPU is present). Debian's
/// libtorch is CPU-only; the zips from pytorch.org and pip's torch come in CUDA variants.
inline bool libtorch_has_cuda() {
  return at::detail::getCUDAHooks().hasCUDART();
}

/// Parses a device string: "cpu", "cuda" (the current CUDA device) or "cuda:N". Throws a c10::Error naming
/// `what` (e.g. "--device") and the text for anything else; does not check that the device exists (see
/// `check_device`).
inline torch::Device parse_device(std::string_view text, std::string_view what = "device") {
  if (text == "cpu") return torch::kCPU;
  if (text == "cuda") return {torch::kCUDA};
  constexpr std::string_view prefix = "cuda:";
  if (text.substr(0, prefix.size()) == prefix) {
    const auto digits = text.substr(prefix.size());
    int index = -1;
    const auto* end = digits.data() + digits.size();
    const auto result = std::from_chars(digits.data(), end, index);
    if (!digits.empty() && result.ec == std::errc() && result.ptr == end && index >= 0 && index < 128)
      return {torch::kCUDA, static_cast<c10::DeviceIndex>(index)};
  }
  TORCH_CHECK(false, what, " '", text, "': expected cpu, cuda or cuda:N (N the index of a CUDA device)");
}

/// Checks that `device` can hold tensors on this machine with this LibTorch: the CPU always can; a CUDA
/// device needs a CUDA build of LibTorch and a visible GPU of that index. Throws a one-line c10::Error that
/// names `what`, the device and what the machine has, e.g. "--device cuda:3: this machine has 1 CUDA device
/// (cuda:0)". Other device types (MPS, XPU, ...) are rejected: diffpost is tested on the CPU and CUDA only.
inline void check_device(const torch::Device& device, std::string_view what = "device") {
  if (device.is_cpu()) return;
  TORCH_CHECK(device.is_cuda(), what, " ", device.str(), ": diffpost runs on cpu or cuda devices only");
  TORCH_CHECK(
      libtorch_has_cuda(), what, " ", device.str(),
      ": this LibTorch has no CUDA support (a CPU-only build, such as Debian's libtorch); use cpu, or "
      "build against a CUDA LibTorch (docs/libtorch.md)");
  // NOLINTNEXTLINE(bugprone-signed-char-misuse): a count, never negative (LibTorch 2.x: an int8 DeviceIndex)
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  TORCH_CHECK(
      count > 0, what, " ", device.str(),
      ": no CUDA device is visible (check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES); use cpu");
  const auto listing = count == 1 ? std::string("cuda:0") : "cuda:0 ... cuda:" + std::to_string(count - 1);
  TORCH_CHECK(!device.has_index() || device.index() < count, what, " ", device.str(), ": this machine has ",
              count, count == 1 ? " CUDA device (" : " CUDA devices (", listing, ")");
}

/// `parse_device` then `check_device`; "cuda" becomes the current CUDA device with its index ("cuda:0"
/// unless the caller changed it), so that the result compares equal to the device of the tensors made on it.
inline torch::Device usable_device(std::string_view text, std::string_view what = "device") {
  auto device = parse_device(text, what);
  check_device(device, what);
  if (device.is_cuda() && !device.has_index())
    device.set_index(static_cast<c10::DeviceIndex>(at::detail::getCUDAHooks().current_device()));
  return device;
}

/// The numeric precision of the network, from exact to fast. Against the reference's float32 output, on an
/// H200 (docs/performance.md): fp32 2.1e-6 relative, tf32 8.5e-4. bf16 and fp16 run the UNet's convolutions
/// in 16 bits (guided-diffusion's `use_fp16` scheme, AdmUNetImpl::set_compute_dtype); bf16 on the CPU, on
/// the test UNet: 1.4e-2 (output) and 2.9e-2 (input gradient) relative L2 error against float32.
enum class Precision {
  fp32,  ///< float32 everywhere, TF32 off: results agree with the CPU's to float32 rounding (the default)
  tf32,  ///< float32 tensors, TF32 tensor cores for convolutions and matrix products (cuDNN's own default)
  bf16,  ///< the UNet's convolutions in bfloat16, normalisation, embedding and output in float32; TF32 on
  fp16,  ///< as bf16 with float16 (CUDA only: LibTorch 1.13's CPU has no float16 convolutions); TF32 on
};

/// "fp32", "tf32", "bf16" or "fp16".
inline const char* to_string(Precision precision) {
  switch (precision) {
    case Precision::fp32:
      return "fp32";
    case Precision::tf32:
      return "tf32";
    case Precision::bf16:
      return "bf16";
    case Precision::fp16:
      return "fp16";
  }
  return "?";
}

/// Parses "fp32", "tf32", "bf16" or "fp16"; anything else is a c10::Error naming `what` and the choices.
inline Precision parse_precision(std::string_view text, std::string_view what = "precision") {
  for (auto precision : {Precision::fp32, Precision::tf32, Precision::bf16, Precision::fp16}) {
    if (text == to_string(precision)) return precision;
  }
  TORCH_CHECK(false, what, " '", text, "': expected fp32, tf32, bf16 or fp16");
}

/// The dtype the UNet computes its convolutions in: float32 for fp32 and tf32, bfloat16, float16. Images,
/// the iterate and DPS's gradient stay float32 in every case.
inline torch::ScalarType compute_dtype(Precision precision) {
  switch (precision) {
    case Precision::bf16:
      return torch::kBFloat16;
    case Precision::fp16:
      return torch::kHalf;
    default:
      return torch::kFloat32;
  }
}

/// Whether `precision` lets float32 convolutions and matrix products use TF32 (every choice but fp32).
inline bool allows_tf32(Precision precision) {
  return precision != Precision::fp32;
}

/// Sets LibTorch's process-wide TF32 switches for `precision`: cuDNN convolutions
/// (`setAllowTF32CuDNN`), cuBLAS matrix products (`setAllowTF32CuBLAS`) and the float32 matmul precision
/// ("highest" for fp32, "high" otherwise). They matter on NVIDIA GPUs from Ampere on, and leave CPU
/// arithmetic unchanged. LibTorch's own defaults are TF32 on for convolutions and off for matrix products, so
/// call this once at the start of `main` to get either all float32 or all TF32. Process-wide, like every
/// global switch: the library never calls it itself.
inline void apply_precision(Precision precision) {
  const bool tf32 = allows_tf32(precision);
  auto& context = at::globalContext();
  context.setAllowTF32CuDNN(tf32);
  context.setAllowTF32CuBLAS(tf32);
  context.setFloat32MatmulPrecision(tf32 ? "high" : "highest");
}

/// Checks that `precision` can run on `device`: fp16 needs CUDA, because LibTorch 1.13's CPU convolutions
/// have no float16 kernels ("slow_conv2d_cpu" not implemented for 'Half'); diffpost tests float16 on CUDA
/// only. Throws a c10::Error naming `what`, the precision and the device.
inline void check_precision(Precision precision, const torch::Device& device,
                            std::string_view what = "precision") {
  TORCH_CHECK(precision != Precision::fp16 || device.is_cuda(), what, " fp16 on ", device.str(),
              ": fp16 runs on CUDA devices only (LibTorch's CPU convolutions lack float16 kernels); use bf16 "
              "or fp32 on the CPU");
}

}  // namespace diffpost
