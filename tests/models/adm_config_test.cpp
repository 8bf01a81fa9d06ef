// Model config files in the reference's format, the configuration read off a checkpoint's shapes, and load
// errors that name it.
#include <diffpost/io/adm_checkpoint.hpp>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/model_config.hpp>
#include <diffpost/models/adm_unet.hpp>

#include "support/adm_small.hpp"
#include "support/error_of.hpp"
#include "support/temp_dir.hpp"

#include <torch/torch.h>
#include "support/doctest_with_torch.hpp"

#include <algorithm>
#include <cstddef>
#include <fstream>
#include <sstream>
#include <string>

namespace {

const std::string kConfigDir = std::string(DIFFPOST_TEST_DATA_DIR) + "/adm_config/";
const std::string kSmallCheckpoint = diffpost::testing::adm_small_state_dict_path();

std::string printed(const diffpost::AdmUNetOptions& options) {
  std::ostringstream os;
  os << options;
  return os.str();
}

// The error that parsing `yaml` as a model config gives.
std::string error_of(const std::string& yaml) {
  return diffpost::testing::error_of([&] { diffpost::parse_adm_model_config(yaml, "test.yaml"); });
}

// A state dict with the planned keys and shapes, backed by one zero element (expanded, nothing allocated).
diffpost::StateDict planned_state_dict(const diffpost::AdmUNetOptions& options) {
  diffpost::StateDict state("planned");
  auto zero = torch::zeros({1});
  for (const auto& [name, shape] : diffpost::adm_state_dict_shapes(options)) {
    std::vector<int64_t> ones(shape.size(), 1);
    state.insert(name, zero.reshape(ones).expand(shape));
  }
  return state;
}

const std::string kSmallYaml = R"(
image_size: 32
num_channels: 32
num_res_blocks: 1
channel_mult: "1,1"
learn_sigma: True
attention_resolutions: 16
num_head_channels: 16
use_scale_shift_norm: True
resblock_updown: True
)";

}  // namespace

TEST_CASE("adm_options_from_config reads the reference model_config.yaml keys") {
  SUBCASE("FFHQ: channel_mult \"\" and attention_resolutions as an int") {
    auto config = diffpost::read_adm_model_config(kConfigDir + "ffhq_model_config.yaml");
    CHECK(printed(config.options) == printed(diffpost::AdmUNetOptions::ffhq256()));
    CHECK(config.model_path == "models/ffhq_10m.pt");
    CHECK(diffpost::adm_parameter_count(config.options) == 93'563'910);
  }
  SUBCASE("ImageNet: attention_resolutions as a comma string") {
    auto options = diffpost::adm_options_from_config(kConfigDir + "imagenet_model_config.yaml");
    CHECK(printed(options) == printed(diffpost::AdmUNetOptions::imagenet256_uncond()));
  }
  SUBCASE("JSON with the in_channels extension") {
    auto config = diffpost::read_adm_model_config(kConfigDir + "small_model_config.json");
    CHECK(config.options.channel_mult() == std::vector<int64_t>{1, 1});
    CHECK(config.options.attention_downsample_rates() == std::vector<int64_t>{2});
    CHECK(config.options.in_channels() == 3);
    CHECK(config.model_path == "../adm_small/small_state_dict.pt");
    // The checkpoint it names loads into the model it describes.
    diffpost::AdmUNet model(config.options);
    CHECK_NOTHROW(diffpost::load_checkpoint(model, kConfigDir + config.model_path));
  }
  SUBCASE("class_cond means the 1000 ImageNet classes; num_classes overrides it") {
    CHECK(diffpost::parse_adm_model_config(kSmallYaml + "class_cond: True\n").options.num_classes() == 1000);
    CHECK(diffpost::parse_adm_model_config(kSmallYaml + "class_cond: True\nnum_classes: 10\n")
              .options.num_classes() == 10);
  }
}

TEST_CASE("adm_model_config_yaml writes every field, and reading it back gives the same options") {
  const auto custom = diffpost::AdmUNetOptions(32, 64, 2)
                          .in_channels(1)
                          .channel_mult({1, 2})
                          .attention_resolutions({32, 16})
                          .num_heads(2)
                          .num_heads_upsample(4)
                          .use_scale_shift_norm(true)
                          .learn_sigma(true)
                          .dropout(0.125)
                          .use_new_attention_order(true)
                          .num_classes(10);
  for (const auto& options :
       {custom, diffpost::AdmUNetOptions::ffhq256(), diffpost::AdmUNetOptions::imagenet256_uncond()}) {
    const auto text = diffpost::adm_model_config_yaml(options, "weights.pt");
    INFO(text);
    const auto config = diffpost::parse_adm_model_config(text, "written.yaml");
    CHECK(printed(config.options) == printed(options));
    CHECK(config.model_path == "weights.pt");
  }
  // The custom options field by field, independently of the printer, and in the reference's spelling.
  const auto text = diffpost::adm_model_config_yaml(custom);
  const auto read = diffpost::parse_adm_model_config(text).options;
  CHECK(read.image_size() == 32);
  CHECK(read.in_channels() == 1);
  CHECK(read.num_channels() == 64);
  CHECK(read.num_res_blocks() == 2);
  CHECK(read.channel_mult() == std::vector<int64_t>{1, 2});
  CHECK(read.attention_resolutions() == std::vector<int64_t>{32, 16});
  CHECK(read.num_heads() == 2);
  CHECK(read.num_head_channels() == -1);
  CHECK(read.num_heads_upsample() == 4);
  CHECK(read.use_scale_shift_norm());
  CHECK_FALSE(read.resblock_updown());
  CHECK(read.learn_sigma());
  CHECK(read.dropout() == 0.125);
  CHECK(read.use_new_attention_order());
  CHECK(read.num_classes() == 10);
  CHECK(text.find("channel_mult: \"1,2\"\n") != std::string::npos);
  CHECK(text.find("class_cond: true\n") != std::string::npos);
  CHECK(text.find("use_fp16: false\n") != std::string::npos);
  CHECK(text.find("model_path") == std::string::npos);  // none given
  // Every key the reader knows is written, and nothing else; out_channels only when given (not here).
  const auto keys = diffpost::detail::adm_config_keys();
  for (const auto& key : keys)
    CHECK_MESSAGE((key == "model_path" || key == "out_channels" ||
                   text.find("\n" + key + ": ") != std::string::npos || text.rfind(key + ": ", 0) == 0),
                  key);
  CHECK(text.find("out_channels") == std::string::npos);
  CHECK(std::count(text.begin(), text.end(), '\n') == static_cast<std::ptrdiff_t>(keys.size()) - 2);
}

TEST_CASE("model config errors name the key, the value and the fix") {
  CHECK(error_of(kSmallYaml + "num_head_channel: 64\n").find("unknown key 'num_head_channel'") !=
        std::string::npos);
  CHECK(error_of("num_channels: 32\nnum_res_blocks: 1\n").find("missing required key 'image_size'") !=
        std::string::npos);
  CHECK(error_of(kSmallYaml + "num_heads: four\n").find("'num_heads' must be an integer, got 'four'") !=
        std::string::npos);
  CHECK(error_of(kSmallYaml + "dropout: [0.1]\n").find("'dropout' must be a number, got a list") !=
        std::string::npos);
  CHECK(error_of(kSmallYaml + "use_new_attention_order: maybe\n")
            .find("'use_new_attention_order' must be true or false, got 'maybe'") != std::string::npos);
  CHECK(error_of("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: \"0.5,1\"\n")
            .find("entry '0.5'") != std::string::npos);
  CHECK(error_of("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: \"1,,1\"\n")
            .find("'channel_mult' has an empty entry in '1,,1'") != std::string::npos);
  // A trailing comma is allowed, as before.
  CHECK(diffpost::parse_adm_model_config("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: "
                                         "\"1, 1,\"\nattention_resolutions: \"\"\n")
            .options.channel_mult() == std::vector<int64_t>{1, 1});
  CHECK(error_of(kSmallYaml + "learn_sigma: False\n").find("key 'learn_sigma' appears twice") !=
        std::string::npos);
  CHECK(error_of(kSmallYaml + "use_fp16: True\n").find("use_fp16: true is not supported") !=
        std::string::npos);
  // Option validation runs on the file's values and names the file.
  CHECK(error_of("image_size: 32\nnum_channels: 48\nnum_res_blocks: 1\nchannel_mult: \"1,1\"\n")
            .find("test.yaml: AdmUNetOptions: level width") != std::string::npos);
  CHECK_THROWS_WITH_AS(diffpost::read_adm_model_config(kConfigDir + "no_such_file.yaml"),
                       doctest::Contains("cannot open"), c10::Error);
}

TEST_CASE("model config values out of range are range errors naming the key, before anything is built") {
  // The issue's case: validate() accepted 4e9 channels (a multiple of 32) and building the model then failed
  // with a storage-size overflow.
  CHECK(error_of("image_size: 32\nnum_channels: 4000000000\nnum_res_blocks: 1\n") ==
        "test.yaml: 'num_channels' is 4000000000, out of range: it must be 1 to 4096; check the file");
  CHECK(error_of("image_size: 0\nnum_channels: 32\nnum_res_blocks: 1\n") ==
        "test.yaml: 'image_size' is 0, out of range: it must be 1 to 4096; check the file");
  CHECK(error_of(kSmallYaml + "num_heads_upsample: -2\n") ==
        "test.yaml: 'num_heads_upsample' is -2, out of range: it must be 1 to 1024 (or -1 for unset); "
        "check the file");
  CHECK(error_of("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: \"1,1,999\"\n") ==
        "test.yaml: 'channel_mult' entry is 999, out of range: it must be 1 to 64; check the file");
  CHECK(error_of("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: [1, -1]\n") ==
        "test.yaml: 'channel_mult' entry is -1, out of range: it must be 1 to 64; check the file");
  CHECK(
      error_of(
          "image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\nchannel_mult: \"99999999999999999999\"\n") ==
      "test.yaml: 'channel_mult' entry '99999999999999999999' is out of range; check the file");
  CHECK(error_of("image_size: 32\nnum_channels: 32\nnum_res_blocks: 1\n"
                 "attention_resolutions: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n") ==
        "test.yaml: 'attention_resolutions' has more than 16 entries; check the file");
  // Each value in range, the whole too big: 16 residual blocks of 4096 channels on two levels.
  CHECK(
      error_of("image_size: 64\nnum_channels: 4096\nnum_res_blocks: 16\nchannel_mult: \"1,1\"\n"
               "attention_resolutions: \"\"\n")
          .find(
              "parameters, more than the 4294967296 diffpost builds from a config file; check num_channels, "
              "channel_mult and num_res_blocks") != std::string::npos);
  // yaml-cpp's own exceptions do not escape: a list as a key.
  CHECK(error_of("? [a, b]\n: 1\n") == "test.yaml: keys must be names such as 'image_size', got a list");
  // A file far larger than a config (a checkpoint passed as --config, say) is not read.
  const diffpost::testing::TempDir dir("config-size");
  {
    std::ofstream big(dir.file("big.yaml"));
    big << "# " << std::string(size_t{2} << 20, 'x') << "\n";
  }
  CHECK(diffpost::testing::error_of([&] {
          diffpost::read_adm_model_config(dir.file("big.yaml"));
        }).find("big.yaml' is 2097155 bytes; a model config is a few hundred (is this the checkpoint?)") !=
        std::string::npos);
}

TEST_CASE("summarize_adm_state_dict reads the configuration off the shapes") {
  auto round_trip = [](const diffpost::AdmUNetOptions& options) {
    auto summary = diffpost::summarize_adm_state_dict(planned_state_dict(options));
    REQUIRE(summary.has_value());
    // Everything the weights record comes back; heads and attention order are not recorded.
    CHECK(diffpost::adm_state_dict_shapes(summary->options) == diffpost::adm_state_dict_shapes(options));
    CHECK(summary->options.attention_downsample_rates() == options.attention_downsample_rates());
    return *summary;
  };
  auto ffhq = round_trip(diffpost::AdmUNetOptions::ffhq256());
  CHECK(ffhq.image_size_known);
  CHECK(ffhq.options.num_channels() == 128);
  CHECK(ffhq.options.num_res_blocks() == 1);
  CHECK(ffhq.options.learn_sigma());
  CHECK(ffhq.options.resblock_updown());
  round_trip(diffpost::AdmUNetOptions::imagenet256_uncond());
  round_trip(
      diffpost::AdmUNetOptions(32, 32, 1).channel_mult({1, 1}).attention_resolutions({16}).learn_sigma(true));
  round_trip(diffpost::AdmUNetOptions(16, 32, 2)
                 .in_channels(1)
                 .channel_mult({1, 2})
                 .attention_resolutions({8})
                 .num_classes(5));

  diffpost::StateDict not_a_unet("other");
  not_a_unet.insert("conv.weight", torch::zeros({4, 3, 3, 3}));
  CHECK_FALSE(diffpost::summarize_adm_state_dict(not_a_unet).has_value());
  CHECK(diffpost::describe_adm_state_dict(not_a_unet).find("does not look like an ADM UNet") !=
        std::string::npos);
  CHECK(diffpost::describe_adm_state_dict(planned_state_dict(diffpost::AdmUNetOptions::imagenet256_uncond()))
            .find("it matches the preset AdmUNetOptions::imagenet256_uncond()") != std::string::npos);
}

TEST_CASE(
    "loading a checkpoint into the wrong AdmUNet names the first mismatch and the file's configuration") {
  // The small reference checkpoint (32 channels, learned sigma) into a 64-channel model without learned
  // sigma.
  diffpost::AdmUNet wrong(
      diffpost::parse_adm_model_config(kSmallYaml).options.num_channels(64).learn_sigma(false));
  const auto message =
      diffpost::testing::error_of([&] { diffpost::load_checkpoint(wrong, kSmallCheckpoint); });
  INFO(message);
  CHECK(message.find("small_state_dict.pt") != std::string::npos);
  CHECK(message.find(
            "First mismatch: 'time_embed.0.weight' has shape [128, 32] in the file but [256, 64] in the "
            "model") != std::string::npos);
  CHECK(message.find("The file looks like an ADM UNet with num_channels=32, num_res_blocks=1, "
                     "channel_mult=\"1,1\", attention at downsample rates 2") != std::string::npos);
  CHECK(message.find("learn_sigma=true (6 output channels for in_channels=3)") != std::string::npos);
  CHECK(message.find("use_scale_shift_norm=true, resblock_updown=true, unconditional") != std::string::npos);
  CHECK(message.find("it matches no diffpost preset") != std::string::npos);
  CHECK(message.find("The model was built with AdmUNetOptions(image_size=32, in_channels=3, out_channels=3, "
                     "num_channels=64") != std::string::npos);
  // Nothing was copied: the zero-initialised output convolution is still zero.
  auto out = wrong(torch::randn({1, 3, 32, 32}), torch::zeros({1}, torch::kInt64));
  CHECK(out.abs().max().item<double>() == 0.0);
}
