// Channels-last (graph::to_channels_last, --channels-last): which values and nodes of a ResNet
// change layout and where Transposes sit, and that the channels-last training graph computes
// the channels-first graph's numbers bit for bit (the CPU runs it through the layout
// emulation of runtime/layout_emulation.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "autodiff/training.h"
#include "graph/ops.h"
#include "graph/passes.h"
#include "runtime/planner.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

autodiff::TrainingOptions options(bool channels_last, DType half) {
  autodiff::TrainingOptions o;
  o.half = half;
  o.fuse_batchnorm_relu = true;
  o.recompute_batchnorm_relu = true;
  o.channels_last = channels_last;
  return o;
}

test::TrainingRun make_run(bool channels_last, DType half) {
  return test::make_training_run(test::zoo_at_batch("resnet18", 4, 32, 10, 5), options(channels_last, half));
}

}  // namespace

// Every convolution, batch norm and pooling of ResNet-50's training graph (forward and
// backward) runs channels-last; element-wise ops follow. Three activations cross a border: the
// images into the first convolution, the pooled features into Flatten, and their gradient
// back into the pooling's gradient. The filters do too: each convolution's half copy of its
// weights (53), the copy cast again for the data gradient (52: the first convolution has
// none), and each filter gradient back to the parameter's layout for momentum (53). Every one
// of those that meets a cast (the images' and the filters' casts to bfloat16, the filter
// gradients' casts back to float32) is one CastTranspose node with it.
TEST(ChannelsLast, ResNet50GraphIsChannelsLastBetweenItsBorders) {
  autodiff::TrainingGraph tg = autodiff::build_training_graph(test::zoo_at_batch("resnet50", 2, 64), options(true, DType::bf16));
  EXPECT_EQ(tg.channels_last.transposes, 3 + 53 + 52 + 53);
  EXPECT_EQ(tg.cast_transposes, 1 + 53 + 52 + 53);
  int activations = 0, casts = 0, cast_transposes = 0, filters_to_half = 0, gradients_to_float = 0;
  for (const auto& n : tg.graph.nodes()) {
    const bool fused = n->op_type == "CastTranspose";
    if (n->op_type == "Transpose" || fused) activations += n->input(0)->shape[0] == 2;  // the batch, not K
    casts += n->op_type == "Cast";
    cast_transposes += fused;
    if (!fused) continue;
    filters_to_half += n->input(0)->role == Role::Parameter && n->output(0)->dtype == DType::bf16;
    gradients_to_float += n->input(0)->dtype == DType::bf16 && n->output(0)->dtype == DType::f32 &&
                          n->output(0)->name.rfind("grad/", 0) == 0;
  }
  EXPECT_EQ(activations, 3);
  EXPECT_EQ(cast_transposes, tg.cast_transposes);
  EXPECT_EQ(filters_to_half, 53 + 52);
  EXPECT_EQ(gradients_to_float, 53);
  // Left as Casts: the classifier's weight (twice: cast again for backward, as the filters) and
  // bias and their gradients, the logits to float32 and the loss gradient back to half.
  EXPECT_EQ(casts, 7);
  // Every parameter's gradient keeps the parameter's shape (the gradient arena, momentum).
  for (const auto& [param, grad] : tg.gradients) EXPECT_EQ(tg.graph.value(grad)->shape, tg.graph.value(param)->shape);
  std::map<std::string, int> last, first;
  for (const auto& n : tg.graph.nodes()) {
    const OpSchema* s = find_schema(n->domain, n->op_type);
    if (!s || !s->layout.channels_last_form()) continue;
    ++(is_channels_last(*n) ? last : first)[n->op_type];
  }
  EXPECT_TRUE(first.empty()) << first.begin()->first;
  EXPECT_EQ(last["Conv"], 53);
  EXPECT_EQ(last["ConvGradFilter"], 53);
  EXPECT_EQ(last["ConvGradData"], 52);
  EXPECT_EQ(last["BatchNormReluTraining"], 49);
  EXPECT_EQ(last["BatchNormTraining"], 4);
  EXPECT_EQ(last["MaxPool"], 1);
  EXPECT_EQ(last["MaxPoolGradFromInput"], 1);
  EXPECT_EQ(last["GlobalAveragePool"], 1);
  int64_t transposes = 0;
  for (const auto& n : tg.graph.nodes()) transposes += n->op_type == "Transpose" || n->op_type == "CastTranspose";
  EXPECT_EQ(transposes, tg.channels_last.transposes);
  // conv1's output at 64x64: [2, 64, 32, 32] channels-first, stored [2, 32, 32, 64].
  const Value* conv1 = nullptr;
  for (const auto& n : tg.graph.nodes())
    if (n->op_type == "Conv" && !conv1) conv1 = n->output(0);
  ASSERT_NE(conv1, nullptr);
  EXPECT_EQ(conv1->shape, (Shape{2, 32, 32, 64}));
  // The layout changes no size: the memory plan is the channels-first one, give or take the
  // three small copies at the borders.
  const autodiff::TrainingGraph plain =
      autodiff::build_training_graph(test::zoo_at_batch("resnet50", 2, 64), options(false, DType::bf16));
  const int64_t with = runtime::plan_memory(tg.graph).activation_arena_bytes;
  const int64_t without = runtime::plan_memory(plain.graph).activation_arena_bytes;
  EXPECT_LE(with, without + without / 50);
  EXPECT_GE(with, without - without / 50);
}

TEST(ChannelsLast, TrainsBitIdenticalToChannelsFirst) {
  for (DType half : {DType::undefined, DType::bf16}) {
    SCOPED_TRACE(half == DType::undefined ? "float32" : dtype_name(half));
    test::TrainingRun first = make_run(false, half);
    test::TrainingRun last = make_run(true, half);
    ASSERT_EQ(first.states, last.states);
    EXPECT_GT(last.tg.channels_last.nodes, 50);
    // In half, the filters' casts and transposes run fused, and still compute the same bits.
    EXPECT_EQ(last.tg.cast_transposes > 0, half != DType::undefined);
    for (int64_t s = 0; s < 3; ++s) {
      for (auto* r : {&first, &last}) test::run_training_step(*r, 300 + static_cast<uint64_t>(s), {2, 7, 7, 0}, 0.05f, s);
      EXPECT_EQ(first.session->fetch(first.tg.loss).bytes, last.session->fetch(last.tg.loss).bytes) << "step " << s;
    }
    EXPECT_EQ(test::differing_states(first, last), 0) << "of " << first.states.size();
  }
}

namespace {

// [N, C, H, W] <-> [N, H, W, C], float32.
Tensor transposed(const Tensor& t, bool to_last) {
  const Shape& s = t.shape;
  Tensor out(t.dtype, to_last ? to_channels_last_shape(s) : to_channels_first_shape(s));
  const Shape& first = to_last ? s : out.shape;  // the channels-first dims
  const int64_t n = first[0], c = first[1], h = first[2], w = first[3];
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < c; ++k)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const int64_t nchw = ((i * c + k) * h + y) * w + x, nhwc = ((i * h + y) * w + x) * c + k;
          out.data<float>()[to_last ? nhwc : nchw] = t.data<float>()[to_last ? nchw : nhwc];
        }
  return out;
}

}  // namespace

// Each emulated kernel is the channels-first kernel between two transposes, bit for bit.
TEST(ChannelsLast, EmulatedKernelsAreTheChannelsFirstOnesTransposed) {
  const Shape x{3, 5, 9, 7}, c{5};
  const Tensor xs = test::random_tensor(DType::f32, x, 1, -2, 3);
  const Tensor w = test::random_tensor(DType::f32, {6, 5, 3, 3}, 2);
  const Tensor scale = test::random_tensor(DType::f32, c, 3, 0.5, 1.5), bias = test::random_tensor(DType::f32, c, 4);
  const Tensor mean = test::random_tensor(DType::f32, c, 5), var = test::random_tensor(DType::f32, c, 6, 0.5, 2);
  struct Case {
    std::string op, domain;
    std::vector<Tensor> inputs;
    std::vector<size_t> layout_inputs;
    Shape y;
    std::map<std::string, Attribute> attrs;
  };
  const std::map<std::string, Attribute> pool = {{"kernel_shape", Attribute{std::vector<int64_t>{3, 3}}},
                                                 {"strides", Attribute{std::vector<int64_t>{2, 2}}},
                                                 {"pads", Attribute{std::vector<int64_t>{1, 1, 1, 1}}}};
  const std::vector<Case> cases = {
      {"Conv", "", {xs, w}, {0, 1}, {3, 6, 5, 4}, pool},
      {"MaxPool", "", {xs}, {0}, {3, 5, 5, 4}, pool},
      {"GlobalAveragePool", "", {xs}, {0}, {3, 5, 1, 1}, {}},
      {"BatchNormApply", kOxtrainDomain, {xs, scale, bias, mean, var}, {0}, x, {}},
      {"BatchNormTraining", kOxtrainDomain, {xs, scale, bias, mean, var}, {0}, x, {{"epsilon", Attribute{1e-5f}}}},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.op);
    test::KernelCase first(k.op, k.domain, k.inputs, {{DType::f32, k.y}});
    std::vector<Tensor> last_inputs = k.inputs;
    for (size_t i : k.layout_inputs) last_inputs[i] = transposed(k.inputs[i], true);
    test::KernelCase last(k.op, k.domain, last_inputs, {{DType::f32, to_channels_last_shape(k.y)}});
    for (const auto& [key, value] : k.attrs) {
      first.set_attr(key, value);
      last.set_attr(key, value);
    }
    last.set_attr(kChannelsLast, Attribute{int64_t{1}});
    first.run();
    last.run();
    EXPECT_EQ(transposed(last.output(0), false).bytes, first.output(0).bytes);
    // Something was computed: not the zeros both outputs start from.
    int64_t nonzero = 0;
    for (int64_t i = 0; i < first.output(0).numel(); ++i) nonzero += first.output(0).data<float>()[i] != 0.0f;
    EXPECT_GT(nonzero, first.output(0).numel() / 2);
  }
}

// graph::fuse_cast_transpose fuses a Cast and a Transpose either way round only where the value
// between them has no other reader and is no graph output, keeps a Transpose's default perm
// (absent: the axes reversed) and its place in the schedule.
TEST(CastTransposeFusion, FusesOnlyPrivateLinks) {
  Graph g;
  g.opsets = {{"", 17}};
  Value* x = g.add_value("x", DType::f32, {2, 3, 4}, Role::Input);
  g.inputs.push_back(x);
  auto cast = [&](Value* in, DType to, const std::string& name) {
    Value* out = g.add_value(name);
    Node* n = g.add_node("Cast", {in}, {out}, name);
    n->attrs["to"].value = int64_t{dtype_to_onnx(to)};
    return out;
  };
  auto transpose = [&](Value* in, std::vector<int64_t> perm, const std::string& name) {
    Value* out = g.add_value(name);
    Node* n = g.add_node("Transpose", {in}, {out}, name);
    if (!perm.empty()) n->attrs["perm"].value = perm;
    return out;
  };
  Value* y1 = transpose(cast(x, DType::bf16, "c1"), {}, "t1");          // fused, default perm
  Value* c2 = cast(x, DType::f16, "c2");                                // read twice: kept
  Value* y2 = transpose(c2, {1, 0, 2}, "t2");
  Value* y3 = g.add_value("r3");
  g.add_node("Relu", {c2}, {y3}, "r3");
  Value* y4 = cast(transpose(x, {2, 1, 0}, "t4"), DType::bf16, "c4");  // fused, the other way round
  Value* y5 = transpose(x, {0, 2, 1}, "t5");                            // a graph output: kept
  Value* y6 = cast(y5, DType::bf16, "c6");
  g.outputs = {y1, y2, y3, y4, y5, y6};
  for (const auto& n : g.nodes()) find_schema(n->domain, n->op_type)->infer(*n, InferContext{g, 17});
  EXPECT_EQ(fuse_cast_transpose(g), 2);
  std::vector<std::string> ops;
  for (const auto& n : g.nodes()) ops.push_back(n->op_type);
  EXPECT_EQ(ops, (std::vector<std::string>{"CastTranspose", "Cast", "Transpose", "Relu", "CastTranspose", "Transpose",
                                           "Cast"}));
  const Node* first = y1->producer;
  ASSERT_EQ(first->op_type, "CastTranspose");
  EXPECT_FALSE(first->has_attr("perm"));
  EXPECT_EQ(first->input(0), x);
  EXPECT_EQ(y1->dtype, DType::bf16);
  EXPECT_EQ(y1->shape, (Shape{4, 3, 2}));
  const Node* second = y4->producer;
  ASSERT_EQ(second->op_type, "CastTranspose");
  EXPECT_EQ(second->attr_ints("perm"), (std::vector<int64_t>{2, 1, 0}));
  EXPECT_EQ(y4->dtype, DType::bf16);
  EXPECT_EQ(y4->shape, (Shape{4, 3, 2}));
  EXPECT_EQ(y6->producer->op_type, "Cast");
  EXPECT_EQ(g.find_value("c1"), nullptr);  // the fused-away link is gone
}
