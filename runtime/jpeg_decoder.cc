// Builds without CUDA have no GPU decoder (runtime/cuda/jpeg_decoder.cu is the real one).
#include "runtime/jpeg_decoder.h"

#include "base/error.h"

namespace oxtrain::runtime {

#ifndef OXTRAIN_HAVE_CUDA
std::unique_ptr<JpegDecoder> make_gpu_jpeg_decoder(int) {
  throw Error("GPU decoding needs oxtrain built with CUDA (this build has no CUDA runtime); "
              "decode on the CPU (--decode cpu)");
}

std::vector<uint8_t> resample_on_gpu(const uint8_t*, int, int, const math::ResampleTap*,
                                     const math::ResampleTap*, int) {
  throw Error("resample_on_gpu: this build has no CUDA runtime");
}
#endif

}  // namespace oxtrain::runtime
