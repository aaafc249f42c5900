#include "runtime/cpu/half_emulation.h"

#include <map>
#include <string>
#include <vector>

#include "runtime/cpu/broadcast.h"
#include "base/half.h"

namespace oxtrain::runtime::cpu {

using graph::DType;

namespace {

bool is_half(DType dt) { return dt == DType::f16 || dt == DType::bf16; }

graph::Tensor widened(const graph::Tensor& t) {
  graph::Tensor out(DType::f32, t.shape);
  widen_half(t.dtype, t.data<uint16_t>(), out.data<float>(), t.numel());
  return out;
}

class HalfEmulationKernel final : public Kernel {
 public:
  HalfEmulationKernel(const KernelInit& init, const KernelFactory& float_factory) : twin_(float_twin(init.node)) {
    inner_ = float_factory(KernelInit{*twin_.node, init.opset, init.device, init.context, init.precision});
    inputs_.resize(twin_.input_half.size());
    outputs_.resize(twin_.output_half.size());
  }

  size_t workspace_bytes() const override { return inner_->workspace_bytes(); }

  std::string describe() const override {
    const std::string inner = inner_->describe();
    return (inner.empty() ? std::string() : inner + "; ") + "computed in float32 on the CPU, outputs rounded to half";
  }

  void run(const KernelArgs& args) override {
    KernelArgs a = args;
    for (size_t i = 0; i < twin_.input_half.size() && i < a.inputs.size(); ++i) {
      const TensorView& v = args.inputs[i];
      if (twin_.input_half[i] == DType::undefined || !v.present()) continue;
      inputs_[i].resize(static_cast<size_t>(v.numel()));
      widen_half(v.dtype, v.as<uint16_t>(), inputs_[i].data(), v.numel());
      a.inputs[i] = TensorView{inputs_[i].data(), DType::f32, v.shape};
    }
    for (size_t i = 0; i < twin_.output_half.size() && i < a.outputs.size(); ++i) {
      const TensorView& v = args.outputs[i];
      if (twin_.output_half[i] == DType::undefined || !v.present()) continue;
      outputs_[i].resize(static_cast<size_t>(v.numel()));
      a.outputs[i] = TensorView{outputs_[i].data(), DType::f32, v.shape};
    }
    inner_->run(a);
    for (size_t i = 0; i < twin_.output_half.size() && i < a.outputs.size(); ++i) {
      const TensorView& v = args.outputs[i];
      if (twin_.output_half[i] == DType::undefined || !v.present()) continue;
      narrow_to_half(v.dtype, outputs_[i].data(), v.as<uint16_t>(), a.outputs[i].numel());
    }
  }

 private:
  FloatTwin twin_;
  std::vector<std::vector<float>> inputs_, outputs_;
  std::unique_ptr<Kernel> inner_;
};

}  // namespace

FloatTwin float_twin(const Node& n) {
  FloatTwin t;
  t.graph = std::make_unique<graph::Graph>();
  graph::Graph& g = *t.graph;
  std::map<const graph::Value*, graph::Value*> twin;
  auto copy = [&](const graph::Value* v, std::vector<DType>& halves) -> graph::Value* {
    halves.push_back(v && is_half(v->dtype) ? v->dtype : DType::undefined);
    if (!v) return nullptr;
    if (auto it = twin.find(v); it != twin.end()) return it->second;
    const DType dt = is_half(v->dtype) ? DType::f32 : v->dtype;
    graph::Value* c = g.add_value(g.unique_name(v->name.empty() ? "v" : v->name), dt, v->shape, v->role);
    c->rank_known = v->rank_known;
    c->dim_names = v->dim_names;
    if (v->has_data()) c->data = is_half(v->dtype) ? std::make_shared<graph::Tensor>(widened(*v->data)) : v->data;
    return twin[v] = c;
  };
  std::vector<graph::Value*> ins, outs;
  for (const graph::Value* v : n.inputs) ins.push_back(copy(v, t.input_half));
  for (const graph::Value* v : n.outputs) outs.push_back(copy(v, t.output_half));
  t.node = g.add_node(n.op_type, ins, outs, n.name, n.domain);
  t.node->attrs = n.attrs;
  // Ops that name their result type produce float32 here; the output is rounded after.
  for (const char* key : {"to", "dtype"})
    if (t.node->has_attr(key)) {
      auto& value = t.node->attrs[key].value;
      if (const int64_t* code = std::get_if<int64_t>(&value); code && is_half(graph::dtype_from_onnx(static_cast<int>(*code))))
        value = int64_t{graph::dtype_to_onnx(DType::f32)};
    }
  return t;
}

bool has_half_values(const Node& node) {
  for (const auto* list : {&node.inputs, &node.outputs})
    for (const graph::Value* v : *list)
      if (v && is_half(v->dtype)) return true;
  return false;
}

KernelFactory with_half_emulation(KernelFactory float_factory) {
  return [float_factory = std::move(float_factory)](const KernelInit& init) -> std::unique_ptr<Kernel> {
    if (!has_half_values(init.node)) return float_factory(init);
    return std::make_unique<HalfEmulationKernel>(init, float_factory);
  };
}

void widen_half(DType half, const uint16_t* in, float* out, int64_t count) {
  const bool bf16 = half == DType::bf16;
  parallel_chunks(count, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = half_to_float(in[i], bf16);
  });
}

void narrow_to_half(DType half, const float* in, uint16_t* out, int64_t count) {
  const bool bf16 = half == DType::bf16;
  parallel_chunks(count, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) out[i] = float_to_half(in[i], bf16);
  });
}

}  // namespace oxtrain::runtime::cpu
