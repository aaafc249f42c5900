// Image decoding: JPEG round trips, DCT-scaled decoding, grayscale and CMYK JPEGs, PNG in its
// colour types, refused formats, and DecodeError for every kind of bad file. Every input is
// made by the test itself (PNGs by a minimal writer here and by libpng's).
#include <gtest/gtest.h>
#include <png.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "graph/ir.h"
#include "io/decode.h"
#include "io/image.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::io;

namespace {

// A smooth colourful image: JPEG keeps it within a few levels.
Image smooth_image(int width, int height) {
  Image img;
  img.width = width;
  img.height = height;
  img.rgb.resize(size_t(width) * height * 3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &img.rgb[(size_t(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(40 + 170.0 * x / width);
      p[1] = static_cast<uint8_t>(30 + 180.0 * y / height);
      p[2] = static_cast<uint8_t>(128 + 80 * std::sin(0.05 * x) * std::cos(0.04 * y));
    }
  return img;
}

double mean_abs_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  double sum = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) sum += std::abs(int(a[i]) - int(b[i]));
  return a.empty() ? 0 : sum / a.size();
}

std::string write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}

using test::tj_compress;

uint32_t crc32(const uint8_t* data, size_t n, uint32_t crc = 0) {
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
  }
  return ~crc;
}

void put_be32(std::vector<uint8_t>& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(v >> s));
}

void png_chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_be32(out, crc32(out.data() + start, out.size() - start));
}

// A minimal RGB PNG writer (deflate "stored" blocks), so the decoder is tested on a file
// libpng did not write; `gamma` > 0 adds a gAMA chunk (file gamma x 100000).
std::vector<uint8_t> encode_png(const Image& img, uint32_t gamma = 0) {
  std::vector<uint8_t> raw;
  for (int y = 0; y < img.height; ++y) {
    raw.push_back(0);  // filter: none
    const uint8_t* row = &img.rgb[size_t(y) * img.width * 3];
    raw.insert(raw.end(), row, row + size_t(img.width) * 3);
  }
  std::vector<uint8_t> z = {0x78, 0x01};
  for (size_t pos = 0; pos < raw.size() || pos == 0;) {
    size_t n = std::min<size_t>(65535, raw.size() - pos);
    bool last = pos + n == raw.size();
    z.push_back(last ? 1 : 0);
    z.push_back(static_cast<uint8_t>(n));
    z.push_back(static_cast<uint8_t>(n >> 8));
    z.push_back(static_cast<uint8_t>(~n));
    z.push_back(static_cast<uint8_t>(~n >> 8));
    z.insert(z.end(), raw.begin() + pos, raw.begin() + pos + n);
    pos += n;
    if (last) break;
  }
  uint32_t a = 1, b = 0;
  for (uint8_t v : raw) {
    a = (a + v) % 65521;
    b = (b + a) % 65521;
  }
  put_be32(z, (b << 16) | a);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<uint8_t> ihdr;
  put_be32(ihdr, img.width);
  put_be32(ihdr, img.height);
  ihdr.insert(ihdr.end(), {8, 2, 0, 0, 0});  // 8 bits, RGB, deflate, no filter, no interlace
  png_chunk(png, "IHDR", ihdr);
  if (gamma > 0) {
    std::vector<uint8_t> g;
    put_be32(g, gamma);
    png_chunk(png, "gAMA", g);
  }
  png_chunk(png, "IDAT", z);
  png_chunk(png, "IEND", {});
  return png;
}

// Expects `fn` to throw a DecodeError that names `path`.
template <typename Fn>
void expect_decode_error(const std::string& path, Fn fn) {
  try {
    fn();
    ADD_FAILURE() << "no DecodeError for " << path;
  } catch (const DecodeError& e) {
    EXPECT_EQ(e.path(), path);
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// libpng's own writer, for the colour types the minimal writer above does not make.
std::vector<uint8_t> libpng_encode(int width, int height, png_uint_32 format, const void* pixels,
                                   const void* colormap = nullptr, int colormap_entries = 0) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = format;
  image.colormap_entries = colormap_entries;
  png_alloc_size_t size = 0;
  EXPECT_TRUE(png_image_write_to_memory(&image, nullptr, &size, 0, pixels, 0, colormap));
  std::vector<uint8_t> out(size);
  EXPECT_TRUE(png_image_write_to_memory(&image, out.data(), &size, 0, pixels, 0, colormap))
      << image.message;
  out.resize(size);
  return out;
}

}  // namespace

TEST(IoDecode, RoundTripOfASmoothImage) {
  Image img = smooth_image(160, 120);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 95);
  ASSERT_GE(jpeg.size(), 3u);
  EXPECT_EQ(jpeg[0], 0xFF);
  EXPECT_EQ(jpeg[1], 0xD8);

  ImageHeader header = read_header(jpeg.data(), jpeg.size(), "mem.jpg");
  EXPECT_TRUE(header.jpeg);
  EXPECT_EQ(header.width, 160);
  EXPECT_EQ(header.height, 120);

  Decoded d = decode_image(jpeg.data(), jpeg.size(), "mem.jpg");
  EXPECT_EQ(d.full_width, 160);
  EXPECT_EQ(d.full_height, 120);
  EXPECT_EQ(d.image.width, 160);
  EXPECT_EQ(d.image.height, 120);
  EXPECT_EQ(d.scale_num, 1);
  EXPECT_EQ(d.scale_denom, 1);
  ASSERT_EQ(d.image.rgb.size(), img.rgb.size());
  EXPECT_LT(mean_abs_diff(d.image.rgb, img.rgb), 2.0);

  // Lower quality: still close, and smaller.
  std::vector<uint8_t> low = encode_jpeg(img, 50);
  EXPECT_LT(low.size(), jpeg.size());
  EXPECT_LT(mean_abs_diff(decode_image(low.data(), low.size(), "low.jpg").image.rgb, img.rgb), 4.0);
}

TEST(IoDecode, DecodeFileReadsTheWholeFile) {
  Image img = smooth_image(300, 200);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 90);
  std::string path = write_file(test::temp_dir() + "/a.JPEG", jpeg);
  Decoded from_file = decode_file(path);
  Decoded from_memory = decode_image(jpeg.data(), jpeg.size(), path);
  EXPECT_EQ(from_file.image.rgb, from_memory.image.rgb);
  EXPECT_EQ(from_file.image.width, 300);
  EXPECT_EQ(from_file.image.height, 200);
}

// Decoding shrinks by 1/2, 1/4 or 1/8 (the power-of-two factors, the only ones libjpeg-turbo
// has SIMD code for) as far as the requested region keeps at least the target size.
TEST(IoDecode, DctScalingPicksTheSmallestFactorThatKeepsTheTarget) {
  Image img = smooth_image(500, 375);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 90);
  struct Case {
    DecodeRequest request;
    int num, denom, width, height;
  };
  const Case cases[] = {
      // 1/2 would leave 250x187.5 of the 500x375 region: less than 224 high.
      {{500, 375, 224, 224}, 1, 1, 500, 375},
      // 448x448 at 1/2 is exactly 224x224.
      {{448, 448, 224, 224}, 1, 2, 250, 188},
      {{447, 448, 224, 224}, 1, 1, 500, 375},
      // 112: 1/2 keeps 250x187.5; 1/4 would leave 93.75 high.
      {{500, 375, 112, 112}, 1, 2, 250, 188},
      {{500, 375, 90, 90}, 1, 4, 125, 94},
      {{500, 375, 40, 40}, 1, 8, 63, 47},
      // A target larger than the image, or no target: full size.
      {{500, 375, 1000, 1000}, 1, 1, 500, 375},
      {{500, 375, 0, 0}, 1, 1, 500, 375},
      {{}, 1, 1, 500, 375},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.request.region_width) + "x" +
                 std::to_string(c.request.region_height) + " -> " +
                 std::to_string(c.request.target_width));
    Decoded d = decode_image(jpeg.data(), jpeg.size(), "mem.jpg", c.request);
    EXPECT_EQ(d.scale_num, c.num);
    EXPECT_EQ(d.scale_denom, c.denom);
    EXPECT_EQ(d.image.width, c.width);
    EXPECT_EQ(d.image.height, c.height);
    EXPECT_EQ(d.full_width, 500);
    EXPECT_EQ(d.full_height, 375);
    ASSERT_EQ(d.image.rgb.size(), size_t(c.width) * c.height * 3);
  }

  // The half-size decode is the full image averaged over 2x2 blocks, near enough.
  Decoded full = decode_image(jpeg.data(), jpeg.size(), "mem.jpg");
  Decoded half = decode_image(jpeg.data(), jpeg.size(), "mem.jpg", {500, 375, 112, 112});
  double sum = 0;
  int n = 0;
  for (int y = 0; y < 187; ++y)
    for (int x = 0; x < 250; ++x)
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int xx, int yy) { return full.image.rgb[(size_t(yy) * 500 + xx) * 3 + c]; };
        double avg = (at(2 * x, 2 * y) + at(2 * x + 1, 2 * y) + at(2 * x, 2 * y + 1) +
                      at(2 * x + 1, 2 * y + 1)) /
                     4.0;
        sum += std::abs(half.image.rgb[(size_t(y) * 250 + x) * 3 + c] - avg);
        ++n;
      }
  EXPECT_LT(sum / n, 1.5);
}

TEST(IoDecode, GrayscaleJpegComesOutRgb) {
  const int w = 96, h = 64;
  std::vector<uint8_t> gray(size_t(w) * h);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) gray[size_t(y) * w + x] = static_cast<uint8_t>(20 + 2 * x + y);
  std::vector<uint8_t> jpeg = tj_compress(gray.data(), w, h, TJPF_GRAY, TJSAMP_GRAY, 95);
  Decoded d = decode_image(jpeg.data(), jpeg.size(), "gray.jpg");
  ASSERT_EQ(d.image.width, w);
  ASSERT_EQ(d.image.height, h);
  double diff = 0;
  for (size_t i = 0; i < gray.size(); ++i) {
    const uint8_t* p = &d.image.rgb[i * 3];
    ASSERT_EQ(p[0], p[1]) << i;
    ASSERT_EQ(p[1], p[2]) << i;
    diff += std::abs(int(p[0]) - int(gray[i]));
  }
  EXPECT_LT(diff / gray.size(), 1.5);
  // Scaled too.
  Decoded half = decode_image(jpeg.data(), jpeg.size(), "gray.jpg", {w, h, 40, 30});
  EXPECT_EQ(half.scale_denom, 2);
  for (size_t i = 0; i < half.image.rgb.size(); i += 3)
    ASSERT_TRUE(half.image.rgb[i] == half.image.rgb[i + 1] &&
                half.image.rgb[i] == half.image.rgb[i + 2]);
}

// CMYK JPEGs (22 of them in ImageNet) are Adobe-style: stored inverted, 255 = no ink. A red
// square (no cyan, full magenta and yellow, no black) must come out red on white.
TEST(IoDecode, CmykJpegComesOutRgb) {
  const int w = 64, h = 48;
  std::vector<uint8_t> cmyk(size_t(w) * h * 4, 255);  // inverted: no ink at all, white
  for (int y = 12; y < 36; ++y)
    for (int x = 16; x < 48; ++x) {
      uint8_t* p = &cmyk[(size_t(y) * w + x) * 4];
      p[0] = 255;  // C = 0
      p[1] = 0;    // M = 100%
      p[2] = 0;    // Y = 100%
      p[3] = 255;  // K = 0
    }
  std::vector<uint8_t> jpeg = tj_compress(cmyk.data(), w, h, TJPF_CMYK, TJSAMP_444, 95);
  // It really is a four-component JPEG.
  tjhandle th = tjInitDecompress();
  int jw = 0, jh = 0, subsamp = 0, colorspace = -1;
  ASSERT_EQ(tjDecompressHeader3(th, jpeg.data(), jpeg.size(), &jw, &jh, &subsamp, &colorspace), 0);
  tjDestroy(th);
  EXPECT_TRUE(colorspace == TJCS_YCCK || colorspace == TJCS_CMYK) << colorspace;

  EXPECT_EQ(read_header(jpeg.data(), jpeg.size(), "cmyk.jpg").width, w);
  Decoded d = decode_image(jpeg.data(), jpeg.size(), "cmyk.jpg");
  ASSERT_EQ(d.image.width, w);
  ASSERT_EQ(d.image.height, h);
  auto px = [&](int x, int y) { return &d.image.rgb[(size_t(y) * w + x) * 3]; };
  const uint8_t* centre = px(32, 24);
  EXPECT_GE(centre[0], 240);
  EXPECT_LE(centre[1], 15);
  EXPECT_LE(centre[2], 15);
  const uint8_t* corner = px(2, 2);
  EXPECT_GE(corner[0], 240);
  EXPECT_GE(corner[1], 240);
  EXPECT_GE(corner[2], 240);
}

// ImageNet has a PNG named .JPEG: the content decides, not the name.
TEST(IoDecode, PngNamedJpegIsDecodedAsPng) {
  Image img = test::random_image(45, 31, 3);
  std::vector<uint8_t> png = encode_png(img);
  std::string path = write_file(test::temp_dir() + "/n01440764_0001.JPEG", png);

  std::vector<uint8_t> bytes(png);
  ImageHeader header = read_header(bytes.data(), bytes.size(), path);
  EXPECT_FALSE(header.jpeg);
  EXPECT_EQ(header.width, 45);
  EXPECT_EQ(header.height, 31);

  Decoded d = decode_file(path, {45, 31, 10, 10});  // no DCT scaling for a PNG
  EXPECT_EQ(d.image.width, 45);
  EXPECT_EQ(d.image.height, 31);
  EXPECT_EQ(d.full_width, 45);
  EXPECT_EQ(d.scale_num, 1);
  EXPECT_EQ(d.scale_denom, 1);
  EXPECT_EQ(d.image.rgb, img.rgb);  // lossless, and RGB order
}

TEST(IoDecode, TruncatedJpegIsADecodeError) {
  std::vector<uint8_t> jpeg = encode_jpeg(test::random_image(200, 150, 1), 90);
  std::vector<uint8_t> cut(jpeg.begin(), jpeg.begin() + jpeg.size() * 6 / 10);
  std::string path = write_file(test::temp_dir() + "/truncated.JPEG", cut);
  // The header is intact...
  EXPECT_EQ(read_header(cut.data(), cut.size(), path).width, 200);
  // ...the data is not: TurboJPEG only warns, the decoder refuses.
  expect_decode_error(path, [&] { decode_file(path); });
  expect_decode_error(path, [&] { decode_image(cut.data(), cut.size(), path); });
  expect_decode_error(path, [&] {
    decode_image(cut.data(), cut.size(), path, {200, 150, 50, 50});
  });
  try {
    decode_file(path);
  } catch (const DecodeError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
  // Cut inside the header.
  std::vector<uint8_t> stub(jpeg.begin(), jpeg.begin() + 40);
  expect_decode_error(path, [&] { read_header(stub.data(), stub.size(), path); });
  expect_decode_error(path, [&] { decode_image(stub.data(), stub.size(), path); });
}

// Files libjpeg only warns about, and PIL opens, decode: here bytes between the entropy-coded
// data and the end marker ("extraneous bytes before marker 0xd9").
TEST(IoDecode, HarmlessWarningsStillDecode) {
  std::vector<uint8_t> jpeg = encode_jpeg(smooth_image(120, 80), 90);
  ASSERT_EQ(jpeg[jpeg.size() - 2], 0xFF);
  ASSERT_EQ(jpeg[jpeg.size() - 1], 0xD9);
  std::vector<uint8_t> padded(jpeg.begin(), jpeg.end() - 2);
  padded.insert(padded.end(), {0x12, 0x34, 0x56, 0x78, 0xFF, 0xD9});
  Decoded clean = decode_image(jpeg.data(), jpeg.size(), "clean.jpg");
  Decoded warned = decode_image(padded.data(), padded.size(), "padded.jpg");
  EXPECT_EQ(warned.image.rgb, clean.image.rgb);
  // And the thread's decoder carries on normally afterwards.
  EXPECT_EQ(decode_image(jpeg.data(), jpeg.size(), "clean.jpg").image.rgb, clean.image.rgb);
}

// Progressive JPEGs (ImageNet has some) decode, at full size and DCT-scaled.
TEST(IoDecode, ProgressiveJpeg) {
  Image img = smooth_image(200, 150);
  tjhandle h = tjInitCompress();
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  ASSERT_EQ(tjCompress2(h, img.rgb.data(), 200, 0, 150, TJPF_RGB, &buf, &size, TJSAMP_420, 90,
                        TJFLAG_PROGRESSIVE),
            0);
  std::vector<uint8_t> jpeg(buf, buf + size);
  tjFree(buf);
  tjDestroy(h);
  Decoded d = decode_image(jpeg.data(), jpeg.size(), "p.jpg");
  EXPECT_LT(mean_abs_diff(d.image.rgb, img.rgb), 2.0);
  Decoded half = decode_image(jpeg.data(), jpeg.size(), "p.jpg", {200, 150, 60, 60});
  EXPECT_EQ(half.image.width, 100);
  std::vector<uint8_t> cut(jpeg.begin(), jpeg.begin() + jpeg.size() * 6 / 10);
  expect_decode_error("cut.jpg", [&] { decode_image(cut.data(), cut.size(), "cut.jpg"); });
}

TEST(IoDecode, GarbageIsADecodeError) {
  std::vector<uint8_t> garbage(5000);
  SampleRng rng(9, 9, 9);
  for (auto& b : garbage) b = static_cast<uint8_t>(rng.integer(0, 255));
  garbage[0] = 'x';  // not a JPEG, not a PNG
  std::string path = "garbage.JPEG";
  expect_decode_error(path, [&] { decode_image(garbage.data(), garbage.size(), path); });
  expect_decode_error(path, [&] { read_header(garbage.data(), garbage.size(), path); });
  // JPEG magic followed by garbage.
  garbage[0] = 0xFF;
  garbage[1] = 0xD8;
  garbage[2] = 0xFF;
  expect_decode_error(path, [&] { decode_image(garbage.data(), garbage.size(), path); });
  // Nothing at all.
  expect_decode_error(path, [&] { decode_image(garbage.data(), 0, path); });
  std::string empty = write_file(test::temp_dir() + "/empty.JPEG", {});
  expect_decode_error(empty, [&] { decode_file(empty); });
  // The thread's decoder still works after all that.
  std::vector<uint8_t> good = encode_jpeg(smooth_image(40, 30), 90);
  EXPECT_EQ(read_header(good.data(), good.size(), "good.jpg").width, 40);
  EXPECT_EQ(decode_image(good.data(), good.size(), "good.jpg").image.height, 30);
}

TEST(IoDecode, MissingFileIsADecodeError) {
  std::string path = test::temp_dir() + "/does_not_exist.JPEG";
  expect_decode_error(path, [&] { decode_file(path); });
  // A folder is not an image either.
  std::string dir = test::temp_dir();
  expect_decode_error(dir, [&] { decode_file(dir); });
}

TEST(IoDecode, EncodeRejectsABadImage) {
  Image bad;
  bad.width = 4;
  bad.height = 4;
  bad.rgb.resize(10);
  EXPECT_THROW(encode_jpeg(bad), Error);
  Image ok = smooth_image(8, 8);
  EXPECT_THROW(encode_jpeg(ok, 0), Error);
  EXPECT_THROW(encode_jpeg(ok, 101), Error);
}

// One TurboJPEG handle per thread: threads decoding at once get the same pixels.
TEST(IoDecode, ThreadsDecodeIndependently) {
  std::vector<uint8_t> jpeg = encode_jpeg(smooth_image(200, 150), 90);
  Decoded reference = decode_image(jpeg.data(), jpeg.size(), "t.jpg", {200, 150, 50, 50});
  std::vector<int> same(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        Decoded d = decode_image(jpeg.data(), jpeg.size(), "t.jpg", {200, 150, 50, 50});
        same[t] += d.image.rgb == reference.image.rgb;
        encode_jpeg(d.image, 80);
      }
    });
  for (auto& t : threads) t.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(same[t], 20);
}

TEST(IoDecode, PngColourTypesComeOutRgb) {
  const int w = 7, h = 5;
  // Grayscale: R = G = B.
  std::vector<uint8_t> gray(w * h);
  for (int i = 0; i < w * h; ++i) gray[i] = static_cast<uint8_t>(i * 7 + 3);
  std::vector<uint8_t> png = libpng_encode(w, h, PNG_FORMAT_GRAY, gray.data());
  Decoded d = decode_image(png.data(), png.size(), "gray.png");
  ASSERT_EQ(d.image.width, w);
  ASSERT_EQ(d.image.height, h);
  for (int i = 0; i < w * h; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(d.image.rgb[i * 3 + c], gray[i]) << i;

  // RGBA: alpha is dropped, the colour kept as stored (PIL's convert("RGB")).
  std::vector<uint8_t> rgba(w * h * 4);
  for (int i = 0; i < w * h; ++i) {
    rgba[i * 4 + 0] = static_cast<uint8_t>(200 - i);
    rgba[i * 4 + 1] = static_cast<uint8_t>(i * 5);
    rgba[i * 4 + 2] = static_cast<uint8_t>(90 + i);
    rgba[i * 4 + 3] = static_cast<uint8_t>(i % 3 == 0 ? 0 : 40 * (i % 7));
  }
  png = libpng_encode(w, h, PNG_FORMAT_RGBA, rgba.data());
  d = decode_image(png.data(), png.size(), "rgba.png");
  for (int i = 0; i < w * h; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(d.image.rgb[i * 3 + c], rgba[i * 4 + c]) << i;

  // 16 bits per channel (libpng's writer stores them linear, with gAMA 1.0): the top 8 bits, as
  // PIL reads them.
  std::vector<uint16_t> wide(w * h * 3);
  for (size_t i = 0; i < wide.size(); ++i) wide[i] = static_cast<uint16_t>(i * 1543 + 77);
  png = libpng_encode(w, h, PNG_FORMAT_LINEAR_RGB, wide.data());
  d = decode_image(png.data(), png.size(), "wide.png");
  for (size_t i = 0; i < wide.size(); ++i) ASSERT_EQ(d.image.rgb[i], wide[i] >> 8) << i;

  // Palette: each index becomes its colour.
  const uint8_t palette[4][3] = {{255, 0, 0}, {0, 128, 0}, {10, 20, 250}, {77, 77, 77}};
  std::vector<uint8_t> index(w * h);
  for (int i = 0; i < w * h; ++i) index[i] = static_cast<uint8_t>((i * 3) % 4);
  png = libpng_encode(w, h, PNG_FORMAT_RGB_COLORMAP, index.data(), palette, 4);
  ImageHeader header = read_header(png.data(), png.size(), "palette.png");
  EXPECT_FALSE(header.jpeg);
  EXPECT_EQ(header.width, w);
  EXPECT_EQ(header.height, h);
  d = decode_image(png.data(), png.size(), "palette.png");
  for (int i = 0; i < w * h; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(d.image.rgb[i * 3 + c], palette[index[i]][c]) << i;
}

// torchvision's loader (PIL) ignores gAMA: the stored values are the pixels.
TEST(IoDecode, PngGammaIsIgnored) {
  Image img = test::random_image(16, 9, 5);
  for (uint32_t gamma : {100000u, 45455u, 20000u}) {
    std::vector<uint8_t> png = encode_png(img, gamma);
    Decoded d = decode_image(png.data(), png.size(), "gamma.png");
    EXPECT_EQ(d.image.rgb, img.rgb) << "gAMA " << gamma;
  }
}

TEST(IoDecode, OtherFormatsAreRefusedByName) {
  const std::pair<std::vector<uint8_t>, const char*> cases[] = {
      {{'B', 'M', 0, 0, 0, 0}, "a BMP image"},
      {{'G', 'I', 'F', '8', '9', 'a'}, "a GIF image"},
      {{'I', 'I', '*', 0, 8, 0}, "a TIFF image"},
      {{'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'}, "a WebP image"},
      {{'P', '6', '\n', '1', ' ', '1'}, "a PNM image"},
  };
  for (const auto& [bytes, what] : cases) {
    try {
      decode_image(bytes.data(), bytes.size(), "x.JPEG");
      ADD_FAILURE() << what << " decoded";
    } catch (const DecodeError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("JPEG and PNG"), std::string::npos) << e.what();
    }
    EXPECT_THROW(read_header(bytes.data(), bytes.size(), "x.JPEG"), DecodeError) << what;
  }
  // A PNG signature followed by garbage, and a PNG cut short.
  const std::vector<uint8_t> flat(16, 9);
  std::vector<uint8_t> png = libpng_encode(4, 4, PNG_FORMAT_GRAY, flat.data());
  std::vector<uint8_t> bad(png.begin(), png.begin() + 8);
  bad.resize(64, 0xAB);
  expect_decode_error("bad.png", [&] { decode_image(bad.data(), bad.size(), "bad.png"); });
  expect_decode_error("bad.png", [&] { read_header(bad.data(), bad.size(), "bad.png"); });
  std::vector<uint8_t> cut(png.begin(), png.begin() + static_cast<long>(png.size()) - 20);
  expect_decode_error("cut.png", [&] { decode_image(cut.data(), cut.size(), "cut.png"); });
}
