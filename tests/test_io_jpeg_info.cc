// JPEG frame headers: real JPEGs from TurboJPEG in each sampling, progressive and CMYK; hand-built
// headers for 12-bit, arithmetic and malformed frames; every truncation up to the frame header,
// garbage and a PNG refused.
#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "io/jpeg_info.h"
#include "tests/helpers.h"

using namespace oxtrain::io;

namespace {

constexpr int kWidth = 67, kHeight = 45;  // odd and unequal: width and height cannot be swapped

// A smooth image with `channels` bytes a pixel.
std::vector<uint8_t> smooth_pixels(int channels) {
  std::vector<uint8_t> px(size_t(kWidth) * kHeight * channels);
  for (int y = 0; y < kHeight; ++y)
    for (int x = 0; x < kWidth; ++x)
      for (int c = 0; c < channels; ++c)
        px[(size_t(y) * kWidth + x) * channels + c] =
            static_cast<uint8_t>(128 + 100 * std::sin(0.07 * x * (c + 1)) * std::cos(0.05 * y));
  return px;
}

std::vector<uint8_t> make_jpeg(int subsamp, int flags = 0, int pixel_format = TJPF_RGB) {
  const std::vector<uint8_t> px = smooth_pixels(tjPixelSize[pixel_format]);
  return oxtrain::test::tj_compress(px.data(), kWidth, kHeight, pixel_format, subsamp, 90, flags);
}

JpegInfo parse_ok(const std::vector<uint8_t>& jpeg) {
  JpegInfo info;
  EXPECT_TRUE(read_jpeg_info(jpeg.data(), jpeg.size(), &info));
  return info;
}

bool parses(const std::vector<uint8_t>& bytes) {
  JpegInfo info;
  return read_jpeg_info(bytes.data(), bytes.size(), &info);
}

// SOI then a 32 x 16 frame header of the given marker, precision and components (their HiVi
// bytes).
std::vector<uint8_t> hand_built(int sof, int precision,
                                std::vector<uint8_t> hv = {0x22, 0x11, 0x11}) {
  const int nf = static_cast<int>(hv.size());
  const int len = 8 + 3 * nf;
  std::vector<uint8_t> b = {0xFF, 0xD8, 0xFF, uint8_t(sof), uint8_t(len >> 8), uint8_t(len)};
  for (int byte : {precision, 0, 16, 0, 32, nf}) b.push_back(uint8_t(byte));  // height, width
  for (int c = 0; c < nf; ++c)
    for (int byte : {c + 1, int(hv[c]), int(c > 0)}) b.push_back(uint8_t(byte));  // id, HiVi, Tq
  return b;
}

// A segment (marker and payload, the length worked out) inserted after SOI.
std::vector<uint8_t> with_segment(std::vector<uint8_t> jpeg, int marker,
                                  std::vector<uint8_t> payload) {
  const size_t len = payload.size() + 2;
  std::vector<uint8_t> seg = {0xFF, uint8_t(marker), uint8_t(len >> 8), uint8_t(len)};
  seg.insert(seg.end(), payload.begin(), payload.end());
  jpeg.insert(jpeg.begin() + 2, seg.begin(), seg.end());
  return jpeg;
}

void expect_sampling(const JpegInfo& info, std::vector<int> h, std::vector<int> v) {
  ASSERT_EQ(info.components, static_cast<int>(h.size()));
  for (size_t c = 0; c < h.size(); ++c) {
    EXPECT_EQ(info.h[c], h[c]) << "component " << c;
    EXPECT_EQ(info.v[c], v[c]) << "component " << c;
  }
}

}  // namespace

TEST(JpegInfo, BaselineSamplingsGoToHardware) {
  struct Case {
    int subsamp;
    int luma_h, luma_v;
  };
  std::vector<Case> cases = {
      {TJSAMP_444, 1, 1}, {TJSAMP_422, 2, 1}, {TJSAMP_420, 2, 2}, {TJSAMP_440, 1, 2}};
  for (const Case& c : cases) {
    SCOPED_TRACE("subsamp " + std::to_string(c.subsamp));
    const JpegInfo info = parse_ok(make_jpeg(c.subsamp));
    EXPECT_EQ(info.width, kWidth);
    EXPECT_EQ(info.height, kHeight);
    EXPECT_EQ(info.precision, 8);
    EXPECT_EQ(info.sof, 0xC0);
    EXPECT_EQ(info.adobe_transform, -1);
    expect_sampling(info, {c.luma_h, 1, 1}, {c.luma_v, 1, 1});
    EXPECT_TRUE(hardware_decodable(info));
  }
}

#if TJ_NUMSAMP > 5
TEST(JpegInfo, Sampling411GoesToCpu) {  // the hardware backend has no 4:1:1
  const JpegInfo info = parse_ok(make_jpeg(TJSAMP_411));
  EXPECT_EQ(info.sof, 0xC0);
  expect_sampling(info, {4, 1, 1}, {1, 1, 1});
  EXPECT_FALSE(hardware_decodable(info));
}
#endif

TEST(JpegInfo, GrayscaleGoesToHardware) {
  const JpegInfo info = parse_ok(make_jpeg(TJSAMP_GRAY));
  EXPECT_EQ(info.width, kWidth);
  EXPECT_EQ(info.height, kHeight);
  EXPECT_EQ(info.sof, 0xC0);
  expect_sampling(info, {1}, {1});
  EXPECT_TRUE(hardware_decodable(info));
}

TEST(JpegInfo, ProgressiveGoesToCpu) {
  const JpegInfo info = parse_ok(make_jpeg(TJSAMP_420, TJFLAG_PROGRESSIVE));
  EXPECT_EQ(info.width, kWidth);
  EXPECT_EQ(info.height, kHeight);
  EXPECT_EQ(info.sof, 0xC2);
  expect_sampling(info, {2, 1, 1}, {2, 1, 1});
  EXPECT_FALSE(hardware_decodable(info));
}

TEST(JpegInfo, CmykGoesToCpu) {
  // TurboJPEG writes CMYK as YCCK with an Adobe APP14 segment.
  const JpegInfo info = parse_ok(make_jpeg(TJSAMP_444, 0, TJPF_CMYK));
  EXPECT_EQ(info.width, kWidth);
  EXPECT_EQ(info.height, kHeight);
  EXPECT_EQ(info.sof, 0xC0);
  EXPECT_EQ(info.adobe_transform, 2);  // YCCK
  expect_sampling(info, {1, 1, 1, 1}, {1, 1, 1, 1});
  EXPECT_FALSE(hardware_decodable(info));
}

TEST(JpegInfo, HandBuiltFrames) {
  // The same 4:2:0 frame in 8 bits goes to hardware; each change below is what sends it away.
  JpegInfo info = parse_ok(hand_built(0xC0, 8));
  EXPECT_EQ(info.width, 32);
  EXPECT_EQ(info.height, 16);
  expect_sampling(info, {2, 1, 1}, {2, 1, 1});
  EXPECT_TRUE(hardware_decodable(info));
  EXPECT_TRUE(hardware_decodable(parse_ok(hand_built(0xC1, 8))));

  info = parse_ok(hand_built(0xC1, 12));  // extended sequential, 12-bit
  EXPECT_EQ(info.sof, 0xC1);
  EXPECT_EQ(info.precision, 12);
  EXPECT_FALSE(hardware_decodable(info));

  info = parse_ok(hand_built(0xC9, 8));  // arithmetic-coded sequential
  EXPECT_EQ(info.sof, 0xC9);
  EXPECT_EQ(info.precision, 8);
  EXPECT_FALSE(hardware_decodable(info));

  info = parse_ok(hand_built(0xC3, 8));  // lossless
  EXPECT_EQ(info.sof, 0xC3);
  EXPECT_FALSE(hardware_decodable(info));

  // Samplings outside the list, and chroma that is not 1x1.
  EXPECT_FALSE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x31, 0x11, 0x11}))));
  EXPECT_FALSE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x44, 0x11, 0x11}))));
  EXPECT_FALSE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x22, 0x21, 0x11}))));
  EXPECT_FALSE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x22, 0x11, 0x12}))));
  EXPECT_FALSE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x42, 0x11, 0x11}))));  // 4:1:0
  EXPECT_TRUE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x12, 0x11, 0x11}))));  // 4:4:0
  // Two components: neither grey nor colour.
  EXPECT_FALSE(hardware_decodable(parse_ok(hand_built(0xC0, 8, {0x11, 0x11}))));
}

TEST(JpegInfo, MarkersBeforeTheFrame) {
  const std::vector<uint8_t> base = hand_built(0xC0, 8);
  // DHT (C4), DAC (CC) and JPG (C8) share the SOF range but are not frame headers.
  for (int m : {0xC4, 0xC8, 0xCC}) {
    const JpegInfo info = parse_ok(with_segment(base, m, {0, 1, 2}));
    EXPECT_EQ(info.sof, 0xC0) << std::hex << m;
  }
  // APP14 "Adobe" gives its transform byte; another payload, a short one or another APPn does
  // not. An RGB-coded 3-component JPEG (transform 0) goes to the CPU, a YCbCr one does not.
  auto adobe = [&](int marker, std::vector<uint8_t> payload) {
    return parse_ok(with_segment(base, marker, payload));
  };
  const std::vector<uint8_t> rgb = {'A', 'd', 'o', 'b', 'e', 0, 100, 0, 0, 0, 0, 0};
  std::vector<uint8_t> ycc = rgb;
  ycc[11] = 1;
  EXPECT_EQ(adobe(0xEE, rgb).adobe_transform, 0);
  EXPECT_FALSE(hardware_decodable(adobe(0xEE, rgb)));
  EXPECT_EQ(adobe(0xEE, ycc).adobe_transform, 1);
  EXPECT_TRUE(hardware_decodable(adobe(0xEE, ycc)));
  EXPECT_EQ(adobe(0xEE, {'A', 'd', 'o', 'b', 'f', 0, 100, 0, 0, 0, 0, 0}).adobe_transform, -1);
  EXPECT_EQ(adobe(0xEE, {'A', 'd', 'o', 'b', 'e', 0, 100}).adobe_transform, -1);
  EXPECT_EQ(adobe(0xED, rgb).adobe_transform, -1);

  // Fill bytes, TEM and RSTn carry no length.
  std::vector<uint8_t> b = base;
  b.insert(b.begin() + 2, {0xFF, 0xFF, 0xFF, 0x01, 0xFF, 0xD0, 0xFF, 0xD7, 0xFF, 0xFF});
  EXPECT_EQ(parse_ok(b).width, 32);

  // EOI, SOS, a second SOI or a stuffed 00 before the frame.
  for (int m : {0xD9, 0xDA, 0xD8, 0x00}) {
    b = base;
    b.insert(b.begin() + 2, {0xFF, uint8_t(m), 0x00, 0x04, 0x00, 0x00});
    EXPECT_FALSE(parses(b)) << std::hex << m;
  }
  // Bytes between segments that are not a marker.
  b = base;
  b.insert(b.begin() + 2, 0x00);
  EXPECT_FALSE(parses(b));
  // Segment lengths under 2, and over the data.
  b = base;
  b.insert(b.begin() + 2, {0xFF, 0xE0, 0x00, 0x01});
  EXPECT_FALSE(parses(b));
  b = base;
  b.insert(b.begin() + 2, {0xFF, 0xE0, 0x00, 0x00});
  EXPECT_FALSE(parses(b));
  b = {0xFF, 0xD8, 0xFF, 0xE0, 0xFF, 0xFF, 0x00, 0x00};
  EXPECT_FALSE(parses(b));
}

TEST(JpegInfo, MalformedFramesAreRefused) {
  EXPECT_TRUE(parses(hand_built(0xC0, 8)));
  std::vector<uint8_t> b = hand_built(0xC0, 8);
  b[7] = b[8] = 0;  // height 0: DNL
  EXPECT_FALSE(parses(b));
  b = hand_built(0xC0, 8);
  b[9] = b[10] = 0;  // width 0
  EXPECT_FALSE(parses(b));
  b = hand_built(0xC0, 8);
  b[5] += 1;  // L != 8 + 3 Nf
  b.push_back(0);
  EXPECT_FALSE(parses(b));
  EXPECT_FALSE(parses(hand_built(0xC0, 8, {})));  // Nf 0
  EXPECT_FALSE(parses(hand_built(0xC0, 8, {0x11, 0x11, 0x11, 0x11, 0x11})));  // Nf 5
  EXPECT_TRUE(parses(hand_built(0xC0, 8, {0x11, 0x11, 0x11, 0x11})));
  for (uint8_t hv : {0x01, 0x10, 0x51, 0x15, 0x00}) {
    EXPECT_FALSE(parses(hand_built(0xC0, 8, {0x11, hv, 0x11}))) << int(hv);
  }
  EXPECT_TRUE(parses(hand_built(0xC0, 8, {0x44, 0x11, 0x11})));
}

TEST(JpegInfo, FailureLeavesInfoAlone) {
  JpegInfo info;
  info.width = -7;
  // Cut after the Adobe segment, before the frame: nothing is written, not even the transform.
  const std::vector<uint8_t> jpeg = make_jpeg(TJSAMP_444, 0, TJPF_CMYK);
  EXPECT_FALSE(read_jpeg_info(jpeg.data(), 40, &info));
  EXPECT_EQ(info.width, -7);
  EXPECT_EQ(info.adobe_transform, -1);
}

TEST(JpegInfo, EveryTruncationUpToTheFrameIsRefused) {
  for (int subsamp : {TJSAMP_420, TJSAMP_GRAY}) {
    const std::vector<uint8_t> jpeg = make_jpeg(subsamp);
    const JpegInfo info = parse_ok(jpeg);
    // The frame header: FF C0, length 8 + 3 Nf, precision 8, then height.
    const size_t len = 8 + 3 * size_t(info.components);
    const std::vector<uint8_t> sof = {0xFF, 0xC0, 0x00, uint8_t(len), 0x08, 0x00, kHeight};
    size_t at = 0;
    while (at + sof.size() <= jpeg.size() && !std::equal(sof.begin(), sof.end(), jpeg.begin() + at))
      ++at;
    ASSERT_LT(at + sof.size(), jpeg.size()) << "no frame header";
    const size_t sof_end = at + 2 + len;
    for (size_t n = 0; n <= sof_end; ++n) {
      // A copy of exactly n bytes, so that reading past it would read past an allocation.
      std::vector<uint8_t> prefix(jpeg.begin(), jpeg.begin() + n);
      JpegInfo got;
      EXPECT_EQ(read_jpeg_info(n ? prefix.data() : nullptr, n, &got), n == sof_end) << n;
    }
  }
}

TEST(JpegInfo, GarbageAndOtherFormatsAreRefused) {
  EXPECT_FALSE(parses({}));
  EXPECT_FALSE(parses({0xFF}));
  EXPECT_FALSE(parses({0xFF, 0xD8}));
  EXPECT_FALSE(parses({0xFF, 0xD8, 0xFF, 0xFF, 0xFF, 0xFF}));
  EXPECT_FALSE(parses(std::vector<uint8_t>(64, 0)));
  EXPECT_FALSE(parses(std::vector<uint8_t>(64, 0xFF)));
  const std::vector<uint8_t> png = {0x89, 'P',  'N',  'G',  0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00,
                                    0x00, 0x0D, 'I',  'H',  'D',  'R',  0x00, 0x00, 0x00, 0x20,
                                    0x00, 0x00, 0x00, 0x10, 0x08, 0x02, 0x00, 0x00, 0x00};
  EXPECT_FALSE(parses(png));
  // A JPEG whose SOI is damaged.
  std::vector<uint8_t> jpeg = make_jpeg(TJSAMP_420);
  ASSERT_TRUE(parses(jpeg));
  jpeg[1] = 0xD9;
  EXPECT_FALSE(parses(jpeg));

  // Random bytes after SOI (fixed seed): refused, never read out of bounds.
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000; ++i) {
    std::vector<uint8_t> b = {0xFF, 0xD8};
    const size_t n = rng() % 64;
    for (size_t k = 0; k < n; ++k) b.push_back(rng() % 4 == 0 ? 0xFF : uint8_t(rng()));
    EXPECT_FALSE(parses(b)) << i;
  }
}
