// The per-sample random numbers and torchvision's ImageNet transforms: RandomResizedCrop's
// box sampling, bilinear crop-and-resize (checked against a direct per-pixel reference of
// torch's bilinear interpolation), the exact mirror, Resize + CenterCrop, and both transforms
// end to end on JPEGs.
#include <gtest/gtest.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "io/decode.h"
#include "io/image.h"
#include "io/transforms.h"
#include "tests/helpers.h"

using namespace oxtrain;
using namespace oxtrain::io;

namespace {

// Smooth but not flat, so a misplaced sample shows.
Image wavy_image(int width, int height) {
  Image img;
  img.width = width;
  img.height = height;
  img.rgb.resize(size_t(width) * height * 3);
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x) {
      uint8_t* p = &img.rgb[(size_t(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(128 + 100 * std::sin(x * 0.09));
      p[1] = static_cast<uint8_t>(128 + 100 * std::cos(y * 0.07));
      p[2] = static_cast<uint8_t>(128 + 90 * std::sin((x + y) * 0.05));
    }
  return img;
}

Image constant_image(int width, int height, uint8_t r, uint8_t g, uint8_t b) {
  Image img;
  img.width = width;
  img.height = height;
  for (int i = 0; i < width * height; ++i) img.rgb.insert(img.rgb.end(), {r, g, b});
  return img;
}

Image crop(const Image& src, const CropBox& box) {
  Image out;
  out.width = box.width;
  out.height = box.height;
  for (int y = box.y; y < box.y + box.height; ++y) {
    const uint8_t* row = &src.rgb[(size_t(y) * src.width + box.x) * 3];
    out.rgb.insert(out.rgb.end(), row, row + size_t(box.width) * 3);
  }
  return out;
}

// torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False) of
// `src` to out_width x out_height, evaluated at one output pixel, written the way torch's
// upsample_bilinear2d does it: source index = max(0, scale * (dst + 0.5) - 0.5), the second
// tap clamped to the last pixel.
double torch_bilinear(const Image& src, int out_width, int out_height, int ox, int oy, int c) {
  auto index = [](int in, int out, int dst, int* i0, int* i1, double* lambda) {
    double s = double(in) / out * (dst + 0.5) - 0.5;
    if (s < 0) s = 0;
    *i0 = static_cast<int>(s);
    *i1 = *i0 + (*i0 < in - 1 ? 1 : 0);
    *lambda = s - *i0;
  };
  int x0, x1, y0, y1;
  double lx, ly;
  index(src.width, out_width, ox, &x0, &x1, &lx);
  index(src.height, out_height, oy, &y0, &y1, &ly);
  auto at = [&](int x, int y) { return double(src.rgb[(size_t(y) * src.width + x) * 3 + c]); };
  return (1 - ly) * ((1 - lx) * at(x0, y0) + lx * at(x1, y0)) +
         ly * ((1 - lx) * at(x0, y1) + lx * at(x1, y1));
}

// Largest difference between `out` (size x size) and the reference resize of `src` to
// out_width x out_height cropped at (left, top).
int max_diff_to_reference(const std::vector<uint8_t>& out, int size, const Image& src,
                          int out_width, int out_height, int left, int top) {
  int worst = 0;
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c) {
        double ref = torch_bilinear(src, out_width, out_height, left + x, top + y, c);
        int got = out[(size_t(y) * size + x) * 3 + c];
        worst = std::max(worst, int(std::abs(got - std::lround(ref))));
      }
  return worst;
}

double mean_abs_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  EXPECT_EQ(a.size(), b.size());
  double sum = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) sum += std::abs(int(a[i]) - int(b[i]));
  return a.empty() ? 0 : sum / a.size();
}

std::vector<uint8_t> mirror(const std::vector<uint8_t>& img, int size) {
  std::vector<uint8_t> out(img.size());
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (int c = 0; c < 3; ++c)
        out[(size_t(y) * size + x) * 3 + c] = img[(size_t(y) * size + size - 1 - x) * 3 + c];
  return out;
}

bool same_box(const CropBox& a, const CropBox& b) {
  return a.x == b.x && a.y == b.y && a.width == b.width && a.height == b.height;
}

}  // namespace

TEST(IoTransforms, SampleRngIsCounterBased) {
  SampleRng a(1, 2, 3), b(1, 2, 3);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(a.next_u64(), b.next_u64());
  // Any change of seed, epoch or sample gives another stream, including permutations.
  std::set<uint64_t> firsts;
  for (auto [s, e, n] : {std::tuple{1, 2, 3},
                         {1, 3, 2},
                         {2, 1, 3},
                         {3, 2, 1},
                         {0, 0, 0},
                         {1, 2, 4},
                         {1, 1, 3},
                         {2, 2, 3}})
    firsts.insert(SampleRng(s, e, n).next_u64());
  EXPECT_EQ(firsts.size(), 8u);
}

TEST(IoTransforms, SampleRngDistributions) {
  SampleRng rng(42, 0, 0);
  double sum = 0, lo = 1, hi = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    double u = rng.uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
    lo = std::min(lo, u);
    hi = std::max(hi, u);
  }
  EXPECT_NEAR(sum / n, 0.5, 0.005);
  EXPECT_LT(lo, 0.001);
  EXPECT_GT(hi, 0.999);
  for (int i = 0; i < 1000; ++i) {
    double v = rng.uniform(-3.0, 5.0);
    ASSERT_GE(v, -3.0);
    ASSERT_LT(v, 5.0);
  }
  // integer() is inclusive at both ends and even.
  std::map<int64_t, int> counts;
  for (int i = 0; i < n; ++i) counts[rng.integer(0, 9)]++;
  ASSERT_EQ(counts.size(), 10u);
  EXPECT_EQ(counts.begin()->first, 0);
  EXPECT_EQ(counts.rbegin()->first, 9);
  for (auto [v, c] : counts) EXPECT_NEAR(c, n / 10, n / 10 * 0.06) << v;
  EXPECT_EQ(rng.integer(7, 7), 7);
  for (int i = 0; i < 1000; ++i) {
    int64_t v = rng.integer(-5, 5);
    ASSERT_GE(v, -5);
    ASSERT_LE(v, 5);
  }
  rng.integer(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max());
  EXPECT_THROW(rng.integer(3, 2), Error);
}

// 20000 boxes on a 500x375 image: inside the image, 8% to 100% of its area, aspect ratio
// 3/4 to 4/3 (up to rounding to whole pixels), and spread over those ranges.
TEST(IoTransforms, RandomResizedCropStatistics) {
  const int W = 500, H = 375;
  const double area = double(W) * H;
  double min_frac = 1, max_frac = 0, min_ratio = 10, max_ratio = 0, log_ratio_sum = 0;
  double frac_sum = 0;
  int whole = 0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    SampleRng rng(5, 0, i);
    CropBox b = random_resized_crop_box(W, H, rng);
    ASSERT_GE(b.x, 0);
    ASSERT_GE(b.y, 0);
    ASSERT_GT(b.width, 0);
    ASSERT_GT(b.height, 0);
    ASSERT_LE(b.x + b.width, W);
    ASSERT_LE(b.y + b.height, H);
    double frac = b.width * double(b.height) / area;
    double ratio = double(b.width) / b.height;
    min_frac = std::min(min_frac, frac);
    max_frac = std::max(max_frac, frac);
    min_ratio = std::min(min_ratio, ratio);
    max_ratio = std::max(max_ratio, ratio);
    log_ratio_sum += std::log(ratio);
    frac_sum += frac;
    whole += b.width == W && b.height == H;
  }
  // Rounding each side to a pixel moves a box of 15000 px^2 (sides >= 106) by < 1%.
  EXPECT_GE(min_frac, 0.08 * 0.99);
  EXPECT_LE(max_frac, 1.0);
  EXPECT_LT(min_frac, 0.085);
  EXPECT_GT(max_frac, 0.9);
  EXPECT_GE(min_ratio, 0.75 * 0.99);
  EXPECT_LE(max_ratio, 4.0 / 3.0 * 1.01);
  EXPECT_LT(min_ratio, 0.76);
  EXPECT_GT(max_ratio, 1.3);
  // Log-uniform aspect ratio, but on a landscape image large tall boxes do not fit and are
  // drawn again: the accepted ones lean wide.
  EXPECT_GT(log_ratio_sum / n, 0.0);
  EXPECT_LT(log_ratio_sum / n, 0.1);
  // Accepted boxes of a uniform area fraction, minus the large ones that do not fit: the mean
  // is a little under (0.08 + 1) / 2.
  EXPECT_GT(frac_sum / n, 0.40);
  EXPECT_LT(frac_sum / n, 0.54);
  // The fallback (whole image; 500/375 is in range) is rare here.
  EXPECT_LT(whole, n / 100);

  // On a square image the rejections are symmetric, and so is the log of the aspect ratio.
  log_ratio_sum = 0;
  for (int i = 0; i < n; ++i) {
    SampleRng rng(6, 0, i);
    CropBox b = random_resized_crop_box(400, 400, rng);
    log_ratio_sum += std::log(double(b.width) / b.height);
  }
  EXPECT_NEAR(log_ratio_sum / n, 0.0, 0.005);
}

TEST(IoTransforms, RandomResizedCropFallsBackToTheCentreCrop) {
  for (int sample = 0; sample < 50; ++sample) {
    // 1000x50: every attempt is too tall; width = round(50 * 4/3) = 67, centred.
    SampleRng rng(1, 0, sample);
    CropBox wide = random_resized_crop_box(1000, 50, rng);
    EXPECT_EQ(wide.width, 67);
    EXPECT_EQ(wide.height, 50);
    EXPECT_EQ(wide.x, (1000 - 67) / 2);
    EXPECT_EQ(wide.y, 0);
    // 50x1000: height = round(50 / (3/4)) = 67.
    CropBox tall = random_resized_crop_box(50, 1000, rng);
    EXPECT_EQ(tall.width, 50);
    EXPECT_EQ(tall.height, 67);
    EXPECT_EQ(tall.x, 0);
    EXPECT_EQ(tall.y, (1000 - 67) / 2);
  }
  // Areas that never fit, with an in-range aspect ratio: the whole image.
  RandomResizedCropOptions too_big;
  too_big.scale_min = 1.5;
  too_big.scale_max = 2.0;
  SampleRng rng(1, 0, 0);
  CropBox whole = random_resized_crop_box(300, 250, rng, too_big);
  EXPECT_TRUE(same_box(whole, CropBox{0, 0, 300, 250}));
}

TEST(IoTransforms, RandomResizedCropRoundsLikePython) {
  // A fixed area of 156.25 px^2 at ratio 1: sqrt is exactly 12.5, and Python's round() gives
  // 12 (half to even), not 13.
  RandomResizedCropOptions o;
  o.scale_min = o.scale_max = 156.25 / 10000.0;
  o.ratio_min = o.ratio_max = 1.0;
  SampleRng rng(3, 0, 0);
  CropBox b = random_resized_crop_box(100, 100, rng, o);
  EXPECT_EQ(b.width, 12);
  EXPECT_EQ(b.height, 12);
  // Whole-image scale and ratio 1 on a square: the whole image.
  RandomResizedCropOptions all;
  all.scale_min = all.scale_max = 1.0;
  all.ratio_min = all.ratio_max = 1.0;
  EXPECT_TRUE(same_box(random_resized_crop_box(300, 300, rng, all), CropBox{0, 0, 300, 300}));
  // Bad options.
  RandomResizedCropOptions bad;
  bad.scale_min = 0.9;
  bad.scale_max = 0.1;
  EXPECT_THROW(random_resized_crop_box(100, 100, rng, bad), Error);
  bad = {};
  bad.ratio_min = -1;
  EXPECT_THROW(random_resized_crop_box(100, 100, rng, bad), Error);
  EXPECT_THROW(random_resized_crop_box(0, 100, rng), Error);
}

TEST(IoTransforms, RandomResizedCropIsDeterministicPerSample) {
  std::set<std::tuple<int, int, int, int>> distinct;
  for (int sample = 0; sample < 100; ++sample) {
    SampleRng a(11, 4, sample), b(11, 4, sample);
    CropBox ba = random_resized_crop_box(500, 375, a);
    CropBox bb = random_resized_crop_box(500, 375, b);
    EXPECT_TRUE(same_box(ba, bb));
    distinct.insert({ba.x, ba.y, ba.width, ba.height});
  }
  EXPECT_GT(distinct.size(), 95u);
}

TEST(IoTransforms, CropResizeCopiesWhenNothingIsResized) {
  Image img = test::random_image(40, 30, 1);
  std::vector<uint8_t> out(20 * 20 * 3);
  CropBox box{7, 5, 20, 20};
  crop_resize(img, 40, 30, box, 20, false, out.data());
  EXPECT_EQ(out, crop(img, box).rgb);
  Image square = test::random_image(32, 32, 2);
  std::vector<uint8_t> all(32 * 32 * 3);
  crop_resize(square, 32, 32, CropBox{0, 0, 32, 32}, 32, false, all.data());
  EXPECT_EQ(all, square.rgb);
}

// Against a per-pixel reference of torch's bilinear interpolation of the cropped image:
// downscaling, upscaling and non-square boxes.
TEST(IoTransforms, CropResizeMatchesTheBilinearReference) {
  Image img = test::random_image(97, 61, 3);
  struct Case {
    CropBox box;
    int size;
  };
  for (const Case& c :
       {Case{{10, 7, 50, 40}, 33}, Case{{10, 7, 50, 40}, 77}, Case{{0, 0, 97, 61}, 45},
        Case{{90, 50, 7, 11}, 16}, Case{{3, 0, 61, 61}, 224}}) {
    SCOPED_TRACE(std::to_string(c.box.width) + "x" + std::to_string(c.box.height) + " -> " +
                 std::to_string(c.size));
    std::vector<uint8_t> out(size_t(c.size) * c.size * 3);
    crop_resize(img, 97, 61, c.box, c.size, false, out.data());
    Image cropped = crop(img, c.box);
    EXPECT_LE(max_diff_to_reference(out, c.size, cropped, c.size, c.size, 0, 0), 1);
  }
}

TEST(IoTransforms, FlipIsTheExactMirror) {
  Image img = test::random_image(131, 87, 4);
  for (int sample = 0; sample < 20; ++sample) {
    SampleRng rng(2, 0, sample);
    CropBox box = random_resized_crop_box(131, 87, rng);
    for (int size : {17, 64}) {
      std::vector<uint8_t> plain(size_t(size) * size * 3), flipped(plain.size());
      crop_resize(img, 131, 87, box, size, false, plain.data());
      crop_resize(img, 131, 87, box, size, true, flipped.data());
      ASSERT_EQ(flipped, mirror(plain, size)) << sample << " " << size;
    }
  }
  // From a DCT-downscaled decode too (full size 262x174, decoded at 1/2).
  std::vector<uint8_t> plain(40 * 40 * 3), flipped(plain.size());
  crop_resize(img, 262, 174, CropBox{31, 20, 150, 120}, 40, false, plain.data());
  crop_resize(img, 262, 174, CropBox{31, 20, 150, 120}, 40, true, flipped.data());
  EXPECT_EQ(flipped, mirror(plain, 40));
}

// A box in full-size pixels lands on the same content whether the JPEG was decoded at full
// size or at 1/2, 1/4: the results differ by the decoding scale only.
TEST(IoTransforms, CropResizeFromADownscaledDecode) {
  Image img = wavy_image(640, 480);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 95);
  Decoded full = decode_image(jpeg.data(), jpeg.size(), "w.jpg");
  const CropBox box{101, 67, 400, 300};
  const int size = 96;
  std::vector<uint8_t> ref(size * size * 3), out(ref.size()), shifted(ref.size());
  crop_resize(full.image, 640, 480, box, size, false, ref.data());
  for (int target : {150, 70}) {  // decoded at 1/2 and 1/4
    Decoded small = decode_image(jpeg.data(), jpeg.size(), "w.jpg", {400, 300, target, target});
    SCOPED_TRACE("decoded at 1/" + std::to_string(small.scale_denom));
    EXPECT_GT(small.scale_denom, 1);
    crop_resize(small.image, 640, 480, box, size, false, out.data());
    double diff = mean_abs_diff(out, ref);
    EXPECT_LT(diff, 2.0);
    // Shifted by 3 full-size pixels the difference is clearly larger: the test sees placement.
    crop_resize(small.image, 640, 480, CropBox{box.x + 3, box.y, box.width, box.height}, size,
                false, shifted.data());
    EXPECT_GT(mean_abs_diff(shifted, ref), 2 * diff);
  }
}

TEST(IoTransforms, ValidationResize) {
  EXPECT_EQ(validation_resize(224), 256);
  EXPECT_EQ(validation_resize(112), 128);
  EXPECT_EQ(validation_resize(64), 73);
  EXPECT_EQ(validation_resize(160), 183);
}

// Resize(256) + CenterCrop(224) of a 300x200 image: the resized image is 384x256 (torchvision:
// int(256 * 300 / 200)), the crop starts at (80, 16).
TEST(IoTransforms, ResizeCenterCropMatchesTheReference) {
  Image img = test::random_image(300, 200, 5);
  std::vector<uint8_t> out(224 * 224 * 3);
  resize_center_crop(img, 300, 200, 256, 224, out.data());
  EXPECT_LE(max_diff_to_reference(out, 224, img, 384, 256, 80, 16), 1);

  // Portrait: 200x300 -> 256x384, crop at (16, 80).
  Image tall = test::random_image(200, 300, 6);
  resize_center_crop(tall, 200, 300, 256, 224, out.data());
  EXPECT_LE(max_diff_to_reference(out, 224, tall, 256, 384, 16, 80), 1);

  // 8x6 to size 4: resize to round(4 * 256 / 224) = 5, giving 6x5 (int(5 * 8 / 6) = 6); the
  // crop's top is round(0.5) = 0 in Python (half to even), its left round(1.0) = 1.
  Image tiny = test::random_image(8, 6, 7);
  ASSERT_EQ(validation_resize(4), 5);
  std::vector<uint8_t> small(4 * 4 * 3);
  resize_center_crop(tiny, 8, 6, 5, 4, small.data());
  EXPECT_LE(max_diff_to_reference(small, 4, tiny, 6, 5, 1, 0), 1);

  // A shorter side already at the resize size and a square crop of all of it: a copy.
  Image square = test::random_image(50, 50, 8);
  std::vector<uint8_t> copy(50 * 50 * 3);
  resize_center_crop(square, 50, 50, 50, 50, copy.data());
  EXPECT_EQ(copy, square.rgb);
}

TEST(IoTransforms, ConstantColourStaysThatColour) {
  Image img = constant_image(123, 77, 12, 200, 77);
  std::vector<uint8_t> out(64 * 64 * 3);
  auto all_equal = [&](int tolerance) {
    for (size_t i = 0; i < out.size(); i += 3)
      if (std::abs(out[i] - 12) > tolerance || std::abs(out[i + 1] - 200) > tolerance ||
          std::abs(out[i + 2] - 77) > tolerance)
        return false;
    return true;
  };
  resize_center_crop(img, 123, 77, validation_resize(64), 64, out.data());
  EXPECT_TRUE(all_equal(0));
  crop_resize(img, 123, 77, CropBox{3, 4, 100, 70}, 64, true, out.data());
  EXPECT_TRUE(all_equal(0));
  // Through JPEG, at full size and DCT-scaled.
  Image big = constant_image(600, 450, 12, 200, 77);
  std::vector<uint8_t> jpeg = encode_jpeg(big, 95);
  val_transform(jpeg.data(), jpeg.size(), "c.jpg", 64, out.data());
  EXPECT_TRUE(all_equal(3));
  SampleRng rng(1, 1, 1);
  train_transform(jpeg.data(), jpeg.size(), "c.jpg", 64, rng, out.data());
  EXPECT_TRUE(all_equal(3));
}

// val_transform decodes only as large as the centre crop needs; the result matches the same
// transform from the full-size decode up to the decoding scale.
TEST(IoTransforms, ValTransformMatchesTheFullSizeComputation) {
  Image img = wavy_image(640, 480);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 95);
  Decoded full = decode_image(jpeg.data(), jpeg.size(), "v.jpg");
  for (int size : {224, 112, 64}) {
    SCOPED_TRACE(size);
    std::vector<uint8_t> ref(size_t(size) * size * 3), out(ref.size());
    resize_center_crop(full.image, 640, 480, validation_resize(size), size, ref.data());
    val_transform(jpeg.data(), jpeg.size(), "v.jpg", size, out.data());
    EXPECT_LT(mean_abs_diff(out, ref), size == 224 ? 0.01 : 2.0);
  }
}

TEST(IoTransforms, TrainTransformIsDeterministicPerSeed) {
  Image img = wavy_image(500, 375);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 90);
  const int size = 96;
  auto run = [&](uint64_t seed, int64_t epoch, int64_t sample) {
    std::vector<uint8_t> out(size * size * 3);
    SampleRng rng(seed, epoch, sample);
    train_transform(jpeg.data(), jpeg.size(), "t.jpg", size, rng, out.data());
    return out;
  };
  EXPECT_EQ(run(1, 0, 0), run(1, 0, 0));
  EXPECT_EQ(run(9, 3, 17), run(9, 3, 17));
  EXPECT_NE(run(1, 0, 0), run(2, 0, 0));
  EXPECT_NE(run(1, 0, 0), run(1, 1, 0));
  EXPECT_NE(run(1, 0, 0), run(1, 0, 1));

  // It is header -> box -> scaled decode -> crop_resize, flip drawn after the box.
  for (int sample = 0; sample < 10; ++sample) {
    SampleRng rng(4, 0, sample);
    ImageHeader h = read_header(jpeg.data(), jpeg.size(), "t.jpg");
    CropBox box = random_resized_crop_box(h.width, h.height, rng);
    Decoded d =
        decode_image(jpeg.data(), jpeg.size(), "t.jpg", {box.width, box.height, size, size});
    bool flip = rng.uniform() < 0.5;
    std::vector<uint8_t> manual(size * size * 3);
    crop_resize(d.image, d.full_width, d.full_height, box, size, flip, manual.data());
    EXPECT_EQ(run(4, 0, sample), manual) << sample;
  }
}

// The crop options reach the box sampling: scale 1 and the image's own aspect ratio leave
// only the whole image, mirrored or not.
TEST(IoTransforms, TrainTransformTakesTheCropOptions) {
  Image img = wavy_image(400, 300);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 90);
  const int size = 48;
  // What train_transform decodes for that box (at 1/4).
  Decoded full = decode_image(jpeg.data(), jpeg.size(), "o.jpg", {400, 300, size, size});
  EXPECT_EQ(full.scale_denom, 4);
  RandomResizedCropOptions whole;
  whole.scale_min = whole.scale_max = 1.0;
  whole.ratio_min = whole.ratio_max = 4.0 / 3.0;
  std::vector<uint8_t> plain(size * size * 3), flipped(plain.size()), out(plain.size());
  crop_resize(full.image, 400, 300, CropBox{0, 0, 400, 300}, size, false, plain.data());
  crop_resize(full.image, 400, 300, CropBox{0, 0, 400, 300}, size, true, flipped.data());
  int n_plain = 0, n_flipped = 0;
  for (int sample = 0; sample < 20; ++sample) {
    SampleRng rng(1, 0, sample);
    train_transform(jpeg.data(), jpeg.size(), "o.jpg", size, rng, out.data(), whole);
    n_plain += out == plain;
    n_flipped += out == flipped;
  }
  EXPECT_EQ(n_plain + n_flipped, 20);
  EXPECT_GT(n_plain, 0);
  EXPECT_GT(n_flipped, 0);
}

TEST(IoTransforms, TransformsOfAnImageThatIsNotJpeg) {
  // A PNG has no DCT scaling; both transforms must still work on it.
  const int w = 64, h = 48;
  Image img = wavy_image(w, h);
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = w;
  image.height = h;
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  ASSERT_TRUE(png_image_write_to_memory(&image, nullptr, &size, 0, img.rgb.data(), 0, nullptr));
  std::vector<uint8_t> png(size);
  ASSERT_TRUE(png_image_write_to_memory(&image, png.data(), &size, 0, img.rgb.data(), 0, nullptr));
  png.resize(size);
  Decoded d = decode_image(png.data(), png.size(), "p.JPEG");
  ASSERT_EQ(d.image.rgb, img.rgb);

  std::vector<uint8_t> out(32 * 32 * 3), again(out.size()), ref(out.size());
  SampleRng a(1, 0, 0), b(1, 0, 0);
  train_transform(png.data(), png.size(), "p.JPEG", 32, a, out.data());
  train_transform(png.data(), png.size(), "p.JPEG", 32, b, again.data());
  EXPECT_EQ(out, again);
  val_transform(png.data(), png.size(), "p.JPEG", 32, out.data());
  resize_center_crop(img, w, h, validation_resize(32), 32, ref.data());
  EXPECT_EQ(out, ref);
}

TEST(IoTransforms, TinyImagesAreUpscaled) {
  Image img = wavy_image(20, 10);
  std::vector<uint8_t> jpeg = encode_jpeg(img, 90);
  std::vector<uint8_t> out(224 * 224 * 3);
  SampleRng rng(0, 0, 0);
  train_transform(jpeg.data(), jpeg.size(), "tiny.jpg", 224, rng, out.data());
  val_transform(jpeg.data(), jpeg.size(), "tiny.jpg", 224, out.data());
}

TEST(IoTransforms, BadArgumentsAreErrors) {
  Image img = test::random_image(40, 30, 9);
  std::vector<uint8_t> out(64 * 64 * 3);
  EXPECT_THROW(crop_resize(img, 40, 30, CropBox{30, 0, 20, 10}, 16, false, out.data()), Error);
  EXPECT_THROW(crop_resize(img, 40, 30, CropBox{0, 0, 0, 10}, 16, false, out.data()), Error);
  EXPECT_THROW(crop_resize(img, 40, 30, CropBox{-1, 0, 10, 10}, 16, false, out.data()), Error);
  EXPECT_THROW(crop_resize(img, 40, 30, CropBox{0, 0, 10, 10}, 0, false, out.data()), Error);
  EXPECT_THROW(resize_center_crop(img, 40, 30, 16, 32, out.data()), Error);
  Image broken = img;
  broken.rgb.pop_back();
  EXPECT_THROW(crop_resize(broken, 40, 30, CropBox{0, 0, 10, 10}, 16, false, out.data()), Error);
  // Undecodable input is a DecodeError, as from the decoder.
  std::vector<uint8_t> jpeg = encode_jpeg(wavy_image(200, 150), 90);
  jpeg.resize(jpeg.size() * 6 / 10);
  SampleRng rng(0, 0, 0);
  EXPECT_THROW(train_transform(jpeg.data(), jpeg.size(), "cut.jpg", 64, rng, out.data()),
               DecodeError);
  EXPECT_THROW(val_transform(jpeg.data(), jpeg.size(), "cut.jpg", 64, out.data()), DecodeError);
}
