// The own batch-norm kernels of runtime/cuda/batchnorm_own.h.
#include "runtime/cuda/batchnorm_own.h"

#include <cuda_runtime.h>

#include <cstdint>

#include "base/half.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/conv_batchnorm.h"
#include "runtime/math/normalization.h"

namespace oxtrain::runtime::cuda {
namespace {

constexpr int kThreads = 256;  // per block: one block per channel for the sums

// Where element j of channel c lies, j in [0, batch * spatial): sample j / spatial, position
// j % spatial.
struct ChannelIndex {
  int64_t channels, spatial;
  bool channels_last;
  __device__ int64_t operator()(int64_t c, int64_t j) const {
    return channels_last ? j * channels + c : (j / spatial * channels + c) * spatial + j % spatial;
  }
};

// The channel of element i of [N, C, spatial] (channels-last: [N, spatial, C]).
__device__ int64_t channel_of(int64_t i, int64_t spatial, int64_t channels, bool channels_last) {
  return channels_last ? i % channels : (i / spatial) % channels;
}

// The block's sum of `v` in a fixed tree; every thread of the block calls it and gets the sum.
__device__ double block_sum(double v, double* shared) {
  __syncthreads();  // the previous call's result has been read
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  return shared[0];
}

struct InferenceParams {
  const void* x;
  void* y;
  const float *scale, *bias, *mean, *var;
  double eps;
  int64_t total, spatial, channels;
  bool channels_last;
};

template <int kKind>
__global__ void inference_kernel(InferenceParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, p.spatial, p.channels, p.channels_last);
    const float k = math::batchnorm_inference_factor(p.scale[c], p.var[c], p.eps);
    store_float<kKind>(p.y, i, math::batchnorm_inference(load_float<kKind>(p.x, i), p.mean[c], k, p.bias[c]));
  }
}

struct TrainingParams {
  const void* x;
  void* y;
  const float *scale, *bias, *run_mean, *run_var;
  float *mean_out, *var_out, *saved_mean, *saved_inv_std;  // each may be null
  double eps, momentum;
  bool unbiased;
  int64_t m;  // elements per channel
  ChannelIndex at;
};

// One block per channel: mean, then the sum of squared deviations (two passes, as the CPU),
// then Y from the statistics as stored (math::batchnorm_apply), then the per-channel outputs.
template <int kKind>
__global__ void training_kernel(TrainingParams p) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  // Every per-channel input is read before the first barrier: the running-stat outputs may
  // share their buffers, and only thread 0 writes them, after the sums.
  const double sc = p.scale[c], b = p.bias[c], rm = p.run_mean[c], rv = p.run_var[c];
  double part = 0;
  for (int64_t j = threadIdx.x; j < p.m; j += kThreads) part += load_float<kKind>(p.x, p.at(c, j));
  const double mean = p.m > 0 ? block_sum(part, shared) / static_cast<double>(p.m) : 0.0;
  part = 0;
  for (int64_t j = threadIdx.x; j < p.m; j += kThreads) {
    const double d = static_cast<double>(load_float<kKind>(p.x, p.at(c, j))) - mean;
    part += d * d;
  }
  const double sq = block_sum(part, shared);
  const double var = p.m > 0 ? sq / static_cast<double>(p.m) : 0.0;
  const double inv_std = 1.0 / ::sqrt(var + p.eps);
  const float mean_t = static_cast<float>(mean), inv_std_t = static_cast<float>(inv_std);
  const float sc_t = static_cast<float>(sc), b_t = static_cast<float>(b);
  for (int64_t j = threadIdx.x; j < p.m; j += kThreads) {
    const int64_t i = p.at(c, j);
    store_float<kKind>(p.y, i, math::batchnorm_apply(load_float<kKind>(p.x, i), mean_t, inv_std_t, sc_t, b_t));
  }
  if (threadIdx.x != 0) return;
  if (p.mean_out) p.mean_out[c] = static_cast<float>(math::batchnorm_running_mean(rm, mean, p.momentum));
  if (p.var_out) p.var_out[c] = static_cast<float>(math::batchnorm_running_var(rv, var, p.m, p.momentum, p.unbiased));
  if (p.saved_mean) p.saved_mean[c] = mean_t;
  if (p.saved_inv_std) p.saved_inv_std[c] = inv_std_t;
}

struct GradParams {
  const void *dy, *x;
  const float *scale, *mean, *inv_std;
  void* dx;                     // may be null
  float *dscale, *dbias;        // each may be null
  int64_t m;
  ChannelIndex at;
};

// One block per channel: sum(dY) and sum(dY * (x - mean)) in one pass, then dX.
template <int kKind>
__global__ void grad_kernel(GradParams p) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  const double mean = p.mean[c], inv_std = p.inv_std[c], sc = p.scale[c];
  double part_dy = 0, part_dy_xc = 0;
  for (int64_t j = threadIdx.x; j < p.m; j += kThreads) {
    const int64_t i = p.at(c, j);
    const double d = load_float<kKind>(p.dy, i);
    part_dy += d;
    part_dy_xc += d * (static_cast<double>(load_float<kKind>(p.x, i)) - mean);
  }
  const double sum_dy = block_sum(part_dy, shared);
  const double sum_dy_xhat = block_sum(part_dy_xc, shared) * inv_std;
  if (p.dx) {
    const double md = static_cast<double>(p.m);
    const double k = p.m > 0 ? sc * inv_std / md : 0.0;
    for (int64_t j = threadIdx.x; j < p.m; j += kThreads) {
      const int64_t i = p.at(c, j);
      const double g = math::batchnorm_grad_input(load_float<kKind>(p.dy, i), load_float<kKind>(p.x, i), mean,
                                                  inv_std, k, md, sum_dy, sum_dy_xhat);
      store_float<kKind>(p.dx, i, static_cast<float>(g));
    }
  }
  if (threadIdx.x != 0) return;
  if (p.dscale) p.dscale[c] = static_cast<float>(sum_dy_xhat);
  if (p.dbias) p.dbias[c] = static_cast<float>(sum_dy);
}

struct PrologueParams {
  const void *x, *scale, *bias;
  void* p;
  int64_t total, spatial, channels;
  bool channels_last;
};

template <int kKind>
__global__ void scale_bias_relu_kernel(PrologueParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, p.spatial, p.channels, p.channels_last);
    store_float<kKind>(p.p, i, math::scale_bias_relu(load_float<kKind>(p.x, i), load_float<kKind>(p.scale, c),
                                                     load_float<kKind>(p.bias, c)));
  }
}

struct SumsParams {
  const void* y;
  float *sum, *sum_sq;
  int64_t m;
  ChannelIndex at;
};

// One block per channel, both sums in one pass.
template <int kKind>
__global__ void channel_sums_kernel(SumsParams p) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  double part = 0, part_sq = 0;
  for (int64_t j = threadIdx.x; j < p.m; j += kThreads) {
    const double v = load_float<kKind>(p.y, p.at(c, j));
    part += v;
    part_sq += v * v;
  }
  const double sum = block_sum(part, shared);
  const double sum_sq = block_sum(part_sq, shared);
  if (threadIdx.x != 0) return;
  if (p.sum) p.sum[c] = static_cast<float>(sum);
  if (p.sum_sq) p.sum_sq[c] = static_cast<float>(sum_sq);
}

// Channels-last sums: blockIdx.x a chunk of rows, blockIdx.y a group of 32 channels; 8 lanes
// of rows per channel, added in lane order.
constexpr int kTileChannels = 32, kTileLanes = kThreads / kTileChannels;

struct TiledSumsParams {
  const void* y;
  double* partial;  // [2][chunks][channels]: the sums, then the sums of squares
  int64_t rows, channels, chunk_rows, chunks;
};

template <int kKind>
__global__ void tiled_sums_kernel(TiledSumsParams p) {
  __shared__ double s_sum[kTileLanes][kTileChannels], s_sq[kTileLanes][kTileChannels];
  const int lane_c = static_cast<int>(threadIdx.x) % kTileChannels, lane_r = static_cast<int>(threadIdx.x) / kTileChannels;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kTileChannels + lane_c;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * p.chunk_rows;
  const int64_t end = first + p.chunk_rows < p.rows ? first + p.chunk_rows : p.rows;
  double sum = 0, sq = 0;
  if (c < p.channels)
    for (int64_t r = first + lane_r; r < end; r += kTileLanes) {
      const double v = load_float<kKind>(p.y, r * p.channels + c);
      sum += v;
      sq += v * v;
    }
  s_sum[lane_r][lane_c] = sum;
  s_sq[lane_r][lane_c] = sq;
  __syncthreads();
  if (lane_r != 0 || c >= p.channels) return;
  double ts = 0, tq = 0;
  for (int k = 0; k < kTileLanes; ++k) {
    ts += s_sum[k][lane_c];
    tq += s_sq[k][lane_c];
  }
  p.partial[blockIdx.x * p.channels + c] = ts;
  p.partial[(p.chunks + blockIdx.x) * p.channels + c] = tq;
}

// Chunks of rows for the channels-last sums: enough blocks to fill a large GPU, at most 1024
// partial rows to add per channel.
int64_t sum_chunks(const BatchNormView& v) {
  const int64_t rows = v.batch * v.spatial;
  const int64_t chunks = (rows + 1023) / 1024;
  return chunks < 1 ? 1 : chunks > 1024 ? 1024 : chunks;
}

struct FinalizeParams {
  const float *sum, *sum_sq, *scale, *bias, *run_mean, *run_var;
  float *mean_out, *var_out, *saved_mean, *saved_inv_std;  // each may be null
  void *apply_scale, *apply_bias;                          // of the affine kind; each may be null
  int64_t channels, count;
  double eps, momentum;
  bool unbiased;
};

// One thread per channel; every input of a channel is read before its outputs are written
// (the running statistics' outputs may share their inputs' buffers).
template <int kKind>
__device__ void finalize_channel(const FinalizeParams& p, int64_t c) {
  const auto f = math::batchnorm_finalize<float>(p.sum[c], p.sum_sq[c], p.count, p.scale[c], p.bias[c], p.run_mean[c],
                                                 p.run_var[c], p.eps, p.momentum, p.unbiased);
  if (p.mean_out) p.mean_out[c] = f.running_mean;
  if (p.var_out) p.var_out[c] = f.running_var;
  if (p.saved_mean) p.saved_mean[c] = f.saved_mean;
  if (p.saved_inv_std) p.saved_inv_std[c] = f.saved_inv_std;
  // Rounded to float32 first, as the CPU's float32 kernel and its half emulation round.
  if (p.apply_scale) store_float<kKind>(p.apply_scale, c, static_cast<float>(f.apply_scale));
  if (p.apply_bias) store_float<kKind>(p.apply_bias, c, static_cast<float>(f.apply_bias));
}

template <int kKind>
__global__ void finalize_kernel(FinalizeParams p) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < p.channels;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x)
    finalize_channel<kKind>(p, c);
}

struct MaskParams {
  const void* x;
  void* ds;
  const float *scale, *bias, *mean, *inv_std;
  float *dscale, *dbias;
  int64_t m;
  ChannelIndex at;
};

// One block per channel: the mask in place and both sums in one pass.
template <int kKind>
__global__ void relu_mask_kernel(MaskParams p) {
  __shared__ double shared[kThreads];
  const int64_t c = blockIdx.x;
  const float sc = p.scale[c], b = p.bias[c], mean = p.mean[c], inv_std = p.inv_std[c];
  double part = 0, part_xc = 0;
  for (int64_t j = threadIdx.x; j < p.m; j += kThreads) {
    const int64_t i = p.at(c, j);
    const float x = load_float<kKind>(p.x, i);
    const float d = math::batchnorm_apply(x, mean, inv_std, sc, b) > 0.0f ? load_float<kKind>(p.ds, i) : 0.0f;
    store_float<kKind>(p.ds, i, d);
    part += d;
    part_xc += static_cast<double>(d) * (static_cast<double>(x) - static_cast<double>(mean));
  }
  const double sum = block_sum(part, shared);
  const double sum_xc = block_sum(part_xc, shared);
  if (threadIdx.x != 0) return;
  if (p.dscale) p.dscale[c] = static_cast<float>(sum_xc * static_cast<double>(inv_std));
  if (p.dbias) p.dbias[c] = static_cast<float>(sum);
}

struct GradApplyParams {
  const void *ds, *x;
  void* dx;
  const float *scale, *mean, *inv_std, *dscale, *dbias;
  int64_t total, spatial, channels, m;
  bool channels_last;
};

template <int kKind>
__global__ void grad_apply_kernel(GradApplyParams p) {
  const double md = static_cast<double>(p.m);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, p.spatial, p.channels, p.channels_last);
    const double is = p.inv_std[c];
    const double k = p.m > 0 ? static_cast<double>(p.scale[c]) * is / md : 0.0;
    store_float<kKind>(p.dx, i,
                       static_cast<float>(math::batchnorm_grad_input(load_float<kKind>(p.ds, i), load_float<kKind>(p.x, i),
                                                                     p.mean[c], is, k, md, p.dbias[c], p.dscale[c])));
  }
}

float* optional_out(const KernelArgs& a, size_t i) {
  return i < a.outputs.size() && a.outputs[i].present() ? a.outputs[i].as<float>() : nullptr;
}

ChannelIndex index_of(const BatchNormView& v) { return {v.channels, v.spatial, v.channels_last}; }

// A launch over the channels that fits the grid's x limit (2^31 - 1 blocks).
void check_channels(const BatchNormView& v, const std::string& where) {
  if (v.channels > 0x7fffffff) throw Error(where + ": too many channels for the batch-norm kernel");
}

}  // namespace

void batchnorm_inference(const BatchNormView& v, const KernelArgs& a, double eps, const CudaContext& ctx,
                         const std::string& where) {
  const int64_t total = v.batch * v.channels * v.spatial;
  if (total <= 0) return;
  InferenceParams p{a.inputs[0].data,        a.outputs[0].data,       a.inputs[1].as<float>(),
                    a.inputs[2].as<float>(), a.inputs[3].as<float>(), a.inputs[4].as<float>(),
                    eps,                     total,                   v.spatial,
                    v.channels,              v.channels_last};
  const Launch g = launch_for(total, ctx);
  with_float_kind(float_kind(v.data), [&](auto k) {
    inference_kernel<decltype(k)::value><<<g.blocks, g.threads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "batch-norm inference kernel launch", where);
}

void batchnorm_training(const BatchNormView& v, const KernelArgs& a, double eps, double momentum, bool unbiased,
                        const CudaContext& ctx, const std::string& where) {
  if (v.channels <= 0) return;
  check_channels(v, where);
  TrainingParams p{a.inputs[0].data,
                   a.outputs[0].data,
                   a.inputs[1].as<float>(),
                   a.inputs[2].as<float>(),
                   a.inputs[3].as<float>(),
                   a.inputs[4].as<float>(),
                   optional_out(a, 1),
                   optional_out(a, 2),
                   optional_out(a, 3),
                   optional_out(a, 4),
                   eps,
                   momentum,
                   unbiased,
                   v.batch * v.spatial,
                   index_of(v)};
  const auto blocks = static_cast<unsigned>(v.channels);
  with_float_kind(float_kind(v.data), [&](auto k) {
    training_kernel<decltype(k)::value><<<blocks, kThreads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "batch-norm training kernel launch", where);
}

void batchnorm_grad(const BatchNormView& v, const KernelArgs& a, const CudaContext& ctx, const std::string& where) {
  if (v.channels <= 0) return;
  check_channels(v, where);
  GradParams p{a.inputs[0].data,
               a.inputs[1].data,
               a.inputs[2].as<float>(),
               a.inputs[3].as<float>(),
               a.inputs[4].as<float>(),
               !a.outputs.empty() && a.outputs[0].present() ? a.outputs[0].data : nullptr,
               optional_out(a, 1),
               optional_out(a, 2),
               v.batch * v.spatial,
               index_of(v)};
  const auto blocks = static_cast<unsigned>(v.channels);
  with_float_kind(float_kind(v.data), [&](auto k) {
    grad_kernel<decltype(k)::value><<<blocks, kThreads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "batch-norm gradient kernel launch", where);
}

void scale_bias_relu(const BatchNormView& v, const void* x, const void* scale, const void* bias, void* p,
                     const CudaContext& ctx, const std::string& where) {
  const int64_t total = v.batch * v.channels * v.spatial;
  if (total <= 0) return;
  PrologueParams params{x, scale, bias, p, total, v.spatial, v.channels, v.channels_last};
  const Launch g = launch_for(total, ctx);
  with_float_kind(float_kind(v.data), [&](auto k) {
    scale_bias_relu_kernel<decltype(k)::value><<<g.blocks, g.threads, 0, ctx.stream>>>(params);
  });
  check(cudaGetLastError(), "prologue kernel launch", where);
}

size_t channel_sums_workspace(const BatchNormView& v) {
  return v.channels_last ? static_cast<size_t>(2 * sum_chunks(v) * v.channels) * sizeof(double) : 0;
}

void channel_sums(const BatchNormView& v, const void* y, float* sum, float* sum_sq, void* workspace,
                  const CudaContext& ctx, const std::string& where) {
  if (v.channels <= 0) return;
  check_channels(v, where);
  if (v.channels_last) {
    const int64_t rows = v.batch * v.spatial, chunks = sum_chunks(v);
    TiledSumsParams t{y, static_cast<double*>(workspace), rows, v.channels, (rows + chunks - 1) / chunks, chunks};
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>((v.channels + kTileChannels - 1) / kTileChannels));
    if (grid.y > 65535) throw Error(where + ": too many channels for the channel sums kernel");
    with_float_kind(float_kind(v.data), [&](auto k) {
      tiled_sums_kernel<decltype(k)::value><<<grid, kThreads, 0, ctx.stream>>>(t);
    });
    check(cudaGetLastError(), "channel sums kernel launch", where);
    add_chunk_partials(t.partial, chunks, v.channels, sum, sum_sq, ctx, where);
    return;
  }
  SumsParams p{y, sum, sum_sq, v.batch * v.spatial, index_of(v)};
  const auto blocks = static_cast<unsigned>(v.channels);
  with_float_kind(float_kind(v.data), [&](auto k) {
    channel_sums_kernel<decltype(k)::value><<<blocks, kThreads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "channel sums kernel launch", where);
}

void relu_mask_weight_grads(const BatchNormView& v, const void* x, void* ds, const float* scale, const float* bias,
                            const float* mean, const float* inv_std, float* dscale, float* dbias, const CudaContext& ctx,
                            const std::string& where) {
  if (v.channels <= 0) return;
  check_channels(v, where);
  MaskParams p{x, ds, scale, bias, mean, inv_std, dscale, dbias, v.batch * v.spatial, index_of(v)};
  const auto blocks = static_cast<unsigned>(v.channels);
  with_float_kind(float_kind(v.data), [&](auto k) {
    relu_mask_kernel<decltype(k)::value><<<blocks, kThreads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "ReLU mask kernel launch", where);
}

void batchnorm_grad_apply(const BatchNormView& v, const KernelArgs& a, const CudaContext& ctx, const std::string& where) {
  const int64_t total = v.batch * v.channels * v.spatial;
  if (total <= 0) return;
  GradApplyParams p{a.inputs[0].data,        a.inputs[1].data,        a.outputs[0].data,       a.inputs[2].as<float>(),
                    a.inputs[3].as<float>(), a.inputs[4].as<float>(), a.inputs[5].as<float>(), a.inputs[6].as<float>(),
                    total,                   v.spatial,               v.channels,              v.batch * v.spatial,
                    v.channels_last};
  const Launch g = launch_for(total, ctx);
  with_float_kind(float_kind(v.data), [&](auto k) {
    grad_apply_kernel<decltype(k)::value><<<g.blocks, g.threads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "batch-norm gradient apply kernel launch", where);
}

void batchnorm_finalize(const KernelArgs& a, int64_t channels, int64_t count, double eps, double momentum,
                        bool unbiased, graph::DType affine, const CudaContext& ctx, const std::string& where) {
  if (channels <= 0) return;
  auto out = [&](size_t i) -> void* { return i < a.outputs.size() && a.outputs[i].present() ? a.outputs[i].data : nullptr; };
  FinalizeParams p{a.inputs[0].as<float>(), a.inputs[1].as<float>(), a.inputs[2].as<float>(), a.inputs[3].as<float>(),
                   a.inputs[4].as<float>(), a.inputs[5].as<float>(), optional_out(a, 0), optional_out(a, 1),
                   optional_out(a, 2),      optional_out(a, 3),      out(4),                  out(5),
                   channels,                count,                   eps,                     momentum,
                   unbiased};
  const Launch g = launch_for(channels, ctx);
  with_float_kind(float_kind(affine), [&](auto k) {
    finalize_kernel<decltype(k)::value><<<g.blocks, g.threads, 0, ctx.stream>>>(p);
  });
  check(cudaGetLastError(), "batch-norm finalize kernel launch", where);
}

}  // namespace oxtrain::runtime::cuda
