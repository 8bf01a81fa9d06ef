// Device strings, precisions and the global TF32 switches, and generators per device. What LibTorch reports
// about CUDA (torch::cuda::device_count, the CUDA hooks) is the independent truth the messages are checked
// against, so the suite passes on machines with and without GPUs and tests what applies there.
#include <diffpost/random.hpp>
#include <diffpost/runtime/device.hpp>

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"
#include "support/error_of.hpp"

#include <string>

using namespace diffpost;
using diffpost::testing::error_of;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("parse_device reads cpu, cuda and cuda:N, and names the flag in its errors") {
  CHECK(parse_device("cpu") == torch::Device(torch::kCPU));
  CHECK(parse_device("cuda") == torch::Device(torch::kCUDA));
  CHECK_FALSE(parse_device("cuda").has_index());
  CHECK(parse_device("cuda:0") == torch::Device(torch::kCUDA, 0));
  CHECK(parse_device("cuda:12") == torch::Device(torch::kCUDA, 12));
  for (const char* bad :
       {"gpu", "CPU", "cuda:", "cuda:-1", "cuda:1x", "cuda:x", "cuda0", "mps", "", "cpu:0"}) {
    CAPTURE(bad);
    CHECK(error_of([&] { parse_device(bad, "--device"); }) ==
          "--device '" + std::string(bad) + "': expected cpu, cuda or cuda:N (N the index of a CUDA device)");
  }
}

TEST_CASE("check_device accepts the CPU and says what the machine has when a CUDA device is missing") {
  CHECK(error_of([] { check_device(torch::kCPU, "--device"); }) == "(no error)");
  CHECK(usable_device("cpu") == torch::Device(torch::kCPU));
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  const std::string missing = error_of([&] { usable_device("cuda:" + std::to_string(count), "--device"); });
  CAPTURE(missing);
  if (!libtorch_has_cuda()) {
    CHECK(contains(missing, "--device cuda:0: this LibTorch has no CUDA support"));
    CHECK(contains(error_of([] { usable_device("cuda", "--device"); }),
                   "--device cuda: this LibTorch has no CUDA"));
    CHECK(error_of([] {
            make_generator(1, torch::Device(torch::kCUDA, 0));
          }).starts_with("make_generator cuda:0: this LibTorch has no CUDA support"));
  } else if (count == 0) {
    CHECK(contains(missing, "--device cuda:0: no CUDA device is visible"));
  } else {
    const std::string devices = count == 1 ? " CUDA device (cuda:0)" : " CUDA devices (cuda:0 ... cuda:";
    CHECK(missing.starts_with("--device cuda:" + std::to_string(count) + ": this machine has " +
                              std::to_string(count) + devices));
    const auto first = usable_device("cuda");
    CHECK(first.is_cuda());
    CHECK(
        first.has_index());  // "cuda" names the current device, so that it compares equal to tensors' devices
    CHECK(torch::empty({1}, first).device() == first);
  }
  CHECK(error_of([] { check_device(torch::Device(torch::kMeta), "--device"); }) ==
        "--device meta: diffpost runs on cpu or cuda devices only");
}

TEST_CASE("precisions parse, print, pick the UNet's compute dtype and the TF32 switches") {
  for (auto precision : {Precision::fp32, Precision::tf32, Precision::bf16, Precision::fp16})
    CHECK(parse_precision(to_string(precision)) == precision);
  CHECK(error_of([] { parse_precision("half", "--precision"); }) ==
        "--precision 'half': expected fp32, tf32, bf16 or fp16");
  CHECK((compute_dtype(Precision::fp32) == torch::kFloat32));
  CHECK((compute_dtype(Precision::tf32) == torch::kFloat32));
  CHECK((compute_dtype(Precision::bf16) == torch::kBFloat16));
  CHECK((compute_dtype(Precision::fp16) == torch::kHalf));
  CHECK(error_of([] {
          check_precision(Precision::fp16, torch::kCPU, "--precision");
        }).starts_with("--precision fp16 on cpu: "));
  CHECK(error_of([] { check_precision(Precision::bf16, torch::kCPU); }) == "(no error)");
  CHECK(error_of([] { check_precision(Precision::fp16, torch::Device(torch::kCUDA, 0)); }) == "(no error)");

  auto& context = at::globalContext();
  const bool cudnn_before = context.allowTF32CuDNN();
  const auto matmul_before = context.float32MatmulPrecision();
  apply_precision(Precision::fp32);
  CHECK_FALSE(context.allowTF32CuDNN());
  CHECK_FALSE(context.allowTF32CuBLAS());
  CHECK(context.float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST);
  for (auto precision : {Precision::tf32, Precision::bf16, Precision::fp16}) {
    CAPTURE(to_string(precision));
    apply_precision(Precision::fp32);
    apply_precision(precision);
    CHECK(context.allowTF32CuDNN());
    CHECK(context.allowTF32CuBLAS());
    CHECK(context.float32MatmulPrecision() == at::Float32MatmulPrecision::HIGH);
  }
  context.setAllowTF32CuDNN(cudnn_before);
  context.setFloat32MatmulPrecision(matmul_before == at::Float32MatmulPrecision::HIGHEST ? "highest"
                                    : matmul_before == at::Float32MatmulPrecision::HIGH  ? "high"
                                                                                         : "medium");
}

TEST_CASE("make_generator(seed, cpu) is make_generator(seed): the same stream, so CPU runs do not change") {
  auto plain = make_generator(7);
  auto on_cpu = make_generator(7, torch::kCPU);
  CHECK(on_cpu.device() == torch::Device(torch::kCPU));
  const auto options = torch::TensorOptions().dtype(torch::kFloat32);
  CHECK(torch::equal(at::randn({64}, plain, options), at::randn({64}, on_cpu, options)));
}
