// PyTorch Lightning `.ckpt` files in the layout of CompVis latent-diffusion (tests/data/ldm/lightning*.ckpt,
// made by torch.save with stub Lightning classes, see tests/data/ldm/README.md): the tensors under
// `state_dict` read exactly, the foreign objects next to them inert, sub-modules selected by prefix
// (strictly), the EMA copy in LitEma's dotless names mapped back, and the schedule buffers. Values are
// checked in closed form: model tensor i is arange(numel) * 0.125 + i, its EMA copy that + 1000, the
// first-stage tensors -arange(numel) - 1 - i.
#include <diffpost/io/checkpoint.hpp>

#include "support/error_of.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

namespace {

const std::filesystem::path kLightningData = std::filesystem::path(DIFFPOST_TEST_DATA_DIR) / "ldm";

// The UNet stand-in of make_lightning (tests/data/ldm/README.md): names and shapes in state-dict order.
struct LightningUNetEntry {
  std::string name;
  std::vector<int64_t> shape;
};

std::vector<LightningUNetEntry> lightning_unet_entries() {
  std::vector<LightningUNetEntry> entries{{"input_blocks.0.0.weight", {4, 3, 3, 3}},
                                          {"input_blocks.0.0.bias", {4}}};
  for (int block = 1; block <= 10; ++block) {
    entries.push_back({"input_blocks." + std::to_string(block) + ".0.weight", {4, 4, 1, 1}});
    entries.push_back({"input_blocks." + std::to_string(block) + ".0.bias", {4}});
  }
  entries.push_back({"out.0.weight", {4}});
  entries.push_back({"out.0.bias", {4}});
  entries.push_back({"out.2.weight", {3, 4, 3, 3}});
  entries.push_back({"out.2.bias", {3}});
  return entries;
}

torch::Tensor lightning_closed_form(const std::vector<int64_t>& shape, double offset, double scale = 0.125) {
  int64_t numel = 1;
  for (auto s : shape) numel *= s;
  return (torch::arange(numel, torch::kFloat32) * scale + offset).reshape(shape);
}

// The schedule of make_lightning: linspace(sqrt(0.0015), sqrt(0.0195), 10) ** 2 in float64.
std::vector<double> lightning_betas() {
  std::vector<double> betas;
  const double start = std::sqrt(0.0015), end = std::sqrt(0.0195);
  for (int i = 0; i < 10; ++i) {
    const double root = start + (end - start) * i / 9.0;
    betas.push_back(root * root);
  }
  return betas;
}

void check_lightning_unet(const diffpost::StateDict& unet, double extra) {
  const auto entries = lightning_unet_entries();
  REQUIRE(unet.size() == entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    INFO(entries[i].name);
    CHECK(unet.entries()[i].first == entries[i].name);
    CHECK(torch::equal(unet.at(entries[i].name),
                       lightning_closed_form(entries[i].shape, static_cast<double>(i) + extra)));
  }
}

}  // namespace

TEST_CASE("a Lightning .ckpt: the tensors under state_dict, read exactly, zip and legacy format alike") {
  for (const auto* file : {"lightning.ckpt", "lightning_legacy.ckpt"}) {
    INFO(file);
    const auto state = diffpost::read_state_dict(kLightningData / file);
    CHECK(state.size() == 62);
    CHECK(state.origin().find("(key 'state_dict')") != std::string::npos);
    CHECK(state.keys().front() == "betas");
    CHECK(torch::equal(state.at("model.diffusion_model.input_blocks.10.0.weight"),
                       lightning_closed_form({4, 4, 1, 1}, 20)));
    CHECK(torch::equal(state.at("first_stage_model.quant_conv.bias"),
                       lightning_closed_form({3}, -1 - 3, -1.0)));
    CHECK(torch::equal(state.at("model_ema.diffusion_modelout2bias"), lightning_closed_form({3}, 25 + 1000)));
    CHECK(state.at("model_ema.num_updates").item<int>() == 1234);
    CHECK(c10::toString(state.at("model_ema.num_updates").scalar_type()) == std::string("Int"));
    // _metadata is kept for the whole module tree.
    bool has_unet_version = false;
    for (const auto& [module, version] : state.module_versions())
      has_unet_version = has_unet_version || module == "model.diffusion_model.input_blocks.10.0";
    CHECK(has_unet_version);
  }
}

TEST_CASE("a Lightning .ckpt: callbacks, optimizer state and hyper-parameters stay inert placeholders") {
  using diffpost::ReadOptions;
  using diffpost::testing::error_of;
  const auto path = kLightningData / "lightning.ckpt";
  // Choosing a foreign entry shows what the reader made of it: names, never calls. The callbacks dict is
  // keyed by a class (a GLOBAL) and by an instance of a stub Lightning class (NEWOBJ + BUILD).
  const auto callbacks = error_of([&] { diffpost::read_state_dict(path, ReadOptions{}.key("callbacks")); });
  CHECK(callbacks.find(
            "the Python global pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint: a dict") !=
        std::string::npos);
  CHECK(callbacks.find(
            "an object built by pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor: a dict") !=
        std::string::npos);
  // A dict subclass (SETITEMS on an object: Lightning's AttributeDict, collections.defaultdict), an
  // argparse.Namespace, numpy scalars and arrays, a set: parsed, kept inert.
  const auto hyper =
      error_of([&] { diffpost::read_state_dict(path, ReadOptions{}.key("hyper_parameters")); });
  INFO(hyper);
  CHECK(hyper.find("'args': an object built by argparse.Namespace") != std::string::npos);
  CHECK(hyper.find("'scale_factor': an object built by numpy.core.multiarray.scalar") != std::string::npos);
  CHECK(hyper.find("'grid': an object built by numpy.core.multiarray._reconstruct") != std::string::npos);
  CHECK(hyper.find("'hparams': an object built by pytorch_lightning.utilities.parsing.AttributeDict") !=
        std::string::npos);
  CHECK(hyper.find("'counts': an object built by collections.defaultdict") != std::string::npos);
  const auto optimizer =
      error_of([&] { diffpost::read_state_dict(path, ReadOptions{}.key("optimizer_states")); });
  CHECK(optimizer.find("key 'optimizer_states' holds a list, not a dict of tensors") != std::string::npos);
}

TEST_CASE("ReadOptions prefix selects one sub-module, names stripped, strictly") {
  using diffpost::ReadOptions;
  using diffpost::testing::error_of;
  const auto path = kLightningData / "lightning.ckpt";
  // With or without the trailing dot.
  for (const auto* prefix : {"model.diffusion_model.", "model.diffusion_model"}) {
    const auto unet = diffpost::read_state_dict(path, ReadOptions{}.prefix(prefix));
    check_lightning_unet(unet, 0);
    CHECK(unet.origin().find("(prefix 'model.diffusion_model.')") != std::string::npos);
    // Module versions under the prefix, stripped; the module itself is "".
    bool has_root = false, has_block = false;
    for (const auto& [module, version] : unet.module_versions()) {
      has_root = has_root || module.empty();
      has_block = has_block || module == "input_blocks.10.0";
      CHECK(module.find("first_stage") == std::string::npos);
    }
    CHECK(has_root);
    CHECK(has_block);
  }
  const auto encoder = diffpost::read_state_dict(path, ReadOptions{}.prefix("first_stage_model.encoder."));
  REQUIRE(encoder.keys() == std::vector<std::string>{"conv_in.weight", "conv_in.bias"});
  CHECK(torch::equal(encoder.at("conv_in.weight"), lightning_closed_form({2, 3, 1, 1}, -1, -1.0)));
  CHECK(torch::equal(encoder.at("conv_in.bias"), lightning_closed_form({2}, -2, -1.0)));
  // The legacy file selects the same.
  check_lightning_unet(diffpost::read_state_dict(kLightningData / "lightning_legacy.ckpt",
                                                 ReadOptions{}.prefix("model.diffusion_model")),
                       0);

  // A sub-module the file lacks is refused by name, with the prefixes it has; a prefix is a whole module
  // name, never part of one.
  for (const auto* missing : {"cond_stage_model.", "first_stage_model.decoder", "model.diffusion"}) {
    const auto message = error_of([&] { diffpost::read_state_dict(path, ReadOptions{}.prefix(missing)); });
    INFO(message);
    CHECK(message.find("has no sub-module '") != std::string::npos);
    CHECK(message.find(
              "'model.diffusion_model.', 'first_stage_model.encoder.', 'first_stage_model.quant_conv.', "
              "'model_ema.'") != std::string::npos);
  }
  CHECK(error_of([&] {
          diffpost::read_state_dict(path, ReadOptions{}.prefix("cond_stage_model"));
        }).find("no sub-module 'cond_stage_model.'") != std::string::npos);
}

TEST_CASE("ReadOptions ema maps LitEma's dotless names back to the module's, and refuses when it cannot") {
  using diffpost::ReadOptions;
  using diffpost::testing::error_of;
  const auto path = kLightningData / "lightning.ckpt";
  for (const auto* file : {"lightning.ckpt", "lightning_legacy.ckpt"}) {
    const auto ema = diffpost::read_state_dict(kLightningData / file,
                                               ReadOptions{}.prefix("model.diffusion_model.").ema(true));
    // input_blocks.1.0.* and input_blocks.10.* stay apart (diffusion_modelinput_blocks10weight is block 1).
    check_lightning_unet(ema, 1000);
    CHECK(ema.origin().find("EMA weights") != std::string::npos);
  }
  // Asked for but absent: refused by name.
  const auto absent = error_of(
      [&] { diffpost::read_state_dict(path, ReadOptions{}.prefix("first_stage_model.encoder.").ema(true)); });
  CHECK(absent.find("has no EMA copy of 'first_stage_model.encoder.' (no entry "
                    "'first_stage_model_ema.encoder...'") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::read_state_dict(path, ReadOptions{}.ema(true));
        }).find("give the prefix of the module it averages") != std::string::npos);

  // In memory: buffers LitEma does not track keep the model's values; collisions, shape mismatches and EMA
  // entries of no model entry are refused.
  diffpost::StateDict state("memory");
  state.insert("net.body.weight", torch::ones({2}));
  state.insert("net.body.running_mean", torch::full({2}, 5.0));
  state.insert("net_ema.decay", torch::tensor(0.9));
  state.insert("net_ema.num_updates", torch::tensor(3));
  state.insert("net_ema.bodyweight", torch::full({2}, 7.0));
  const auto selected = diffpost::select_module(state, "net.", true);
  CHECK(selected.keys() == std::vector<std::string>{"body.weight", "body.running_mean"});
  CHECK(torch::equal(selected.at("body.weight"), torch::full({2}, 7.0)));
  CHECK(torch::equal(selected.at("body.running_mean"), torch::full({2}, 5.0)));

  auto with = [&](const std::string& name, const torch::Tensor& tensor) {
    diffpost::StateDict copy("memory");
    for (const auto& [key, value] : state) copy.insert(key, value);
    copy.insert(name, tensor);
    return copy;
  };
  CHECK(error_of([&] {
          diffpost::select_module(with("net.bo.dyweight", torch::ones({2})), "net", true);
        }).find("cannot tell 'net.body.weight' from 'net.bo.dyweight'") != std::string::npos);
  CHECK(error_of([&] {
          diffpost::select_module(with("net_ema.headbias", torch::ones({2})), "net", true);
        }).find("1 EMA entries match no entry under 'net.', e.g. 'net_ema.headbias'") != std::string::npos);
  diffpost::StateDict mis_shaped("memory");
  mis_shaped.insert("net.body.weight", torch::ones({2}));
  mis_shaped.insert("net_ema.bodyweight", torch::ones({3}));
  CHECK(error_of([&] {
          diffpost::select_module(mis_shaped, "net", true);
        }).find("EMA entry 'net_ema.bodyweight' has shape [3] but 'net.body.weight' has [2]") !=
        std::string::npos);
}

TEST_CASE("the schedule buffers of an LDM checkpoint are read from the file") {
  using diffpost::testing::error_of;
  const auto state = diffpost::read_state_dict(kLightningData / "lightning.ckpt");
  const auto buffers = diffpost::schedule_buffers(state);
  CHECK(buffers.keys() ==
        std::vector<std::string>{"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod"});
  const auto schedule = diffpost::schedule_from_state_dict(state);
  REQUIRE(schedule.has_value());
  const auto expected = lightning_betas();
  REQUIRE(schedule->num_steps() == 10);
  for (size_t i = 0; i < expected.size(); ++i) {
    // The file holds float32: each beta is the float32 rounding of the float64 value.
    CHECK(schedule->betas()[i] == static_cast<double>(static_cast<float>(expected[i])));
  }
  CHECK(std::abs(schedule->alphas_cumprod().back() - state.at("alphas_cumprod")[9].item<double>()) < 1e-6);

  // No betas: nothing to read.
  diffpost::StateDict no_schedule("memory");
  no_schedule.insert("weight", torch::ones({2}));
  CHECK_FALSE(diffpost::schedule_from_state_dict(no_schedule).has_value());
  CHECK(diffpost::schedule_buffers(no_schedule).empty());
  // Buffers that contradict each other are refused.
  diffpost::StateDict contradicting("memory");
  contradicting.insert("betas", state.at("betas"));
  contradicting.insert("alphas_cumprod", state.at("alphas_cumprod") * 0.99);
  CHECK(error_of([&] {
          diffpost::schedule_from_state_dict(contradicting);
        }).find("'alphas_cumprod' differs from the cumulative product of 1 - betas") != std::string::npos);
  diffpost::StateDict bad_shape("memory");
  bad_shape.insert("betas", torch::full({2, 2}, 0.1));
  CHECK(error_of([&] { diffpost::schedule_from_state_dict(bad_shape); }).find("not a 1-D float tensor") !=
        std::string::npos);
}
