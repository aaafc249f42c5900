#include "graph/passes.h"

#include <onnx/onnx_pb.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace oxtrain::graph {

namespace {
Tensor convert(const Tensor& t, DType to) {
  Tensor out(to, t.shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double v = t.dtype == DType::f64 ? t.data<double>()[i] : t.data<float>()[i];
    if (to == DType::f64) out.data<double>()[i] = v;
    else out.data<float>()[i] = static_cast<float>(v);
  }
  return out;
}
}  // namespace

void convert_float_dtype(Graph& g, DType to) {
  if (to != DType::f32 && to != DType::f64)
    throw Error(std::string("convert_float_dtype: cannot convert to ") + dtype_name(to));
  for (Value* v : g.values_in_order()) {
    if (v->dtype != DType::f32 && v->dtype != DType::f64) continue;
    if (v->data && v->data->dtype != to) v->data = std::make_shared<Tensor>(convert(*v->data, to));
    v->dtype = to;
  }
  for (const auto& n : g.nodes())
    if (n->op_type == "Cast" && is_float(dtype_from_onnx(static_cast<int>(n->attr_int("to", 0)))))
      n->attrs["to"].value = static_cast<int64_t>(dtype_to_onnx(to));
}

void batchnorm_to_inference(Graph& g) {
  for (const auto& n : g.nodes()) {
    if (n->op_type != "BatchNormalization" || !n->domain.empty()) continue;
    n->attrs.erase("training_mode");
    for (size_t i = 1; i < n->outputs.size(); ++i) {
      if (n->outputs[i] && !n->outputs[i]->consumers.empty())
        throw Error(n->describe() + ": its training output '" + n->outputs[i]->name +
                    "' is used by other nodes; it cannot run in inference mode");
      g.set_output(n.get(), i, nullptr);
    }
    n->outputs.resize(1);
  }
  g.updates.clear();
  g.remove_dead_nodes();
  g.prune_values();
}

Tensor read_tensor_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("tensor file '" + path + "' does not exist or cannot be read");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  onnx::TensorProto proto;
  if (!proto.ParseFromString(bytes.str()))
    throw Error("'" + path + "' is not an ONNX TensorProto file");
  DType dtype = dtype_from_onnx(proto.data_type());
  if (dtype == DType::undefined)
    throw Error("'" + path + "' holds ONNX data type " + std::to_string(proto.data_type()) +
                ", which oxtrain does not read");
  Tensor t(dtype, Shape(proto.dims().begin(), proto.dims().end()));
  if (proto.has_raw_data()) {
    if (proto.raw_data().size() != t.bytes.size())
      throw Error("'" + path + "': " + shape_str(t.shape) + " needs " + std::to_string(t.bytes.size()) +
                  " bytes, the file holds " + std::to_string(proto.raw_data().size()));
    std::memcpy(t.bytes.data(), proto.raw_data().data(), t.bytes.size());
  } else if (dtype == DType::f32 && proto.float_data_size() == t.numel()) {
    std::copy(proto.float_data().begin(), proto.float_data().end(), t.data<float>());
  } else if (dtype == DType::i64 && proto.int64_data_size() == t.numel()) {
    std::copy(proto.int64_data().begin(), proto.int64_data().end(), t.data<int64_t>());
  } else if (dtype == DType::f64 && proto.double_data_size() == t.numel()) {
    std::copy(proto.double_data().begin(), proto.double_data().end(), t.data<double>());
  } else {
    throw Error("'" + path + "': tensor data missing or of the wrong size");
  }
  return t;
}

void write_tensor_file(const Tensor& t, const std::string& path) {
  onnx::TensorProto proto;
  proto.set_data_type(dtype_to_onnx(t.dtype));
  for (int64_t d : t.shape) proto.add_dims(d);
  proto.set_raw_data(t.bytes.data(), t.bytes.size());
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !proto.SerializeToOstream(&out)) throw Error("cannot write '" + tmp + "'");
  }
  std::filesystem::rename(tmp, path);
}

}  // namespace oxtrain::graph
