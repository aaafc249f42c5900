// The host side of GPU decoding (--decode gpu): the per-pixel resampling the GPU kernel runs is
// the CPU transforms' own, the taps the loader draws are the transforms' draws, and a loader
// that leaves JPEGs encoded gives, once they are decoded and resampled, the plain loader's
// samples bit for bit (images small enough that the plain loader decodes them at full size
// too). The GPU's side is tests/test_cuda_jpeg_decoder.cc.
#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/dataset.h"
#include "io/decode.h"
#include "io/loader.h"
#include "io/transforms.h"
#include "runtime/jpeg_decoder.h"
#include "runtime/math/resample.h"
#include "tests/helpers.h"

namespace oxtrain::io {
namespace {

namespace fs = std::filesystem;

Image pattern_image(int width, int height, int seed) {
  Image im;
  im.width = width;
  im.height = height;
  im.rgb.resize(size_t(width) * height * 3);
  uint32_t s = 2166136261u ^ uint32_t(seed);
  for (size_t i = 0; i < im.rgb.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    // Smooth gradients plus noise: every blend weight matters, and 0 and 255 occur.
    const size_t p = i / 3;
    const int x = int(p % size_t(width)), y = int(p / size_t(width));
    int v = (x * 255) / std::max(1, width - 1) / 2 + (y * 255) / std::max(1, height - 1) / 2 +
            int(s >> 28) - 8 + int(i % 3) * 20;
    im.rgb[i] = uint8_t(std::clamp(v, 0, 255));
  }
  return im;
}

// The GPU kernel's loop, on the host: every byte through math::resample_pixel.
std::vector<uint8_t> resample_per_pixel(const Image& im, const SampleTaps& taps) {
  const int w = int(taps.cols.size()), h = int(taps.rows.size());
  std::vector<uint8_t> out(size_t(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        out[(size_t(y) * w + x) * 3 + c] = runtime::math::resample_pixel(
            im.rgb.data(), int64_t(im.width) * 3, taps.rows[size_t(y)], taps.cols[size_t(x)], c);
  return out;
}

TEST(EncodedSamples, TheKernelsPixelMathIsTheTransformsResampler) {
  int cases = 0;
  for (int w : {5, 13, 64, 301})
    for (int h : {7, 11, 97})
      for (int size : {1, 8, 33})
        for (int seed = 0; seed < 3; ++seed) {
          const Image im = pattern_image(w, h, seed + 10 * w + h);
          SampleRng rng(uint64_t(seed), 1, uint64_t(w * 1000 + h));
          const SampleTaps train = train_taps(w, h, size, rng);
          std::vector<uint8_t> vector_path(size_t(size) * size * 3);
          resample_taps(im, train, vector_path.data());
          ASSERT_EQ(resample_per_pixel(im, train), vector_path) << w << "x" << h << " to " << size;
          const SampleTaps val = val_taps(w, h, size);
          resample_taps(im, val, vector_path.data());
          ASSERT_EQ(resample_per_pixel(im, val), vector_path) << w << "x" << h << " to " << size;
          ++cases;
        }
  EXPECT_EQ(cases, 108);
}

TEST(EncodedSamples, RoundingIsToNearestEvenAndSaturates) {
  using runtime::math::resample_round;
  EXPECT_EQ(resample_round(0.5f), 0);
  EXPECT_EQ(resample_round(1.5f), 2);
  EXPECT_EQ(resample_round(2.5f), 2);
  EXPECT_EQ(resample_round(254.49f), 254);
  EXPECT_EQ(resample_round(254.5f), 254);
  EXPECT_EQ(resample_round(255.4f), 255);
  EXPECT_EQ(resample_round(300.0f), 255);
  EXPECT_EQ(resample_round(-0.6f), 0);
  EXPECT_EQ(resample_round(-40.0f), 0);
}

// The taps are the transforms' draws: resampling the full-size decode by train_taps and
// val_taps gives train_transform's and val_transform's bytes where those decode at full size
// (the crop never spans twice the output), and the taps take the same random numbers.
TEST(EncodedSamples, TapsAreTheTransformsDraws) {
  const int size = 40;
  for (int k = 0; k < 12; ++k) {
    const int w = 41 + 3 * k, h = 70 - 2 * k;  // under 2 * size: no DCT scaling
    const std::vector<uint8_t> jpeg = encode_jpeg(pattern_image(w, h, k), 92);
    std::vector<uint8_t> want(size_t(size) * size * 3), got(want.size());
    SampleRng a(7, 2, uint64_t(k)), b(7, 2, uint64_t(k));
    train_transform(jpeg.data(), jpeg.size(), "x.jpg", size, a, want.data());
    const SampleTaps taps = train_taps(w, h, size, b);
    decode_resample(jpeg.data(), jpeg.size(), "x.jpg", taps, got.data());
    ASSERT_EQ(got, want) << "train, image " << k;
    EXPECT_EQ(a.uniform(), b.uniform()) << "both drew the same numbers, image " << k;
    val_transform(jpeg.data(), jpeg.size(), "x.jpg", size, want.data());
    decode_resample(jpeg.data(), jpeg.size(), "x.jpg", val_taps(w, h, size), got.data());
    ASSERT_EQ(got, want) << "val, image " << k;
  }
}

TEST(EncodedSamples, TapsOutsideTheImageAreRefused) {
  const Image im = pattern_image(10, 10, 1);
  SampleTaps taps = val_taps(10, 10, 4);
  std::vector<uint8_t> out(4 * 4 * 3);
  taps.cols[2].i1 = 10;
  EXPECT_THROW(resample_taps(im, taps, out.data()), Error);
  taps = val_taps(10, 10, 4);
  taps.rows[0].i0 = -1;
  EXPECT_THROW(resample_taps(im, taps, out.data()), Error);
  EXPECT_THROW(decode_resample(nullptr, 0, "empty.jpg", val_taps(10, 10, 4), out.data()), DecodeError);
}

using test::write_bytes;

std::vector<uint8_t> progressive_jpeg(const Image& im) {
  return test::tj_compress(im.rgb.data(), im.width, im.height, TJPF_RGB, TJSAMP_420, 90,
                           TJFLAG_PROGRESSIVE);
}

// Two classes of baseline JPEGs and one progressive JPEG each (decoded on the host).
void make_mixed_dataset(const std::string& root, int* jpegs, int* others) {
  *jpegs = *others = 0;
  for (int c = 0; c < 2; ++c)
    for (int k = 0; k < 9; ++k) {
      const int w = 30 + 5 * k, h = 60 - 3 * k;  // under 2 * 32 in both axes
      char name[32];
      std::snprintf(name, sizeof name, "/%s/img_%02d.JPEG", c ? "cat" : "dog", k);
      const Image im = pattern_image(w, h, 100 * c + k);
      if (k == 4) {
        write_bytes(root + name, progressive_jpeg(im));
        ++*others;
      } else {
        write_bytes(root + name, encode_jpeg(im, 90));
        ++*jpegs;
      }
    }
}

void expect_decoded_batches_equal(const ImageFolder& data, bool train) {
  LoaderOptions plain;
  plain.batch_size = 5;
  plain.image_size = 32;
  plain.train = train;
  plain.drop_last = false;
  plain.workers = 2;
  plain.seed = 11;
  LoaderOptions enc = plain;
  enc.encoded = true;
  enc.workers = 3;  // the thread count changes nothing
  Loader a(data, plain), b(data, enc);
  const size_t per = 32 * 32 * 3;
  int encoded = 0, decoded_here = 0;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    a.start_epoch(epoch);
    b.start_epoch(epoch);
    Batch x, y;
    while (a.next(x)) {
      ASSERT_TRUE(b.next(y));
      ASSERT_EQ(x.size, y.size);
      ASSERT_EQ(x.encoded, nullptr);
      ASSERT_NE(y.encoded, nullptr);
      for (int64_t k = 0; k < x.size; ++k) {
        EXPECT_EQ(x.labels[k], y.labels[k]);
        const EncodedSample& e = y.encoded[k];
        std::vector<uint8_t> got(per);
        if (e.bytes.empty()) {
          std::memcpy(got.data(), y.images + size_t(k) * per, per);
          ++decoded_here;
        } else {
          ASSERT_NE(e.path, nullptr);
          EXPECT_EQ(e.taps.cols.size(), 32u);
          decode_resample(e.bytes.data(), e.bytes.size(), *e.path, e.taps, got.data());
          ++encoded;
        }
        ASSERT_EQ(0, std::memcmp(got.data(), x.images + size_t(k) * per, per))
            << "epoch " << epoch << " batch " << x.index << " sample " << k
            << (e.bytes.empty() ? " (decoded by the loader)" : " (left encoded)");
      }
    }
    EXPECT_FALSE(b.next(y));
  }
  // 16 baseline JPEGs and 2 progressive ones per epoch.
  EXPECT_EQ(encoded, 2 * 16);
  EXPECT_EQ(decoded_here, 2 * 2);
}

TEST(EncodedSamples, LoaderLeavesBaselineJpegsEncodedWithTheSameTransform) {
  test::ScopedTempDir dir;
  int jpegs = 0, others = 0;
  make_mixed_dataset(dir.path, &jpegs, &others);
  ASSERT_EQ(jpegs, 16);
  ASSERT_EQ(others, 2);
  ScanOptions scan;
  scan.use_cache = false;
  const ImageFolder data = ImageFolder::scan(dir.path, scan);
  expect_decoded_batches_equal(data, /*train=*/true);
  expect_decoded_batches_equal(data, /*train=*/false);
}

TEST(EncodedSamples, WithoutCudaTheGpuDecoderSaysWhatToDo) {
#ifndef OXTRAIN_HAVE_CUDA
  try {
    runtime::make_gpu_jpeg_decoder(0);
    FAIL() << "a build without CUDA made a GPU decoder";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("built with CUDA"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--decode cpu"), std::string::npos) << e.what();
  }
#else
  GTEST_SKIP() << "a CUDA build; tests/test_cuda_jpeg_decoder.cc covers it";
#endif
}

}  // namespace
}  // namespace oxtrain::io
