// Gemm and MatMul on the GPU through cuBLASLt, float32, float16 or bfloat16 (every operand of
// one type; half accumulates in float32 and is rounded once, as the CPU's emulation of half
// computes it, up to the order of the sums). Both write (=) their output.
//
// Semantics are those of the CPU kernels (runtime/cpu/matmul.cc): Gemm is
// Y = alpha * op(A) * op(B) + beta * C with C broadcast to [M, N]; MatMul is numpy's matmul
// (1-D operands, broadcast batch dimensions).
//
// cuBLASLt is column-major. A row-major r x c matrix is, read column-major, its own transpose
// (c x r, leading dimension c), so the row-major product Y = op(A) * op(B) is computed as the
// column-major Y^T = op(B)^T * op(A)^T: B's buffer is cuBLASLt's A, A's buffer is cuBLASLt's B,
// and nothing is copied. cuBLASLt's m is Y's N (its columns) and cuBLASLt's n is Y's M.
//
// Everything is settled at compile time: the descriptors, layouts and the algorithm
// (cublasLtMatmulAlgoGetHeuristic, best of those fitting kMaxWorkspace), with alpha and beta
// as host scalars (CUBLASLT_POINTER_MODE_HOST: constants, so a captured CUDA graph replays
// them). run() only issues cublasLtMatmul on the context's stream.
//
// C of Gemm: a full [M, N] C is cuBLASLt's C matrix, scaled by beta. A bias [N] or [1, N]
// (a Linear layer) with beta = 1 is added by the CUBLASLT_EPILOGUE_BIAS epilogue, which adds a
// vector along cuBLASLt's rows, that is along Y's columns. cuBLASLt cannot broadcast C itself
// (its leading dimension must be at least its row count), so other C shapes ([M, 1], a scalar)
// and a bias with beta != 1 are refused at compile time.
//
// MatMul batches: the output's batch dimensions are collapsed as far as both operands walk
// them contiguously. An innermost batch over which B is shared and A is contiguous is folded
// into A's rows (one larger product); the next is cuBLASLt's strided batch (an operand shared
// across it has batch stride 0); any dimensions left are a loop of cublasLtMatmul calls whose
// offsets are computed at compile time.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "graph/inspect.h"
#include "runtime/cuda/context.h"
#include "runtime/cuda/kernels.h"

namespace oxtrain::runtime {
namespace {

// Largest workspace a product may ask for; the algorithm chosen reports what it needs.
constexpr uint64_t kMaxWorkspace = uint64_t{32} << 20;
// Alignment every tensor buffer has at least (the planner aligns to 64 bytes, the device
// runtime's allocations to 256); run() checks the pointers it gets against what the algorithm
// was chosen for.
constexpr uint32_t kBufferAlignment = 16;

std::string shape_text(const Shape& s) { return graph::shape_str(s); }

std::string number_text(float v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// ---------------------------------------------------------------------------------------
// One cuBLASLt product in cuBLASLt's column-major terms:
// D (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, batched `batch` times.
// Matrices are stored tightly (leading dimension = stored row count).

struct LtProduct {
  DType dtype = DType::f32;  // of every operand
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  int64_t stride_a = 0, stride_b = 0, stride_d = 0;  // elements between batch members
  float alpha = 1.0f, beta = 0.0f;
  bool bias = false;  // CUBLASLT_EPILOGUE_BIAS with a vector of m elements
  // Least alignment, in bytes, of the pointers run() will pass.
  uint32_t align_a = kBufferAlignment, align_b = kBufferAlignment, align_cd = kBufferAlignment;
};

// Byte alignment of a buffer pointer plus `offset` elements of `element` bytes.
uint32_t alignment_at(int64_t offset, size_t element) {
  if (offset == 0) return kBufferAlignment;
  uint64_t bytes = static_cast<uint64_t>(offset) * element;
  return static_cast<uint32_t>(std::min<uint64_t>(kBufferAlignment, bytes & (~bytes + 1)));
}

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
  void operator()(cublasLtMatrixLayoutOpaque_t* l) const { cublasLtMatrixLayoutDestroy(l); }
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using MatmulDesc = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using Layout = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, DescDeleter>;
using Preference = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, DescDeleter>;

template <typename T>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value,
              const char* what, const std::string& where) {
  cuda::check(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), what, where);
}

cudaDataType_t cuda_type(DType dt) {
  return dt == DType::f16 ? CUDA_R_16F : dt == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
}

// The descriptors and the algorithm of one LtProduct, made at compile time on a device.
class LtPlan {
 public:
  LtPlan(const LtProduct& p, Precision precision, const CudaContext& ctx, const std::string& where)
      : product_(p), precision_(precision), where_(where) {
    // Half operands: products exact in float32, sums in float32 (TF32 is a float32 input's).
    const cublasComputeType_t compute = precision == Precision::tf32 && p.dtype == DType::f32
                                            ? CUBLAS_COMPUTE_32F_FAST_TF32
                                            : CUBLAS_COMPUTE_32F;
    cublasLtMatmulDesc_t desc = nullptr;
    cuda::check(cublasLtMatmulDescCreate(&desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate", where);
    desc_.reset(desc);
    const cublasOperation_t ta = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t tb = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    set_attr(desc, CUBLASLT_MATMUL_DESC_TRANSA, ta, "cublasLt transa", where);
    set_attr(desc, CUBLASLT_MATMUL_DESC_TRANSB, tb, "cublasLt transb", where);
    const cublasLtPointerMode_t pointer_mode = CUBLASLT_POINTER_MODE_HOST;
    set_attr(desc, CUBLASLT_MATMUL_DESC_POINTER_MODE, pointer_mode, "cublasLt pointer mode", where);
    if (p.bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      set_attr(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue, "cublasLt bias epilogue", where);
      const cudaDataType_t bias_type = cuda_type(p.dtype);
      set_attr(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type, "cublasLt bias type", where);
      // The heuristic does not read the bias but judges its alignment from the pointer's
      // value: give it an address exactly as aligned as the buffers run() will pass.
      set_bias(reinterpret_cast<const void*>(uintptr_t{kBufferAlignment}));
    }
    a_ = layout(p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k, p.stride_a, "A");
    b_ = layout(p.trans_b ? p.n : p.k, p.trans_b ? p.k : p.n, p.stride_b, "B");
    d_ = layout(p.m, p.n, p.stride_d, "C/D");  // C and D share one layout (in-place capable)

    cublasLtMatmulPreference_t pref = nullptr;
    cuda::check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate", where);
    Preference preference(pref);
    auto set_pref = [&](cublasLtMatmulPreferenceAttributes_t attr, auto value) {
      cuda::check(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)),
                  "cublasLtMatmulPreferenceSetAttribute", where);
    };
    set_pref(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kMaxWorkspace);
    // cuBLASLt's A is the node's B buffer and its B the node's A buffer.
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, p.align_a);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, p.align_b);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, p.align_cd);
    set_pref(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, p.align_cd);

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(ctx.cublaslt, desc, a_.get(), b_.get(), d_.get(),
                                                           d_.get(), pref, 1, &result, &found);
    // No algorithm (a half node then falls back to float32 on widened copies, which its
    // describe() says); any other failure is an error.
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || (status == CUBLAS_STATUS_SUCCESS && found == 0))
      throw KernelUnsupported(where + ": cuBLASLt has no algorithm for this product (" + summary() +
                              "); run the model with --device cpu");
    cuda::check(status, "cublasLtMatmulAlgoGetHeuristic", where);
    cuda::check(result.state, "cublasLtMatmulAlgoGetHeuristic", where);
    algo_ = result.algo;
    workspace_ = result.workspaceSize;
    size_t written = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo_, CUBLASLT_ALGO_CONFIG_ID, &algo_id_, sizeof(algo_id_),
                                             &written) != CUBLAS_STATUS_SUCCESS)
      algo_id_ = -1;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo_, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile_id_, sizeof(tile_id_),
                                             &written) != CUBLAS_STATUS_SUCCESS)
      tile_id_ = 0;
  }

  size_t workspace_bytes() const { return workspace_; }

  // Pointers of the buffers (cuBLASLt's names): a = the node's B, b = the node's A.
  struct Operands {
    const void* a = nullptr;
    const void* b = nullptr;
    const void* c = nullptr;  // read only with beta != 0
    void* d = nullptr;
  };

  void set_bias(const void* bias) {
    if (bias == bias_) return;
    set_attr(desc_.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias, "cublasLt bias pointer", where_);
    bias_ = bias;
  }

  void run(const CudaContext& ctx, const Operands& o, void* workspace, size_t workspace_bytes) const {
    cuda::check(cublasLtMatmul(ctx.cublaslt, desc_.get(), &product_.alpha, o.a, a_.get(), o.b, b_.get(),
                               &product_.beta, o.c, d_.get(), o.d, d_.get(), &algo_, workspace, workspace_bytes,
                               ctx.stream),
                "cublasLtMatmul", where_);
  }

  // "cuBLASLt algorithm 21 tile 18, tf32, workspace 4.0 MiB".
  std::string describe() const {
    return "cuBLASLt algorithm " + std::to_string(algo_id_) + " tile " + std::to_string(tile_id_) + ", " +
           arithmetic() + ", workspace " + graph::human_bytes(static_cast<int64_t>(workspace_));
  }

  // "tf32", "fp32" or "bfloat16 summed in float32".
  std::string arithmetic() const {
    if (product_.dtype == DType::f32) return precision_name(precision_);
    return std::string(graph::dtype_name(product_.dtype)) + " summed in float32";
  }

  // The product's shape in cuBLASLt's terms, for messages.
  std::string summary() const {
    const LtProduct& p = product_;
    std::string s = "column-major m " + std::to_string(p.m) + " n " + std::to_string(p.n) + " k " +
                    std::to_string(p.k) + (p.trans_a ? ", A transposed" : "") + (p.trans_b ? ", B transposed" : "");
    if (p.batch > 1) s += ", batch " + std::to_string(p.batch);
    if (p.bias) s += ", bias epilogue";
    return s + ", " + arithmetic();
  }

 private:
  Layout layout(int64_t rows, int64_t cols, int64_t batch_stride, const char* which) {
    cublasLtMatrixLayout_t l = nullptr;
    const std::string what = std::string("cublasLtMatrixLayoutCreate (") + which + ")";
    cuda::check(cublasLtMatrixLayoutCreate(&l, cuda_type(product_.dtype), static_cast<uint64_t>(rows),
                                           static_cast<uint64_t>(cols), rows),
                what.c_str(), where_);
    Layout owned(l);
    if (product_.batch > 1) {
      const int32_t count = static_cast<int32_t>(product_.batch);
      cuda::check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)),
                  "cublasLt batch count", where_);
      cuda::check(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride,
                                                   sizeof(batch_stride)),
                  "cublasLt batch stride", where_);
    }
    return owned;
  }

  LtProduct product_;
  Precision precision_;
  std::string where_;
  MatmulDesc desc_;
  Layout a_, b_, d_;
  cublasLtMatmulAlgo_t algo_{};
  size_t workspace_ = 0;
  int32_t algo_id_ = -1;
  uint32_t tile_id_ = 0;
  const void* bias_ = nullptr;
};

// ---------------------------------------------------------------------------------------
// What a factory settles for one node: the product, the calls that make it up, which inputs
// feed C or the bias, and the shapes run() expects.

struct CallOffsets {
  int64_t a = 0, b = 0, d = 0;  // in elements of the node's A, B and Y buffers
};

struct MatmulSpec {
  std::string op;                 // "Gemm" or "MatMul", for messages
  LtProduct product;
  std::vector<CallOffsets> calls{CallOffsets{}};
  bool empty_output = false;      // nothing to write
  bool zero_fill = false;         // K == 0 without C: Y = 0
  int c_input = -1;               // input index of C read as cuBLASLt's C (beta != 0)
  int bias_input = -1;            // input index of the bias vector
  std::vector<Shape> input_shapes;
  Shape output_shape;
};

class CudaMatmulKernel final : public Kernel {
 public:
  CudaMatmulKernel(MatmulSpec spec, const KernelInit& init) : spec_(std::move(spec)), where_(init.node.describe()) {
    if (spec_.empty_output || spec_.zero_fill) return;
    if (init.context && init.context->cuda)
      plan_ = std::make_unique<LtPlan>(spec_.product, init.precision, *init.context->cuda, where_);
  }

  size_t workspace_bytes() const override {
    if (spec_.empty_output || spec_.zero_fill) return 0;
    return plan_ ? plan_->workspace_bytes() : static_cast<size_t>(kMaxWorkspace);
  }

  // The algorithm and workspace chosen at compile time, for `oxtrain graph --device cuda`.
  std::string describe() const {
    std::string calls = spec_.calls.size() > 1 ? ", " + std::to_string(spec_.calls.size()) + " calls" : "";
    if (spec_.empty_output) return spec_.op + ": empty output, nothing to compute";
    if (spec_.zero_fill) return spec_.op + ": empty inner dimension, output zero-filled";
    if (!plan_)
      return spec_.op + ": cuBLASLt, algorithm chosen when compiled on a device (workspace up to " +
             graph::human_bytes(static_cast<int64_t>(kMaxWorkspace)) + ")" + calls;
    return spec_.op + ": " + plan_->describe() + calls;
  }

  void run(const KernelArgs& args) override {
    const CudaContext& ctx = cuda::context_of(args, where_);
    check_shapes(args);
    if (spec_.empty_output) return;
    char* y = static_cast<char*>(args.outputs[0].data);
    if (spec_.zero_fill) {
      cuda::check(cudaMemsetAsync(y, 0, args.outputs[0].bytes(), ctx.stream), "cudaMemsetAsync", where_);
      return;
    }
    if (!plan_)
      throw Error(where_ + ": this kernel was compiled without a CUDA device (planning only); compile the "
                           "session with its CUDA context to run it");
    if (args.workspace_bytes < plan_->workspace_bytes())
      throw Error(where_ + ": cuBLASLt needs a workspace of " + std::to_string(plan_->workspace_bytes()) +
                  " bytes, got " + std::to_string(args.workspace_bytes));
    const char* a = static_cast<const char*>(args.inputs[0].data);
    const char* b = static_cast<const char*>(args.inputs[1].data);
    const char* c = spec_.c_input >= 0 ? static_cast<const char*>(args.inputs[spec_.c_input].data) : y;
    const int64_t e = static_cast<int64_t>(graph::dtype_size(spec_.product.dtype));
    if (spec_.bias_input >= 0) {
      const void* bias = args.inputs[spec_.bias_input].data;
      check_alignment(bias, kBufferAlignment, "the bias C");
      plan_->set_bias(bias);
    }
    // The per-call offsets were accounted for at compile time; the bases are checked here.
    check_alignment(a, kBufferAlignment, "A");
    check_alignment(b, kBufferAlignment, "B");
    check_alignment(c, kBufferAlignment, "C");
    check_alignment(y, kBufferAlignment, "Y");
    for (const CallOffsets& off : spec_.calls)
      plan_->run(ctx, LtPlan::Operands{b + off.b * e, a + off.a * e, c + off.d * e, y + off.d * e}, args.workspace,
                 args.workspace_bytes);
  }

 private:
  // The buffers must have the shapes the product was planned for (a host check of shapes, not
  // values).
  void check_shapes(const KernelArgs& args) const {
    if (args.inputs.size() < spec_.input_shapes.size() || args.outputs.empty())
      throw Error(where_ + ": expected " + std::to_string(spec_.input_shapes.size()) + " inputs and 1 output, got " +
                  std::to_string(args.inputs.size()) + " and " + std::to_string(args.outputs.size()));
    for (size_t i = 0; i < spec_.input_shapes.size(); ++i)
      if (args.inputs[i].present() && args.inputs[i].shape != spec_.input_shapes[i])
        throw Error(where_ + ": input " + std::to_string(i) + " has shape " + shape_text(args.inputs[i].shape) +
                    " at run time but " + shape_text(spec_.input_shapes[i]) + " when compiled");
    if (args.outputs[0].shape != spec_.output_shape)
      throw Error(where_ + ": the output has shape " + shape_text(args.outputs[0].shape) + " at run time but " +
                  shape_text(spec_.output_shape) + " when compiled");
  }

  void check_alignment(const void* p, uint32_t alignment, const char* which) const {
    if (reinterpret_cast<uintptr_t>(p) % alignment != 0)
      throw Error(where_ + ": the buffer of " + which + " is not " + std::to_string(alignment) +
                  "-byte aligned, as the cuBLASLt algorithm chosen at compile time requires");
  }

  MatmulSpec spec_;
  std::string where_;
  std::unique_ptr<LtPlan> plan_;
};

// ---------------------------------------------------------------------------------------
// Compile-time checks shared by Gemm and MatMul.

// Every operand of a product has A's type: float32, float16 or bfloat16.
void check_type(const Node& n, const graph::Value& v, const char* role) {
  const DType dt = n.input(0) ? n.input(0)->dtype : v.dtype;
  if (v.dtype != DType::f32 && v.dtype != DType::f16 && v.dtype != DType::bf16)
    throw Error(n.describe() + ": the CUDA kernel takes float32, float16 or bfloat16, got " +
                graph::dtype_name(v.dtype) + " " + role + " '" + v.name + "'");
  if (v.dtype != dt)
    throw Error(n.describe() + ": the CUDA kernel takes operands of one type, got " + graph::dtype_name(v.dtype) +
                " " + role + " '" + v.name + "' beside " + graph::dtype_name(dt) + " A");
}

const graph::Value& float_input(const Node& n, size_t i, const char* role) {
  const graph::Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": input " + std::to_string(i) + " (" + role + ") is missing");
  check_type(n, *v, role);
  if (!v->rank_known || graph::shape_numel(v->shape) < 0)
    throw Error(n.describe() + ": " + role + " '" + v->name + "' has shape " + v->shape_string() +
                "; the CUDA kernel needs every shape known when the graph is compiled");
  return *v;
}

const graph::Value& float_output(const Node& n) {
  const graph::Value* y = n.output(0);
  if (!y) throw Error(n.describe() + ": output 0 is missing");
  check_type(n, *y, "output");
  return *y;
}

// cuBLASLt takes int32 dimensions and batch counts.
void check_int32(const Node& n, int64_t v, const char* what) {
  if (v > INT32_MAX)
    throw Error(n.describe() + ": " + what + " " + std::to_string(v) + " is too large for cuBLASLt (at most " +
                std::to_string(INT32_MAX) + ")");
}

// ---------------------------------------------------------------------------------------
// Gemm

MatmulSpec gemm_spec(const Node& n) {
  const std::string what = n.describe();
  const graph::Value& a = float_input(n, 0, "A");
  const graph::Value& b = float_input(n, 1, "B");
  const graph::Value& y = float_output(n);
  const bool ta = n.attr_int("transA", 0) != 0, tb = n.attr_int("transB", 0) != 0;
  const float alpha = n.attr_float("alpha", 1.0f), beta = n.attr_float("beta", 1.0f);
  if (a.shape.size() != 2 || b.shape.size() != 2)
    throw Error(what + ": A and B must be matrices, got " + a.shape_string() + " and " + b.shape_string());
  const int64_t m = ta ? a.shape[1] : a.shape[0], k = ta ? a.shape[0] : a.shape[1];
  const int64_t kb = tb ? b.shape[1] : b.shape[0], nn = tb ? b.shape[0] : b.shape[1];
  if (k != kb)
    throw Error(what + ": op(A) is " + std::to_string(m) + "x" + std::to_string(k) + " but op(B) is " +
                std::to_string(kb) + "x" + std::to_string(nn) + " (A " + a.shape_string() + ", B " +
                b.shape_string() + ", transA " + std::to_string(ta) + ", transB " + std::to_string(tb) + ")");
  if (y.shape != Shape{m, nn})
    throw Error(what + ": the output has shape " + y.shape_string() + ", expected [" + std::to_string(m) + "," +
                std::to_string(nn) + "]");
  for (int64_t d : {m, nn, k}) check_int32(n, d, "dimension");

  MatmulSpec spec;
  spec.op = "Gemm";
  spec.product.dtype = a.dtype;
  spec.input_shapes = {a.shape, b.shape};
  spec.output_shape = y.shape;
  const graph::Value* c = n.input(2);
  const bool has_c = c && beta != 0.0f;  // beta = 0 ignores C, as on the CPU
  if (c) {
    float_input(n, 2, "C");
    spec.input_shapes.push_back(c->shape);
  }
  if (m == 0 || nn == 0) {
    spec.empty_output = true;
    return spec;
  }
  LtProduct& p = spec.product;
  p.trans_a = tb;  // cuBLASLt's A is the node's B
  p.trans_b = ta;
  p.m = nn;
  p.n = m;
  p.k = k;
  p.alpha = alpha;
  if (has_c) {
    // C as [c0, c1], broadcast unidirectionally to [M, N].
    Shape cs = c->shape;
    if (cs.size() > 2)
      throw Error(what + ": C has shape " + c->shape_string() + ", which does not broadcast to [" +
                  std::to_string(m) + "," + std::to_string(nn) + "]");
    cs.insert(cs.begin(), 2 - cs.size(), 1);
    if (cs[0] == m && cs[1] == nn) {
      spec.c_input = 2;  // cuBLASLt's C: column-major N x M, the same layout as Y
      p.beta = beta;
    } else if (cs[0] == 1 && cs[1] == nn && beta == 1.0f) {
      spec.bias_input = 2;  // a vector along Y's columns: cuBLASLt's rows
      p.bias = true;
    } else {
      throw Error(what + ": the CUDA Gemm takes C of shape [M,N] = [" + std::to_string(m) + "," +
                  std::to_string(nn) + "] with any beta, or a bias [N] / [1,N] with N = " + std::to_string(nn) +
                  " and beta = 1; got C " + c->shape_string() + " with beta " + number_text(beta) +
                  " (cuBLASLt cannot broadcast C otherwise); expand C to [M,N] in the model or run it with "
                  "--device cpu");
    }
  }
  if (k == 0) {
    if (has_c)
      throw Error(what + ": the CUDA Gemm does not take an empty inner dimension (A " + a.shape_string() +
                  ", B " + b.shape_string() + ") together with C; run it with --device cpu");
    spec.zero_fill = true;
  }
  return spec;
}

// ---------------------------------------------------------------------------------------
// MatMul

// One output batch dimension: its size and each operand's stride over it, in matrices
// (0 where the operand is broadcast).
struct BatchDim {
  int64_t size = 1, a = 0, b = 0, y = 0;
};

MatmulSpec matmul_spec(const Node& n) {
  const std::string what = n.describe();
  const graph::Value& av = float_input(n, 0, "A");
  const graph::Value& bv = float_input(n, 1, "B");
  const graph::Value& yv = float_output(n);
  if (av.shape.empty() || bv.shape.empty())
    throw Error(what + ": MatMul takes no scalars, got A " + av.shape_string() + " and B " + bv.shape_string());
  Shape as = av.shape, bs = bv.shape;
  if (as.size() == 1) as.insert(as.begin(), 1);
  if (bs.size() == 1) bs.push_back(1);
  const int64_t m = as[as.size() - 2], k = as.back(), nn = bs.back();
  if (bs[bs.size() - 2] != k)
    throw Error(what + ": shapes " + av.shape_string() + " and " + bv.shape_string() +
                " disagree on the inner dimension");
  Shape ab(as.begin(), as.end() - 2), bb(bs.begin(), bs.end() - 2);
  const size_t rank = std::max(ab.size(), bb.size());
  ab.insert(ab.begin(), rank - ab.size(), 1);
  bb.insert(bb.begin(), rank - bb.size(), 1);
  Shape yb(rank);
  for (size_t d = 0; d < rank; ++d) {
    if (ab[d] != bb[d] && ab[d] != 1 && bb[d] != 1)
      throw Error(what + ": batch dimensions of " + av.shape_string() + " and " + bv.shape_string() +
                  " do not broadcast");
    yb[d] = ab[d] == 1 ? bb[d] : ab[d];
  }
  Shape want = yb;
  if (av.shape.size() > 1) want.push_back(m);
  if (bv.shape.size() > 1) want.push_back(nn);
  if (yv.shape != want)
    throw Error(what + ": the output has shape " + yv.shape_string() + ", expected " + shape_text(want));

  MatmulSpec spec;
  spec.op = "MatMul";
  spec.product.dtype = av.dtype;
  spec.input_shapes = {av.shape, bv.shape};
  spec.output_shape = yv.shape;
  if (graph::shape_numel(yv.shape) == 0) {
    spec.empty_output = true;
    return spec;
  }
  if (k == 0) {
    spec.zero_fill = true;
    return spec;
  }
  for (int64_t d : {m, nn, k}) check_int32(n, d, "dimension");

  // Batch dimensions of size > 1, outermost first, with contiguous neighbours merged.
  std::vector<BatchDim> dims;
  int64_t sa = 1, sb = 1, sy = 1;
  std::vector<BatchDim> reversed;
  for (size_t i = rank; i-- > 0;) {
    BatchDim d{yb[i], ab[i] == 1 ? 0 : sa, bb[i] == 1 ? 0 : sb, sy};
    sa *= ab[i];
    sb *= bb[i];
    sy *= yb[i];
    if (d.size != 1) reversed.push_back(d);
  }
  for (size_t i = reversed.size(); i-- > 0;) {
    const BatchDim& d = reversed[i];
    if (!dims.empty()) {
      BatchDim& outer = dims.back();
      if (outer.a == d.a * d.size && outer.b == d.b * d.size && outer.y == d.y * d.size) {
        outer = BatchDim{outer.size * d.size, d.a, d.b, d.y};
        continue;
      }
    }
    dims.push_back(d);
  }

  // An innermost batch sharing B over a contiguous A folds into A's rows.
  int64_t rows = m;
  if (!dims.empty() && dims.back().b == 0 && dims.back().a == 1) {
    rows *= dims.back().size;
    dims.pop_back();
  }
  check_int32(n, rows, "row count");
  LtProduct& p = spec.product;
  p.m = nn;    // cuBLASLt's A is B (N x K column-major), its B is A (K x rows column-major)
  p.n = rows;
  p.k = k;
  if (!dims.empty()) {
    const BatchDim d = dims.back();
    dims.pop_back();
    check_int32(n, d.size, "batch count");
    p.batch = d.size;
    p.stride_a = d.b * k * nn;
    p.stride_b = d.a * m * k;
    p.stride_d = d.y * m * nn;
  }
  // Whatever is left: a loop of calls, outermost dimension first.
  spec.calls.assign(1, CallOffsets{});
  for (const BatchDim& d : dims) {
    std::vector<CallOffsets> next;
    next.reserve(spec.calls.size() * static_cast<size_t>(d.size));
    for (const CallOffsets& o : spec.calls)
      for (int64_t i = 0; i < d.size; ++i)
        next.push_back({o.a + i * d.a * m * k, o.b + i * d.b * k * nn, o.d + i * d.y * m * nn});
    spec.calls = std::move(next);
  }
  const size_t element = graph::dtype_size(av.dtype);
  for (const CallOffsets& o : spec.calls) {
    p.align_b = std::min(p.align_b, alignment_at(o.a, element));
    p.align_a = std::min(p.align_a, alignment_at(o.b, element));
    p.align_cd = std::min(p.align_cd, alignment_at(o.d, element));
  }
  return spec;
}

template <MatmulSpec (*make_spec)(const Node&)>
std::unique_ptr<Kernel> make_matmul_kernel(const KernelInit& init) {
  return std::make_unique<CudaMatmulKernel>(make_spec(init.node), init);
}

}  // namespace

void register_cuda_matmul_kernels(KernelRegistry& registry) {
  registry.add("", "Gemm", Device::cuda, make_matmul_kernel<gemm_spec>);
  registry.add("", "MatMul", Device::cuda, make_matmul_kernel<matmul_spec>);
}

}  // namespace oxtrain::runtime
