#include "runtime/session.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "base/checked.h"
#include "base/text.h"
#include "graph/inspect.h"
#include "graph/onnx_io.h"
#include "graph/ops.h"

namespace oxtrain::runtime {

using graph::Tensor;
using graph::Value;

namespace {

// Refuses a plan larger than the device before its arenas are allocated (a bad_alloc, an
// out-of-memory error in the middle of allocation, or a machine swapping to death, says
// nothing useful). Inputs and activations grow with the batch, the rest does not: the message
// says which batch would fit.
void check_plan_fits(const graph::Graph& g, const MemoryPlan& plan, const DeviceRuntime& device) {
  auto sum = [](std::initializer_list<int64_t> parts) {
    int64_t total = 0;
    for (int64_t p : parts) total = checked_add(total, p).value_or(INT64_MAX);
    return total;
  };
  // Inputs twice on a device that stages them.
  int64_t inputs = device.stages_inputs() ? sum({plan.input_bytes, plan.input_bytes}) : plan.input_bytes;
  int64_t fixed = sum({plan.persistent_bytes, plan.gradient_bytes});
  int64_t per_batch = sum({inputs, plan.activation_arena_bytes});
  int64_t total = sum({fixed, per_batch});
  bool gpu = device.device() == Device::cuda;
  int64_t available = gpu ? device.free_memory() : device.total_memory();
  if (available == 0 || total <= available) return;
  int64_t batch = graph::batch_size_of(g);
  int64_t per_sample = std::max<int64_t>(1, per_batch / batch + (per_batch % batch != 0));
  int64_t fits = available > fixed ? std::min(batch - 1, (available - fixed) / per_sample) : 0;
  using graph::human_bytes;
  throw Error(std::string(gpu ? "out of GPU memory: " : "") + "the plan needs " + human_bytes(total) +
              " (inputs and activations " + human_bytes(per_batch) + " at batch " + std::to_string(batch) +
              ", weights, state and gradients " + human_bytes(fixed) + ") but " +
              (gpu ? device.description() + " has " + human_bytes(available) + " free of " +
                         human_bytes(device.total_memory())
                   : "this machine has " + human_bytes(available)) +
              (fits >= 1 ? "; lower --batch-size (" + std::to_string(fits) + " fits)"
                         : "; even a batch of 1 does not fit"));
}

// Every node gets its kernel here, or a reason it cannot run; all of them are reported at
// once, in words that say what oxtrain lacks rather than what is wrong with the model.
std::vector<std::unique_ptr<Kernel>> make_kernels(const graph::Graph& g, const SessionOptions& options,
                                                  const ExecContext* context) {
  const KernelRegistry& registry = KernelRegistry::global();
  const Device device = options.device;
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
      kernels.push_back((*factory)(KernelInit{*n, g.opset(n->domain), device, context, options.precision}));
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

void check_types_known(const graph::Graph& g) {
  for (const auto& n : g.nodes())
    for (const Value* v : n->outputs)
      if (v && (!v->rank_known || !graph::shape_known(v->shape) || v->dtype == graph::DType::undefined))
        throw Error(n->describe() + ": output '" + escape_name(v->name) + "' has no known shape or type");
}

// Inputs that kernels read at compile time must be constants by then.
void check_compile_time_inputs(const graph::Graph& g) {
  for (const auto& n : g.nodes()) {
    for (size_t i : graph::node_facts(*n).compile_time) {
      const Value* v = i < n->inputs.size() ? n->inputs[i] : nullptr;
      if (v && !v->data)
        throw Error(n->describe() + ": input " + std::to_string(i) + " ('" + escape_name(v->name) +
                    "') must be known when the graph is compiled (a constant), but it is computed at run time");
    }
  }
}

size_t arena_index(Arena a) { return static_cast<size_t>(a); }

PlanOptions plan_options_for(const graph::Graph& g, const SessionOptions& options,
                             std::vector<int64_t> workspace_bytes) {
  PlanOptions p;
  p.in_place = options.in_place && !options.keep_all_values;
  p.keep_all = options.keep_all_values;
  p.alignment = options.device == Device::cuda ? 256 : 64;
  for (const auto& name : options.gradients) p.gradients.push_back(g.value(name));
  p.workspace_bytes = std::move(workspace_bytes);
  return p;
}

}  // namespace

CompiledGraph compile_graph(graph::Graph graph, const SessionOptions& options, const ExecContext* context) {
  CompiledGraph c;
  c.graph = std::move(graph);
  check_types_known(c.graph);
  check_compile_time_inputs(c.graph);

  // Kernels first, so every node that cannot run is reported at once.
  c.kernels = make_kernels(c.graph, options, context);

  std::vector<int64_t> workspaces;
  for (const auto& k : c.kernels)
    workspaces.push_back(static_cast<int64_t>(std::min<size_t>(k->workspace_bytes(), INT64_MAX)));
  c.plan = plan_memory(c.graph, plan_options_for(c.graph, options, std::move(workspaces)));
  return c;
}

Session::Session(graph::Graph graph, const SessionOptions& options) : options_(options) {
  if (options_.device == Device::cpu) set_cpu_threads(options_.threads);
  runtime_ = DeviceRuntime::create(options_.device, options_.precision, options_.device_index);
  runtime_->set_communicator(options_.communicator);
  runtime_->set_measure_plans(options_.measure_plans);
  // A plan that cannot fit even without kernel workspaces is refused before compiling, which
  // on a GPU measures library plans on buffers of the step's sizes.
  check_types_known(graph);
  check_plan_fits(graph, plan_memory(graph, plan_options_for(graph, options_, {})), *runtime_);
  compiled_ = compile_graph(std::move(graph), options_, &runtime_->context());
  allocate();
}

Session::~Session() {
  for (uint8_t* a : arenas_)
    if (a) runtime_->release(a);
}

void Session::allocate() {
  const MemoryPlan& plan = compiled_.plan;
  check_plan_fits(compiled_.graph, plan, *runtime_);
  const std::pair<Arena, int64_t> sizes[] = {{Arena::input, plan.input_bytes},
                                             {Arena::parameter, plan.parameter_bytes},
                                             {Arena::state, plan.state_arena_bytes},
                                             {Arena::gradient, plan.gradient_bytes},
                                             {Arena::activation, plan.activation_arena_bytes}};
  for (const auto& [arena, bytes] : sizes)
    arenas_[arena_index(arena)] =
        static_cast<uint8_t*>(runtime_->allocate(bytes, std::string("the ") + arena_name(arena) + " arena"));
  // A device that stages inputs gets a second input arena, written while a step runs.
  if (runtime_->stages_inputs())
    arenas_[arena_index(Arena::none)] = static_cast<uint8_t*>(runtime_->allocate(plan.input_bytes, "input staging"));

  for (const Value* v : compiled_.graph.initializers())
    if (!v->data->bytes.empty()) runtime_->copy_to_device(address(v), v->data->bytes.data(), v->data->bytes.size());

  const auto& nodes = compiled_.graph.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    const graph::Node& n = *nodes[i];
    KernelArgs args;
    for (const Value* v : n.inputs)
      args.inputs.push_back(v ? TensorView{address(v), v->dtype, v->shape} : TensorView{});
    for (const Value* v : n.outputs)
      args.outputs.push_back(v ? TensorView{address(v), v->dtype, v->shape} : TensorView{});
    const Placement& ws = plan.workspaces[i];
    if (ws.arena == Arena::activation) {
      args.workspace = arenas_[arena_index(Arena::activation)] + ws.offset;
      args.workspace_bytes = static_cast<size_t>(ws.bytes);
    }
    args.context = &runtime_->context();
    args_.push_back(std::move(args));
  }
  fed_.assign(compiled_.graph.inputs.size(), false);
  // Which asynchronous producers each node reads from.
  std::unordered_map<const graph::Node*, size_t> index;
  for (size_t i = 0; i < nodes.size(); ++i) index[nodes[i].get()] = i;
  waits_before_.assign(nodes.size(), {});
  pending_.assign(nodes.size(), false);
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const Value* v : nodes[i]->inputs)
      if (v && v->producer && compiled_.kernels[index.at(v->producer)]->asynchronous())
        waits_before_[i].push_back(index.at(v->producer));
  runtime_->synchronize();
}

void* Session::address(const Value* v) const {
  const Placement& p = compiled_.plan.at(v);
  if (p.arena == Arena::none) throw Error("value '" + v->name + "' has no buffer");
  return arenas_[arena_index(p.arena)] + p.offset;
}

const void* Session::device_address(const std::string& name) const {
  return address(compiled_.graph.value(name));
}

void Session::feed(const std::string& name, const Tensor& tensor) {
  feed(name, tensor.dtype, tensor.shape, tensor.bytes.data());
}

size_t Session::input_index(const std::string& name, graph::DType dtype, const graph::Shape& shape) const {
  const auto& inputs = compiled_.graph.inputs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Value* v = inputs[i];
    if (v->name != name) continue;
    if (dtype != v->dtype || shape != v->shape)
      throw Error("input '" + name + "' expects " + graph::dtype_name(v->dtype) + " " +
                  graph::shape_str(v->shape) + ", got " + graph::dtype_name(dtype) + " " +
                  graph::shape_str(shape));
    return i;
  }
  throw Error("the graph has no input named '" + name + "'");
}

void Session::feed(const std::string& name, graph::DType dtype, const graph::Shape& shape,
                   const void* data) {
  const size_t i = input_index(name, dtype, shape);
  const Value* v = compiled_.graph.inputs[i];
  if (v->bytes() > 0) {
    auto bytes = static_cast<size_t>(v->bytes());
    if (runtime_->stages_inputs()) {
      runtime_->stage_to_device(arenas_[arena_index(Arena::none)] + compiled_.plan.at(v).offset, data, bytes);
      staged_.push_back(v);
    } else {
      runtime_->copy_to_device(address(v), data, bytes);
    }
  }
  fed_[i] = true;
}

void Session::feed_written(const std::string& name, graph::DType dtype, const graph::Shape& shape,
                           const std::function<void(void*, void*)>& write) {
  const size_t i = input_index(name, dtype, shape);
  const Value* v = compiled_.graph.inputs[i];
  if (v->bytes() > 0) {
    if (runtime_->stages_inputs()) {
      runtime_->stage_written(arenas_[arena_index(Arena::none)] + compiled_.plan.at(v).offset, write);
      staged_.push_back(v);
    } else {
      runtime_->stage_written(address(v), write);
    }
  }
  fed_[i] = true;
}

void Session::wait_pending(bool rethrow) {
  for (size_t j = 0; j < pending_.size(); ++j) {
    if (!pending_[j]) continue;
    pending_[j] = false;
    try {
      compiled_.kernels[j]->wait();
    } catch (const Error& e) {
      if (rethrow) throw Error(std::string(e.what()) + " (while running " + compiled_.graph.nodes()[j]->describe() + ")");
    }
  }
}

void Session::run_step() {
  const auto& nodes = compiled_.graph.nodes();
  const bool profile = options_.profile;
  if (profile) node_seconds_.resize(nodes.size(), 0.0);
  size_t i = 0;
  try {
    for (; i < nodes.size(); ++i) {
      for (size_t j : waits_before_[i]) {
        if (!pending_[j]) continue;
        pending_[j] = false;
        try {
          compiled_.kernels[j]->wait();
        } catch (const Error& e) {
          throw Error(std::string(e.what()) + " (while running " + nodes[j]->describe() + ")");
        }
      }
      Kernel& kernel = *compiled_.kernels[i];
      try {
        if (profile) {
          auto start = std::chrono::steady_clock::now();
          kernel.run(args_[i]);
          if (kernel.asynchronous()) kernel.wait();
          runtime_->synchronize();
          node_seconds_[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        } else {
          kernel.run(args_[i]);
          if (kernel.asynchronous()) {
            if (options_.overlap) pending_[i] = true;
            else kernel.wait();
          }
        }
      } catch (const Error& e) {
        throw Error(std::string(e.what()) + " (while running " + nodes[i]->describe() + ")");
      }
    }
    wait_pending(true);
  } catch (...) {
    wait_pending(false);  // nothing may still write into the arenas once the step has failed
    throw;
  }
  const auto& updates = compiled_.graph.updates;
  for (size_t u = 0; u < updates.size(); ++u) {
    if (compiled_.plan.update_in_place[u]) continue;
    const auto& [state, next] = updates[u];
    runtime_->copy_on_device(address(state), address(next), static_cast<size_t>(state->bytes()));
  }
}

void Session::run() {
  for (size_t i = 0; i < fed_.size(); ++i)
    if (!fed_[i]) throw Error("input '" + compiled_.graph.inputs[i]->name + "' was not fed");
  // Inputs staged since the last step move into place on the device, after their copies.
  if (!staged_.empty()) {
    runtime_->join_staged();
    for (const Value* v : staged_) {
      int64_t offset = compiled_.plan.at(v).offset;
      runtime_->copy_on_device(arenas_[arena_index(Arena::input)] + offset,
                               arenas_[arena_index(Arena::none)] + offset, static_cast<size_t>(v->bytes()));
    }
    runtime_->staging_consumed();
    staged_.clear();
  }
  bool use_graph = options_.cuda_graph && !options_.profile && runtime_->can_capture();
  if (use_graph && captured_) {
    runtime_->replay();
  } else if (use_graph && steps_ >= 1) {
    // The first step ran eagerly (library plans loaded, lazy modules in place); this one is
    // recorded and then replayed, as every later one.
    runtime_->begin_capture();
    try {
      run_step();
    } catch (...) {
      runtime_->abort_capture();
      throw;
    }
    runtime_->end_capture();
    captured_ = true;
    runtime_->replay();
  } else {
    run_step();
  }
  ++steps_;
}

Tensor Session::fetch(const std::string& name) const {
  const Value* v = compiled_.graph.value(name);
  Tensor t(v->dtype, v->shape);
  if (t.bytes.empty()) return t;
  const void* from = address(v);
  if (std::find(staged_.begin(), staged_.end(), v) != staged_.end()) {
    // Fed since the last step: still in its staging buffer, where the next step takes it.
    runtime_->join_staged();
    from = arenas_[arena_index(Arena::none)] + compiled_.plan.at(v).offset;
  }
  runtime_->copy_to_host(t.bytes.data(), from, t.bytes.size());
  return t;
}

void Session::assign(const std::string& name, const Tensor& tensor) {
  const Value* v = compiled_.graph.value(name);
  Arena arena = compiled_.plan.at(v).arena;
  if (arena != Arena::parameter && arena != Arena::state)
    throw Error("'" + name + "' is not a parameter or state; it cannot be assigned");
  if (tensor.dtype != v->dtype || tensor.shape != v->shape)
    throw Error("'" + name + "' is " + graph::dtype_name(v->dtype) + " " + v->shape_string() +
                ", cannot assign " + graph::dtype_name(tensor.dtype) + " " +
                graph::shape_str(tensor.shape));
  if (!tensor.bytes.empty()) runtime_->copy_to_device(address(v), tensor.bytes.data(), tensor.bytes.size());
}

}  // namespace oxtrain::runtime
