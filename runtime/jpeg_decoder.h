// Decoding a batch of JPEGs on the GPU with nvJPEG, then resampling each into its sample of a
// uint8 [N, size, size, 3] batch in device memory with the transform's taps (the per-pixel
// math of runtime/math/resample.h, which the loader's CPU transforms share). The loader draws
// the taps (io::train_taps, io::val_taps) and decodes on the CPU what nvJPEG's hardware
// decoder does not take; this class uploads those samples beside the decoded ones.
//
// nvJPEG is loaded when the decoder is made (libnvjpeg.so.13, from the CUDA toolkit, or the
// path in OXTRAIN_NVJPEG_LIBRARY), so a build with CUDA runs without it until GPU decoding
// is asked for.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/math/resample.h"

namespace oxtrain::runtime {

// One sample: a JPEG to decode (data, size) with its taps, or pixels decoded on the host.
struct EncodedImage {
  const uint8_t* data = nullptr;  // the JPEG file; null when `pixels` holds the sample
  size_t size = 0;
  int width = 0, height = 0;  // the frame header's size
  const math::ResampleTap* cols = nullptr;  // `size` taps each, into the full-size image
  const math::ResampleTap* rows = nullptr;
  const uint8_t* pixels = nullptr;  // host: size x size x 3, the sample already transformed
};

class JpegDecoder {
 public:
  virtual ~JpegDecoder() = default;
  // Writes sample k of `images` into out + k * size * size * 3 (device memory), with the work
  // enqueued on `stream` (a cudaStream_t). A JPEG nvJPEG rejects or fails on is handed to
  // `on_host(k, pixels)`, which must write the sample (size x size x 3 bytes) on the host or
  // throw. Returns once the device is done with the batch (it waits for the stream, which
  // includes what the stream waited for before: the previous step's start).
  virtual void decode(const EncodedImage* images, int count, int size, uint8_t* out,
                      void* stream, const std::function<void(int, uint8_t*)>& on_host) = 0;
  // "nvJPEG 13.0.0, hardware decoder" and the like.
  virtual std::string describe() const = 0;
  // Images decoded by nvJPEG and by the host fallback so far.
  virtual int64_t decoded_on_device() const = 0;
  virtual int64_t decoded_on_host() const = 0;
};

// The decoder for CUDA device `device`; throws an Error saying what is missing (a build
// without CUDA, no libnvjpeg, no GPU) and what to do.
std::unique_ptr<JpegDecoder> make_gpu_jpeg_decoder(int device);

// The decoder's resampling kernel alone (for its test against the CPU twin): resamples one
// interleaved RGB host image of width x height by `size` column and row taps on CUDA device 0
// and returns the size x size x 3 bytes.
std::vector<uint8_t> resample_on_gpu(const uint8_t* rgb, int width, int height,
                                     const math::ResampleTap* cols, const math::ResampleTap* rows,
                                     int size);

}  // namespace oxtrain::runtime
