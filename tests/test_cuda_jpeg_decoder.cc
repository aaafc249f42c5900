// GPU decoding (--decode gpu): the resampling kernel against its CPU twin, bit for bit, on odd
// shapes; nvJPEG's batch against libjpeg-turbo's decode of the same files through the same
// taps; samples decoded on the host go up unchanged, and whatever nvJPEG refuses comes back
// through the host fallback. GPU tests skip where no GPU is at hand; the missing-library error
// is checked everywhere the build has CUDA.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "base/error.h"
#include "io/decode.h"
#include "io/image.h"
#include "io/transforms.h"
#include "runtime/jpeg_decoder.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

#ifdef OXTRAIN_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace oxtrain {
namespace {

io::Image test_image(int width, int height, int seed) {
  io::Image im;
  im.width = width;
  im.height = height;
  im.rgb.resize(size_t(width) * height * 3);
  uint32_t s = 977u * uint32_t(seed) + 1u;
  for (size_t i = 0; i < im.rgb.size(); ++i) {
    s = s * 1664525u + 1013904223u;
    const size_t p = i / 3;
    const int x = int(p % size_t(width)), y = int(p / size_t(width));
    // Smooth colour gradients with a little noise: photographs' kind of content, where
    // decoders differ by rounding, not by reconstruction of sharp chroma edges.
    const int v = (x * 200) / std::max(1, width - 1) + (y * 50) / std::max(1, height - 1) +
                  int(i % 3) * 25 + int(s >> 29) - 4;
    im.rgb[i] = uint8_t(std::clamp(v, 0, 255));
  }
  return im;
}

#ifdef OXTRAIN_HAVE_CUDA
TEST(CudaJpegDecoder, AMissingLibraryIsNamedWithWhatToDo) {
  // Loading comes before any GPU call, so this runs without a GPU.
  const char* old = std::getenv("OXTRAIN_NVJPEG_LIBRARY");
  const std::string saved = old ? old : "";
  setenv("OXTRAIN_NVJPEG_LIBRARY", "/nonexistent/libnvjpeg.so.13", 1);
  std::string message;
  try {
    runtime::make_gpu_jpeg_decoder(0);
  } catch (const Error& e) {
    message = e.what();
  }
  if (old) setenv("OXTRAIN_NVJPEG_LIBRARY", saved.c_str(), 1);
  else unsetenv("OXTRAIN_NVJPEG_LIBRARY");
  EXPECT_NE(message.find("GPU decoding needs nvJPEG"), std::string::npos) << message;
  EXPECT_NE(message.find("/nonexistent/libnvjpeg.so.13"), std::string::npos) << message;
  EXPECT_NE(message.find("--decode cpu"), std::string::npos) << message;
}
#endif

TEST(CudaJpegDecoder, ResamplingKernelIsTheCpuTwinBitForBit) {
  OXTRAIN_REQUIRE_GPU();
  int cases = 0;
  for (auto [w, h] : {std::pair{5, 7}, {13, 11}, {301, 97}, {640, 480}})
    for (int size : {1, 7, 33, 224})
      for (int seed = 0; seed < 2; ++seed) {
        const io::Image im = test_image(w, h, seed + w);
        io::SampleRng rng(uint64_t(seed), 3, uint64_t(w + h));
        for (const io::SampleTaps& taps : {io::train_taps(w, h, size, rng), io::val_taps(w, h, size)}) {
          std::vector<uint8_t> want(size_t(size) * size * 3);
          io::resample_taps(im, taps, want.data());
          const std::vector<uint8_t> got =
              runtime::resample_on_gpu(im.rgb.data(), w, h, taps.cols.data(), taps.rows.data(), size);
          ASSERT_EQ(got, want) << w << "x" << h << " to " << size << ", seed " << seed;
          ++cases;
        }
      }
  EXPECT_EQ(cases, 64);
}

#ifdef OXTRAIN_HAVE_CUDA
std::vector<uint8_t> jpeg_of(const io::Image& im, int subsampling, int flags = 0) {
  return test::tj_compress(im.rgb.data(), im.width, im.height, TJPF_RGB, subsampling, 92, flags);
}

// A decoded batch in device memory, read back.
std::vector<uint8_t> decode_batch(runtime::JpegDecoder& d, const std::vector<runtime::EncodedImage>& images,
                                  int size, int* host_calls) {
  const size_t per = size_t(size) * size * 3, bytes = per * images.size();
  uint8_t* out = nullptr;
  EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), bytes), cudaSuccess);
  EXPECT_EQ(cudaMemset(out, 0xAB, bytes), cudaSuccess);
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  *host_calls = 0;
  d.decode(images.data(), int(images.size()), size, out, stream, [&](int k, uint8_t* pixels) {
    ++*host_calls;
    const runtime::EncodedImage& e = images[size_t(k)];
    io::SampleTaps taps;
    taps.cols.assign(e.cols, e.cols + size);
    taps.rows.assign(e.rows, e.rows + size);
    try {
      io::decode_resample(e.data, e.size, "host fallback", taps, pixels);
    } catch (const io::DecodeError&) {  // as the trainer does: a black image
      std::fill(pixels, pixels + per, uint8_t{0});
    }
  });
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  std::vector<uint8_t> host(bytes);
  EXPECT_EQ(cudaMemcpy(host.data(), out, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  cudaStreamDestroy(stream);
  cudaFree(out);
  return host;
}

struct DecodeCase {
  std::string name;
  int width, height, subsampling, flags;
  // nvJPEG and libjpeg-turbo differ in IDCT rounding (1 or 2 levels) and, with chroma
  // subsampling, in how chroma is upsampled (libjpeg-turbo interpolates; nvJPEG's hardware
  // may replicate), which on these gradients moves a pixel by a few levels at most.
  double max_mean_difference;
  int max_difference;
};

TEST(CudaJpegDecoder, DecodesABatchAsLibjpegTurboDoes) {
  OXTRAIN_REQUIRE_GPU();
  const int size = 64;
  const std::vector<DecodeCase> cases = {
      {"4:4:4", 67, 45, TJSAMP_444, 0, 0.5, 5},
      {"4:2:2", 128, 96, TJSAMP_422, 0, 1.0, 8},
      {"4:2:0", 301, 97, TJSAMP_420, 0, 1.0, 8},
      {"4:2:0 large", 1203, 901, TJSAMP_420, 0, 1.0, 8},
      {"4:4:0", 90, 130, TJSAMP_440, 0, 1.0, 8},
      {"grey", 77, 55, TJSAMP_GRAY, 0, 0.5, 3},
      {"progressive", 160, 120, TJSAMP_420, TJFLAG_PROGRESSIVE, 1.0, 8},
  };
  std::vector<std::vector<uint8_t>> files;
  std::vector<io::SampleTaps> taps;
  for (size_t k = 0; k < cases.size(); ++k) {
    const DecodeCase& c = cases[k];
    files.push_back(jpeg_of(test_image(c.width, c.height, int(k)), c.subsampling, c.flags));
    ASSERT_FALSE(files.back().empty()) << c.name;
    io::SampleRng rng(5, 0, k);
    taps.push_back(io::train_taps(c.width, c.height, size, rng));
  }
  // The last two samples come decoded from the host: one as the loader gives it, one padding.
  const size_t per = size_t(size) * size * 3;
  std::vector<uint8_t> host_sample(per), black(per, 0);
  for (size_t i = 0; i < per; ++i) host_sample[i] = uint8_t(i * 7 + 3);
  std::vector<runtime::EncodedImage> images(cases.size() + 2);
  for (size_t k = 0; k < cases.size(); ++k)
    images[k] = {files[k].data(), files[k].size(), cases[k].width, cases[k].height,
                 taps[k].cols.data(), taps[k].rows.data(), nullptr};
  images[cases.size()].pixels = host_sample.data();
  images[cases.size() + 1].pixels = black.data();

  std::unique_ptr<runtime::JpegDecoder> d = runtime::make_gpu_jpeg_decoder(0);
  std::printf("decoder: %s\n", d->describe().c_str());
  for (int round = 0; round < 2; ++round) {  // the second batch reuses every buffer
    int host_calls = 0;
    const std::vector<uint8_t> got = decode_batch(*d, images, size, &host_calls);
    for (size_t k = 0; k < cases.size(); ++k) {
      std::vector<uint8_t> want(per);
      io::decode_resample(files[k].data(), files[k].size(), cases[k].name, taps[k], want.data());
      double sum = 0;
      int worst = 0;
      for (size_t i = 0; i < per; ++i) {
        const int diff = std::abs(int(got[k * per + i]) - int(want[i]));
        sum += diff;
        worst = std::max(worst, diff);
      }
      EXPECT_LE(sum / double(per), cases[k].max_mean_difference) << cases[k].name;
      EXPECT_LE(worst, cases[k].max_difference) << cases[k].name;
    }
    EXPECT_EQ(0, std::memcmp(got.data() + cases.size() * per, host_sample.data(), per));
    EXPECT_EQ(0, std::memcmp(got.data() + (cases.size() + 1) * per, black.data(), per));
    // Every baseline file is nvJPEG's; the progressive one is the host fallback's where the
    // hardware decoder is used (the hybrid backend takes it too).
    EXPECT_EQ(d->decoded_on_device() + d->decoded_on_host(), int64_t(cases.size()) * (round + 1));
    EXPECT_GE(d->decoded_on_device(), int64_t(cases.size() - 1) * (round + 1)) << d->describe();
    if (d->describe().find("hardware") != std::string::npos) {
      EXPECT_EQ(host_calls, 1);
    }
    EXPECT_EQ(host_calls, int(d->decoded_on_host() / (round + 1)));
  }
}

TEST(CudaJpegDecoder, ABrokenFileInTheBatchGoesToTheHost) {
  OXTRAIN_REQUIRE_GPU();
  const int size = 32;
  std::vector<uint8_t> good = jpeg_of(test_image(50, 40, 1), TJSAMP_420);
  std::vector<uint8_t> broken = good;
  broken.resize(broken.size() / 3);  // header intact, most of the scan gone
  io::SampleRng rng(1, 1, 1);
  const io::SampleTaps taps = io::train_taps(50, 40, size, rng);
  std::vector<runtime::EncodedImage> images = {
      {good.data(), good.size(), 50, 40, taps.cols.data(), taps.rows.data(), nullptr},
      {broken.data(), broken.size(), 50, 40, taps.cols.data(), taps.rows.data(), nullptr}};
  std::unique_ptr<runtime::JpegDecoder> d = runtime::make_gpu_jpeg_decoder(0);
  int host_calls = 0;
  // Either nvJPEG rejects the batch, and both go to the host (where the broken one becomes
  // black), or it decodes what is left of the broken file and the batch completes. Either
  // way the good image comes out right and the batch is whole.
  const std::vector<uint8_t> got = decode_batch(*d, images, size, &host_calls);
  ASSERT_EQ(got.size(), 2 * size_t(size) * size * 3);
  EXPECT_EQ(d->decoded_on_device() + d->decoded_on_host(), 2);
  EXPECT_EQ(host_calls, int(d->decoded_on_host()));
  std::vector<uint8_t> want(size_t(size) * size * 3);
  io::decode_resample(good.data(), good.size(), "good", taps, want.data());
  double sum = 0;
  for (size_t i = 0; i < want.size(); ++i) sum += std::abs(int(got[i]) - int(want[i]));
  EXPECT_LE(sum / double(want.size()), 1.0) << "the good image of a batch with a broken one";
  // The next batch, of good images only, decodes on the device again.
  images[1] = images[0];
  const int64_t before = d->decoded_on_device();
  decode_batch(*d, images, size, &host_calls);
  EXPECT_EQ(d->decoded_on_device() - before, 2) << d->describe();
}
#endif  // OXTRAIN_HAVE_CUDA

}  // namespace
}  // namespace oxtrain
