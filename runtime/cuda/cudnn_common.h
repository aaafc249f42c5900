// What the cuDNN kernels (conv.cc, batchnorm.cc) share: the plan each kernel chose, the
// plan-support check that runs without a GPU, and (for those files only) the compile, measure
// and execute machinery around cudnn-frontend's graph API.
//
// A cuDNN kernel builds one cuDNN graph for its node at compile time, asks the heuristics for
// engine configurations (modes A and FALLBACK), drops the configurations its precision forbids,
// builds the plans, times each on scratch buffers on the kernel's stream and keeps the fastest
// (or, without ExecContext::measure_plans, keeps the first in the heuristics' order that runs).
// Identical graphs (same op, shapes, attributes, precision and device) share one compiled plan
// (or cuDNN's refusal to build any) through a process-wide cache. At run time the kernel only fills the variant pack with the
// step's pointers and executes the chosen plan on the context's cuDNN handle (bound to its
// stream), with its workspace slice.
//
// The public part (ChosenPlan, PlannedKernel, the deviceless check) needs only this header; the
// part under OXTRAIN_CUDNN_FRONTEND needs cudnn-frontend on the include path and is for
// runtime/cuda's own .cc files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "graph/ir.h"
#include "runtime/kernel.h"

namespace oxtrain::runtime::cudnn {

// The plan a cuDNN kernel runs.
struct ChosenPlan {
  std::string engine;     // cuDNN's plan tag ("eng51_k2=8_k13=0..."); empty when none was chosen
  int64_t workspace = 0;  // bytes of cuDNN workspace the plan needs
  double ms = 0;          // its measured time per execution (0 when not measured)
  int measured = 0;       // how many candidate plans were timed
  bool cached = false;    // loaded from the on-disk plan cache (OXTRAIN_PLAN_CACHE)
};

// Implemented by every cuDNN-backed kernel, for `oxtrain graph --device cuda`: which engine it
// runs and the workspace it reports.
class PlannedKernel {
 public:
  virtual ~PlannedKernel() = default;
  virtual const ChosenPlan& chosen_plan() const = 0;
  // "cuDNN eng51_k2=8_k13=0 (workspace 31952 B, 0.021 ms, fastest of 8)"
  std::string describe() const;
};

// Plan support without a GPU: cuDNN (>= 9.8) builds plans from serialized device properties.
struct DevicelessTarget {
  std::string device_properties_json;  // CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION
  int sm_version = 0;                  // 90 for sm_90
  std::string name;
};
// NVIDIA H100 SXM5 80 GB (sm_90, 132 SMs).
DevicelessTarget h100_target();

struct DevicelessSupport {
  int configs = 0;          // engine configurations the heuristics offered
  int allowed = 0;          // of those, the ones the precision allows (deterministic ones only)
  int supported = 0;        // of those, the ones whose plan cuDNN built
  std::string first_engine; // tag of the first supported plan
  std::string failure;      // why none is supported (when supported == 0)
};
// Whether a BatchNormTraining or BatchNormGrad node runs on cuDNN (else on the own kernels of
// runtime/cuda/batchnorm_own.h); checks the node as its kernel factory does.
bool batchnorm_uses_cudnn(const graph::Node& node);

// oxtrain.BatchNormReluTraining or oxtrain.BatchNormReluGrad as one cuDNN graph (batch norm with
// the residual's addition and the ReLU, in any layout; the ReLU's gradient with batch norm's
// backward, channels-last) where cuDNN builds a plan for it; null otherwise, and the composed
// kernels of runtime/fused_batchnorm.h run the node.
std::unique_ptr<Kernel> fused_batchnorm_kernel(const KernelInit& init);

// Builds the cuDNN graph the CUDA kernel of `node` (Conv, ConvGradData, ConvGradFilter, the
// fused ConvStats, ConvGradFilterScaleBiasRelu and ConvGradDataReluBatchNormWeight, BatchNormTraining, BatchNormGrad, and the
// fused BatchNormReluTraining, BatchNormReluGrad) would build and counts the plans cuDNN
// can build for `target` in `precision`. Throws Error for other ops or graphs cuDNN rejects
// before the heuristics.
// `max_builds` >= 0 stops after trying to build that many allowed plans, in the heuristics'
// order; -1 tries every one.
DevicelessSupport deviceless_support(const graph::Node& node, Precision precision,
                                     const DevicelessTarget& target, int max_builds = -1);

// The on-disk plan cache (OXTRAIN_PLAN_CACHE=DIR; off when unset): a plan chosen in one process
// (built, and timed unless --seed) is serialized to DIR, keyed by the graph's signature, the
// precision, the choice (fastest or first), the GPU's name and architecture and the cuDNN and
// cudnn-frontend versions, and the next process with the same graph loads it instead of
// building and timing candidates again. A file that does not load, or belongs to another key,
// is ignored and the plan is built as without the cache.
struct PlanFile {
  std::string key;     // everything the plan depends on
  std::string engine;  // cuDNN's plan tag
  double ms = 0;       // as ChosenPlan
  int measured = 0;
  std::vector<uint8_t> plan;  // cudnn-frontend's serialized execution plan
};
// The cache folder from OXTRAIN_PLAN_CACHE, or "" when the cache is off.
std::string plan_cache_dir();
// The file of `key` in `dir` (a hash of the key names it).
std::string plan_file_path(const std::string& dir, const std::string& key);
// Writes `file` atomically (a temporary file, then rename); false when it cannot.
bool write_plan_file(const std::string& path, const PlanFile& file);
// Reads the file at `path` if it holds `key`; false when absent, damaged or another key's.
bool read_plan_file(const std::string& path, const std::string& key, PlanFile* file);

// Drops the process-wide plans (not the files), so the next kernel of a graph loads its plan from
// the disk cache or builds it: for tests of the cache.
void forget_plans();

// The cache's round trip without a GPU, for `node` on `target`: the first plan cuDNN builds is
// serialized, written to `path`, read back and deserialized against the target's properties.
struct PlanRoundTrip {
  std::string engine;               // the plan built ("" when none)
  int64_t built_workspace = -1;     // its workspace
  int64_t loaded_workspace = -1;    // the workspace of the plan loaded back (-1: did not load)
  size_t plan_bytes = 0;            // serialized size
  size_t plan_uids = 0;             // tensors the loaded plan's variant pack asks for
  bool same_uids = false;           // a second recipe of the node, only validated, binds them all
  bool same_graph_hash = false;     // two recipes of the node hash alike (the key's graph part)
  std::string failure;
};
PlanRoundTrip deviceless_plan_round_trip(const graph::Node& node, Precision precision,
                                         const DevicelessTarget& target, const std::string& path);

}  // namespace oxtrain::runtime::cudnn

#ifdef OXTRAIN_CUDNN_FRONTEND
// cudnn-frontend calls cuDNN, the CUDA runtime and NVRTC through symbols it looks up at run
// time: NVRTC (used only by engines oxtrain never asks for) then need not be linked, and cuDNN
// and the runtime resolve to the libraries this program already loaded (cudnn_common.cc).
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include <memory>
#include <unordered_map>

#include "runtime/cuda/context.h"

namespace oxtrain::runtime::cudnn {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// One tensor of a cuDNN graph bound to one of the node's inputs or outputs. An output the node
// omits (optional outputs of the batch-norm ops) that the cuDNN graph still writes goes to
// scratch space after the kernel's cuDNN workspace.
struct Binding {
  TensorPtr tensor;
  bool output = false;
  size_t index = 0;   // the node's input or output index
  int64_t bytes = 0;  // float32 bytes of the tensor
  bool scratch = false;
};

// A cuDNN graph for one node, before plans: the graph, its bindings and the signature that
// identifies identical graphs (op, shapes, attributes, which outputs are present).
struct GraphRecipe {
  std::shared_ptr<fe::graph::Graph> graph;
  std::vector<Binding> bindings;
  std::string signature;
};

// A fresh graph: float32 in and out unless a tensor says otherwise, float32 arithmetic.
std::shared_ptr<fe::graph::Graph> new_float_graph();
// cuDNN's type for float32, float16 and bfloat16 values; throws naming `where` for others.
fe::DataType_t fe_type(DType dtype, const std::string& where);
// Bytes of a tensor of `dims` in `dtype`.
int64_t tensor_bytes(const std::vector<int64_t>& dims, DType dtype);
// A tensor of `dims` (float32 unless `type` says otherwise) with packed row-major (NCHW)
// strides, or, `channels_last`, dims [N, C, H, W] stored [N, H, W, C] (graph::to_channels_last).
TensorPtr packed_tensor(fe::graph::Graph& graph, const std::string& name, const std::vector<int64_t>& dims,
                        fe::DataType_t type = fe::DataType_t::FLOAT, bool channels_last = false);
// Gives an output tensor (possibly created by an operation) its dims, packed strides and type.
void set_packed(const TensorPtr& tensor, const std::vector<int64_t>& dims,
                fe::DataType_t type = fe::DataType_t::FLOAT, bool channels_last = false);
// "5x7x11x13"
std::string dims_text(const std::vector<int64_t>& dims);

// The recipes of conv.cc and batchnorm.cc, for the deviceless check.
GraphRecipe conv_recipe(const graph::Node& node);
GraphRecipe batchnorm_recipe(const graph::Node& node);

// A graph with its chosen plan, shared by every kernel with the same signature.
struct CompiledGraph {
  std::shared_ptr<fe::graph::Graph> graph;
  std::vector<Binding> bindings;
  int64_t plan_index = -1;
  ChosenPlan chosen;
  std::vector<int64_t> scratch_offsets;  // per binding: byte offset into the workspace, or -1
  int64_t workspace_bytes = 0;           // cuDNN workspace plus scratch
  int64_t last_built = -1;               // the plan cuDNN built last (what serialize() writes)
};

// The kernel of every cuDNN-backed op. With a null `compiled` (compiled without a GPU) it
// reports only its scratch workspace and throws when run.
class CudnnKernel : public Kernel, public PlannedKernel {
 public:
  CudnnKernel(std::shared_ptr<const CompiledGraph> compiled, int64_t workspace_bytes,
              std::string where);
  size_t workspace_bytes() const override { return static_cast<size_t>(workspace_bytes_); }
  void run(const KernelArgs& args) override;
  const ChosenPlan& chosen_plan() const override { return chosen_; }
  // Through Kernel too (`oxtrain graph --device cuda`, kernels that wrap this one).
  std::string describe() const override { return PlannedKernel::describe(); }

 private:
  std::shared_ptr<const CompiledGraph> compiled_;
  int64_t workspace_bytes_ = 0;
  std::string where_;
  ChosenPlan chosen_;
  std::unordered_map<int64_t, void*> variant_pack_;  // uid -> device pointer, refilled per run
};

// Compiles `recipe` for the node's kernel (or takes it from the cache) and returns the kernel.
// `where` is node.describe().
std::unique_ptr<Kernel> make_cudnn_kernel(GraphRecipe recipe, const KernelInit& init,
                                          const std::string& where);

}  // namespace oxtrain::runtime::cudnn
#endif  // OXTRAIN_CUDNN_FRONTEND
