// Loss and top-k accuracy accumulated on the device (see runtime/cuda/metrics.h). One block:
// each warp takes rows (warp, warp + warps, ...), its lanes count over the row how many
// classes come before the label (runtime/math/metrics.h), and the warp adds the counts with
// shuffles; the warps' hit counts are then added by one thread in warp order. All counts are
// integers and one thread adds to the sums, so the result does not depend on scheduling.
#include "runtime/cuda/metrics.h"

namespace oxtrain::runtime::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 32;
constexpr unsigned kThreads = kWarp * kWarps;

__global__ void metrics_kernel(const MetricsArgs a) {
  __shared__ long long top1_of_warp[kWarps];
  __shared__ long long top5_of_warp[kWarps];
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  long long top1 = 0, top5 = 0;  // lane 0's counts for this warp's rows
  for (int64_t r = warp; r < a.batch; r += kWarps) {
    const int64_t label = a.labels[r];  // the same for every lane: the loop below is uniform
    if (!math::label_in_range(label, a.classes)) continue;
    long long rank = math::classes_before_label(a.logits + r * a.classes, a.classes, label,
                                                lane, kWarp);
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      rank += __shfl_down_sync(0xffffffffu, rank, offset);
    if (lane == 0) {
      top1 += math::rank_within_topk(rank, 1) ? 1 : 0;
      top5 += math::rank_within_topk(rank, 5) ? 1 : 0;
    }
  }
  if (lane == 0) {
    top1_of_warp[warp] = top1;
    top5_of_warp[warp] = top5;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    long long hits1 = 0, hits5 = 0;
    for (int w = 0; w < kWarps; ++w) {
      hits1 += top1_of_warp[w];
      hits5 += top5_of_warp[w];
    }
    // __dmul_rn: never fused with the addition, so the sum rounds as accumulate_metrics_cpu's.
    a.sums[0] += __dmul_rn(static_cast<double>(a.loss[0]), static_cast<double>(a.batch));
    a.sums[1] += static_cast<double>(hits1);
    a.sums[2] += static_cast<double>(hits5);
  }
}

}  // namespace

cudaError_t accumulate_metrics(const MetricsArgs& a, cudaStream_t stream) {
  if (a.batch < 0 || a.classes < 0 || !a.loss || !a.sums) return cudaErrorInvalidValue;
  if (a.batch > 0 && (!a.logits || !a.labels)) return cudaErrorInvalidValue;
  metrics_kernel<<<1, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace oxtrain::runtime::cuda
