#include "graph/zoo.h"

#include <cmath>

#include "graph/onnx_io.h"
#include "graph/version.h"

using oxtrain::kVersion;

namespace oxtrain::graph {

uint64_t Rng::next_u64() {
  // splitmix64
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double Rng::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Rng::normal() {
  double u1 = uniform(), u2 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

namespace {

struct ResNetConfig {
  const char* name;
  bool bottleneck;
  std::vector<int> blocks;
};

const std::vector<ResNetConfig>& configs() {
  static const std::vector<ResNetConfig> c = {
      {"resnet18", false, {2, 2, 2, 2}},   {"resnet34", false, {3, 4, 6, 3}},
      {"resnet50", true, {3, 4, 6, 3}},    {"resnet101", true, {3, 4, 23, 3}},
      {"resnet152", true, {3, 8, 36, 3}},
  };
  return c;
}

class ResNetBuilder {
 public:
  ResNetBuilder(Graph& g, uint64_t seed) : g_(g), rng_(seed) {}

  // Kaiming normal, mode fan_out, ReLU gain: std = sqrt(2 / (out_channels * k * k)).
  Value* conv(const std::string& name, Value* x, int64_t in_ch, int64_t out_ch, int64_t k,
              int64_t stride, int64_t pad) {
    Tensor w(DType::f32, {out_ch, in_ch, k, k});
    double std = std::sqrt(2.0 / static_cast<double>(out_ch * k * k));
    float* p = w.data<float>();
    for (int64_t i = 0; i < w.numel(); ++i) p[i] = static_cast<float>(rng_.normal() * std);
    Value* wv = g_.add_initializer(name + ".weight", std::move(w), Role::Parameter);
    Value* y = g_.add_value(name);
    Node* n = g_.add_node("Conv", {x, wv}, {y}, name);
    n->attrs["kernel_shape"].value = std::vector<int64_t>{k, k};
    n->attrs["strides"].value = std::vector<int64_t>{stride, stride};
    n->attrs["pads"].value = std::vector<int64_t>{pad, pad, pad, pad};
    n->attrs["dilations"].value = std::vector<int64_t>{1, 1};
    n->attrs["group"].value = int64_t{1};
    return y;
  }

  // Training-mode BatchNormalization (opset 15): weight 1, bias 0, running mean 0, var 1.
  Value* bn(const std::string& name, Value* x, int64_t ch) {
    auto filled = [&](float v) {
      return Tensor::from_float(std::vector<float>(static_cast<size_t>(ch), v), {ch});
    };
    Value* scale = g_.add_initializer(name + ".weight", filled(1), Role::Parameter);
    Value* bias = g_.add_initializer(name + ".bias", filled(0), Role::Parameter);
    Value* mean = g_.add_initializer(name + ".running_mean", filled(0), Role::State);
    Value* var = g_.add_initializer(name + ".running_var", filled(1), Role::State);
    Value* y = g_.add_value(name);
    Value* mean_out = g_.add_value(name + ".running_mean_new");
    Value* var_out = g_.add_value(name + ".running_var_new");
    Node* n = g_.add_node("BatchNormalization", {x, scale, bias, mean, var}, {y, mean_out, var_out},
                          name);
    n->attrs["epsilon"].value = 1e-5f;
    n->attrs["momentum"].value = 0.9f;  // PyTorch's momentum 0.1
    n->attrs["training_mode"].value = int64_t{1};
    return y;
  }

  Value* relu(const std::string& name, Value* x) { return unary("Relu", name, x); }

  Value* unary(const std::string& op, const std::string& name, Value* x) {
    Value* y = g_.add_value(name);
    g_.add_node(op, {x}, {y}, name);
    return y;
  }

  Value* block(const std::string& p, Value* x, int64_t& in_ch, int64_t planes, int64_t stride,
               bool bottleneck) {
    int64_t expansion = bottleneck ? 4 : 1;
    int64_t out_ch = planes * expansion;
    Value* identity = x;
    Value* y;
    if (bottleneck) {
      y = relu(p + ".relu1", bn(p + ".bn1", conv(p + ".conv1", x, in_ch, planes, 1, 1, 0), planes));
      y = relu(p + ".relu2",
               bn(p + ".bn2", conv(p + ".conv2", y, planes, planes, 3, stride, 1), planes));
      y = bn(p + ".bn3", conv(p + ".conv3", y, planes, out_ch, 1, 1, 0), out_ch);
    } else {
      y = relu(p + ".relu1",
               bn(p + ".bn1", conv(p + ".conv1", x, in_ch, planes, 3, stride, 1), planes));
      y = bn(p + ".bn2", conv(p + ".conv2", y, planes, planes, 3, 1, 1), planes);
    }
    if (stride != 1 || in_ch != out_ch)
      identity = bn(p + ".downsample.1",
                    conv(p + ".downsample.0", x, in_ch, out_ch, 1, stride, 0), out_ch);
    Value* sum = g_.add_value(p + ".add");
    g_.add_node("Add", {y, identity}, {sum}, p + ".add");
    in_ch = out_ch;
    return relu(p + ".relu_out", sum);
  }

  Value* fc(Value* x, int64_t in_features, int64_t classes) {
    // nn.Linear: kaiming_uniform(a=sqrt(5)) gives bound 1/sqrt(fan_in); bias the same bound.
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    Tensor w(DType::f32, {classes, in_features});
    for (int64_t i = 0; i < w.numel(); ++i)
      w.data<float>()[i] = static_cast<float>((2 * rng_.uniform() - 1) * bound);
    Tensor b(DType::f32, {classes});
    for (int64_t i = 0; i < b.numel(); ++i)
      b.data<float>()[i] = static_cast<float>((2 * rng_.uniform() - 1) * bound);
    Value* wv = g_.add_initializer("fc.weight", std::move(w), Role::Parameter);
    Value* bv = g_.add_initializer("fc.bias", std::move(b), Role::Parameter);
    Value* y = g_.add_value("output");
    Node* n = g_.add_node("Gemm", {x, wv, bv}, {y}, "fc");
    n->attrs["transB"].value = int64_t{1};
    n->attrs["alpha"].value = 1.0f;
    n->attrs["beta"].value = 1.0f;
    return y;
  }

  Graph& g_;
  Rng rng_;
};

}  // namespace

std::vector<std::string> zoo_models() {
  std::vector<std::string> names;
  for (const auto& c : configs()) names.push_back(c.name);
  return names;
}

Graph make_zoo_model(const std::string& name, const ZooOptions& options) {
  const ResNetConfig* config = nullptr;
  for (const auto& c : configs())
    if (name == c.name) config = &c;
  if (!config) {
    std::string known;
    for (const auto& n : zoo_models()) known += (known.empty() ? "" : ", ") + n;
    throw Error("unknown model '" + name + "'; the zoo has " + known);
  }
  if (options.num_classes < 1) throw Error("--num-classes must be positive");
  if (options.image_size < 32) throw Error("image size must be at least 32 for a ResNet");

  Graph g;
  g.name = name;
  g.ir_version = 8;
  g.opsets = {{"", 17}};
  g.producer_name = "oxtrain";
  g.producer_version = kVersion;
  g.doc_string = name + " (torchvision architecture and initialisation), seed " +
                 std::to_string(options.seed);

  Value* input = g.add_value("input", DType::f32,
                             {kUnknownDim, 3, options.image_size, options.image_size}, Role::Input);
  input->dim_names = {options.batch_dim, "", "", ""};
  g.inputs.push_back(input);

  ResNetBuilder b(g, options.seed);
  Value* x = b.relu("relu", b.bn("bn1", b.conv("conv1", input, 3, 64, 7, 2, 3), 64));
  Value* pooled = g.add_value("maxpool");
  Node* mp = g.add_node("MaxPool", {x}, {pooled}, "maxpool");
  mp->attrs["kernel_shape"].value = std::vector<int64_t>{3, 3};
  mp->attrs["strides"].value = std::vector<int64_t>{2, 2};
  mp->attrs["pads"].value = std::vector<int64_t>{1, 1, 1, 1};
  x = pooled;

  int64_t in_ch = 64;
  const int64_t planes[] = {64, 128, 256, 512};
  for (int layer = 0; layer < 4; ++layer) {
    for (int i = 0; i < config->blocks[layer]; ++i) {
      std::string prefix = "layer" + std::to_string(layer + 1) + "." + std::to_string(i);
      int64_t stride = (layer > 0 && i == 0) ? 2 : 1;
      x = b.block(prefix, x, in_ch, planes[layer], stride, config->bottleneck);
    }
  }
  x = b.unary("GlobalAveragePool", "avgpool", x);
  Value* flat = g.add_value("flatten");
  g.add_node("Flatten", {x}, {flat}, "flatten")->attrs["axis"].value = int64_t{1};
  Value* out = b.fc(flat, in_ch, options.num_classes);
  out->dim_names = {options.batch_dim, ""};
  g.outputs.push_back(out);

  prepare(g);
  return g;
}

}  // namespace oxtrain::graph
