#include "tests/parity_helpers.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

namespace oxtrain::test::parity {

using namespace oxtrain::graph;
using nlohmann::json;
namespace fs = std::filesystem;

uint64_t bits(uint64_t stream, uint64_t i) {
  uint64_t z = ((stream << 40) + i + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// center + half * (2u - 1) with half a power of two: the product is exact, so numpy and C++
// round the sum the same way (fused or not), then once more to float.
void fill_uniform(float* out, int64_t n, uint64_t stream, double center, double half) {
  for (int64_t i = 0; i < n; ++i) {
    double u = static_cast<double>(bits(stream, static_cast<uint64_t>(i)) >> 11) * 0x1p-53;
    out[i] = static_cast<float>(center + half * (2.0 * u - 1.0));
  }
}

namespace {

int64_t numel_of(const json& shape) {
  int64_t n = 1;
  for (const auto& d : shape) n *= d.get<int64_t>();
  return n;
}

// Writes the model and its generated external weights into `dir` and imports them.
Graph load_model(const json& m, const std::string& src, const std::string& dir) {
  fs::copy_file(src + m["file"].get<std::string>(), dir + "/" + m["file"].get<std::string>());
  std::ofstream out(dir + "/" + m["weights_file"].get<std::string>(), std::ios::binary);
  std::vector<float> buf;
  int64_t offset = 0;
  for (const auto& init : m["initializers"]) {
    int64_t n = numel_of(init["shape"]);
    EXPECT_EQ(init["offset"].get<int64_t>(), offset) << init["name"];
    buf.resize(static_cast<size_t>(n));
    fill_uniform(buf.data(), n, init["stream"], init["center"], init["half"]);
    double sum = 0;
    for (float v : buf) sum += v;
    // The generator here reproduces the fixture's (numpy) one: same values, same sum.
    EXPECT_NEAR(sum, init["sum"].get<double>(), 1e-9 * std::max(1.0, std::fabs(sum)))
        << init["name"];
    out.write(reinterpret_cast<const char*>(buf.data()), n * 4);
    offset += n * 4;
  }
  EXPECT_EQ(offset, m["weights_bytes"].get<int64_t>());
  out.close();
  return import_onnx(dir + "/" + m["file"].get<std::string>());
}

Tensor input_batch(const json& m, DType dtype) {
  const json& in = m["input"];
  Shape shape;
  for (const auto& d : in["shape"]) shape.push_back(d.get<int64_t>());
  Tensor t(DType::f32, shape);
  fill_uniform(t.data<float>(), t.numel(), in["stream"], in["center"], in["half"]);
  if (dtype == DType::f32) return t;
  Tensor d(DType::f64, shape);
  for (int64_t i = 0; i < t.numel(); ++i) d.data<double>()[i] = t.data<float>()[i];
  return d;
}

// [norm, samples..., projections...] as scripts/make_parity_full_fixtures.py computes it.
std::vector<double> digest(const Tensor& t, const json& spec) {
  const int64_t n = t.numel(), k = spec["samples"], p = spec["projections"];
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = test::element(t, i);
  double norm = 0;
  for (double x : v) norm += x * x;
  std::vector<double> out{std::sqrt(norm)};
  if (n <= k) {
    out.insert(out.end(), v.begin(), v.end());
  } else {
    const uint64_t s = static_cast<uint64_t>(n / k);
    for (int64_t j = 0; j < k; ++j)
      out.push_back(v[static_cast<size_t>(j) * s + bits(spec["sample_stream"], j) % s]);
  }
  for (int64_t q = 0; q < p; ++q) {
    double acc = 0;
    const uint64_t stream = spec["projection_stream"].get<uint64_t>() + q;
    for (int64_t i = 0; i < n; ++i) acc += (bits(stream, i) >> 63) ? -v[i] : v[i];
    out.push_back(acc);
  }
  return out;
}

struct Worst {
  double value = 0;
  std::string tensor;
  void add(double v, const std::string& name) {
    if (!(v <= value)) value = std::isnan(v) ? INFINITY : v, tensor = name;
  }
};

// Compares the session's tensors (those `select` accepts) with one digest file; every
// difference is relative to the reference tensor's norm, or for a tensor the manifest's
// "scale_by" names (the momentum buffer of a bias whose gradient is mathematically zero, so
// that its norm is weight decay's alone and rounding noise dwarfs it) to the larger of its
// norm and its sibling's.
void compare_run(const runtime::Session& s, const json& m, const std::string& src,
                 const std::string& run, double tol, bool (*select)(const std::string&)) {
  const json& r = m["runs"][run];
  Tensor ref = read_tensor_file(src + r["file"].get<std::string>());
  const json scale_by = m.value("scale_by", json::object());
  Worst norm, sample, projection;
  int compared = 0;
  for (const auto& [name, offset] : r["offsets"].items()) {
    if (!select(name)) continue;
    std::vector<double> got = digest(s.fetch(name), m["digest"]);
    const double* want = ref.data<double>() + offset.get<int64_t>();
    double scale = std::max(want[0], 1e-30);
    if (scale_by.contains(name)) {
      const std::string sibling = scale_by[name];
      ASSERT_TRUE(r["offsets"].contains(sibling)) << run << ": " << name << " scaled by "
                                                  << sibling << ", which the run lacks";
      scale = std::max(scale, ref.data<double>()[r["offsets"][sibling].get<int64_t>()]);
    }
    norm.add(std::fabs(got[0] - want[0]) / scale, name);
    const size_t p = m["digest"]["projections"];
    for (size_t i = 1; i < got.size(); ++i)
      (i + p < got.size() ? sample : projection).add(std::fabs(got[i] - want[i]) / scale, name);
    ++compared;
  }
  EXPECT_LE(norm.value, tol) << run << ": norm of " << norm.tensor;
  EXPECT_LE(sample.value, tol) << run << ": sampled element of " << sample.tensor;
  EXPECT_LE(projection.value, tol) << run << ": projection of " << projection.tensor;
  EXPECT_GT(compared, 0) << run;
  std::printf(
      "%s: %d tensors, worst |d|/||ref||: norm %.2g (%s), samples %.2g (%s), "
      "projections %.2g (%s)\n",
      run.c_str(), compared, norm.value, norm.tensor.c_str(), sample.value,
      sample.tensor.c_str(), projection.value, projection.tensor.c_str());
}

bool any_tensor(const std::string&) { return true; }
bool running_stat(const std::string& n) {
  return n.ends_with("running_mean") || n.ends_with("running_var");
}

struct Trainer {
  autodiff::TrainingGraph tg;
  std::unique_ptr<runtime::Session> session;
};

// Builds the training graph, then the session: `stage` says which one threw.
Trainer make_trainer(Graph g, const json& m, DType dtype, std::string& stage) {
  if (dtype == DType::f64) convert_float_dtype(g, DType::f64);
  autodiff::TrainingOptions o;
  o.momentum = m["training"]["momentum"];
  o.weight_decay = m["training"]["weight_decay"];
  stage = "building the training graph (autodiff)";
  Trainer t{autodiff::build_training_graph(std::move(g), o), nullptr};
  runtime::SessionOptions so;
  for (const auto& [v, d] : t.tg.gradients) so.gradients.push_back(d);
  Graph graph = std::move(t.tg.graph);
  stage = "compiling the session (kernels, memory plan)";
  t.session = std::make_unique<runtime::Session>(std::move(graph), so);
  runtime::Session& s = *t.session;
  s.feed(t.tg.labels, Tensor::from_int64(m["labels"]["values"].get<std::vector<int64_t>>(),
                                         {static_cast<int64_t>(m["labels"]["values"].size())}));
  s.feed(t.tg.learning_rate, Tensor::from_float({m["training"]["lr"].get<float>()}, {}));
  s.feed("input", input_batch(m, dtype));
  return t;
}

double run_step(Trainer& t, int64_t k) {
  t.session->feed(t.tg.step, Tensor::from_int64({k}, {}));
  t.session->run();
  return test::element(t.session->fetch(t.tg.loss), 0);
}

}  // namespace

graph::Graph fixture_model(const std::string& dir) {
  const std::string src = dir + "/";
  json m = json::parse(std::ifstream(src + "manifest.json"));
  ScopedTempDir tmp;
  return load_model(m, src, tmp.path);
}

void check_model(const std::string& dir, const std::string& name) {
  const std::string src = dir + "/";
  ASSERT_TRUE(fs::exists(src + "manifest.json"))
      << name << ": no fixture " << src << "manifest.json (see its generator under scripts/)";
  json m = json::parse(std::ifstream(src + "manifest.json"));
  const json& tol = m["tolerance"];
  // A check at the float64 step-1 tolerance sees every tensor's update: each moved by far more.
  for (const auto& [tensor, moved] : m["step1_moved_l2rel"].items())
    EXPECT_GT(moved.get<double>(), 100 * tol["float64_step1"].get<double>()) << tensor;
  const std::string f32_check = m.value("float32_step1_check", std::string("running_stat"));
  ASSERT_TRUE(f32_check == "running_stat" || f32_check == "all" || f32_check == "loss")
      << name << ": float32_step1_check " << f32_check;

  ScopedTempDir tmp;
  std::string stage = "importing " + m["file"].get<std::string>();
  // Any exception ends the check with one failure naming the model and what it was doing.
  auto failed = [&](const std::exception& e) {
    ADD_FAILURE() << name << ": " << stage << " failed: " << e.what();
  };
  Graph g;
  try {
    g = load_model(m, src, tmp.path);
  } catch (const std::exception& e) {
    return failed(e);
  }
  fs::remove(tmp.path + "/" + m["weights_file"].get<std::string>());  // imported: not needed
  Graph g32 = copy_graph(g);
  {
    SCOPED_TRACE(name + " float64");
    try {
      stage = "float64";
      Trainer t = make_trainer(std::move(g), m, DType::f64, stage);
      const auto& want = m["losses"]["float64"];
      for (int64_t k = 0; k < 5; ++k) {
        stage = "float64 training step " + std::to_string(k + 1);
        const double got = run_step(t, k), w = want[k];
        const double rel = tol[k == 0 ? "float64_step1" : "float64_step5"];
        EXPECT_NEAR(got, w, rel * std::fabs(w)) << name << ": loss of step " << k + 1;
        std::printf("%s float64 step %lld loss %.12g (PyTorch %.12g)\n", name.c_str(),
                    static_cast<long long>(k + 1), got, w);
        if (k == 0 || k == 4) {
          const std::string run = k == 0 ? "float64_step1" : "float64_step5";
          compare_run(*t.session, m, src, run, tol[run], any_tensor);
        }
      }
    } catch (const std::exception& e) {
      return failed(e);
    }
  }
  {
    SCOPED_TRACE(name + " float32");
    try {
      stage = "float32";
      Trainer t = make_trainer(std::move(g32), m, DType::f32, stage);
      stage = "float32 training step 1";
      const double got = run_step(t, 0), w = m["losses"]["float32"][0];
      EXPECT_NEAR(got, w, tol["float32_step1"].get<double>() * std::fabs(w))
          << name << ": loss of step 1";
      std::printf("%s float32 step 1 loss %.7g (PyTorch %.7g)\n", name.c_str(), got, w);
      if (f32_check != "loss")
        compare_run(*t.session, m, src, "float32_step1", tol["float32_step1"],
                    f32_check == "all" ? any_tensor : running_stat);
    } catch (const std::exception& e) {
      return failed(e);
    }
  }
}

}  // namespace oxtrain::test::parity
