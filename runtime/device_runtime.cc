#include "runtime/device_runtime.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "base/checked.h"
#include "graph/inspect.h"

namespace oxtrain::runtime {

#ifdef OXTRAIN_HAVE_CUDA
std::unique_ptr<DeviceRuntime> make_cuda_runtime(Precision precision, int index);  // cuda/device_runtime.cc
#endif

namespace {

class CpuRuntime : public DeviceRuntime {
 public:
  CpuRuntime() { context_.device = Device::cpu; }
  std::string description() const override { return "cpu"; }

  void* allocate(int64_t bytes, const std::string& what) override {
    size_t size = static_cast<size_t>((std::max<int64_t>(bytes, 256) + 255) / 256 * 256);
    void* p = std::aligned_alloc(256, size);
    if (!p) throw Error("cannot allocate " + graph::human_bytes(static_cast<int64_t>(size)) + " for " + what);
    std::memset(p, 0, size);
    ++counters_.allocations;
    held_ += static_cast<int64_t>(size);
    peak_ = std::max(peak_, held_);
    sizes_[p] = static_cast<int64_t>(size);
    return p;
  }
  void release(void* data) override {
    if (!data) return;
    held_ -= sizes_[data];
    sizes_.erase(data);
    std::free(data);
  }
  void copy_to_device(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy_to_host(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy_on_device(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }
  void synchronize() override {}
  int64_t free_memory() const override {
    long pages = ::sysconf(_SC_AVPHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? checked_mul(pages, page).value_or(INT64_MAX) : 0;
  }
  int64_t total_memory() const override {
    long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? checked_mul(pages, page).value_or(INT64_MAX) : 0;
  }
  int64_t peak_allocated() const override { return peak_; }

 private:
  int64_t held_ = 0, peak_ = 0;
  std::unordered_map<void*, int64_t> sizes_;
};

}  // namespace

std::unique_ptr<DeviceRuntime> DeviceRuntime::create(Device device, Precision precision, int index) {
  if (device == Device::cpu) return std::make_unique<CpuRuntime>();
#ifdef OXTRAIN_HAVE_CUDA
  return make_cuda_runtime(precision, index);
#else
  throw Error("device cuda: this build of oxtrain has no CUDA runtime (it was configured without a CUDA "
              "toolkit); use --device cpu, or rebuild where nvcc is installed");
#endif
}

}  // namespace oxtrain::runtime
