#include "runtime/inner_kernel.h"

#include "graph/ops.h"

namespace oxtrain::runtime {

InnerKernel::InnerKernel(const KernelInit& init, const std::string& domain, const std::string& op,
                         const std::vector<const graph::Value*>& ins, const std::vector<const graph::Value*>& outs,
                         std::initializer_list<const char*> attributes) {
  auto copy = [&](const graph::Value* v, const char* prefix, size_t i) -> graph::Value* {
    if (!v) return nullptr;
    graph::Value* c = graph.add_value(prefix + std::to_string(i), v->dtype, v->shape, v->role);
    c->rank_known = true;
    return c;
  };
  std::vector<graph::Value*> in, out;
  for (size_t i = 0; i < ins.size(); ++i) in.push_back(copy(ins[i], "in", i));
  for (size_t i = 0; i < outs.size(); ++i) out.push_back(copy(outs[i], "out", i));
  node = graph.add_node(op, in, out, init.node.name, domain);
  if (attributes.size() == 0) {
    node->attrs = init.node.attrs;
  } else {
    for (const char* key : attributes)
      if (init.node.has_attr(key)) node->attrs[key] = init.node.attrs.at(key);
  }
  const KernelFactory* f = KernelRegistry::global().find(domain, op, init.device);
  if (!f)
    throw Error(init.node.describe() + ": no " + (domain.empty() ? std::string() : domain + ".") + op + " kernel on " +
                device_name(init.device));
  kernel = (*f)(KernelInit{*node, init.opset, init.device, init.context, init.precision});
}

}  // namespace oxtrain::runtime
