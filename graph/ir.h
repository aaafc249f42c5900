// oxtrain graph IR: values, nodes, graphs and host tensors.
//
// A Graph owns its Values and Nodes. Nodes are kept in topological order; every Value has at
// most one producer and any number of consumers. Import keeps ONNX names so that errors and
// dumps speak the user's names. The IR knows nothing about devices or training: autodiff
// builds a bigger Graph, the runtime executes one.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "base/error.h"

namespace oxtrain::graph {

// The narrow types from f8e4m3fn on are storage only (base/narrow_types.h): Cast converts to
// and from them and the data-movement ops carry them, one byte per element in memory.
enum class DType : uint8_t {
  undefined, f32, f64, f16, bf16, i64, i32, i8, u8, boolean, i16, u16, u32, u64,
  f8e4m3fn, f8e4m3fnuz, f8e5m2, f8e5m2fnuz, f4e2m1, f8e8m0, i4, u4, i2, u2
};

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
bool is_float(DType dtype);  // f32, f64, f16, bf16: the types oxtrain computes in
bool is_narrow(DType dtype);  // a storage-only type (f8e4m3fn ... u2)
int packed_bits(DType dtype);  // 4 or 2 for the types ONNX files pack (int4, uint4, float4e2m1, int2, uint2), else 0
// An element of a narrow type (its one byte in memory) as a number, and a number as one, as
// Cast converts (its saturate and round_mode attributes; base/narrow_types.h).
double narrow_value(DType dtype, uint8_t byte);
uint8_t narrow_byte(DType dtype, double x, bool saturate, const std::string& round_mode);
// ONNX's TensorProto.DataType numbering (FLOAT = 1, INT64 = 7, ...); DType::undefined for the
// types oxtrain does not handle (strings, complex, float6).
DType dtype_from_onnx(int onnx_type);
int dtype_to_onnx(DType dtype);

// A dimension is either known (>= 0) or unknown (kUnknownDim); a Value may carry a symbolic
// name for each unknown dimension (ONNX's dim_param, e.g. "N" or "batch_size").
constexpr int64_t kUnknownDim = -1;
using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);  // -1 if any dimension is unknown
bool shape_known(const Shape& shape);
std::string shape_str(const Shape& shape, const std::vector<std::string>& dim_names = {});

// A host tensor: dtype, shape and little-endian bytes.
struct Tensor {
  DType dtype = DType::undefined;
  Shape shape;
  std::vector<uint8_t> bytes;

  Tensor() = default;
  Tensor(DType dtype_, Shape shape_);  // zero-filled

  int64_t numel() const { return shape_numel(shape); }
  template <typename T>
  T* data() {
    return reinterpret_cast<T*>(bytes.data());
  }
  template <typename T>
  const T* data() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
  // Values as int64 (for i64/i32/i8/u8/bool tensors): shape arguments, axes, indices.
  std::vector<int64_t> to_int64() const;
  static Tensor from_int64(const std::vector<int64_t>& values, Shape shape);
  static Tensor from_float(const std::vector<float>& values, Shape shape);
};

enum class AttrType { f, i, s, t, floats, ints, strings };

struct Attribute {
  std::variant<float, int64_t, std::string, Tensor, std::vector<float>, std::vector<int64_t>,
               std::vector<std::string>>
      value;
  AttrType type() const { return static_cast<AttrType>(value.index()); }
};

enum class Role {
  Input,       // fed each step (images, labels, learning rate)
  Parameter,   // trained
  State,       // persistent, not trained: BN running statistics, momentum, step count
  Activation,  // produced by a node, lives only inside a step
  Constant,    // fixed data: shapes, axes, folded constants
};
const char* role_name(Role role);

struct Node;

struct Value {
  std::string name;
  DType dtype = DType::undefined;
  Shape shape;                         // empty with rank_known=false means unknown rank
  bool rank_known = false;
  std::vector<std::string> dim_names;  // symbolic names per dim ("" where none); may be empty
  Role role = Role::Activation;
  Node* producer = nullptr;
  std::vector<Node*> consumers;
  std::shared_ptr<Tensor> data;  // initializer or folded constant

  bool has_data() const { return data != nullptr; }
  int64_t numel() const { return rank_known ? shape_numel(shape) : -1; }
  int64_t bytes() const;  // -1 when the shape is not fully known
  std::string shape_string() const;
};

struct Node {
  std::string name;  // ONNX node name; import invents "<op>_<index>" where the file has none
  std::string op_type;
  std::string domain;  // "" is ai.onnx
  std::vector<Value*> inputs;   // nullptr for an omitted optional input
  std::vector<Value*> outputs;  // nullptr for an omitted optional output
  std::map<std::string, Attribute> attrs;

  Value* input(size_t i) const { return i < inputs.size() ? inputs[i] : nullptr; }
  Value* output(size_t i) const { return i < outputs.size() ? outputs[i] : nullptr; }

  bool has_attr(const std::string& key) const { return attrs.count(key) != 0; }
  int64_t attr_int(const std::string& key, int64_t fallback) const;
  float attr_float(const std::string& key, float fallback) const;
  std::string attr_string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> attr_ints(const std::string& key,
                                 const std::vector<int64_t>& fallback = {}) const;
  std::vector<float> attr_floats(const std::string& key) const;  // empty when absent
  const Tensor* attr_tensor(const std::string& key) const;
  // "Conv 'layer1.0.conv1'", the prefix of every error about this node.
  std::string describe() const;
};

struct OpsetImport {
  std::string domain;
  int64_t version = 0;
};

class Graph {
 public:
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  Graph(Graph&&) = default;
  Graph& operator=(Graph&&) = default;

  // Model-level metadata, kept so export writes what import read.
  std::string name;
  int64_t ir_version = 8;
  std::vector<OpsetImport> opsets;  // default domain first when present
  std::string producer_name;
  std::string producer_version;
  std::string doc_string;
  // Set at import when the exporter folded batch normalization into the convolutions (none
  // left, convolutions with biases, signs of a known folding exporter): what was found, for
  // a warning before training. Empty otherwise.
  std::string folded_batchnorm;
  // Set at import when the dynamo exporter's optimizer dropped Conv biases that were zero at
  // export (parameters the model no longer has): what was found. Empty otherwise.
  std::string removed_biases;
  // Set at import when the dynamo exporter's optimizer merged parameters that were equal at
  // export (every LayerNorm's ones become one tensor): what was found. Empty otherwise.
  std::string merged_parameters;
  // Set at import when float tensors the dynamo optimizer computed from parameters (a
  // transposed weight, a class token expanded to the batch) sit in trainable slots: they train
  // as parameters of their own. What was found; empty otherwise.
  std::string derived_parameters;
  // Set at import when the exported program's signature lists parameters the file holds in no
  // form (the optimizer folded them into constants oxtrain cannot trace back): which. Empty
  // otherwise.
  std::string missing_parameters;
  // Set at import when the evidence above is there but the file does not record the rewrites
  // exactly enough to undo them (graph/exporter_rewrites.h): why. Empty otherwise.
  std::string unrestored_reason;
  // Set at import when batch norms or biases an exporter folded away were put back from the
  // node metadata: what was restored. Empty otherwise.
  std::string restored_rewrites;

  std::vector<Value*> inputs;   // graph inputs without data (role Input)
  std::vector<Value*> outputs;
  // Persistent values a step rewrites: (state or parameter, its new value). The runtime
  // stores each new value back into the state after the step (in place where it can).
  std::vector<std::pair<Value*, Value*>> updates;

  // The opset version of `domain` ("" = ai.onnx), or 0 if not imported.
  int64_t opset(const std::string& domain = "") const;

  Value* find_value(const std::string& value_name) const;
  Value* value(const std::string& value_name) const;  // throws if missing
  // Creates a value; the name must be new (use unique_name() to make one).
  Value* add_value(const std::string& value_name, DType dtype = DType::undefined,
                   Shape shape = {}, Role role = Role::Activation);
  Value* add_initializer(const std::string& value_name, Tensor tensor, Role role);
  std::string unique_name(const std::string& base) const;

  // Appends a node after all others; producer/consumer links are set.
  Node* add_node(const std::string& op_type, std::vector<Value*> inputs,
                 std::vector<Value*> outputs, std::string node_name = "",
                 std::string domain = "");
  // Removes nodes for which `dead` is true (their links too). Values they produced stay.
  void remove_nodes_if(const std::function<bool(const Node&)>& dead);
  // Input `index` of `node` becomes `value` (consumer links follow).
  void set_input(Node* node, size_t index, Value* value);
  // Replaces every use of `from` (node inputs and graph outputs) by `to`.
  void replace_uses(Value* from, Value* to);
  // Drops values that are neither produced, consumed, graph inputs/outputs nor initializers.
  void prune_values();
  // Removes nodes whose outputs reach no graph output (dead code).
  void remove_dead_nodes();

  const std::vector<std::unique_ptr<Node>>& nodes() const { return nodes_; }
  // Sets output `index` of `node` to `value` (which must have no producer), growing the
  // output list as needed; the old output value, if any, loses its producer.
  void set_output(Node* node, size_t index, Value* value);
  std::vector<Value*> values_in_order() const;  // inputs, initializers, then node outputs
  std::vector<Value*> initializers() const;     // values with data, in insertion order

  // Re-sorts nodes topologically (stable); throws on a cycle.
  void topological_sort();
  // Moves `node` to just after `anchor` in the node order (the schedule). The caller keeps
  // the order topological: every input of `node` is produced at or before `anchor`, and no
  // node between `anchor` and `node`'s old place reads its outputs.
  void move_after(const Node* node, const Node* anchor);
  // Moves `node` to just before `anchor`; the caller keeps the order topological likewise.
  void move_before(const Node* node, const Node* anchor);

 private:
  void move_next_to(const Node* node, const Node* anchor, bool after);

  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::unique_ptr<Value>> value_storage_;
  std::map<std::string, Value*> values_;
};

}  // namespace oxtrain::graph
