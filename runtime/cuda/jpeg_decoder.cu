// nvJPEG's batched decoder, then one kernel that resamples every decoded image into its sample
// (runtime/jpeg_decoder.h).
//
// nvJPEG comes from dlopen, its entry points through one table: a build with CUDA needs only
// the header (scripts/install-deps.sh fetches it), and a machine without libnvjpeg runs
// everything but GPU decoding. The hardware backend (the JPEG engines of A100, H100, H200)
// is taken where the device has one, else nvJPEG's default (hybrid) backend.
//
// Per batch: the JPEGs nvJPEG takes are decoded to interleaved RGB at full size into one
// device buffer (grown, never shrunk, so a steady run allocates nothing), the taps and a
// table of images go up through pinned memory, and resample_kernel writes every output pixel
// of those samples; samples decoded on the host are copied up beside them. All of it runs on
// the caller's stream, in order. decode() returns after an event on that stream says the
// host's inputs (the JPEG bytes, the pinned buffers) are free again.
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nvjpeg.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "base/error.h"
#include "runtime/cuda/context.h"
#include "runtime/jpeg_decoder.h"
#include "runtime/math/resample.h"

namespace oxtrain::runtime {
namespace {

struct NvjpegApi {
  void* library = nullptr;
  std::string path;
  nvjpegStatus_t (*GetProperty)(libraryPropertyType, int*) = nullptr;
  nvjpegStatus_t (*CreateEx)(nvjpegBackend_t, nvjpegDevAllocator_t*, nvjpegPinnedAllocator_t*,
                             unsigned int, nvjpegHandle_t*) = nullptr;
  nvjpegStatus_t (*Destroy)(nvjpegHandle_t) = nullptr;
  nvjpegStatus_t (*JpegStateCreate)(nvjpegHandle_t, nvjpegJpegState_t*) = nullptr;
  nvjpegStatus_t (*JpegStateDestroy)(nvjpegJpegState_t) = nullptr;
  nvjpegStatus_t (*DecodeBatchedInitialize)(nvjpegHandle_t, nvjpegJpegState_t, int, int,
                                            nvjpegOutputFormat_t) = nullptr;
  nvjpegStatus_t (*DecodeBatched)(nvjpegHandle_t, nvjpegJpegState_t, const unsigned char* const*,
                                  const size_t*, nvjpegImage_t*, cudaStream_t) = nullptr;
  nvjpegStatus_t (*JpegStreamCreate)(nvjpegHandle_t, nvjpegJpegStream_t*) = nullptr;
  nvjpegStatus_t (*JpegStreamDestroy)(nvjpegJpegStream_t) = nullptr;
  nvjpegStatus_t (*JpegStreamParseHeader)(nvjpegHandle_t, const unsigned char*, size_t,
                                          nvjpegJpegStream_t) = nullptr;
  // Optional: sizes the hardware decoder's memory pool once, so batches do not allocate.
  nvjpegStatus_t (*DecodeBatchedPreAllocate)(nvjpegHandle_t, nvjpegJpegState_t, int, int, int,
                                             nvjpegChromaSubsampling_t, nvjpegOutputFormat_t) = nullptr;
  nvjpegStatus_t (*DecodeBatchedSupported)(nvjpegHandle_t, nvjpegJpegStream_t, int*) = nullptr;
};

const char* status_name(nvjpegStatus_t s) {
  switch (s) {
    case NVJPEG_STATUS_SUCCESS: return "NVJPEG_STATUS_SUCCESS";
    case NVJPEG_STATUS_NOT_INITIALIZED: return "NVJPEG_STATUS_NOT_INITIALIZED";
    case NVJPEG_STATUS_INVALID_PARAMETER: return "NVJPEG_STATUS_INVALID_PARAMETER";
    case NVJPEG_STATUS_BAD_JPEG: return "NVJPEG_STATUS_BAD_JPEG";
    case NVJPEG_STATUS_JPEG_NOT_SUPPORTED: return "NVJPEG_STATUS_JPEG_NOT_SUPPORTED";
    case NVJPEG_STATUS_ALLOCATOR_FAILURE: return "NVJPEG_STATUS_ALLOCATOR_FAILURE";
    case NVJPEG_STATUS_EXECUTION_FAILED: return "NVJPEG_STATUS_EXECUTION_FAILED";
    case NVJPEG_STATUS_ARCH_MISMATCH: return "NVJPEG_STATUS_ARCH_MISMATCH";
    case NVJPEG_STATUS_INTERNAL_ERROR: return "NVJPEG_STATUS_INTERNAL_ERROR";
    case NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED:
      return "NVJPEG_STATUS_IMPLEMENTATION_NOT_SUPPORTED";
    case NVJPEG_STATUS_INCOMPLETE_BITSTREAM: return "NVJPEG_STATUS_INCOMPLETE_BITSTREAM";
  }
  return "an unknown nvJPEG status";
}

void check(nvjpegStatus_t status, const char* what) {
  if (status != NVJPEG_STATUS_SUCCESS)
    throw Error(std::string("GPU decoding: ") + what + ": " + status_name(status));
}

// Loads libnvjpeg and every entry point, or throws saying which library or symbol is missing.
NvjpegApi load_nvjpeg() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("OXTRAIN_NVJPEG_LIBRARY"); env && *env) {
    candidates.push_back(env);
  } else {
    candidates = {"libnvjpeg.so.13", "/usr/local/cuda/lib64/libnvjpeg.so.13", "libnvjpeg.so"};
  }
  NvjpegApi api;
  std::string tried;
  for (const std::string& c : candidates) {
    api.library = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (api.library) {
      api.path = c;
      break;
    }
    const char* why = dlerror();
    tried += "\n  " + c + ": " + (why ? why : "not found");
  }
  if (!api.library)
    throw Error("GPU decoding needs nvJPEG (libnvjpeg.so.13, part of the CUDA 13 toolkit), which "
                "could not be loaded:" + tried +
                "\nput its folder on LD_LIBRARY_PATH or name the file in OXTRAIN_NVJPEG_LIBRARY, "
                "or decode on the CPU (--decode cpu)");
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(api.library, name));
    if (!fn) throw Error("GPU decoding: " + api.path + " has no " + name + "; nvJPEG 13 is needed");
  };
  bind(api.GetProperty, "nvjpegGetProperty");
  bind(api.CreateEx, "nvjpegCreateEx");
  bind(api.Destroy, "nvjpegDestroy");
  bind(api.JpegStateCreate, "nvjpegJpegStateCreate");
  bind(api.JpegStateDestroy, "nvjpegJpegStateDestroy");
  bind(api.DecodeBatchedInitialize, "nvjpegDecodeBatchedInitialize");
  bind(api.DecodeBatched, "nvjpegDecodeBatched");
  bind(api.JpegStreamCreate, "nvjpegJpegStreamCreate");
  bind(api.JpegStreamDestroy, "nvjpegJpegStreamDestroy");
  bind(api.JpegStreamParseHeader, "nvjpegJpegStreamParseHeader");
  bind(api.DecodeBatchedSupported, "nvjpegDecodeBatchedSupported");
  api.DecodeBatchedPreAllocate = reinterpret_cast<decltype(api.DecodeBatchedPreAllocate)>(
      dlsym(api.library, "nvjpegDecodeBatchedPreAllocate"));
  return api;
}

// One sample the kernel resamples: its decoded image and its taps (in the taps buffer).
struct ResampleJob {
  const uint8_t* src = nullptr;
  int64_t stride = 0;      // bytes per decoded row
  int64_t taps = 0;        // index of its first column tap; rows follow the `size` columns
  int64_t sample = 0;      // its place in the batch
};

// One thread per output byte of the jobs' samples, in output order within a sample.
__global__ void resample_kernel(uint8_t* out, const ResampleJob* jobs,
                                const math::ResampleTap* taps, int size, int64_t per_sample,
                                int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i / per_sample, k = i % per_sample;
    const int c = int(k % 3);
    const int64_t pixel = k / 3;
    const int x = int(pixel % size), y = int(pixel / size);
    const ResampleJob job = jobs[j];
    const math::ResampleTap* t = taps + job.taps;
    out[job.sample * per_sample + k] = math::resample_pixel(job.src, job.stride, t[size + y], t[x], c);
  }
}

// A pinned host buffer (kPinned) or a device buffer that grows by half again at least, so that
// batches of varying sizes soon stop reallocating (freeing waits for the device).
template <bool kPinned>
struct GrowingBuffer {
  uint8_t* data = nullptr;
  size_t bytes = 0;
  ~GrowingBuffer() { release(); }
  void release() {
    if (data) (void)(kPinned ? cudaFreeHost(data) : cudaFree(data));
    data = nullptr;
    bytes = 0;
  }
  uint8_t* reserve(size_t want, const char* what) {
    if (want <= bytes) return data;
    want = std::max(want, bytes + bytes / 2);
    release();
    void** p = reinterpret_cast<void**>(&data);
    cuda::check(kPinned ? cudaHostAlloc(p, want, cudaHostAllocDefault) : cudaMalloc(p, want),
                kPinned ? "cudaHostAlloc" : "cudaMalloc", what);
    bytes = want;
    return data;
  }
};
using Pinned = GrowingBuffer<true>;
using DeviceBuffer = GrowingBuffer<false>;

size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

void launch_resample(uint8_t* out, const ResampleJob* jobs, const math::ResampleTap* taps,
                     int size, int64_t per_sample, int64_t jobs_count, cudaStream_t stream) {
  const int64_t total = jobs_count * per_sample;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  cudaGetLastError();  // an error nvJPEG left behind is not this launch's
  resample_kernel<<<unsigned(blocks), threads, 0, stream>>>(out, jobs, taps, size, per_sample,
                                                             total);
  cuda::check(cudaPeekAtLastError(), "resample kernel launch", "GPU decoding");
}

class NvjpegDecoder : public JpegDecoder {
 public:
  NvjpegDecoder(int device, NvjpegApi api) : device_(device), api_(std::move(api)) {
    cuda::check(cudaSetDevice(device), "cudaSetDevice", "GPU decoding");
    int major = 0, minor = 0, patch = 0;
    api_.GetProperty(MAJOR_VERSION, &major);
    api_.GetProperty(MINOR_VERSION, &minor);
    api_.GetProperty(PATCH_LEVEL, &patch);
    version_ = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
    // The hardware decoder where the GPU has JPEG engines; nvJPEG says so by refusing the
    // backend (NVJPEG_STATUS_ARCH_MISMATCH or NOT_SUPPORTED) on GPUs without.
    if (api_.CreateEx(NVJPEG_BACKEND_HARDWARE, nullptr, nullptr, NVJPEG_FLAGS_DEFAULT, &handle_) ==
        NVJPEG_STATUS_SUCCESS) {
      backend_ = "hardware decoder";
      hardware_ = true;
    } else {
      handle_ = nullptr;
      check(api_.CreateEx(NVJPEG_BACKEND_DEFAULT, nullptr, nullptr, NVJPEG_FLAGS_DEFAULT, &handle_),
            "nvjpegCreateEx");
      backend_ = "default (hybrid) backend";
    }
    check(api_.JpegStateCreate(handle_, &state_), "nvjpegJpegStateCreate");
    // Turns on the hardware decoder's memory pool (NVIDIA's nvImageCodec does this once, with
    // these minimal hints); best effort.
    if (hardware_ && api_.DecodeBatchedPreAllocate)
      api_.DecodeBatchedPreAllocate(handle_, state_, 1, 1, 1, NVJPEG_CSS_444, NVJPEG_OUTPUT_RGBI);
    check(api_.JpegStreamCreate(handle_, &stream_), "nvjpegJpegStreamCreate");
    cuda::check(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate",
                "GPU decoding");
  }

  ~NvjpegDecoder() override {
    if (done_) {
      cudaEventSynchronize(done_);
      cudaEventDestroy(done_);
    }
    if (stream_) api_.JpegStreamDestroy(stream_);
    if (state_) api_.JpegStateDestroy(state_);
    if (handle_) api_.Destroy(handle_);
    // The library stays loaded: nvJPEG may keep threads or callbacks until process exit.
  }

  std::string describe() const override {
    return "nvJPEG " + version_ + ", " + backend_ + " (" + api_.path + ")";
  }
  int64_t decoded_on_device() const override { return on_device_; }
  int64_t decoded_on_host() const override { return on_host_; }

  void decode(const EncodedImage* images, int count, int size, uint8_t* out, void* stream_ptr,
              const std::function<void(int, uint8_t*)>& on_host) override {
    const char* where = "GPU decoding";
    auto stream = static_cast<cudaStream_t>(stream_ptr);
    cuda::check(cudaSetDevice(device_), "cudaSetDevice", where);
    const int64_t per_sample = int64_t(size) * size * 3;
    // However decode() ends, it returns only once the device is done with what it enqueued:
    // the caller may free the JPEG bytes, and the next batch reuses the pinned buffers.
    struct Drain {
      cudaEvent_t done;
      cudaStream_t stream;
      bool armed = true;
      ~Drain() {
        if (armed && cudaEventRecord(done, stream) == cudaSuccess) cudaEventSynchronize(done);
      }
    } drain{done_, stream};

    // Which samples nvJPEG takes: for the hardware decoder, its own check per image (the
    // loader sent only what io::hardware_decodable passes, but the engines may refuse more);
    // the hybrid backend takes every JPEG the loader sends.
    std::vector<int> device_list, host_list;
    for (int k = 0; k < count; ++k) {
      const EncodedImage& e = images[k];
      if (!e.data) continue;
      int supported = 0;  // 0: supported
      bool ok = !hardware_ ||
                (api_.JpegStreamParseHeader(handle_, e.data, e.size, stream_) ==
                     NVJPEG_STATUS_SUCCESS &&
                 api_.DecodeBatchedSupported(handle_, stream_, &supported) ==
                     NVJPEG_STATUS_SUCCESS &&
                 supported == 0);
      (ok ? device_list : host_list).push_back(k);
    }

    // Decoded images, then the taps and the job table in device memory.
    std::vector<size_t> image_offset(device_list.size());
    size_t image_bytes = 0;
    for (size_t j = 0; j < device_list.size(); ++j) {
      const EncodedImage& e = images[device_list[j]];
      image_offset[j] = image_bytes;
      image_bytes += align_up(size_t(e.width) * 3 * size_t(e.height), 256);
    }
    const size_t taps_bytes = device_list.size() * 2 * size_t(size) * sizeof(math::ResampleTap);
    const size_t jobs_offset = align_up(taps_bytes, 256);
    const size_t table_bytes = jobs_offset + device_list.size() * sizeof(ResampleJob);
    uint8_t* decoded = decoded_.reserve(std::max<size_t>(image_bytes, 1), where);
    uint8_t* table = table_.reserve(std::max<size_t>(table_bytes, 1), where);
    uint8_t* staging = pinned_table_.reserve(std::max<size_t>(table_bytes, 1), where);

    if (!device_list.empty()) {
      std::vector<const unsigned char*> data(device_list.size());
      std::vector<size_t> lengths(device_list.size());
      std::vector<nvjpegImage_t> dst(device_list.size());
      auto* taps = reinterpret_cast<math::ResampleTap*>(staging);
      auto* jobs = reinterpret_cast<ResampleJob*>(staging + jobs_offset);
      for (size_t j = 0; j < device_list.size(); ++j) {
        const EncodedImage& e = images[device_list[j]];
        data[j] = e.data;
        lengths[j] = e.size;
        std::memset(&dst[j], 0, sizeof(nvjpegImage_t));
        dst[j].channel[0] = decoded + image_offset[j];
        dst[j].pitch[0] = size_t(e.width) * 3;
        std::copy(e.cols, e.cols + size, taps + j * 2 * size);
        std::copy(e.rows, e.rows + size, taps + j * 2 * size + size);
        jobs[j] = ResampleJob{decoded + image_offset[j], int64_t(e.width) * 3,
                              int64_t(j) * 2 * size, device_list[j]};
      }
      check(api_.DecodeBatchedInitialize(handle_, state_, int(device_list.size()), 1,
                                         NVJPEG_OUTPUT_RGBI),
            "nvjpegDecodeBatchedInitialize");
      nvjpegStatus_t s = api_.DecodeBatched(handle_, state_, data.data(), lengths.data(),
                                            dst.data(), stream);
      if (s != NVJPEG_STATUS_SUCCESS) {
        // A broken file inside the batch: every sample of it goes to the host, which names
        // the file it cannot decode (the next batch initializes the state afresh).
        host_list.insert(host_list.end(), device_list.begin(), device_list.end());
        std::sort(host_list.begin(), host_list.end());
      } else {
        cuda::check(cudaMemcpyAsync(table, staging, table_bytes, cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync", where);
        launch_resample(out, reinterpret_cast<const ResampleJob*>(table + jobs_offset),
                        reinterpret_cast<const math::ResampleTap*>(table), size, per_sample,
                        int64_t(device_list.size()), stream);
        on_device_ += int64_t(device_list.size());
      }
    }

    // Samples transformed on the host, by the loader or by on_host here, go up through
    // pinned memory in one buffer.
    std::vector<int> upload;
    for (int k = 0; k < count; ++k)
      if (!images[k].data) upload.push_back(k);
    upload.insert(upload.end(), host_list.begin(), host_list.end());
    if (!upload.empty()) {
      uint8_t* host = pinned_pixels_.reserve(upload.size() * size_t(per_sample), where);
      for (size_t u = 0; u < upload.size(); ++u) {
        const int k = upload[u];
        uint8_t* p = host + u * size_t(per_sample);
        if (images[k].data) {
          on_host(k, p);
          ++on_host_;
        } else {
          if (!images[k].pixels) throw Error("GPU decoding: sample " + std::to_string(k) + " has neither a JPEG nor pixels");
          std::memcpy(p, images[k].pixels, size_t(per_sample));
        }
        cuda::check(cudaMemcpyAsync(out + int64_t(k) * per_sample, p, size_t(per_sample),
                                    cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync", where);
      }
    }
    drain.armed = false;
    cuda::check(cudaEventRecord(done_, stream), "cudaEventRecord", where);
    // nvJPEG may read the JPEG bytes, and the copies the pinned buffers, until the work on the
    // stream is done; the next batch overwrites both.
    cuda::check(cudaEventSynchronize(done_), "cudaEventSynchronize", where);
  }

 private:
  int device_ = 0;
  NvjpegApi api_;
  std::string version_, backend_;
  nvjpegHandle_t handle_ = nullptr;
  nvjpegJpegState_t state_ = nullptr;
  nvjpegJpegStream_t stream_ = nullptr;
  cudaEvent_t done_ = nullptr;
  bool hardware_ = false;
  DeviceBuffer decoded_, table_;
  Pinned pinned_table_, pinned_pixels_;
  int64_t on_device_ = 0, on_host_ = 0;
};

}  // namespace

std::vector<uint8_t> resample_on_gpu(const uint8_t* rgb, int width, int height,
                                     const math::ResampleTap* cols, const math::ResampleTap* rows,
                                     int size) {
  const char* where = "resample_on_gpu";
  const size_t image = size_t(width) * height * 3, per_sample = size_t(size) * size * 3;
  const size_t taps_bytes = 2 * size_t(size) * sizeof(math::ResampleTap);
  std::vector<math::ResampleTap> taps(cols, cols + size);
  taps.insert(taps.end(), rows, rows + size);
  DeviceBuffer src, out, table;
  src.reserve(image, where);
  out.reserve(per_sample, where);
  table.reserve(taps_bytes + sizeof(ResampleJob), where);
  const ResampleJob job{src.data, int64_t(width) * 3, 0, 0};
  cuda::check(cudaMemcpy(src.data, rgb, image, cudaMemcpyHostToDevice), "cudaMemcpy", where);
  cuda::check(cudaMemcpy(table.data, taps.data(), taps_bytes, cudaMemcpyHostToDevice), "cudaMemcpy", where);
  cuda::check(cudaMemcpy(table.data + taps_bytes, &job, sizeof job, cudaMemcpyHostToDevice), "cudaMemcpy", where);
  launch_resample(out.data, reinterpret_cast<const ResampleJob*>(table.data + taps_bytes),
                  reinterpret_cast<const math::ResampleTap*>(table.data), size, int64_t(per_sample), 1,
                  nullptr);
  std::vector<uint8_t> result(per_sample);
  cuda::check(cudaMemcpy(result.data(), out.data, per_sample, cudaMemcpyDeviceToHost), "cudaMemcpy", where);
  return result;
}

std::unique_ptr<JpegDecoder> make_gpu_jpeg_decoder(int device) {
  NvjpegApi api = load_nvjpeg();
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    throw Error("GPU decoding needs a CUDA GPU, and none is visible; decode on the CPU (--decode cpu)");
  }
  if (device < 0 || device >= devices)
    throw Error("GPU decoding: no CUDA device " + std::to_string(device) + " (" +
                std::to_string(devices) + " visible)");
  return std::make_unique<NvjpegDecoder>(device, std::move(api));
}

}  // namespace oxtrain::runtime
