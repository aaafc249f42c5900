// CUDA kernels of the normalization family, twins of runtime/cpu/normalization.cc:
// LayerNormalization and oxtrain.LayerNormalizationGrad (float32, statistics in float32),
// ReduceSum (through the oxtrain.ReduceSumTo kernel), oxtrain.ReduceSumGrad, ReduceMax and
// ReduceMin (one thread per output), and oxtrain.BatchNormApply (batch norm's output recomputed
// from saved statistics). (MatMul,
// Softmax and ReduceMean are the core kernels of matmul.cc, loss.cu and elementwise.cu.)
// Every kernel writes (=) its outputs.
//
// LayerNormalization: one block per row (blocks stride over the rows), its threads splitting
// the row; sums in double combined in a fixed tree (warp shuffles, then one warp over the
// warps' results), with the per-element math of runtime/math/normalization.h. Every element
// of a row is read for its statistics before the tree's barrier and written afterwards only
// by the thread that read it, so Y may share X's buffer.
//
// The gradient's dScale and dB sum over rows without atomics: blocks of 32 columns x 8 row
// lanes sum a fixed chunk of rows each into the workspace (per chunk and column), and a second
// kernel adds the chunks in order. Results are identical from run to run; the summation order
// differs from the CPU's, so they agree with it to rounding.
#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "base/half.h"
#include "graph/ops.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/broadcast.h"
#include "runtime/math/fused.h"
#include "runtime/math/normalization.h"

namespace oxtrain::runtime {
namespace {

using math::LayerNormLayout;
using math::ScaleIndex;
using math::StridedIndex;

constexpr int kWarp = 32;

// Combines one double per thread of the block (blockDim.x a multiple of 32, at most 1024) in a
// fixed order; every thread gets the sum. `shared` holds 33 values. Every thread of the block
// must call it.
__device__ double block_sum(double v, double* shared) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int warps = static_cast<int>(blockDim.x) / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();  // a previous call's readers are done with `shared`
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : 0.0;
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) shared[kWarp] = v;
  }
  __syncthreads();
  return shared[kWarp];
}

// Threads per row: a multiple of 32, enough for d without leaving most threads idle.
unsigned row_threads(int64_t d) {
  if (d >= 4096) return 512;
  const int64_t rounded = (std::max<int64_t>(d, 1) + kWarp - 1) / kWarp * kWarp;
  return static_cast<unsigned>(std::min<int64_t>(rounded, 256));
}

// One block per row, up to enough to fill the device many times over.
unsigned row_blocks(int64_t rows, const CudaContext& ctx) {
  const int64_t cap = std::max(1, ctx.multiprocessors) * int64_t{64};
  return static_cast<unsigned>(std::clamp<int64_t>(rows, 1, cap));
}

// ---------------------------------------------------------------------------------------
// LayerNormalization

struct LayerNormParams {
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* bias = nullptr;  // null: no B
  float* y = nullptr;
  float* mean = nullptr;  // null: not wanted
  float* inv_std = nullptr;
  int64_t rows = 0, d = 0;
  double epsilon = 0;
  ScaleIndex index;
};

__global__ void layer_norm_kernel(LayerNormParams p) {
  __shared__ double shared[kWarp + 1];
  const int64_t first = threadIdx.x, step = blockDim.x;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* xr = p.x + r * p.d;
    float* yr = p.y + r * p.d;
    double sum = 0;
    for (int64_t j = first; j < p.d; j += step) sum += static_cast<double>(xr[j]);
    const double mean = block_sum(sum, shared) / static_cast<double>(p.d);
    double sq = 0;
    for (int64_t j = first; j < p.d; j += step) sq += math::ln_centered_square(xr[j], mean);
    const double var = block_sum(sq, shared) / static_cast<double>(p.d);
    const float mu = static_cast<float>(mean), inv = static_cast<float>(math::ln_inv_std(var, p.epsilon));
    if (threadIdx.x == 0) {
      if (p.mean) p.mean[r] = mu;
      if (p.inv_std) p.inv_std[r] = inv;
    }
    for (int64_t j = first; j < p.d; j += step) {
      int64_t s, b;
      math::scale_offsets(p.index, j, s, b);
      yr[j] = math::ln_output(xr[j], mu, inv, p.scale[s], p.bias ? p.bias[b] : 0.0f);
    }
  }
}

// ---------------------------------------------------------------------------------------
// LayerNormalizationGrad

struct LayerNormGradParams {
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* scale = nullptr;
  const float* mean = nullptr;
  const float* inv_std = nullptr;
  float* dx = nullptr;
  int64_t rows = 0, d = 0;
  ScaleIndex index;
};

__global__ void layer_norm_grad_input_kernel(LayerNormGradParams p) {
  __shared__ double shared[kWarp + 1];
  const int64_t first = threadIdx.x, step = blockDim.x;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* dyr = p.dy + r * p.d;
    const float* xr = p.x + r * p.d;
    const float mu = p.mean[r], is = p.inv_std[r];
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = first; j < p.d; j += step) {
      int64_t s, b;
      math::scale_offsets(p.index, j, s, b);
      const double g = math::ln_grad_g(dyr[j], p.scale[s]);
      sum_g += g;
      sum_gx += g * math::ln_xhat(xr[j], mu, is);
    }
    sum_g = block_sum(sum_g, shared);
    sum_gx = block_sum(sum_gx, shared);
    for (int64_t j = first; j < p.d; j += step) {
      int64_t s, b;
      math::scale_offsets(p.index, j, s, b);
      p.dx[r * p.d + j] = math::ln_grad_input<float>(math::ln_grad_g(dyr[j], p.scale[s]), math::ln_xhat(xr[j], mu, is),
                                                     static_cast<double>(is), sum_g, sum_gx, p.d);
    }
  }
}

constexpr int kColumns = 32;  // columns per block of the parameter gradients
constexpr int kRowLanes = 8;  // threads per column, each adding every 8th row of its chunk

// Per chunk of rows (blockIdx.y) and column (blockIdx.x * 32 + threadIdx.x): the chunk's sums
// of dy * xhat and of dy, into partials[chunk * d + j] and partials[(chunks + chunk) * d + j].
__global__ void layer_norm_grad_partials_kernel(const float* dy, const float* x, const float* mean,
                                                const float* inv_std, double* partials, int64_t rows, int64_t d,
                                                int64_t rows_per_chunk) {
  __shared__ double sum_s[kRowLanes][kColumns];
  __shared__ double sum_b[kRowLanes][kColumns];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  const int64_t chunk = blockIdx.y, chunks = gridDim.y;
  const int64_t begin = chunk * rows_per_chunk;
  const int64_t end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  double s = 0, b = 0;
  if (j < d)
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) {
      const float g = dy[r * d + j];
      s += static_cast<double>(g) * math::ln_xhat(x[r * d + j], mean[r], inv_std[r]);
      b += static_cast<double>(g);
    }
  sum_s[threadIdx.y][threadIdx.x] = s;
  sum_b[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && j < d) {
    for (int k = 1; k < kRowLanes; ++k) {
      s += sum_s[k][threadIdx.x];
      b += sum_b[k][threadIdx.x];
    }
    partials[chunk * d + j] = s;
    partials[(chunks + chunk) * d + j] = b;
  }
}


// ---------------------------------------------------------------------------------------
// ReduceSumGrad: dX[i] = dY[broadcast offset of i].

template <typename I>
__global__ void broadcast_copy_kernel(float* y, const float* x, I n, StridedIndex<1, I> p) {
  const I stride = static_cast<I>(blockDim.x) * gridDim.x;
  for (I i = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    I off[1];
    math::strided_offsets(p, i, 1, off);
    y[i] = x[off[0]];
  }
}

// ---------------------------------------------------------------------------------------
// Compile-time checks

const graph::Value& f32_input(const Node& n, size_t i, const char* role) {
  const graph::Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": input " + std::to_string(i) + " (" + role + ") is missing");
  if (v->dtype != DType::f32)
    throw Error(n.describe() + ": the CUDA kernel takes float32 " + role + ", got " + graph::dtype_name(v->dtype) +
                " '" + v->name + "' (run float64 graphs on the CPU)");
  if (!v->rank_known || !graph::shape_known(v->shape))
    throw Error(n.describe() + ": the CUDA kernel needs the shape of " + role + " '" + v->name +
                "' when the graph is compiled, got " + v->shape_string());
  return *v;
}

void f32_output(const Node& n, size_t i, const char* role, const graph::Shape* want) {
  const graph::Value* v = n.output(i);
  if (!v) return;
  if (v->dtype != DType::f32)
    throw Error(n.describe() + ": the CUDA kernel writes float32 " + role + ", got " + graph::dtype_name(v->dtype));
  if (want && v->shape != *want)
    throw Error(n.describe() + ": " + role + " has shape " + v->shape_string() + ", expected " +
                graph::shape_str(*want));
}

int64_t axis_of(const Node& n, int64_t rank) {
  const int64_t axis = n.attr_int("axis", -1);
  if (axis < -rank || axis >= rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + rank : axis;
}

void check_run_shape(const TensorView& t, const graph::Shape& compiled, const std::string& what, const char* role) {
  if (t.shape != compiled)
    throw Error(what + ": " + role + " compiled for " + graph::shape_str(compiled) + ", run with " +
                graph::shape_str(t.shape));
}

float* optional_output(const KernelArgs& a, size_t i) {
  return a.outputs.size() > i && a.outputs[i].present() ? a.outputs[i].as<float>() : nullptr;
}

KernelFactory layer_norm_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = f32_input(n, 0, "X");
    const graph::Value& scale = f32_input(n, 1, "Scale");
    const graph::Value* bias = n.input(2) ? &f32_input(n, 2, "B") : nullptr;
    if (n.attr_int("stash_type", 1) != 1)
      throw Error(what + ": stash_type " + std::to_string(n.attr_int("stash_type", 1)) + " is not supported (1 is)");
    const int64_t axis = axis_of(n, static_cast<int64_t>(x.shape.size()));
    const LayerNormLayout layout = math::layer_norm_layout(x.shape, axis, scale.shape, bias ? &bias->shape : nullptr, what);
    if (!n.output(0)) throw Error(what + ": output Y is missing");
    f32_output(n, 0, "Y", &x.shape);
    graph::Shape stats(x.shape.begin(), x.shape.begin() + axis);
    stats.resize(x.shape.size(), 1);
    f32_output(n, 1, "Mean", &stats);
    f32_output(n, 2, "InvStdDev", &stats);
    const double epsilon = n.attr_float("epsilon", 1e-5f);
    const graph::Shape xs = x.shape;
    return make_kernel([=](const KernelArgs& a) {
      check_run_shape(a.inputs[0], xs, what, "X");
      if (layout.rows == 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      LayerNormParams p;
      p.x = a.inputs[0].as<float>();
      p.scale = a.inputs[1].as<float>();
      p.bias = a.inputs.size() > 2 && a.inputs[2].present() ? a.inputs[2].as<float>() : nullptr;
      p.y = a.outputs[0].as<float>();
      p.mean = optional_output(a, 1);
      p.inv_std = optional_output(a, 2);
      p.rows = layout.rows;
      p.d = layout.d;
      p.epsilon = epsilon;
      p.index = layout.scale;
      layer_norm_kernel<<<row_blocks(layout.rows, ctx), row_threads(layout.d), 0, ctx.stream>>>(p);
      cuda::check(cudaGetLastError(), "layer_norm_kernel launch", what);
    });
  };
}

// Rows per chunk of the parameter gradients: at most ~512 chunks, at least 32 rows each.
int64_t rows_per_chunk(int64_t rows) { return std::max<int64_t>(32, (rows + 511) / 512); }

KernelFactory layer_norm_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = f32_input(n, 0, "dY");
    const graph::Value& x = f32_input(n, 1, "X");
    const graph::Value& scale = f32_input(n, 2, "Scale");
    if (dy.shape != x.shape) throw Error(what + ": dY " + dy.shape_string() + " and X " + x.shape_string() + " differ");
    const int64_t axis = axis_of(n, static_cast<int64_t>(x.shape.size()));
    const LayerNormLayout layout = math::layer_norm_layout(x.shape, axis, scale.shape, nullptr, what);
    for (size_t i = 3; i < 5; ++i) {
      const graph::Value& s = f32_input(n, i, i == 3 ? "Mean" : "InvStdDev");
      if (s.numel() != layout.rows)
        throw Error(what + ": " + (i == 3 ? "Mean" : "InvStdDev") + " has " + std::to_string(s.numel()) +
                    " elements, X " + x.shape_string() + " has " + std::to_string(layout.rows) + " rows before axis " +
                    std::to_string(axis));
    }
    const graph::Shape normalized(x.shape.begin() + axis, x.shape.end());
    f32_output(n, 0, "dX", &x.shape);
    f32_output(n, 1, "dScale", &normalized);
    f32_output(n, 2, "dB", &normalized);
    const int64_t per_chunk = rows_per_chunk(layout.rows);
    const int64_t chunks = (layout.rows + per_chunk - 1) / per_chunk;
    const bool params = n.output(1) || n.output(2);
    const size_t workspace = params ? static_cast<size_t>(2 * chunks * layout.d) * sizeof(double) : 0;
    const graph::Shape xs = x.shape;
    return make_kernel(
        [=](const KernelArgs& a) {
          check_run_shape(a.inputs[1], xs, what, "X");
          const CudaContext& ctx = cuda::context_of(a, what);
          float* dscale = optional_output(a, 1);
          float* dbias = optional_output(a, 2);
          if ((dscale || dbias) && layout.d > 0) {
            if (chunks == 0) {  // no rows: the sums are 0
              for (float* o : {dscale, dbias})
                if (o)
                  cuda::check(cudaMemsetAsync(o, 0, static_cast<size_t>(layout.d) * sizeof(float), ctx.stream),
                              "cudaMemsetAsync", what);
            } else {
              if (a.workspace_bytes < workspace)
                throw Error(what + ": needs a workspace of " + std::to_string(workspace) + " bytes, got " +
                            std::to_string(a.workspace_bytes));
              double* partials = static_cast<double*>(a.workspace);
              const dim3 grid(static_cast<unsigned>((layout.d + kColumns - 1) / kColumns), static_cast<unsigned>(chunks));
              layer_norm_grad_partials_kernel<<<grid, dim3(kColumns, kRowLanes), 0, ctx.stream>>>(
                  a.inputs[0].as<float>(), a.inputs[1].as<float>(), a.inputs[3].as<float>(), a.inputs[4].as<float>(),
                  partials, layout.rows, layout.d, per_chunk);
              cuda::check(cudaGetLastError(), "layer_norm_grad_partials_kernel launch", what);
              cuda::add_chunk_partials(partials, chunks, layout.d, dscale, dbias, ctx, what);
            }
          }
          float* dx = optional_output(a, 0);
          if (dx && layout.rows > 0) {
            LayerNormGradParams p;
            p.dy = a.inputs[0].as<float>();
            p.x = a.inputs[1].as<float>();
            p.scale = a.inputs[2].as<float>();
            p.mean = a.inputs[3].as<float>();
            p.inv_std = a.inputs[4].as<float>();
            p.dx = dx;
            p.rows = layout.rows;
            p.d = layout.d;
            p.index = layout.scale;
            layer_norm_grad_input_kernel<<<row_blocks(layout.rows, ctx), row_threads(layout.d), 0, ctx.stream>>>(p);
            cuda::check(cudaGetLastError(), "layer_norm_grad_input_kernel launch", what);
          }
        },
        workspace);
  };
}

// ---------------------------------------------------------------------------------------
// ReduceSum through oxtrain.ReduceSumTo (the CUDA reduction behind broadcast gradients).

class ReduceSumKernel final : public Kernel {
 public:
  ReduceSumKernel(const KernelInit& init, const graph::Shape& x, const graph::Shape& kept) : kept_(kept) {
    graph::Value* xv = graph_.add_value("x", DType::f32, x, graph::Role::Input);
    graph::Value* yv = graph_.add_value("y", DType::f32, kept);
    xv->rank_known = yv->rank_known = true;
    graph::Node* n = graph_.add_node("ReduceSumTo", {xv}, {yv}, init.node.name, "oxtrain");
    n->attrs["shape"].value = std::vector<int64_t>(kept);
    const KernelFactory* f = KernelRegistry::global().find("oxtrain", "ReduceSumTo", init.device);
    if (!f) throw Error(init.node.describe() + ": no oxtrain.ReduceSumTo kernel on " + device_name(init.device));
    inner_ = (*f)(KernelInit{*n, 1, init.device, init.context, init.precision});
  }
  size_t workspace_bytes() const override { return inner_->workspace_bytes(); }
  void run(const KernelArgs& args) override {
    KernelArgs a = args;
    a.inputs.resize(1);
    a.outputs.resize(1);
    a.outputs[0].shape = kept_;
    inner_->run(a);
  }

 private:
  graph::Graph graph_;
  graph::Shape kept_;
  std::unique_ptr<Kernel> inner_;
};

KernelFactory reduce_sum_factory() {
  return [](const KernelInit& init) -> std::unique_ptr<Kernel> {
    const Node& n = init.node;
    const graph::Value& x = f32_input(n, 0, "data");
    const graph::Shape kept = math::reduce_node_keep_shape(n, init.opset, 13, x.shape);
    f32_output(n, 0, "the output", nullptr);
    return std::make_unique<ReduceSumKernel>(init, x.shape, kept);
  };
}

KernelFactory reduce_sum_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& dy = f32_input(n, 0, "dY");
    const graph::Shape xs = n.attr_ints("input_shape");
    const std::vector<int64_t> axes = n.attr_ints("axes");
    const graph::Shape kept = math::reduced_keep_shape(xs, axes, false, what);
    if (dy.numel() != graph::shape_numel(kept))
      throw Error(what + ": dY " + dy.shape_string() + " does not fit input_shape " + graph::shape_str(xs) +
                  " reduced over axes " + graph::shape_str(axes));
    if (!n.output(0)) throw Error(what + ": output dX is missing");
    f32_output(n, 0, "dX", &xs);
    const math::StridedPlan plan = math::make_broadcast_plan(xs, {kept}, what);
    const bool index32 = math::fits_32_bits(plan);
    StridedIndex<1, uint32_t> s32;
    StridedIndex<1, int64_t> s64;
    if (index32)
      s32 = math::strided_index<1, uint32_t>(plan, {0}, what);
    else
      s64 = math::strided_index<1, int64_t>(plan, {0}, what);
    const int64_t total = graph::shape_numel(xs), dy_numel = dy.numel();
    return make_kernel([=](const KernelArgs& a) {
      if (a.inputs[0].numel() != dy_numel || a.outputs[0].numel() != total)
        throw Error(what + ": run with other shapes than compiled");
      if (total <= 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      const cuda::Launch g = cuda::launch_for(total, ctx);
      if (index32)
        broadcast_copy_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(a.outputs[0].as<float>(), a.inputs[0].as<float>(),
                                                                      static_cast<uint32_t>(total), s32);
      else
        broadcast_copy_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(a.outputs[0].as<float>(), a.inputs[0].as<float>(),
                                                                      total, s64);
      cuda::check(cudaGetLastError(), "broadcast_copy_kernel launch", what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// oxtrain.BatchNormApply: Y = batchnorm_apply(X) per channel of NCHW..., X float32, float16
// or bfloat16 with float32 per-channel inputs (half values natively: widened, the float32
// result rounded to nearest even, as the CPU's emulation of half does). With `relu`,
// oxtrain.BatchNormReluApply in the same pass: Z = Relu(Y + R) (Y alone without R), Y rounded
// to X's type before the addition and the sum after it, as the unfused BatchNormApply and Add
// round their outputs (runtime/math/fused.h): the CPU's two passes' bits, one read of X (and R)
// and one write, where two passes also wrote and read Y.

struct BatchNormApplyParams {
  const void* x;
  void* y;
  const float *scale, *bias, *mean, *inv_std;
  const void* residual;  // R, or null
  int64_t total, spatial, channels;
  bool channels_last;  // X stored [N, H, W, C]
};

template <int kKind, bool kRelu>  // kind: 0 float32, 1 float16, 2 bfloat16
__global__ void batchnorm_apply_kernel(BatchNormApplyParams p) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < p.total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = p.channels_last ? i % p.channels : (i / p.spatial) % p.channels;
    if constexpr (kRelu) {
      math::batchnorm_relu_apply_element<kKind>(p.x, p.residual, p.y, i, p.mean[c], p.inv_std[c], p.scale[c],
                                                p.bias[c]);
    } else {
      store_float<kKind>(p.y, i,
                         math::batchnorm_apply(load_float<kKind>(p.x, i), p.mean[c], p.inv_std[c], p.scale[c], p.bias[c]));
    }
  }
}

template <int kKind>
struct LaunchApply {
  static void run(bool relu, const BatchNormApplyParams& p, const cuda::Launch& g, cudaStream_t stream) {
    if (relu)
      batchnorm_apply_kernel<kKind, true><<<g.blocks, g.threads, 0, stream>>>(p);
    else
      batchnorm_apply_kernel<kKind, false><<<g.blocks, g.threads, 0, stream>>>(p);
  }
};

}  // namespace

KernelFactory batchnorm_apply_kernel_factory(bool relu) {
  return [relu](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value* x = n.input(0);
    if (!x || !n.output(0)) throw Error(what + (relu ? ": X and Z are required" : ": X and Y are required"));
    const DType dt = x->dtype;
    if (dt != DType::f32 && dt != DType::f16 && dt != DType::bf16)
      throw Error(what + ": X is " + graph::dtype_name(dt) + "; float32, float16 or bfloat16 on CUDA");
    if (x->shape.size() < 2) throw Error(what + ": X " + graph::shape_str(x->shape) + " is not [N, C, ...]");
    const bool channels_last = graph::is_channels_last(n) && x->shape.size() == 4;
    const int64_t channels = channels_last ? x->shape[3] : x->shape[1];
    for (size_t i = 1; i <= 4; ++i) {
      const graph::Value* v = n.input(i);
      if (!v || v->dtype != DType::f32 || v->shape != graph::Shape{channels})
        throw Error(what + ": input " + std::to_string(i) + " must be float32 [" + std::to_string(channels) + "]");
    }
    if (n.inputs.size() > 5 && !relu) throw Error(what + ": has five inputs");
    const graph::Value* r = relu && n.inputs.size() > 5 ? n.input(5) : nullptr;
    if (r && (r->dtype != dt || r->shape != x->shape))
      throw Error(what + ": the residual R is " + graph::dtype_name(r->dtype) + " " + graph::shape_str(r->shape) +
                  ", not X's " + graph::dtype_name(dt) + " " + graph::shape_str(x->shape));
    if (n.output(0)->dtype != dt) throw Error(what + (relu ? ": Z must be X's type" : ": Y must be X's type"));
    const int64_t total = x->numel();
    const int64_t spatial = channels > 0 ? total / std::max<int64_t>(1, x->shape[0] * channels) : 0;
    const bool residual = r != nullptr;
    return make_kernel([=](const KernelArgs& a) {
      if (a.inputs[0].numel() != total) throw Error(what + ": run with other shapes than compiled");
      if (total <= 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      BatchNormApplyParams p{a.inputs[0].data,
                             a.outputs[0].data,
                             a.inputs[1].as<float>(),
                             a.inputs[2].as<float>(),
                             a.inputs[3].as<float>(),
                             a.inputs[4].as<float>(),
                             residual ? a.inputs[5].data : nullptr,
                             total,
                             spatial,
                             channels,
                             channels_last};
      const cuda::Launch g = cuda::launch_for(total, ctx);
      cuda::with_float_kind(cuda::float_kind(dt), [&](auto k) { LaunchApply<decltype(k)::value>::run(relu, p, g, ctx.stream); });
      cuda::check(cudaGetLastError(), "batchnorm_apply_kernel launch", what);
    });
  };
}

// ---------------------------------------------------------------------------------------
// ReduceMax / ReduceMin: one thread per output (runtime/math/normalization.h), float32.

template <bool kMax>
__global__ void reduce_extreme_kernel(float* y, const float* x, math::ExtremePlan p) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < p.ny;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (p.kind == math::ExtremePlan::fill) y[j] = math::extreme_identity<float, kMax>();
    else if (p.kind == math::ExtremePlan::copy) y[j] = x[j];
    else y[j] = math::reduce_extreme_at<float, kMax>(x, p, j);
  }
}

template <bool kMax>
KernelFactory reduce_extreme_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const std::string what = n.describe();
    const graph::Value& x = f32_input(n, 0, "data");
    const graph::Shape kept = math::reduce_node_keep_shape(n, init.opset, 18, x.shape);
    f32_output(n, 0, "the output", nullptr);
    const math::ExtremePlan plan = math::make_extreme_plan(x.shape, kept, what);
    const int64_t x_numel = x.numel();
    return make_kernel([plan, what, x_numel](const KernelArgs& a) {
      if (a.inputs[0].numel() != x_numel) throw Error(what + ": run with other shapes than compiled");
      if (plan.ny <= 0) return;
      const CudaContext& ctx = cuda::context_of(a, what);
      const cuda::Launch g = cuda::launch_for(plan.ny, ctx);
      reduce_extreme_kernel<kMax><<<g.blocks, g.threads, 0, ctx.stream>>>(a.outputs[0].as<float>(),
                                                                         a.inputs[0].as<float>(), plan);
      cuda::check(cudaGetLastError(), "reduce_extreme_kernel launch", what);
    });
  };
}

void register_cuda_normalization_kernels(KernelRegistry& registry) {
  const Device cuda = Device::cuda;
  registry.add("", "LayerNormalization", cuda, layer_norm_factory());
  registry.add("", "ReduceMax", cuda, reduce_extreme_factory<true>());
  registry.add("", "ReduceMin", cuda, reduce_extreme_factory<false>());
  registry.add("oxtrain", "LayerNormalization", cuda, layer_norm_factory());
  registry.add("oxtrain", "LayerNormalizationGrad", cuda, layer_norm_grad_factory());
  registry.add("", "ReduceSum", cuda, reduce_sum_factory());
  registry.add("oxtrain", "ReduceSumGrad", cuda, reduce_sum_grad_factory());
  registry.add("oxtrain", "BatchNormApply", cuda, batchnorm_apply_kernel_factory(false));
}

namespace cuda {
namespace {

// Adds the chunks' partial sums in order.
__global__ void chunk_partials_kernel(const double* partials, int64_t chunks, int64_t d, float* first, float* second) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < d; j += stride) {
    double a = 0, b = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      a += partials[c * d + j];
      b += partials[(chunks + c) * d + j];
    }
    if (first) first[j] = static_cast<float>(a);
    if (second) second[j] = static_cast<float>(b);
  }
}

}  // namespace

void add_chunk_partials(const double* partials, int64_t chunks, int64_t d, float* first, float* second,
                        const CudaContext& ctx, const std::string& where) {
  if (d <= 0) return;
  const Launch g = launch_for(d, ctx);
  chunk_partials_kernel<<<g.blocks, g.threads, 0, ctx.stream>>>(partials, chunks, d, first, second);
  check(cudaGetLastError(), "chunk partials kernel launch", where);
}

}  // namespace cuda

}  // namespace oxtrain::runtime
