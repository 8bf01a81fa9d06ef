// Writes the seed corpora of the fuzz harnesses from the repository's own files:
//   diffpost_fuzz_seeds <source folder> <corpus folder>
// makes <corpus>/pickle (data.pkl of every zip checkpoint in tests/data and examples/prior, and each of the
// consecutive pickles of the legacy files), <corpus>/image (tests/data/metrics/*.png and small images of
// every supported format, written here), <corpus>/config (the config files), <corpus>/checkpoint (the
// small test checkpoints), <corpus>/safetensors (the small safetensors files of tests/data and one of each
// dtype, written here), <corpus>/npz (the .npz files of tests/data/metrics and each .npy record inside them)
// and <corpus>/weights (lpips-layout head files, and small state dicts in the LPIPS backbone and FID
// Inception layouts, written here).
#include <zlib.h>
#include <diffpost/io/checkpoint.hpp>
#include <diffpost/io/detail/pickle.hpp>
#include <diffpost/io/detail/zip_archive.hpp>
#include <diffpost/io/image.hpp>
#include <diffpost/io/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<fs::path> files_in(const fs::path& folder, const std::string& extension) {
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.is_regular_file() && entry.path().extension() == extension) found.push_back(entry.path());
  std::sort(found.begin(), found.end());
  return found;
}

// The pickles of one checkpoint: data.pkl of a zip archive, or each consecutive pickle of a legacy file.
std::vector<std::string> pickles_of(const fs::path& path) {
  const auto bytes = read_file(path);
  if (bytes.rfind("PK\x03\x04", 0) == 0) {
    diffpost::detail::ZipArchiveReader reader(path, path.string());
    std::vector<std::string> pickles;
    for (const char* name : {"data.pkl", "constants.pkl"}) {
      if (const auto* record = reader.find(name)) pickles.push_back(reader.read_string(*record));
    }
    return pickles;
  }
  // The legacy format: a magic number (a LONG1 of 10 bytes, which the interpreter refuses, so the reader
  // skips it), then protocol version, sys_info, the object and the storage keys as consecutive pickles.
  constexpr size_t kMagic = 15;
  if (bytes.rfind(std::string("\x80\x02\x8a\x0a", 4), 0) != 0 || bytes.size() < kMagic) return {};
  std::vector<std::string> pickles{bytes.substr(0, kMagic)};
  std::string_view rest(bytes);
  rest.remove_prefix(kMagic);
  auto zeros = [](std::string_view, torch::ScalarType type, int64_t numel) {
    return torch::zeros({numel}, torch::TensorOptions().dtype(type));
  };
  try {
    for (int i = 0; i < 4 && !rest.empty(); ++i) {
      diffpost::detail::Unpickler unpickler(rest, zeros, path.string());
      unpickler.parse();
      pickles.emplace_back(rest.substr(0, unpickler.position()));
      rest.remove_prefix(unpickler.position());
    }
  } catch (const c10::Error&) {
  }
  return pickles;
}

std::string encoded(int (*write)(stbi_write_func*, void*, int, int, int, const void*), int width, int height,
                    int channels, const std::vector<unsigned char>& pixels) {
  std::string bytes;
  auto append = [](void* context, void* data, int size) {
    static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
  };
  write(append, &bytes, width, height, channels, pixels.data());
  return bytes;
}

std::string big_endian(uint32_t value, int bytes) {
  std::string out;
  for (int i = bytes - 1; i >= 0; --i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
  return out;
}

std::string png_chunk(const std::string& type, const std::string& data) {
  const std::string body = type + data;
  const auto crc = crc32(0, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()));
  return big_endian(static_cast<uint32_t>(data.size()), 4) + body + big_endian(static_cast<uint32_t>(crc), 4);
}

// A 16-bit RGB PNG (stb_image_write writes 8 bits only).
std::string png16(int width, int height) {
  std::string raw;
  for (int y = 0; y < height; ++y) {
    raw += '\0';
    for (int x = 0; x < width * 3; ++x)
      raw += big_endian(static_cast<uint32_t>((x * 7919 + y * 104729) & 0xFFFF), 2);
  }
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string compressed(size, '\0');
  compress2(reinterpret_cast<Bytef*>(compressed.data()), &size, reinterpret_cast<const Bytef*>(raw.data()),
            static_cast<uLong>(raw.size()), 9);
  compressed.resize(size);
  const std::string header = big_endian(static_cast<uint32_t>(width), 4) +
                             big_endian(static_cast<uint32_t>(height), 4) +
                             std::string("\x10\x02\x00\x00\x00", 5);
  return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", header) + png_chunk("IDAT", compressed) +
         png_chunk("IEND", "");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: diffpost_fuzz_seeds <source folder> <corpus folder>\n";
    return 2;
  }
  const fs::path source(argv[1]), corpus(argv[2]);
  for (const char* name : {"pickle", "image", "config", "checkpoint", "safetensors", "npz", "weights"})
    fs::create_directories(corpus / name);
  size_t counts[7] = {};

  for (const char* folder : {"tests/data/checkpoints", "tests/data/adm_small", "tests/data/dps_step",
                             "tests/data/torchscript", "examples/prior"}) {
    for (const auto& path : files_in(source / folder, ".pt")) {
      const auto pickles = pickles_of(path);
      for (size_t i = 0; i < pickles.size(); ++i)
        write_file(corpus / "pickle" / (path.stem().string() + "." + std::to_string(i) + ".pkl"), pickles[i]);
      counts[0] += pickles.size();
      if (std::string(folder) == "tests/data/checkpoints" && fs::file_size(path) < 16384) {
        fs::copy_file(path, corpus / "checkpoint" / path.filename(), fs::copy_options::overwrite_existing);
        ++counts[3];
      }
    }
  }

  // The CompVis latent diffusion checkpoints (Lightning .ckpt files) and the reference outputs next to them.
  for (const char* extension : {".ckpt", ".pt"}) {
    for (const auto& path : files_in(source / "tests/data/latent_diffusion", extension)) {
      const auto pickles = pickles_of(path);
      for (size_t i = 0; i < pickles.size(); ++i)
        write_file(corpus / "pickle" / (path.stem().string() + "." + std::to_string(i) + ".pkl"), pickles[i]);
      counts[0] += pickles.size();
    }
  }

  for (const auto& path : files_in(source / "tests/data/metrics", ".png")) {
    fs::copy_file(path, corpus / "image" / path.filename(), fs::copy_options::overwrite_existing);
    ++counts[1];
  }
  auto image = [&](const std::string& name, const std::string& bytes) {
    write_file(corpus / "image" / name, bytes);
    ++counts[1];
  };
  for (int channels = 1; channels <= 4; ++channels) {
    const int width = 9, height = 7;
    std::vector<unsigned char> pixels(static_cast<size_t>(width * height * channels));
    for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 37 + 11);
    const auto suffix = std::to_string(channels) + "ch";
    image("png_" + suffix + ".png",
          encoded([](stbi_write_func* f, void* c, int w, int h, int n,
                     const void* d) { return stbi_write_png_to_func(f, c, w, h, n, d, w * n); },
                  width, height, channels, pixels));
    image("bmp_" + suffix + ".bmp", encoded(stbi_write_bmp_to_func, width, height, channels, pixels));
    stbi_write_tga_with_rle = 1;
    image("tga_rle_" + suffix + ".tga", encoded(stbi_write_tga_to_func, width, height, channels, pixels));
    stbi_write_tga_with_rle = 0;
    image("tga_raw_" + suffix + ".tga", encoded(stbi_write_tga_to_func, width, height, channels, pixels));
    image("jpeg_" + suffix + ".jpg",
          encoded([](stbi_write_func* f, void* c, int w, int h, int n,
                     const void* d) { return stbi_write_jpg_to_func(f, c, w, h, n, d, 75); },
                  width, height, channels, pixels));
  }
  image("png_16bit.png", png16(5, 3));
  // Paletted and 16-bit BMPs (stb_image_write writes 24 and 32 bits only): 5x3 pixels, rows padded to 4
  // bytes.
  auto le = [](uint32_t value, int bytes) {
    std::string out;
    for (int i = 0; i < bytes; ++i) out += static_cast<char>((value >> (8 * i)) & 0xFF);
    return out;
  };
  for (const int bits : {1, 4, 8, 16}) {
    const std::string palette =
        bits <= 8 ? std::string("\x00\x00\xff\x00\x00\xff\x00\x00\xff\x00\x00\x00", 12) : "";
    const size_t row = ((5 * bits + 31) / 32) * 4;
    std::string pixels;
    for (size_t i = 0; i < 3 * row; ++i)
      pixels += static_cast<char>(bits == 8 ? i % 3 : (bits == 4 ? 0x12 : i * 37));
    const auto offset = static_cast<uint32_t>(14 + 40 + palette.size());
    image("bmp_" + std::to_string(bits) + "bit.bmp",
          "BM" + le(offset + static_cast<uint32_t>(pixels.size()), 4) + std::string(4, '\0') + le(offset, 4) +
              le(40, 4) + le(5, 4) + le(3, 4) + le(1, 2) + le(static_cast<uint32_t>(bits), 2) +
              std::string(24, '\0') + palette + pixels);
  }
  // The smallest GIF (1x1, two-colour palette), and one with a transparency extension and two frames.
  image("one_pixel.gif", std::string("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
                                     "\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b",
                                     35));
  image("two_frames.gif", std::string("GIF89a\x02\x00\x02\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
                                      "\x21\xf9\x04\x01\x00\x00\x00\x00"
                                      "\x2c\x00\x00\x00\x00\x02\x00\x02\x00\x00\x02\x03\x84\x1d\x05\x00"
                                      "\x21\xf9\x04\x00\x0a\x00\x01\x00"
                                      "\x2c\x00\x00\x00\x00\x02\x00\x02\x00\x00\x02\x03\x04\x8e\x05\x00\x3b",
                                      69));
  image("gray8.pgm",
        std::string("P5\n# comment\n4 2\n255\n", 21) + std::string("\x00\x10\x20\x30\x40\x50\x60\xff", 8));
  std::string ppm16 = "P6 2 2 65535\n";
  for (int i = 0; i < 12; ++i) ppm16 += big_endian(static_cast<uint32_t>(i * 5000), 2);
  image("rgb16.ppm", ppm16);
  image("gray10.pgm", "P5 2 1 1023\n" + big_endian(0, 2) + big_endian(1023, 2));

  for (const auto& [folder, extension] :
       std::vector<std::pair<std::string, std::string>>{{"tests/data/adm_config", ".yaml"},
                                                        {"tests/data/adm_config", ".json"},
                                                        {"tests/data/cli", ".yaml"},
                                                        {"tests/data/latent_diffusion", ".yaml"},
                                                        {"examples/prior", ".yaml"}}) {
    for (const auto& path : files_in(source / folder, extension)) {
      fs::copy_file(
          path, corpus / "config" / (fs::path(folder).filename().string() + "_" + path.filename().string()),
          fs::copy_options::overwrite_existing);
      ++counts[2];
    }
  }
  for (const auto& entry : fs::recursive_directory_iterator(source / "tests/data")) {
    if (!entry.is_regular_file() || entry.path().extension() != ".safetensors" || entry.file_size() > 16384)
      continue;
    fs::copy_file(entry.path(), corpus / "safetensors" / (std::to_string(counts[4]) + ".safetensors"),
                  fs::copy_options::overwrite_existing);
    ++counts[4];
  }
  {
    diffpost::StateDict every_dtype;
    every_dtype.insert("f32", torch::arange(6, torch::kFloat32).reshape({2, 3}));
    every_dtype.insert("f64", torch::arange(2, torch::kFloat64));
    every_dtype.insert("f16", torch::arange(3, torch::kFloat16));
    every_dtype.insert("bf16", torch::arange(3, torch::kBFloat16));
    every_dtype.insert("i64", torch::arange(2, torch::kInt64));
    every_dtype.insert("i32", torch::arange(2, torch::kInt32));
    every_dtype.insert("i16", torch::arange(2, torch::kInt16));
    every_dtype.insert("i8", torch::arange(2, torch::kInt8));
    every_dtype.insert("u8", torch::arange(2, torch::kUInt8));
    every_dtype.insert("bool", torch::tensor({true, false}));
    every_dtype.insert("scalar", torch::tensor(1.5));
    every_dtype.insert("empty", torch::zeros({0, 3}));
    diffpost::save_safetensors(every_dtype, corpus / "safetensors" / "every_dtype.safetensors",
                               {{"format", "pt"}}, diffpost::SaveOptions{}.overwrite(true));
    diffpost::save_safetensors(diffpost::StateDict{}, corpus / "safetensors" / "empty.safetensors", {},
                               diffpost::SaveOptions{}.overwrite(true));
    counts[4] += 2;
  }
  // numpy files, and the .npy records of the stored (uncompressed) ones.
  for (const char* folder : {"tests/data/metrics/npz", "tests/data/metrics/fid"}) {
    for (const auto& path : files_in(source / folder, ".npz")) {
      fs::copy_file(path, corpus / "npz" / path.filename(), fs::copy_options::overwrite_existing);
      ++counts[5];
      diffpost::detail::ZipArchiveReader reader(path, path.string(), diffpost::detail::ZipLayout::flat);
      for (const auto& record : reader.records()) {
        write_file(corpus / "npz" / (path.stem().string() + "." + record.name), reader.read_string(record));
        ++counts[5];
      }
    }
  }

  // Weight files: lpips's head layout, and the key layouts of torchvision's AlexNet and of pytorch-fid's
  // Inception with every tensor a one-element broadcast view (small files, real shapes).
  for (const auto& path : files_in(source / "tests/data/metrics/lpips", ".pth")) {
    fs::copy_file(path, corpus / "weights" / path.filename(), fs::copy_options::overwrite_existing);
    ++counts[6];
  }
  const auto broadcast = [](std::vector<int64_t> shape) { return torch::zeros({1}).expand(shape); };
  diffpost::StateDict alexnet;
  for (const auto& [index, shape] :
       std::vector<std::pair<int, std::vector<int64_t>>>{{0, {64, 3, 11, 11}},
                                                         {3, {192, 64, 5, 5}},
                                                         {6, {384, 192, 3, 3}},
                                                         {8, {256, 384, 3, 3}},
                                                         {10, {256, 256, 3, 3}}}) {
    alexnet.insert("features." + std::to_string(index) + ".weight", broadcast(shape));
    alexnet.insert("features." + std::to_string(index) + ".bias", broadcast({shape[0]}));
  }
  alexnet.insert("classifier.6.weight", broadcast({1000, 4096}));
  diffpost::save_state_dict(alexnet, corpus / "weights" / "alexnet_layout.pth",
                            diffpost::SaveOptions{}.overwrite(true));
  diffpost::StateDict inception;
  inception.insert("Conv2d_1a_3x3.conv.weight", broadcast({32, 3, 3, 3}));
  for (const char* name : {"weight", "bias", "running_mean", "running_var"})
    inception.insert(std::string("Conv2d_1a_3x3.bn.") + name, broadcast({32}));
  inception.insert("Conv2d_1a_3x3.bn.num_batches_tracked", torch::zeros({}, torch::kInt64));
  inception.insert("fc.weight", broadcast({1008, 2048}));
  inception.insert("fc.bias", broadcast({1008}));
  diffpost::save_state_dict(inception, corpus / "weights" / "inception_layout.pth",
                            diffpost::SaveOptions{}.overwrite(true));
  counts[6] += 2;

  std::cout << "seeds: " << counts[0] << " pickles, " << counts[1] << " images, " << counts[2] << " configs, "
            << counts[3] << " checkpoints, " << counts[4] << " safetensors files, " << counts[5]
            << " numpy files, " << counts[6] << " weight files in " << corpus.string() << "\n";
  return 0;
}
