#include "runtime/layout_emulation.h"

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "graph/ops.h"

namespace oxtrain::runtime {
namespace {

constexpr size_t kAlign = 256;

size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

bool is_activation_slot(const graph::Value* v) { return v && v->shape.size() == 4; }

// One activation moved between the layouts: its transpose kernel and its channels-first copy
// in the workspace.
struct Moved {
  size_t slot = 0;
  size_t offset = 0;  // of the channels-first copy in the workspace
  graph::Shape logical;
  DType dtype = DType::undefined;
  std::unique_ptr<Kernel> transpose;
};

class LayoutEmulationKernel final : public Kernel {
 public:
  LayoutEmulationKernel(const KernelInit& init, const KernelFactory& factory, const graph::LayoutSlots& slots) {
    const graph::Node& n = init.node;
    const KernelFactory* transpose = KernelRegistry::global().find("", "Transpose", init.device);
    if (!transpose) throw Error(n.describe() + ": no Transpose kernel on " + device_name(init.device));
    std::map<const graph::Value*, graph::Value*> twin;
    auto copy = [&](const graph::Value* v, bool permute) -> graph::Value* {
      if (!v) return nullptr;
      const graph::Shape shape = permute ? graph::to_channels_first_shape(v->shape) : v->shape;
      // Activations here: the transposes write some of them; constants keep their data.
      graph::Value* c = graph_.add_value(graph_.unique_name(v->name.empty() ? "v" : v->name), v->dtype, shape,
                                         v->has_data() ? v->role : graph::Role::Activation);
      c->rank_known = v->rank_known;
      c->data = v->data;
      return c;
    };
    auto in_slots = [&](const std::vector<size_t>& list, size_t i) {
      return std::find(list.begin(), list.end(), i) != list.end();
    };
    std::vector<graph::Value*> ins, outs;
    for (size_t i = 0; i < n.inputs.size(); ++i)
      ins.push_back(copy(n.input(i), in_slots(slots.inputs, i) && is_activation_slot(n.input(i))));
    for (size_t i = 0; i < n.outputs.size(); ++i)
      outs.push_back(copy(n.output(i), in_slots(slots.outputs, i) && is_activation_slot(n.output(i))));
    graph::Node* inner_node = graph_.add_node(n.op_type, ins, outs, n.name, n.domain);
    inner_node->attrs = n.attrs;
    inner_node->attrs.erase(graph::kChannelsLast);
    inner_ = factory(KernelInit{*inner_node, init.opset, init.device, init.context, init.precision});

    size_t offset = 0, transpose_workspace = 0;
    auto move = [&](const graph::Value* physical, graph::Value* logical, size_t slot, bool to_first) {
      Moved m;
      m.slot = slot;
      m.offset = offset;
      m.logical = logical->shape;
      m.dtype = logical->dtype;
      offset += aligned(static_cast<size_t>(logical->bytes()));
      graph::Value* from = to_first ? copy(physical, false) : logical;
      graph::Value* to = to_first ? logical : copy(physical, false);
      graph::Node* t = graph_.add_node("Transpose", {from}, {to}, n.name + "/layout", "");
      t->attrs["perm"].value = to_first ? std::vector<int64_t>{0, 3, 1, 2} : std::vector<int64_t>{0, 2, 3, 1};
      m.transpose = (*transpose)(KernelInit{*t, 13, init.device, init.context, init.precision});
      transpose_workspace = std::max(transpose_workspace, m.transpose->workspace_bytes());
      return m;
    };
    for (size_t i : slots.inputs)
      if (is_activation_slot(n.input(i))) inputs_.push_back(move(n.input(i), ins[i], i, true));
    for (size_t i : slots.outputs)
      if (is_activation_slot(n.output(i))) outputs_.push_back(move(n.output(i), outs[i], i, false));
    transpose_offset_ = offset;
    inner_offset_ = offset + aligned(transpose_workspace);
    transpose_workspace_ = transpose_workspace;
  }

  size_t workspace_bytes() const override { return inner_offset_ + inner_->workspace_bytes(); }

  std::string describe() const override {
    const std::string inner = inner_->describe();
    return (inner.empty() ? std::string() : inner + "; ") + "channels-first, transposed in and out";
  }

  void run(const KernelArgs& args) override {
    uint8_t* ws = static_cast<uint8_t*>(args.workspace);
    auto transpose = [&](Kernel& k, const TensorView& from, const TensorView& to) {
      KernelArgs t;
      t.inputs = {from};
      t.outputs = {to};
      t.workspace = ws + transpose_offset_;
      t.workspace_bytes = transpose_workspace_;
      t.context = args.context;
      k.run(t);
    };
    KernelArgs a = args;
    for (const Moved& m : inputs_) {
      if (!args.inputs[m.slot].present()) continue;
      const TensorView first{ws + m.offset, m.dtype, m.logical};
      transpose(*m.transpose, args.inputs[m.slot], first);
      a.inputs[m.slot] = first;
    }
    for (const Moved& m : outputs_)
      if (args.outputs[m.slot].present()) a.outputs[m.slot] = TensorView{ws + m.offset, m.dtype, m.logical};
    a.workspace = ws + inner_offset_;
    a.workspace_bytes = inner_->workspace_bytes();
    inner_->run(a);
    for (const Moved& m : outputs_)
      if (args.outputs[m.slot].present()) transpose(*m.transpose, a.outputs[m.slot], args.outputs[m.slot]);
  }

 private:
  graph::Graph graph_;
  std::unique_ptr<Kernel> inner_;
  std::vector<Moved> inputs_, outputs_;
  size_t transpose_offset_ = 0, inner_offset_ = 0, transpose_workspace_ = 0;
};

}  // namespace

KernelRegistry::Wrapper layout_emulation(OpNames native, OpNames* wrapped) {
  return [native = std::move(native), wrapped](const std::string& domain, const std::string& op_type,
                                               KernelFactory factory) -> KernelFactory {
    const graph::OpSchema* schema = graph::find_schema(domain, op_type);
    if (!schema || !schema->layout.channels_last_form() ||
        native.count({domain == "ai.onnx" ? "" : domain, op_type}))
      return factory;
    if (wrapped) wrapped->insert({domain == "ai.onnx" ? "" : domain, op_type});
    const graph::LayoutSlots slots = schema->layout;
    return [factory = std::move(factory), slots](const KernelInit& init) -> std::unique_ptr<Kernel> {
      if (!graph::is_channels_last(init.node)) return factory(init);
      return std::make_unique<LayoutEmulationKernel>(init, factory, slots);
    };
  };
}

const OpNames& layout_transparent_ops() {
  static const OpNames ops = {{graph::kOxtrainDomain, "BatchNormReluTraining"},
                              {graph::kOxtrainDomain, "BatchNormReluApply"},
                              {graph::kOxtrainDomain, "BatchNormReluGrad"}};
  return ops;
}

}  // namespace oxtrain::runtime
