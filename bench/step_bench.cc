// Training-step throughput of oxtrain on the CPU for a zoo ResNet, on a fixed synthetic
// batch, as bench/torch_resnet.py measures PyTorch: SGD momentum 0.9, weight decay
// 1e-4, cross-entropy. Prints one JSON line with img_s and ms_step.
//
//   oxtrain_step_bench --arch resnet18 --image-size 112 --batch-size 32 --iters 10 --warmup 3
//
// --float64 runs the step in float64 (the precision of the full-size parity tests).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <algorithm>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "graph/zoo.h"
#include "runtime/session.h"

using namespace oxtrain;

namespace {

// Per op type (forward / backward / optimizer ops share the table) and the ten slowest nodes,
// in milliseconds per step.
void print_profile(const runtime::Session& session, int runs) {
  const auto& nodes = session.graph().nodes();
  const auto& seconds = session.node_seconds();
  std::map<std::string, std::pair<double, int>> by_op;
  double total = 0;
  std::vector<std::pair<double, size_t>> order;
  for (size_t i = 0; i < nodes.size(); ++i) {
    auto& e = by_op[nodes[i]->op_type];
    e.first += seconds[i];
    e.second += 1;
    total += seconds[i];
    order.push_back({seconds[i], i});
  }
  std::vector<std::pair<double, std::string>> ops;
  for (const auto& [op, e] : by_op) ops.push_back({e.first, op});
  std::sort(ops.rbegin(), ops.rend());
  std::fprintf(stderr, "%-26s %6s %10s %6s\n", "op", "nodes", "ms/step", "share");
  for (const auto& [s, op] : ops)
    std::fprintf(stderr, "%-26s %6d %10.2f %5.1f%%\n", op.c_str(), by_op[op].second,
                 1000 * s / runs, 100 * s / total);
  std::sort(order.rbegin(), order.rend());
  std::fprintf(stderr, "slowest nodes:\n");
  const size_t top = std::getenv("OXTRAIN_PROFILE_ALL") ? order.size() : 10;
  for (size_t k = 0; k < std::min<size_t>(top, order.size()); ++k) {
    const graph::Node* n = nodes[order[k].second].get();
    std::fprintf(stderr, "  %8.2f ms  %s\n", 1000 * order[k].first / runs, n->describe().c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string arch = "resnet50";
  int64_t image = 224, batch = 16, classes = 1000;
  int iters = 5, warmup = 2, threads = 0;
  bool float64 = false, profile = false;
  CLI::App app{"oxtrain training-step benchmark (CPU)"};
  app.add_option("--arch", arch);
  app.add_option("--image-size", image);
  app.add_option("--batch-size", batch);
  app.add_option("--num-classes", classes);
  app.add_option("--iters", iters);
  app.add_option("--warmup", warmup);
  app.add_option("--threads", threads);
  app.add_flag("--profile", profile, "print seconds per op type and the slowest nodes");
  app.add_flag("--float64", float64, "run the step in float64 (the reference precision)");
  CLI11_PARSE(app, argc, argv);
  try {
    graph::ZooOptions zo;
    zo.image_size = image;
    zo.num_classes = classes;
    graph::Graph g = graph::make_zoo_model(arch, zo);
    graph::ImportOptions io;
    io.batch_size = batch;
    graph::prepare(g, io);
    const graph::DType dt = float64 ? graph::DType::f64 : graph::DType::f32;
    if (float64) graph::convert_float_dtype(g, dt);
    autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g));
    runtime::SessionOptions so;
    so.threads = threads;
    so.profile = profile;
    for (const auto& [v, d] : tg.gradients) so.gradients.push_back(d);
    std::string input = tg.graph.inputs[0]->name;
    runtime::Session session(std::move(tg.graph), so);

    graph::Rng rng(0);
    graph::Tensor images(dt, {batch, 3, image, image});
    for (int64_t i = 0; i < images.numel(); ++i) {
      if (float64) images.data<double>()[i] = rng.normal();
      else images.data<float>()[i] = static_cast<float>(rng.normal());
    }
    std::vector<int64_t> labels(static_cast<size_t>(batch));
    for (auto& l : labels) l = static_cast<int64_t>(rng.next_u64() % static_cast<uint64_t>(classes));
    session.feed(input, images);
    session.feed(tg.labels, graph::Tensor::from_int64(labels, {batch}));
    session.feed(tg.learning_rate, graph::Tensor::from_float({0.1f}, {}));
    int64_t step = 0;
    auto one_step = [&] {
      session.feed(tg.step, graph::Tensor::from_int64({step++}, {}));
      session.run();
      const graph::Tensor& l = session.fetch(tg.loss);
      return float64 ? static_cast<float>(l.data<double>()[0]) : l.data<float>()[0];
    };
    for (int i = 0; i < warmup; ++i) one_step();
    auto start = std::chrono::steady_clock::now();
    float loss = 0;
    for (int i = 0; i < iters; ++i) loss = one_step();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "{\"framework\": \"oxtrain\", \"arch\": \"%s\", \"image_size\": %lld, \"batch\": %lld, "
        "\"dtype\": \"%s\", \"threads\": %d, \"img_s\": %.2f, \"ms_step\": %.1f, \"loss\": %.4f, "
        "\"activation_arena_mib\": %.1f}\n",
        arch.c_str(), static_cast<long long>(image), static_cast<long long>(batch),
        float64 ? "float64" : "float32", runtime::cpu_threads(), batch * iters / seconds,
        1000 * seconds / iters, loss,
        session.plan().activation_arena_bytes / 1048576.0);
    if (profile) print_profile(session, warmup + iters);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "oxtrain_step_bench: error: " << e.what() << "\n";
    return 2;
  }
}
