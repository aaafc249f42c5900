// What the cuDNN kernels (conv.cc, batchnorm.cc) share: compiling a cuDNN graph into a plan
// chosen by measurement, the process-wide plan cache, the kernel that executes a plan, and the
// plan-support check without a GPU. See cudnn_common.h.
#define OXTRAIN_CUDNN_FRONTEND
#include "runtime/cuda/cudnn_common.h"

#include <dlfcn.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace cudnn_frontend {
// cudnn-frontend's dynamic loading looks cuDNN's symbols up in this library handle.
void* cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace oxtrain::runtime::cudnn {

namespace {

// Candidate plans timed per graph, and executions per timing.
constexpr int kMaxMeasured = 8;
// Runtime-compiled engines (NVRTC; batch norm has only those) take seconds each to build, in
// every process: the heuristics' first one that builds is taken, untimed against others.
constexpr int kMaxRuntimeCompiled = 1;
constexpr int kRepeats = 3;
constexpr int64_t kAlign = 256;

int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Points cudnn-frontend at the cuDNN and CUDA runtime libraries this program is linked with,
// before its first call. (Left to itself, its dynamic loading would dlopen the first
// libcudart.so.12 or .13 it finds, which need not be the one oxtrain runs on.)
void bind_libraries() {
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&cudnnGetVersion), &info) && info.dli_fname)
      fe::cudnn_dlhandle = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (!fe::cudnn_dlhandle) fe::cudnn_dlhandle = RTLD_DEFAULT;
    Dl_info rt{};
    if (!std::getenv("CUDNN_FRONTEND_CUDART_LIB_NAME") &&
        dladdr(reinterpret_cast<void*>(&cudaGetDevice), &rt) && rt.dli_fname)
      setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", rt.dli_fname, 0);
  });
}

// The numerical notes a plan must not carry. In every precision: nondeterministic engines
// (atomic reductions in another order each run), so a step gives the same bits run to run and
// a replayed CUDA graph the bits of the eager step. In fp32-strict also TF32 tensor cores,
// inputs converted down, reductions in reduced precision, and the FFT and Winograd transforms
// (exact in arithmetic, not in float32 rounding).
const std::vector<fe::NumericalNote_t>& excluded_notes(Precision precision) {
  static const std::vector<fe::NumericalNote_t> any = {fe::NumericalNote_t::NONDETERMINISTIC};
  static const std::vector<fe::NumericalNote_t> strict = {
      fe::NumericalNote_t::NONDETERMINISTIC,    fe::NumericalNote_t::TENSOR_CORE,
      fe::NumericalNote_t::DOWN_CONVERT_INPUTS, fe::NumericalNote_t::REDUCED_PRECISION_REDUCTION,
      fe::NumericalNote_t::FFT,                 fe::NumericalNote_t::WINOGRAD,
      fe::NumericalNote_t::WINOGRAD_TILE_4x4,   fe::NumericalNote_t::WINOGRAD_TILE_6x6,
      fe::NumericalNote_t::WINOGRAD_TILE_13x13};
  return precision == Precision::fp32 ? strict : any;
}

void check_fe(fe::error_t status, const char* what, const std::string& where) {
  if (status.is_good()) return;
  std::string message = status.get_message();
  if (message.size() > 600) message = message.substr(0, 600) + " ...";
  throw Error(where + ": cuDNN " + what + " failed: " + message);
}

// validate, build_operation_graph, heuristics (A then FALLBACK), precision filter. Returns how
// many configurations the heuristics offered.
int64_t prepare_plans(fe::graph::Graph& graph, cudnnHandle_t handle, Precision precision,
                      const std::string& where) {
  check_fe(graph.validate(), "graph validation", where);
  check_fe(handle ? graph.build_operation_graph(handle) : graph.build_operation_graph(),
           "operation graph", where);
  check_fe(graph.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}),
           "heuristics query", where);
  graph.deselect_numeric_notes(excluded_notes(precision));
  return graph.get_execution_plan_count();
}

bool runtime_compiled(const fe::graph::Graph& graph, int64_t index) {
  std::vector<fe::BehaviorNote_t> notes;
  if (graph.get_behavior_notes_for_plan_at_index(index, notes).is_bad()) return false;
  return std::find(notes.begin(), notes.end(), fe::BehaviorNote_t::RUNTIME_COMPILATION) !=
         notes.end();
}

// Builds up to kMaxMeasured plans in the heuristics' order, precompiled engines first
// (runtime-compiled ones take seconds each and are built only when no precompiled one
// supports the graph, then only kMaxRuntimeCompiled of them). Returns their indices; `failure`
// says why the first one failed.
std::vector<int64_t> build_candidates(fe::graph::Graph& graph, int64_t count,
                                      std::string& failure) {
  std::vector<int64_t> built;
  for (int pass = 0; pass < 2 && built.empty(); ++pass)
    for (int64_t i = 0; i < count && static_cast<int>(built.size()) < (pass == 0 ? kMaxMeasured : kMaxRuntimeCompiled);
         ++i) {
      if (runtime_compiled(graph, i) != (pass == 1)) continue;
      fe::error_t status = graph.build_plan_at_index(i);
      if (status.is_good())
        built.push_back(i);
      else if (failure.empty() && status.get_message() != "Deselecting execution plan")
        failure = status.get_message();
    }
  return built;
}

std::string plan_name(const fe::graph::Graph& graph, int64_t index) {
  std::string name;
  if (graph.get_plan_name_at_index(index, name).is_bad()) name = "plan " + std::to_string(index);
  return name;
}

// Device buffers of a measurement, freed on every path.
class ScratchBuffers {
 public:
  explicit ScratchBuffers(std::string where) : where_(std::move(where)) {}
  ~ScratchBuffers() {
    for (void* p : buffers_) cudaFree(p);
  }
  ScratchBuffers(const ScratchBuffers&) = delete;
  ScratchBuffers& operator=(const ScratchBuffers&) = delete;
  void* allocate(int64_t bytes, cudaStream_t stream) {
    void* p = nullptr;
    cuda::check(cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, kAlign))),
                "cudaMalloc of a plan-timing buffer", where_);
    buffers_.push_back(p);
    cuda::check(cudaMemsetAsync(p, 0, static_cast<size_t>(std::max<int64_t>(bytes, kAlign)), stream),
                "cudaMemsetAsync of a plan-timing buffer", where_);
    return p;
  }

 private:
  std::string where_;
  std::vector<void*> buffers_;
};

class Events {
 public:
  explicit Events(const std::string& where) {
    cuda::check(cudaEventCreate(&start), "cudaEventCreate", where);
    cuda::check(cudaEventCreate(&stop), "cudaEventCreate", where);
  }
  ~Events() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  cudaEvent_t start = nullptr, stop = nullptr;
};

// cuDNN rejected the graph or built no plan for it: the same graph will fare no better, unlike
// a failure to allocate or execute while measuring.
class NoPlan : public Error {
 public:
  using Error::Error;
};

// Times each built plan on zero-filled buffers on the context's stream and returns the fastest;
// without `measure`, returns the first built plan (in the heuristics' order) that executes.
std::shared_ptr<CompiledGraph> compile(GraphRecipe recipe, const CudaContext& ctx,
                                       Precision precision, bool measure, const std::string& where) {
  fe::graph::Graph& graph = *recipe.graph;
  int64_t count = 0;
  try {
    count = prepare_plans(graph, ctx.cudnn, precision, where);
  } catch (const Error& e) {
    throw NoPlan(e.what());
  }
  std::string failure;
  std::vector<int64_t> built = build_candidates(graph, count, failure);
  if (built.empty())
    throw NoPlan(where + ": no cuDNN engine supports this graph in " +
                std::string(precision_name(precision)) + " precision (" +
                std::to_string(count) + " configurations offered" +
                (failure.empty() ? std::string() : "; first failure: " + failure.substr(0, 400)) +
                ")" +
                (precision == Precision::fp32 ? "; try --precision tf32" : ""));

  int64_t max_workspace = 0;
  std::map<int64_t, int64_t> workspace;
  for (int64_t i : built) {
    int64_t ws = 0;
    check_fe(graph.get_workspace_size_plan_at_index(i, ws), "workspace query", where);
    workspace[i] = ws;
    max_workspace = std::max(max_workspace, ws);
  }

  ScratchBuffers buffers(where);
  std::unordered_map<int64_t, void*> pack;
  for (const Binding& b : recipe.bindings) pack[b.tensor->get_uid()] = buffers.allocate(b.bytes, ctx.stream);
  void* ws_buffer = max_workspace > 0 ? buffers.allocate(max_workspace, ctx.stream) : nullptr;
  Events events(where);

  int64_t best = -1;
  double best_ms = std::numeric_limits<double>::infinity();
  int measured = 0;
  std::string run_failure;
  for (int64_t i : built) {
    // One run to warm up (and to find plans that fail to execute), then kRepeats timed.
    fe::error_t status = graph.execute_plan_at_index(ctx.cudnn, pack, ws_buffer, i);
    if (status.is_bad()) {
      cudaGetLastError();
      if (run_failure.empty()) run_failure = plan_name(graph, i) + ": " + status.get_message();
      continue;
    }
    if (!measure) {  // the heuristics' first plan that runs
      best = i;
      break;
    }
    cuda::check(cudaEventRecord(events.start, ctx.stream), "cudaEventRecord", where);
    for (int r = 0; r < kRepeats && status.is_good(); ++r)
      status = graph.execute_plan_at_index(ctx.cudnn, pack, ws_buffer, i);
    cuda::check(cudaEventRecord(events.stop, ctx.stream), "cudaEventRecord", where);
    cuda::check(cudaEventSynchronize(events.stop), "cudaEventSynchronize while timing plans", where);
    if (status.is_bad()) continue;
    float ms = 0;
    cuda::check(cudaEventElapsedTime(&ms, events.start, events.stop), "cudaEventElapsedTime", where);
    ++measured;
    const double per_run = static_cast<double>(ms) / kRepeats;
    if (per_run < best_ms) best_ms = per_run, best = i;
  }
  cuda::check(cudaStreamSynchronize(ctx.stream), "cudaStreamSynchronize after timing plans", where);
  if (best < 0)
    throw Error(where + ": every cuDNN plan built for this graph failed to execute (" +
                run_failure.substr(0, 400) + ")");

  auto compiled = std::make_shared<CompiledGraph>();
  compiled->graph = recipe.graph;
  compiled->bindings = std::move(recipe.bindings);
  compiled->plan_index = best;
  compiled->last_built = built.back();
  compiled->chosen.engine = plan_name(graph, best);
  compiled->chosen.workspace = workspace[best];
  compiled->chosen.ms = measure ? best_ms : 0;
  compiled->chosen.measured = measured;
  return compiled;
}

// Scratch regions for omitted outputs, after `cudnn_workspace` bytes; returns the total.
int64_t place_scratch(const std::vector<Binding>& bindings, int64_t cudnn_workspace,
                      std::vector<int64_t>& offsets) {
  int64_t end = align_up(cudnn_workspace);
  offsets.assign(bindings.size(), -1);
  for (size_t i = 0; i < bindings.size(); ++i) {
    if (!bindings[i].scratch) continue;
    offsets[i] = end;
    end += align_up(bindings[i].bytes);
  }
  return end;
}

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, std::shared_ptr<const CompiledGraph>>& cache() {
  static auto* c = new std::map<std::string, std::shared_ptr<const CompiledGraph>>;
  return *c;
}
// Graphs cuDNN rejected or built no plan for (NoPlan), with why: the next node with the same
// graph fails at once instead of building the candidates again (a fused pattern cuDNN rejects
// on some GPU would otherwise cost each of its nodes the search before the composed kernels
// take over). Failures to allocate or execute while measuring are not kept.
std::map<std::string, std::string>& failures() {
  static auto* f = new std::map<std::string, std::string>;
  return *f;
}

}  // namespace

std::string PlannedKernel::describe() const {
  const ChosenPlan& p = chosen_plan();
  if (p.engine.empty()) return "cuDNN: no plan chosen (compiled without a GPU)";
  std::ostringstream s;
  s << "cuDNN " << p.engine << " (workspace " << p.workspace << " B";
  if (p.measured > 0) s << ", " << p.ms << " ms, fastest of " << p.measured;
  else s << ", the heuristics' first that runs";
  if (p.cached) s << ", from the plan cache";
  s << ")";
  return s.str();
}

std::shared_ptr<fe::graph::Graph> new_float_graph() {
  bind_libraries();
  auto graph = std::make_shared<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::FLOAT)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return graph;
}

namespace {
std::vector<int64_t> packed_strides(const std::vector<int64_t>& dims) {
  std::vector<int64_t> strides(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) strides[i - 1] = strides[i] * std::max<int64_t>(dims[i], 1);
  return strides;
}
}  // namespace

fe::DataType_t fe_type(DType dtype, const std::string& where) {
  switch (dtype) {
    case DType::f32: return fe::DataType_t::FLOAT;
    case DType::f16: return fe::DataType_t::HALF;
    case DType::bf16: return fe::DataType_t::BFLOAT16;
    default:
      throw Error(where + ": cuDNN kernels take float32, float16 or bfloat16, got " + graph::dtype_name(dtype));
  }
}

int64_t tensor_bytes(const std::vector<int64_t>& dims, DType dtype) {
  return graph::shape_numel(dims) * static_cast<int64_t>(graph::dtype_size(dtype));
}

static std::vector<int64_t> layout_strides(const std::vector<int64_t>& dims, bool channels_last) {
  if (!channels_last) return packed_strides(dims);
  if (dims.size() != 4) throw Error("cuDNN: channels-last needs [N, C, H, W] dims, got " + dims_text(dims));
  const int64_t c = std::max<int64_t>(dims[1], 1), h = std::max<int64_t>(dims[2], 1), w = std::max<int64_t>(dims[3], 1);
  return {c * h * w, 1, w * c, c};
}

TensorPtr packed_tensor(fe::graph::Graph& graph, const std::string& name, const std::vector<int64_t>& dims,
                        fe::DataType_t type, bool channels_last) {
  return graph.tensor(fe::graph::Tensor_attributes()
                          .set_name(name)
                          .set_dim(dims)
                          .set_stride(layout_strides(dims, channels_last))
                          .set_data_type(type));
}

void set_packed(const TensorPtr& tensor, const std::vector<int64_t>& dims, fe::DataType_t type, bool channels_last) {
  tensor->set_dim(dims).set_stride(layout_strides(dims, channels_last)).set_data_type(type);
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s;
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += 'x';
    s += std::to_string(dims[i]);
  }
  return s;
}

CudnnKernel::CudnnKernel(std::shared_ptr<const CompiledGraph> compiled, int64_t workspace_bytes,
                         std::string where)
    : compiled_(std::move(compiled)), workspace_bytes_(workspace_bytes), where_(std::move(where)) {
  if (compiled_) {
    chosen_ = compiled_->chosen;
    variant_pack_.reserve(compiled_->bindings.size());
    for (const Binding& b : compiled_->bindings) variant_pack_[b.tensor->get_uid()] = nullptr;
  }
}

void CudnnKernel::run(const KernelArgs& args) {
  const CudaContext& ctx = cuda::context_of(args, where_);
  if (!compiled_)
    throw Error(where_ + ": this cuDNN kernel was compiled without a GPU and has no plan; "
                "compile the graph with a CUDA device");
  if (args.workspace_bytes < static_cast<size_t>(workspace_bytes_))
    throw Error(where_ + ": the cuDNN kernel needs " + std::to_string(workspace_bytes_) +
                " bytes of workspace, got " + std::to_string(args.workspace_bytes));
  const CompiledGraph& c = *compiled_;
  for (size_t i = 0; i < c.bindings.size(); ++i) {
    const Binding& b = c.bindings[i];
    void* p = nullptr;
    if (b.scratch) {
      p = static_cast<char*>(args.workspace) + c.scratch_offsets[i];
    } else {
      const std::vector<TensorView>& views = b.output ? args.outputs : args.inputs;
      if (b.index >= views.size() || !views[b.index].present())
        throw Error(where_ + ": " + (b.output ? "output " : "input ") + std::to_string(b.index) +
                    " has no buffer");
      p = views[b.index].data;
    }
    variant_pack_[b.tensor->get_uid()] = p;
  }
  fe::error_t status = fe::error_t{};
  try {
    status = c.graph->execute_plan_at_index(ctx.cudnn, variant_pack_, args.workspace, c.plan_index);
  } catch (const std::exception& e) {
    throw Error(where_ + ": cuDNN execute (" + c.chosen.engine + ") failed: " + e.what());
  }
  if (status.is_bad())
    throw Error(where_ + ": cuDNN execute (" + c.chosen.engine + ") failed: " + status.get_message());
}

// ---------------------------------------------------------------------------------------
// The on-disk plan cache.

namespace {

constexpr char kPlanFileMagic[] = "oxtrain cuDNN plan 1";
constexpr size_t kMaxPlanBytes = size_t{64} << 20;

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The cache's key: the process-wide key plus what a plan from another process depends on.
std::string disk_key(const std::string& key, const CudaContext& ctx) {
  cudaDeviceProp p{};
  std::string name = cudaGetDeviceProperties(&p, ctx.device) == cudaSuccess ? p.name : "unknown GPU";
  cudaGetLastError();
  return key + "|" + name + "|cudnn " + std::to_string(cudnnGetVersion()) + "|cudnn-frontend " +
         std::to_string(CUDNN_FRONTEND_VERSION);
}

// The chosen plan serialized, or empty where cudnn-frontend cannot (the cache then skips it;
// not every engine can be serialized, and the frontend then throws). Serialization takes the
// graph's candidate plan, which build_plan_at_index sets (without building an index again).
std::vector<uint8_t> serialize_plan(fe::graph::Graph& graph, int64_t index, int64_t last_built) {
  std::vector<uint8_t> data;
  try {
    if (index != last_built && graph.build_plan_at_index(index).is_bad()) return data;
    if (graph.serialize(data, false).is_bad()) data.clear();
  } catch (const std::exception&) {
    data.clear();
  }
  return data;
}

// What the recipe's cuDNN graph is, as a hash: its tensors (uids, dims, strides, types), nodes
// and pass-by-value values, so a plan written by another build of oxtrain whose recipe differs
// under the same signature is never loaded. Empty when the graph does not validate.
std::string graph_hash(fe::graph::Graph& graph) {
  try {
    if (graph.validate().is_bad()) return {};
    nlohmann::json j;
    graph.serialize(j);
    j.erase("gid");  // a process-wide counter
    char text[32];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(fnv1a(j.dump())));
    return text;
  } catch (const std::exception&) {
    return {};
  }
}

// Whether every tensor the plan's variant pack asks for is one of the bindings.
bool binds_plan_uids(const fe::graph::Graph& plan, const std::vector<Binding>& bindings) {
  std::set<int64_t> bound;
  for (const Binding& b : bindings) bound.insert(b.tensor->get_uid());
  for (int64_t uid : plan.get_variant_pack_uids_sorted())
    if (!bound.count(uid)) return false;
  return true;
}

// A CompiledGraph from a cached plan, or null. The plan goes into a graph of its own, executed
// at its only index with the recipe's tensors' uids (its graph was validated for the key, which
// gives them the uids the build path gives them). Like every candidate of compile(), it must run
// once on zero-filled buffers before it is taken.
std::shared_ptr<CompiledGraph> load_compiled(GraphRecipe& recipe, const CudaContext& ctx,
                                             const PlanFile& file, const std::string& where) {
  auto loaded = std::make_shared<fe::graph::Graph>();
  // No warm-up capture: it would run before any tensor is bound, on the compute stream.
  if (loaded->deserialize(ctx.cudnn, file.plan, false, false).is_bad()) return nullptr;
  int64_t workspace = 0;
  if (loaded->get_workspace_size(workspace).is_bad()) return nullptr;
  if (!binds_plan_uids(*loaded, recipe.bindings)) return nullptr;
  {
    ScratchBuffers buffers(where);
    std::unordered_map<int64_t, void*> pack;
    for (const Binding& b : recipe.bindings) pack[b.tensor->get_uid()] = buffers.allocate(b.bytes, ctx.stream);
    void* ws = workspace > 0 ? buffers.allocate(workspace, ctx.stream) : nullptr;
    const bool ran = loaded->execute_plan_at_index(ctx.cudnn, pack, ws, 0).is_good();
    const bool done = cudaStreamSynchronize(ctx.stream) == cudaSuccess;
    cudaGetLastError();
    if (!ran || !done) return nullptr;
  }
  auto compiled = std::make_shared<CompiledGraph>();
  compiled->graph = loaded;
  compiled->bindings = std::move(recipe.bindings);
  compiled->plan_index = 0;
  compiled->chosen.engine = file.engine;
  compiled->chosen.workspace = workspace;
  compiled->chosen.ms = file.ms;
  compiled->chosen.measured = file.measured;
  compiled->chosen.cached = true;
  return compiled;
}

}  // namespace

void forget_plans() {
  std::lock_guard<std::mutex> lock(cache_mutex());
  cache().clear();
  failures().clear();
}

std::string plan_cache_dir() {
  const char* dir = std::getenv("OXTRAIN_PLAN_CACHE");
  return dir && *dir ? std::string(dir) : std::string();
}

std::string plan_file_path(const std::string& dir, const std::string& key) {
  char name[32];
  std::snprintf(name, sizeof name, "%016llx.plan", static_cast<unsigned long long>(fnv1a(key)));
  return (std::filesystem::path(dir) / name).string();
}

bool write_plan_file(const std::string& path, const PlanFile& file) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  std::string tmp = path + ".XXXXXX";
  const int fd = mkstemp(tmp.data());
  if (fd < 0) return false;
  close(fd);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || file.plan.size() > kMaxPlanBytes) {
      std::filesystem::remove(tmp, ec);
      return false;
    }
    char ms[64];
    std::snprintf(ms, sizeof ms, "%.17g", file.ms);
    out << kPlanFileMagic << '\n' << file.key << '\n' << file.engine << '\n' << ms << ' ' << file.measured
        << ' ' << file.plan.size() << '\n';
    out.write(reinterpret_cast<const char*>(file.plan.data()), static_cast<std::streamsize>(file.plan.size()));
    if (!out.flush()) {
      std::filesystem::remove(tmp, ec);
      return false;
    }
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) std::filesystem::remove(tmp, ec);
  return !ec;
}

bool read_plan_file(const std::string& path, const std::string& key, PlanFile* file) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  PlanFile f;
  std::string magic, sizes;
  if (!std::getline(in, magic) || magic != kPlanFileMagic) return false;
  if (!std::getline(in, f.key) || f.key != key) return false;
  if (!std::getline(in, f.engine) || !std::getline(in, sizes)) return false;
  std::istringstream numbers(sizes);
  size_t bytes = 0;
  if (!(numbers >> f.ms >> f.measured >> bytes) || bytes == 0 || bytes > kMaxPlanBytes) return false;
  f.plan.resize(bytes);
  if (!in.read(reinterpret_cast<char*>(f.plan.data()), static_cast<std::streamsize>(bytes))) return false;
  if (in.peek() != std::ifstream::traits_type::eof()) return false;  // longer than it says
  *file = std::move(f);
  return true;
}

std::unique_ptr<Kernel> make_cudnn_kernel(GraphRecipe recipe, const KernelInit& init,
                                          const std::string& where) {
  const CudaContext* ctx =
      init.context && init.context->device == Device::cuda ? init.context->cuda : nullptr;
  if (!ctx) {
    // Planning without a device: no plan, so no cuDNN workspace; only the scratch for omitted
    // outputs is known.
    std::vector<int64_t> offsets;
    const int64_t total = place_scratch(recipe.bindings, 0, offsets);
    return std::make_unique<CudnnKernel>(nullptr, total, where);
  }
  const bool measure = init.context->measure_plans;
  const std::string key = recipe.signature + "|" + precision_name(init.precision) + "|device " +
                          std::to_string(ctx->device) + "|sm " +
                          std::to_string(ctx->compute_major * 10 + ctx->compute_minor) +
                          (measure ? "|fastest" : "|first");
  std::shared_ptr<const CompiledGraph> compiled;
  {
    // One compile at a time: plans are built and timed on the device.
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto it = cache().find(key);
    if (auto failed = failures().find(key); failed != failures().end())
      throw Error(where + ": " + failed->second + " (as for an identical graph before)");
    if (it != cache().end()) {
      compiled = it->second;
    } else {
      std::shared_ptr<CompiledGraph> fresh;
      std::string dir = plan_cache_dir();
      std::error_code ignored;
      const std::string graph_id = dir.empty() ? std::string() : graph_hash(*recipe.graph);
      if (graph_id.empty()) dir.clear();  // a graph that does not validate fails in compile()
      const std::string full_key = dir.empty() ? std::string() : disk_key(key, *ctx) + "|graph " + graph_id;
      const std::string path = dir.empty() ? std::string() : plan_file_path(dir, full_key);
      PlanFile file;
      if (!dir.empty() && read_plan_file(path, full_key, &file)) {
        try {
          fresh = load_compiled(recipe, *ctx, file, where);
        } catch (const std::exception&) {
          fresh = nullptr;
        }
        cudaGetLastError();
        // A plan that does not load or run is built as without the cache, and written anew.
        if (!fresh) std::filesystem::remove(path, ignored);
      }
      try {
        if (!fresh) fresh = compile(std::move(recipe), *ctx, init.precision, measure, where);
      } catch (const NoPlan& e) {
        std::string why = e.what();
        if (why.rfind(where + ": ", 0) == 0) why = why.substr(where.size() + 2);
        failures()[key] = why;
        throw;
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        throw Error(where + ": cuDNN plan compilation failed: " + e.what());
      }
      if (!dir.empty() && !fresh->chosen.cached) {
        file.key = full_key;
        file.engine = fresh->chosen.engine;
        file.ms = fresh->chosen.ms;
        file.measured = fresh->chosen.measured;
        file.plan = serialize_plan(*fresh->graph, fresh->plan_index, fresh->last_built);
        if (!file.plan.empty()) write_plan_file(path, file);
      }
      fresh->workspace_bytes =
          place_scratch(fresh->bindings, fresh->chosen.workspace, fresh->scratch_offsets);
      compiled = fresh;
      cache()[key] = compiled;
    }
  }
  const int64_t total = compiled->workspace_bytes;
  return std::make_unique<CudnnKernel>(std::move(compiled), total, where);
}

// ---------------------------------------------------------------------------------------
// Deviceless plan support.

DevicelessTarget h100_target() {
  // The fields cuDNN 9.19 reads from CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION, with the
  // values cudaGetDeviceProperties reports for an H100 SXM5 80 GB.
  DevicelessTarget t;
  t.name = "NVIDIA H100 80GB HBM3 (sm_90)";
  t.sm_version = 90;
  t.device_properties_json =
      R"({"cudnnVersion":)" + std::to_string(cudnnGetVersion()) +
      R"(,"schemaVersion":1,"maxGridSize":[2147483647,65535,65535],"maxBlockSize":[1024,1024,64],)"
      R"("regsPerBlock":65536,"multiProcessorCount":132,"warpSize":32,)"
      R"("maxSharedMemoryPerBlock":49152,"maxSharedMemoryPerBlockOptin":232448,)"
      R"("reservedSharedMemoryPerBlock":1024,"maxRegistersPerSM":65536,"maxCtasPerSM":32,)"
      R"("maxThreadsPerBlock":1024,"maxThreadsPerSM":2048,"pciDeviceId":8960,"isTccDriver":0,)"
      R"("supportCoopLaunch":1,"totalGlobalMem":85031714816,"smClockRateKHz":1980000,)"
      R"("memClockRateKHz":2619000,"l2CacheSize":52428800,"cudaDeviceId":0,"deviceVer":900,)"
      R"("driverVer":13000,"deviceName":"NVIDIA H100 80GB HBM3"})";
  return t;
}

namespace {
// The recipe of a cuDNN-backed node, as its kernel factory makes it.
GraphRecipe recipe_for(const graph::Node& node) {
  const std::string& op = node.op_type;
  if (op == "Conv" || op == "ConvGradData" || op == "ConvGradFilter" || op == "ConvStats" ||
      op == "ConvGradFilterScaleBiasRelu" || op == "ConvGradDataReluBatchNormWeight")
    return conv_recipe(node);
  if (op == "BatchNormTraining" || op == "BatchNormGrad" || op == "BatchNormReluTraining" ||
      op == "BatchNormReluGrad")
    return batchnorm_recipe(node);
  throw Error(node.describe() + ": not a cuDNN-backed op");
}

std::shared_ptr<fe::DeviceProperties> target_properties(const DevicelessTarget& target,
                                                        const std::string& where) {
  auto properties = std::make_shared<fe::DeviceProperties>();
  const std::string& json = target.device_properties_json;
  check_fe(properties->deserialize(std::vector<uint8_t>(json.begin(), json.end())),
           "device properties", where);
  return properties;
}
}  // namespace

DevicelessSupport deviceless_support(const graph::Node& node, Precision precision,
                                     const DevicelessTarget& target, int max_builds) {
  const std::string where = node.describe();
  GraphRecipe recipe = recipe_for(node);
  auto properties = target_properties(target, where);
  fe::graph::Graph& graph = *recipe.graph;
  graph.set_device_properties(properties).set_sm_version(target.sm_version);

  DevicelessSupport support;
  check_fe(graph.validate(), "graph validation", where);
  check_fe(graph.build_operation_graph(), "operation graph", where);
  fe::error_t heuristics =
      graph.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK});
  if (heuristics.is_bad()) {
    support.failure = heuristics.get_message();
    return support;
  }
  support.configs = static_cast<int>(graph.get_execution_plan_count());
  graph.deselect_numeric_notes(excluded_notes(precision));
  for (int64_t i = 0; i < support.configs && (max_builds < 0 || support.allowed < max_builds); ++i) {
    fe::error_t status = graph.build_plan_at_index(i);
    if (status.get_message() != "Deselecting execution plan") ++support.allowed;
    if (status.is_good()) {
      if (support.supported++ == 0) support.first_engine = plan_name(graph, i);
    } else if (support.failure.empty() && status.get_message() != "Deselecting execution plan") {
      support.failure = status.get_message();
    }
  }
  return support;
}

PlanRoundTrip deviceless_plan_round_trip(const graph::Node& node, Precision precision,
                                         const DevicelessTarget& target, const std::string& path) {
  const std::string where = node.describe();
  PlanRoundTrip out;
  GraphRecipe recipe = recipe_for(node);
  auto properties = target_properties(target, where);
  fe::graph::Graph& graph = *recipe.graph;
  graph.set_device_properties(properties).set_sm_version(target.sm_version);
  check_fe(graph.validate(), "graph validation", where);
  check_fe(graph.build_operation_graph(), "operation graph", where);
  check_fe(graph.create_execution_plans({fe::HeurMode_t::A, fe::HeurMode_t::FALLBACK}),
           "heuristics query", where);
  graph.deselect_numeric_notes(excluded_notes(precision));
  int64_t built = -1;
  for (int64_t i = 0; i < graph.get_execution_plan_count() && built < 0; ++i)
    if (!runtime_compiled(graph, i) && graph.build_plan_at_index(i).is_good()) built = i;
  if (built < 0) {
    out.failure = "no precompiled plan builds";
    return out;
  }
  out.engine = plan_name(graph, built);
  check_fe(graph.get_workspace_size_plan_at_index(built, out.built_workspace), "workspace query", where);
  PlanFile file;
  file.key = "deviceless|" + recipe.signature;
  file.engine = out.engine;
  file.plan = serialize_plan(graph, built, built);
  out.plan_bytes = file.plan.size();
  if (file.plan.empty()) {
    out.failure = "serialize failed";
    return out;
  }
  if (!write_plan_file(path, file)) {
    out.failure = "cannot write " + path;
    return out;
  }
  PlanFile back;
  if (!read_plan_file(path, file.key, &back) || back.plan != file.plan || back.engine != file.engine) {
    out.failure = "the file did not read back as written";
    return out;
  }
  fe::graph::Graph loaded;
  loaded.set_device_properties(properties);
  fe::error_t status = loaded.deserialize(back.plan);
  if (status.is_bad()) {
    out.failure = "deserialize: " + status.get_message();
    return out;
  }
  check_fe(loaded.get_workspace_size(out.loaded_workspace), "workspace query", where);
  // A second recipe, only validated (as the load path does), binds every tensor the plan asks for.
  GraphRecipe second = recipe_for(node);
  check_fe(second.graph->validate(), "graph validation", where);
  out.plan_uids = loaded.get_variant_pack_uids_sorted().size();
  out.same_uids = out.plan_uids > 0 && binds_plan_uids(loaded, second.bindings);
  // The cache key's graph hash is the same for two recipes of the node.
  GraphRecipe third = recipe_for(node);
  const std::string a = graph_hash(*second.graph), b = graph_hash(*third.graph);
  out.same_graph_hash = !a.empty() && a == b;
  return out;
}

}  // namespace oxtrain::runtime::cudnn
