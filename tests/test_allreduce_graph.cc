// Data parallelism in the training graph: gradients reduced in buckets (oxtrain.AllReduce),
// each bucket one contiguous slice of the gradient arena, each node scheduled right after its
// last gradient exists; alone (no communicator) the step is exactly the single-process step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/dist/communicator.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

Graph small_resnet() {
  return test::zoo_at_batch("resnet18", 4, 32, 10, 5);
}

autodiff::TrainingGraph training(bool allreduce, int64_t bucket_bytes = 1'000'000) {
  autodiff::TrainingOptions o;
  o.allreduce = allreduce;
  o.bucket_bytes = bucket_bytes;
  o.last_bucket_bytes = 100'000;
  return autodiff::build_training_graph(small_resnet(), o);
}

std::unique_ptr<runtime::Session> session(const autodiff::TrainingGraph& tg) {
  runtime::SessionOptions so;
  for (const auto& [v, d] : tg.gradients) so.gradients.push_back(d);
  return std::make_unique<runtime::Session>(copy_graph(tg.graph), so);
}

void step(runtime::Session& s, const autodiff::TrainingGraph& tg, int64_t index) {
  s.feed("input", test::random_tensor(DType::f32, {4, 3, 32, 32}, 40 + static_cast<uint64_t>(index)));
  s.feed(tg.labels, Tensor::from_int64({1, 4, 9, 0}, {4}));
  s.feed(tg.learning_rate, Tensor::from_float({0.05f}, {}));
  s.feed(tg.step, Tensor::from_int64({index}, {}));
  s.run();
}

}  // namespace

TEST(AllReduceGraph, BucketsFollowBackwardOrderWithASmallLastBucket) {
  using B = std::vector<std::vector<size_t>>;
  EXPECT_EQ(autodiff::plan_buckets({10, 10, 10, 10, 3, 2}, 20, 5), (B{{0, 1}, {2, 3}, {4, 5}}));
  // A bucket closes once it reaches the size; the tail takes at least the last gradient.
  EXPECT_EQ(autodiff::plan_buckets({30, 5, 5, 5, 5}, 12, 0), (B{{0}, {1, 2, 3}, {4}}));
  EXPECT_EQ(autodiff::plan_buckets({7}, 25, 1), (B{{0}}));
  EXPECT_EQ(autodiff::plan_buckets({1, 1, 1}, 100, 100), (B{{0, 1, 2}}));
  EXPECT_TRUE(autodiff::plan_buckets({}, 10, 1).empty());
}

TEST(AllReduceGraph, EachBucketRunsRightAfterItsLastGradient) {
  autodiff::TrainingGraph tg = training(true);
  const Graph& g = tg.graph;
  ASSERT_GT(tg.buckets.size(), 3u);
  ASSERT_EQ(tg.buckets.size(), tg.allreduce_nodes.size());
  // Every parameter's gradient in exactly one bucket, buckets in backward order.
  std::vector<std::string> order;
  for (const auto& b : tg.buckets) order.insert(order.end(), b.begin(), b.end());
  std::vector<std::string> want;
  for (const auto& [v, d] : tg.gradients) want.push_back(d);
  EXPECT_EQ(order, want);
  // The last bucket is the small one: at most 100 kB, or a single gradient.
  int64_t last_bytes = 0;
  for (const auto& name : tg.buckets.back()) last_bytes += g.value(name)->bytes();
  EXPECT_TRUE(last_bytes <= 100'000 || tg.buckets.back().size() == 1) << last_bytes;

  std::map<const Node*, size_t> position;
  for (size_t i = 0; i < g.nodes().size(); ++i) position[g.nodes()[i].get()] = i;
  const Node* optimizer = g.find_value(tg.gradients.front().second)->consumers.at(0);
  for (size_t b = 0; b < tg.buckets.size(); ++b) {
    const Node* n = nullptr;
    for (const auto& node : g.nodes())
      if (node->name == tg.allreduce_nodes[b]) n = node.get();
    ASSERT_NE(n, nullptr);
    size_t last = 0;
    for (const auto& name : tg.buckets[b]) last = std::max(last, position.at(g.value(name)->producer));
    // Right after the last producer, or after the AllReduce nodes placed there before it.
    size_t at = position.at(n);
    EXPECT_GT(at, last);
    for (size_t k = last + 1; k < at; ++k) EXPECT_EQ(g.nodes()[k]->op_type, "AllReduce") << n->name;
    // The optimizer reads the reduced gradients, not the local ones.
    for (const Value* out : n->outputs) {
      ASSERT_EQ(out->consumers.size(), 1u);
      EXPECT_EQ(out->consumers[0]->op_type, "Momentum");
    }
  }
  (void)optimizer;
}

TEST(AllReduceGraph, BucketsAreContiguousSlicesReducedInPlace) {
  autodiff::TrainingGraph tg = training(true);
  auto s = session(tg);
  const runtime::MemoryPlan& plan = s->plan();
  const Graph& g = s->graph();
  for (const auto& name : tg.allreduce_nodes) {
    const Node* n = nullptr;
    for (const auto& node : g.nodes())
      if (node->name == name) n = node.get();
    ASSERT_NE(n, nullptr);
    int64_t expected = -1;
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      const runtime::Placement& in = plan.at(n->inputs[i]);
      const runtime::Placement& out = plan.at(n->outputs[i]);
      EXPECT_EQ(in.arena, runtime::Arena::gradient);
      EXPECT_EQ(out.arena, runtime::Arena::gradient);
      EXPECT_EQ(out.offset, in.offset) << n->inputs[i]->name;
      if (expected >= 0) {
        EXPECT_EQ(in.offset, expected) << name << ": not one contiguous slice";
      }
      expected = in.offset + (in.bytes + 63) / 64 * 64;
    }
  }
}

// Alone (no communicator) the average over one rank is the gradient itself: three steps give
// bit for bit the weights of the graph without AllReduce.
TEST(AllReduceGraph, AloneTheStepIsTheSingleProcessStep) {
  autodiff::TrainingGraph plain = training(false), reduced = training(true);
  auto a = session(plain), b = session(reduced);
  for (int64_t i = 0; i < 3; ++i) {
    step(*a, plain, i);
    step(*b, reduced, i);
  }
  ASSERT_EQ(plain.graph.updates.size(), reduced.graph.updates.size());
  for (const auto& [state, next] : plain.graph.updates) {
    Tensor x = a->fetch(state->name), y = b->fetch(state->name);
    EXPECT_EQ(x.bytes, y.bytes) << state->name;
  }
}

// ---------------------------------------------------------------------------------------
// Ranks as threads of this process, each with its own Session and a Gloo communicator on
// loopback, rendezvous through one in-memory store.

namespace {

// Conv(3->6, 3x3) -> Relu -> Conv(6->4, 3x3, stride 2) -> Relu -> GlobalAveragePool -> Gemm(4->5):
// no batch norm, so data parallelism is exactly the combined batch. Random weights. With
// `shared_gradient`, the logits also get shift.p + shift.q (two [5] parameters): both have the very same
// gradient value.
Graph no_bn_model(int64_t batch, bool shared_gradient = false) {
  test::ModelBuilder b;
  b.input("input", {-1, 3, 8, 8});
  b.initializer("c1.w", {6, 3, 3, 3}, 0);
  b.initializer("c1.b", {6}, 0);
  b.initializer("c2.w", {4, 6, 3, 3}, 0);
  b.initializer("c2.b", {4}, 0);
  b.initializer("fc.w", {5, 4}, 0);
  b.initializer("fc.b", {5}, 0);
  if (shared_gradient) {
    b.initializer("shift.p", {5}, 0);
    b.initializer("shift.q", {5}, 0);
  }
  Rng rng(21);
  for (auto& t : *b.graph().mutable_initializer()) {
    std::string raw(t.raw_data().size(), '\0');
    auto* f = reinterpret_cast<float*>(raw.data());
    for (size_t i = 0; i < raw.size() / 4; ++i) f[i] = static_cast<float>(rng.uniform() - 0.5);
    t.set_raw_data(raw);
  }
  auto& c1 = b.node("Conv", {"input", "c1.w", "c1.b"}, {"a"}, "c1");
  test::set_ints(c1, "pads", {1, 1, 1, 1});
  b.node("Relu", {"a"}, {"ra"}, "r1");
  auto& c2 = b.node("Conv", {"ra", "c2.w", "c2.b"}, {"c"}, "c2");
  test::set_ints(c2, "strides", {2, 2});
  b.node("Relu", {"c"}, {"rc"}, "r2");
  b.node("GlobalAveragePool", {"rc"}, {"p"}, "pool");
  b.node("Flatten", {"p"}, {"f"}, "flatten");
  auto& fc = b.node("Gemm", {"f", "fc.w", "fc.b"}, {shared_gradient ? "z" : "y"}, "fc");
  test::set_int(fc, "transB", 1);
  if (shared_gradient) {
    b.node("Add", {"shift.p", "shift.q"}, {"pq"}, "p_plus_q");
    b.node("Add", {"z", "pq"}, {"y"}, "shift");
  }
  b.output("y");
  std::string path = test::temp_dir() + "/no_bn.onnx";
  b.save(path);
  ImportOptions io;
  io.batch_size = batch;
  return import_onnx(path, io);
}

struct Batch {
  Tensor images, labels;
};

Batch global_batch(int64_t step, int64_t batch, int64_t size, int64_t classes) {
  Batch b{test::random_tensor(DType::f32, {batch, 3, size, size}, 500 + static_cast<uint64_t>(step)),
          Tensor(DType::i64, {batch})};
  for (int64_t i = 0; i < batch; ++i) b.labels.data<int64_t>()[i] = (i * 7 + step * 3) % classes;
  return b;
}

// Rows [rank * per, (rank + 1) * per) of a batch.
Batch shard(const Batch& b, int rank, int64_t per) {
  Batch s{Tensor(DType::f32, b.images.shape), Tensor(DType::i64, {per})};
  s.images.shape[0] = per;
  s.images.bytes.resize(b.images.bytes.size() / static_cast<size_t>(b.images.shape[0]) * static_cast<size_t>(per));
  std::memcpy(s.images.bytes.data(), b.images.bytes.data() + rank * s.images.bytes.size(), s.images.bytes.size());
  std::memcpy(s.labels.bytes.data(), b.labels.bytes.data() + rank * s.labels.bytes.size(), s.labels.bytes.size());
  return s;
}

using Weights = std::map<std::string, Tensor>;

// `steps` SGD steps of `make(batch)`'s training graph on `world` ranks, each with the
// global batch's rows of its rank; returns every rank's parameters and momentum buffers.
std::vector<Weights> train_ranks(const std::function<Graph(int64_t)>& make, int world, int64_t global, int64_t size,
                                 int64_t classes, int steps) {
  auto store = runtime::dist::make_memory_store(std::chrono::seconds(60));
  std::vector<Weights> out(static_cast<size_t>(world));
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        int64_t per = global / world;
        autodiff::TrainingOptions o;
        o.allreduce = world > 1;
        o.bucket_bytes = 2000;  // several buckets even for a small model
        o.last_bucket_bytes = 100;
        autodiff::TrainingGraph tg = autodiff::build_training_graph(make(per), o);
        runtime::dist::CommOptions co;
        co.rank = rank;
        co.world_size = world;
        co.interface_address = "127.0.0.1";
        co.timeout = std::chrono::seconds(60);
        auto comm = runtime::dist::make_gloo_communicator(*store, co);
        runtime::SessionOptions so;
        so.threads = 1;
        so.communicator = comm.get();
        for (const auto& [v, d] : tg.gradients) so.gradients.push_back(d);
        std::string input = tg.graph.inputs.at(0)->name;
        runtime::Session s(std::move(tg.graph), so);
        for (int step = 0; step < steps; ++step) {
          Batch b = shard(global_batch(step, global, size, classes), rank, per);
          s.feed(input, b.images);
          s.feed(tg.labels, b.labels);
          s.feed(tg.learning_rate, Tensor::from_float({0.1f}, {}));
          s.feed(tg.step, Tensor::from_int64({step}, {}));
          s.run();
        }
        for (const auto& [state, next] : s.graph().updates) out[static_cast<size_t>(rank)][state->name] = s.fetch(state->name);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int rank = 0; rank < world; ++rank) EXPECT_EQ(errors[static_cast<size_t>(rank)], "") << "rank " << rank;
  return out;
}

}  // namespace

// Without batch norm, N ranks with a share each of the batch compute the gradient of the
// combined batch (averaged), so their weights follow one process with the whole batch: within
// float32 rounding of summing in another order (1e-5 relative to each tensor's largest value),
// and bit for bit the same on every rank.
TEST(DataParallelGloo, RanksTrainLikeOneProcessWithTheCombinedBatch) {
  const int64_t global = 8, size = 8, classes = 5;
  auto model = [](int64_t batch) { return no_bn_model(batch); };
  std::vector<Weights> single = train_ranks(model, 1, global, size, classes, 3);
  for (int world : {2, 4}) {
    std::vector<Weights> ranks = train_ranks(model, world, global, size, classes, 3);
    ASSERT_EQ(ranks.size(), static_cast<size_t>(world));
    ASSERT_EQ(ranks[0].size(), single[0].size());
    for (const auto& [name, want] : single[0]) {
      EXPECT_LE(test::max_relative_difference(ranks[0].at(name), want), 1e-5) << name << " at world " << world;
      for (int r = 1; r < world; ++r)
        EXPECT_EQ(ranks[static_cast<size_t>(r)].at(name).bytes, ranks[0].at(name).bytes)
            << name << ": rank " << r << " differs from rank 0 at world " << world;
    }
  }
}

// Two parameters with one gradient value (Add(p, q) passes the same gradient to both): the
// value is reduced once, in one bucket, and both parameters' updates read the reduced value.
// Reduced twice, the sum of a sum would be world times too large.
TEST(DataParallelGloo, AGradientTwoParametersShareIsReducedOnce) {
  autodiff::TrainingOptions o;
  o.allreduce = true;
  o.bucket_bytes = 1;  // a bucket per gradient
  o.last_bucket_bytes = 0;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(no_bn_model(4, true), o);
  std::map<std::string, std::string> grad_of;
  for (const auto& [v, d] : tg.gradients) grad_of[v] = d;
  ASSERT_EQ(grad_of.at("shift.p"), grad_of.at("shift.q"));
  size_t reduced = 0;
  for (const auto& bucket : tg.buckets) {
    reduced += bucket.size();
    EXPECT_EQ(std::set<std::string>(bucket.begin(), bucket.end()).size(), bucket.size());
  }
  EXPECT_EQ(reduced, tg.gradients.size() - 1);  // p and q: one reduction
  EXPECT_EQ(std::count(tg.buckets.begin(), tg.buckets.end(), std::vector<std::string>{grad_of.at("shift.p")}), 1);

  auto model = [](int64_t batch) { return no_bn_model(batch, true); };
  const int64_t global = 8, size = 8, classes = 5;
  std::vector<Weights> single = train_ranks(model, 1, global, size, classes, 3);
  std::vector<Weights> ranks = train_ranks(model, 2, global, size, classes, 3);
  for (const auto& [name, want] : single[0])
    EXPECT_LE(test::max_relative_difference(ranks[0].at(name), want), 1e-5) << name;
}

// With batch norm each rank normalises its own share (as PyTorch DDP does without SyncBN), so
// the result is not the combined batch's; but the averaged gradients are the same on every
// rank, and so are the weights and momentum buffers, bit for bit.
TEST(DataParallelGloo, WithBatchNormEveryRankHasTheSameWeights) {
  auto resnet = [](int64_t batch) { return test::zoo_at_batch("resnet18", batch, 32, 10, 8); };
  std::vector<Weights> ranks = train_ranks(resnet, 2, 8, 32, 10, 2);
  size_t compared = 0;
  for (const auto& [name, tensor] : ranks[0]) {
    if (name.find("running_") != std::string::npos) continue;  // each rank's own batch statistics
    EXPECT_EQ(ranks[1].at(name).bytes, tensor.bytes) << name;
    ++compared;
  }
  EXPECT_EQ(compared, 2u * 62);  // resnet18's 62 parameters and their momentum buffers
}
