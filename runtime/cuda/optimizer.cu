// CUDA ai.onnx.preview.training.Momentum: the twin of runtime/cpu/optimizer.cc, with the same
// per-element update (runtime/math/optimizer.h). Inputs R (float32 learning rate), T (int64
// update count), X1..Xn, G1..Gn, V1..Vn (float32); outputs X1_new..Xn_new, V1_new..Vn_new,
// written (=). The outputs may share X's and V's buffers: each element is read, then written,
// by one thread.
//
// All n tensors are updated by one launch, or a few: a launch takes a table of up to
// kTensorsPerLaunch tensors (pointers and element counts) as a kernel parameter, and its
// blocks map to (tensor, chunk of kChunk elements) through a prefix table of block counts in
// the same struct. The split into launches and the prefix tables are made at compile time; at
// each run only the pointers are filled in. R and T are read on the device.
//
// oxtrain.ScaledMomentum (fp16's loss scaling) is the same kernel with found_inf and
// loss_scale read on the device too: no host sync decides whether a step is skipped.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "runtime/cuda/context.h"
#include "runtime/cpu/node_checks.h"
#include "runtime/cuda/kernels.h"
#include "runtime/math/optimizer.h"

namespace oxtrain::runtime {
namespace {

constexpr int kTensorsPerLaunch = 64;
constexpr unsigned kThreads = 256;
constexpr int64_t kChunk = kThreads * 8;  // elements per block

struct TensorTable {
  const float* x[kTensorsPerLaunch];
  const float* g[kTensorsPerLaunch];
  const float* v[kTensorsPerLaunch];
  float* x_new[kTensorsPerLaunch];
  float* v_new[kTensorsPerLaunch];
  int64_t count[kTensorsPerLaunch];
  // Tensor t's chunks are blocks first_block[t] .. first_block[t + 1] - 1.
  int64_t first_block[kTensorsPerLaunch + 1];
  int tensors;
};

struct MomentumLaunch {
  TensorTable table;
  const float* lr;               // R, on the device
  const int64_t* update_count;   // T, on the device
  const float* found_inf;        // ScaledMomentum: skip the update when nonzero; else null
  const float* loss_scale;       // ScaledMomentum: gradients are divided by it; else null
  float alpha, beta, norm_coefficient;
  bool nesterov;
};
// Kernel parameters may take 4 KB on every CUDA version and architecture this builds for.
static_assert(sizeof(MomentumLaunch) <= 4096, "Momentum's kernel parameters exceed 4 KB");

// __grid_constant__: the table is read in place from the parameter space, never copied.
__global__ void momentum_kernel(const __grid_constant__ MomentumLaunch p) {
  const TensorTable& table = p.table;
  const int64_t block = blockIdx.x;
  // The last tensor whose first block is <= this block (tensors have at least one block).
  int lo = 0, hi = table.tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (table.first_block[mid] <= block) lo = mid;
    else hi = mid - 1;
  }
  const int t = lo;
  const int64_t begin = (block - table.first_block[t]) * kChunk;
  const int64_t end = begin + kChunk < table.count[t] ? begin + kChunk : table.count[t];

  math::MomentumCoefficients<float> k;
  k.lr = *p.lr;
  k.alpha = p.alpha;
  k.beta = math::momentum_beta(p.beta, *p.update_count);
  k.norm_coefficient = p.norm_coefficient;
  k.nesterov = p.nesterov;
  const float* x = table.x[t];
  const float* g = table.g[t];
  const float* v = table.v[t];
  float* x_new = table.x_new[t];
  float* v_new = table.v_new[t];
  if (p.found_inf && *p.found_inf != 0.0f) {  // the state stays; separate outputs get a copy
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      if (x_new != x) x_new[i] = x[i];
      if (v_new != v) v_new[i] = v[i];
    }
    return;
  }
  const float grad_scale = p.loss_scale ? math::loss_scale_inverse(*p.loss_scale) : 1.0f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const math::MomentumElement<float> out = math::momentum_element(k, x[i], g[i] * grad_scale, v[i]);
    x_new[i] = out.x;
    v_new[i] = out.v;
  }
}

// Which tensors (by index among the n) a launch covers, and its block prefix table.
struct LaunchPlan {
  std::vector<size_t> tensors;
  std::vector<int64_t> counts;
  std::vector<int64_t> first_block;  // tensors.size() + 1 entries
};

std::vector<LaunchPlan> plan_launches(const std::vector<int64_t>& counts, const std::string& what) {
  constexpr int64_t kMaxBlocks = 0x7fffffff;  // gridDim.x
  std::vector<LaunchPlan> plans;
  LaunchPlan current;
  current.first_block.push_back(0);
  auto flush = [&] {
    if (current.tensors.empty()) return;
    plans.push_back(current);
    current = LaunchPlan{};
    current.first_block.push_back(0);
  };
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] == 0) continue;  // nothing to update
    const int64_t blocks = (counts[i] + kChunk - 1) / kChunk;
    if (blocks > kMaxBlocks)
      throw Error(what + ": tensor " + std::to_string(i) + " has " + std::to_string(counts[i]) +
                  " elements, more than one launch covers");
    if (static_cast<int>(current.tensors.size()) == kTensorsPerLaunch ||
        current.first_block.back() + blocks > kMaxBlocks)
      flush();
    current.tensors.push_back(i);
    current.counts.push_back(counts[i]);
    current.first_block.push_back(current.first_block.back() + blocks);
  }
  flush();
  return plans;
}

struct MomentumConfig {
  float alpha = 0, beta = 0, norm_coefficient = 0;
  bool nesterov = false;
  size_t tensors = 0;  // n
  size_t lead = 2;     // inputs before X1: 2, or 4 for ScaledMomentum
  std::vector<LaunchPlan> launches;
  std::string what;
};

void run_momentum(const MomentumConfig& cfg, const KernelArgs& a) {
  const CudaContext& ctx = cuda::context_of(a, cfg.what);
  const size_t n = cfg.tensors;
  for (const LaunchPlan& plan : cfg.launches) {
    MomentumLaunch p{};
    p.lr = a.inputs[0].as<float>();
    p.update_count = a.inputs[1].as<int64_t>();
    const size_t lead = cfg.lead;
    p.found_inf = lead == 4 ? a.inputs[2].as<float>() : nullptr;
    p.loss_scale = lead == 4 ? a.inputs[3].as<float>() : nullptr;
    p.alpha = cfg.alpha;
    p.beta = cfg.beta;
    p.norm_coefficient = cfg.norm_coefficient;
    p.nesterov = cfg.nesterov;
    p.table.tensors = static_cast<int>(plan.tensors.size());
    for (size_t s = 0; s < plan.tensors.size(); ++s) {
      const size_t i = plan.tensors[s];
      if (a.inputs[lead + i].numel() != plan.counts[s])
        throw Error(cfg.what + ": X" + std::to_string(i + 1) + " was compiled with " +
                    std::to_string(plan.counts[s]) + " elements and is run with " +
                    std::to_string(a.inputs[lead + i].numel()));
      p.table.x[s] = a.inputs[lead + i].as<float>();
      p.table.g[s] = a.inputs[lead + n + i].as<float>();
      p.table.v[s] = a.inputs[lead + 2 * n + i].as<float>();
      p.table.x_new[s] = a.outputs[i].as<float>();
      p.table.v_new[s] = a.outputs[n + i].as<float>();
      p.table.count[s] = plan.counts[s];
    }
    for (size_t s = 0; s < plan.first_block.size(); ++s)
      p.table.first_block[s] = plan.first_block[s];
    const auto blocks = static_cast<unsigned>(plan.first_block.back());
    momentum_kernel<<<blocks, kThreads, 0, ctx.stream>>>(p);
    cuda::check(cudaGetLastError(), "momentum_kernel launch", cfg.what);
  }
}

KernelFactory momentum_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    MomentumConfig cfg;
    cfg.what = n.describe();
    const std::string& what = cfg.what;
    const size_t count = cpu::momentum_tensor_count(n);
    const size_t lead = graph::momentum_leading_inputs(n);
    cfg.lead = lead;
    if (n.input(0)->dtype != DType::f32 || graph::shape_numel(n.input(0)->shape) != 1)
      throw Error(what + ": the CUDA kernel takes a float32 scalar learning rate, got " +
                  graph::dtype_name(n.input(0)->dtype) + " " + n.input(0)->shape_string());
    if (n.input(1)->dtype != DType::i64 || graph::shape_numel(n.input(1)->shape) != 1)
      throw Error(what + ": the CUDA kernel takes an int64 scalar update count T, got " +
                  graph::dtype_name(n.input(1)->dtype) + " " + n.input(1)->shape_string());
    std::vector<int64_t> counts;
    for (size_t i = 0; i < count; ++i) {
      const graph::Value& x = *n.input(lead + i);
      if (x.dtype != DType::f32)
        throw Error(what + ": '" + x.name + "' is " + graph::dtype_name(x.dtype) +
                    "; the CUDA kernel takes float32 (run float64 graphs on the CPU)");
      for (const graph::Value* other :
           {n.input(lead + count + i), n.input(lead + 2 * count + i), n.output(i), n.output(count + i)})
        if (other->dtype != DType::f32 || other->shape != x.shape)
          throw Error(what + ": '" + other->name + "' " + graph::dtype_name(other->dtype) + " " +
                      other->shape_string() + " differs in type or shape from '" + x.name +
                      "' float32 " + x.shape_string());
      counts.push_back(graph::shape_numel(x.shape));
    }
    for (const char* key : {"alpha", "beta"})
      if (!n.has_attr(key)) throw Error(what + ": attribute " + key + " is required");
    cfg.alpha = n.attr_float("alpha", 0.0f);
    cfg.beta = n.attr_float("beta", 0.0f);
    cfg.norm_coefficient = n.attr_float("norm_coefficient", 0.0f);
    const std::string mode = n.attr_string("mode", "standard");
    if (mode != "standard" && mode != "nesterov")
      throw Error(what + ": unknown mode '" + mode + "' (standard or nesterov)");
    cfg.nesterov = mode == "nesterov";
    cfg.tensors = count;
    cfg.launches = plan_launches(counts, what);
    return make_kernel([cfg](const KernelArgs& a) { run_momentum(cfg, a); });
  };
}

}  // namespace

void register_cuda_optimizer_kernels(KernelRegistry& registry) {
  registry.add("ai.onnx.preview.training", "Momentum", Device::cuda, momentum_factory());
  registry.add("oxtrain", "ScaledMomentum", Device::cuda, momentum_factory());
}

}  // namespace oxtrain::runtime
