#include "runtime/session.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

#include "base/checked.h"
#include "base/text.h"
#include "graph/inspect.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"

namespace oxtrain::runtime {

using graph::Tensor;
using graph::Value;

namespace {

uint8_t* allocate(int64_t bytes) {
  size_t size = static_cast<size_t>((std::max<int64_t>(bytes, 64) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, size);
  if (!p) throw Error("cannot allocate " + std::to_string(size) + " bytes");
  std::memset(p, 0, size);
  return static_cast<uint8_t*>(p);
}

// Physical memory of this machine in bytes; 0 when unknown.
int64_t physical_memory_bytes() {
  long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return 0;
  return checked_mul(pages, page).value_or(INT64_MAX);
}

// Refuses a plan larger than the machine before its arenas are allocated (a bad_alloc, or a
// machine swapping to death, says nothing useful). Inputs and activations grow with the batch,
// the rest does not: the message says which batch would fit.
void check_plan_fits(const graph::Graph& g, const MemoryPlan& plan, int64_t workspace) {
  auto sum = [](std::initializer_list<int64_t> parts) {
    int64_t total = 0;
    for (int64_t p : parts) total = checked_add(total, p).value_or(INT64_MAX);
    return total;
  };
  int64_t fixed = sum({plan.persistent_bytes, plan.gradient_bytes, workspace});
  int64_t per_batch = sum({plan.input_bytes, plan.activation_arena_bytes});
  int64_t total = sum({fixed, per_batch});
  int64_t machine = physical_memory_bytes();
  if (machine == 0 || total <= machine) return;
  int64_t batch = graph::batch_size_of(g);
  int64_t per_sample = std::max<int64_t>(1, per_batch / batch + (per_batch % batch != 0));
  int64_t fits = machine > fixed ? std::min(batch - 1, (machine - fixed) / per_sample) : 0;
  using graph::human_bytes;
  throw Error("the plan needs " + human_bytes(total) + " (inputs and activations " + human_bytes(per_batch) +
              " at batch " + std::to_string(batch) + ", weights, state and gradients " + human_bytes(fixed) +
              ") but this machine has " + human_bytes(machine) +
              (fits >= 1 ? "; lower --batch-size (" + std::to_string(fits) + " fits)"
                         : "; even a batch of 1 does not fit"));
}

// Every node gets its kernel here, or a reason it cannot run; all of them are reported at
// once, in words that say what oxtrain lacks rather than what is wrong with the model.
std::vector<std::unique_ptr<Kernel>> make_kernels(const graph::Graph& g, Device device, size_t* workspace) {
  const KernelRegistry& registry = KernelRegistry::global();
  std::vector<std::unique_ptr<Kernel>> kernels;
  std::vector<const graph::Node*> missing;
  std::vector<std::string> refused;
  bool all_fold_only = true;
  for (const auto& n : g.nodes()) {
    const KernelFactory* factory = registry.find(n->domain, n->op_type, device);
    if (!factory) {
      missing.push_back(n.get());
      const graph::OpSchema* schema = graph::find_schema(n->domain, n->op_type);
      all_fold_only = all_fold_only && schema && schema->fold;
      continue;
    }
    try {
      kernels.push_back((*factory)(KernelInit{*n, g.opset(n->domain), device}));
      *workspace = std::max(*workspace, kernels.back()->workspace_bytes());
    } catch (const Error& e) {
      refused.push_back(e.what());
    }
  }
  if (missing.empty() && refused.empty()) return kernels;
  std::string msg = std::string("unsupported at run time on ") + device_name(device) + ": ";
  if (!missing.empty()) {
    msg += "no kernel for " + graph::nodes_by_op(missing);
    if (all_fold_only) msg += " (oxtrain evaluates these ops only on constant inputs, at import)";
  }
  if (!refused.empty()) msg += (missing.empty() ? "" : "; ") + join_limited(refused, kMaxMessageLine, "; ");
  throw Error(msg);
}

}  // namespace

Session::Session(graph::Graph graph, const SessionOptions& options)
    : graph_(std::move(graph)), options_(options) {
  if (options_.device != Device::cpu)
    throw Error("device cuda: the CUDA runtime cannot run graphs yet; use --device cpu");
  set_cpu_threads(options_.threads);
  for (const auto& n : graph_.nodes())
    for (const Value* v : n->outputs)
      if (v && (!v->rank_known || !graph::shape_known(v->shape) || v->dtype == graph::DType::undefined))
        throw Error(n->describe() + ": output '" + escape_name(v->name) + "' has no known shape or type");

  // Kernels first, so every node that cannot run is reported at once.
  size_t workspace = 0;
  kernels_ = make_kernels(graph_, options_.device, &workspace);

  PlanOptions plan_options;
  plan_options.in_place = options_.in_place && !options_.keep_all_values;
  plan_options.keep_all = options_.keep_all_values;
  for (const auto& name : options_.gradients) plan_options.gradients.push_back(graph_.value(name));
  plan_ = plan_memory(graph_, plan_options);
  check_plan_fits(graph_, plan_, static_cast<int64_t>(std::min<size_t>(workspace, INT64_MAX)));

  input_ = {allocate(plan_.input_bytes), plan_.input_bytes};
  persistent_ = {allocate(plan_.persistent_bytes), plan_.persistent_bytes};
  gradient_ = {allocate(plan_.gradient_bytes), plan_.gradient_bytes};
  activation_ = {allocate(plan_.activation_arena_bytes), plan_.activation_arena_bytes};
  workspace_ = {allocate(static_cast<int64_t>(workspace)), static_cast<int64_t>(workspace)};

  for (const Value* v : graph_.initializers())
    if (!v->data->bytes.empty()) std::memcpy(address(v), v->data->bytes.data(), v->data->bytes.size());

  for (const auto& n : graph_.nodes()) {
    KernelArgs args;
    for (const Value* v : n->inputs)
      args.inputs.push_back(v ? TensorView{address(v), v->dtype, v->shape} : TensorView{});
    for (const Value* v : n->outputs)
      args.outputs.push_back(v ? TensorView{address(v), v->dtype, v->shape} : TensorView{});
    args.workspace = workspace_.data;
    args_.push_back(std::move(args));
  }
  fed_.assign(graph_.inputs.size(), false);
}

Session::~Session() {
  for (Buffer* b : {&input_, &persistent_, &gradient_, &activation_, &workspace_}) std::free(b->data);
}

void* Session::address(const Value* v) const {
  const Placement& p = plan_.at(v);
  switch (p.arena) {
    case Arena::input: return input_.data + p.offset;
    case Arena::persistent: return persistent_.data + p.offset;
    case Arena::gradient: return gradient_.data + p.offset;
    case Arena::activation: return activation_.data + p.offset;
    default: throw Error("value '" + v->name + "' has no buffer");
  }
}

void Session::feed(const std::string& name, const Tensor& tensor) {
  feed(name, tensor.dtype, tensor.shape, tensor.bytes.data());
}

void Session::feed(const std::string& name, graph::DType dtype, const graph::Shape& shape,
                   const void* data) {
  for (size_t i = 0; i < graph_.inputs.size(); ++i) {
    const Value* v = graph_.inputs[i];
    if (v->name != name) continue;
    if (dtype != v->dtype || shape != v->shape)
      throw Error("input '" + name + "' expects " + graph::dtype_name(v->dtype) + " " +
                  graph::shape_str(v->shape) + ", got " + graph::dtype_name(dtype) + " " +
                  graph::shape_str(shape));
    if (v->bytes() > 0) std::memcpy(address(v), data, static_cast<size_t>(v->bytes()));
    fed_[i] = true;
    return;
  }
  throw Error("the graph has no input named '" + name + "'");
}

void Session::run() {
  for (size_t i = 0; i < fed_.size(); ++i)
    if (!fed_[i]) throw Error("input '" + graph_.inputs[i]->name + "' was not fed");
  const auto& nodes = graph_.nodes();
  if (options_.profile) node_seconds_.resize(nodes.size(), 0.0);
  for (size_t i = 0; i < nodes.size(); ++i) {
    try {
      if (options_.profile) {
        auto start = std::chrono::steady_clock::now();
        kernels_[i]->run(args_[i]);
        node_seconds_[i] +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      } else {
        kernels_[i]->run(args_[i]);
      }
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " (while running " + nodes[i]->describe() + ")");
    }
  }
  for (size_t u = 0; u < graph_.updates.size(); ++u) {
    if (plan_.update_in_place[u]) continue;
    const auto& [state, next] = graph_.updates[u];
    std::memcpy(address(state), address(next), static_cast<size_t>(state->bytes()));
  }
}

Tensor Session::fetch(const std::string& name) const {
  const Value* v = graph_.value(name);
  Tensor t(v->dtype, v->shape);
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), address(v), t.bytes.size());
  return t;
}

void Session::assign(const std::string& name, const Tensor& tensor) {
  const Value* v = graph_.value(name);
  if (plan_.at(v).arena != Arena::persistent)
    throw Error("'" + name + "' is not a parameter or state; it cannot be assigned");
  if (tensor.dtype != v->dtype || tensor.shape != v->shape)
    throw Error("'" + name + "' is " + graph::dtype_name(v->dtype) + " " + v->shape_string() +
                ", cannot assign " + graph::dtype_name(tensor.dtype) + " " +
                graph::shape_str(tensor.shape));
  if (!tensor.bytes.empty()) std::memcpy(address(v), tensor.bytes.data(), tensor.bytes.size());
}

}  // namespace oxtrain::runtime
