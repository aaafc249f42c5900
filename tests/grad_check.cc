// The gradient checker (see tests/grad_check.h).
#include "tests/grad_check.h"

#include <algorithm>
#include <cmath>

#include "autodiff/training.h"
#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "runtime/session.h"
#include "tests/kernel_helpers.h"

namespace oxtrain::test {

using namespace oxtrain::graph;

Tensor f64(Shape shape, uint64_t seed, double lo, double hi) {
  return test::random_tensor(DType::f64, std::move(shape), seed, lo, hi);
}

Tensor away_from_zero(Shape shape, uint64_t seed) {
  Tensor t = f64(std::move(shape), seed, 0.1, 1.0);
  Rng rng(seed + 99);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (rng.uniform() < 0.5) t.data<double>()[i] = -t.data<double>()[i];
  return t;
}

Tensor distinct(Shape shape, uint64_t seed) {
  Tensor t(DType::f64, std::move(shape));
  int64_t n = t.numel();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[rng.next_u64() % (i + 1)]);
  for (int64_t i = 0; i < n; ++i) t.data<double>()[i] = -1.0 + 2.0 * static_cast<double>(order[i]) / n;
  return t;
}

Tensor ints(std::vector<int64_t> v) {
  return Tensor::from_int64(v, {static_cast<int64_t>(v.size())});
}

namespace {

// "x3": built with += (GCC 12's -Wrestrict misfires on "x" + std::to_string(i)).
std::string numbered(const char* prefix, size_t i) {
  std::string s(prefix);
  s += std::to_string(i);
  return s;
}

struct Built {
  std::unique_ptr<runtime::Session> session;
  std::vector<std::string> grad_of;  // per input: gradient value name, or ""
};

Built build(const GradCase& c, const Tensor& r) {
  Graph g;
  g.opsets = {{"", c.opset}};
  if (!c.domain.empty()) g.opsets.push_back({c.domain, 1});
  std::vector<Value*> ins;
  std::vector<std::string> wrt;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const In& in = c.inputs[i];
    std::string name = numbered("x", i);
    if (in.value.dtype == DType::undefined) {
      ins.push_back(nullptr);
      continue;
    }
    Value* v;
    if (in.constant) {
      v = g.add_initializer(name, in.value, Role::Constant);
    } else {
      v = g.add_value(name, in.value.dtype, in.value.shape, Role::Input);
      v->rank_known = true;
      g.inputs.push_back(v);
    }
    ins.push_back(v);
    if (in.needs_grad) wrt.push_back(name);
  }
  std::vector<Value*> outs;
  for (size_t i = 0; i < c.outputs; ++i) outs.push_back(g.add_value(numbered("y", i)));
  Node* n = g.add_node(c.op, ins, outs, "op", c.domain);
  n->attrs = c.attrs;
  // L = mean(y0 * r) * count = sum(y0 * r); r and count are inputs so they are not trained.
  Value* rv = g.add_value("r", DType::f64, r.shape, Role::Input);
  rv->rank_known = true;
  Value* count = g.add_value("count", DType::f64, {}, Role::Input);
  count->rank_known = true;
  g.inputs.push_back(rv);
  g.inputs.push_back(count);
  Value* prod = g.add_value("prod");
  g.add_node("Mul", {outs[0], rv}, {prod}, "weigh");
  Value* mean = g.add_value("mean");
  Node* reduce = g.add_node("ReduceMean", {prod}, {mean}, "reduce");
  reduce->attrs["keepdims"].value = int64_t{0};
  Value* loss = g.add_value("L");
  g.add_node("Mul", {mean, count}, {loss}, "scale");
  g.outputs.push_back(loss);
  prepare(g);
  autodiff::TrainingOptions options;
  options.loss_output = "L";
  options.optimizer = false;
  options.wrt = wrt;
  options.expose_gradients = true;
  autodiff::TrainingGraph tg = autodiff::build_training_graph(std::move(g), options);
  Built b;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    std::string name = numbered("x", i), grad;
    for (const auto& [v, d] : tg.gradients)
      if (v == name) grad = d;
    b.grad_of.push_back(grad);
  }
  b.session = std::make_unique<runtime::Session>(std::move(tg.graph));
  return b;
}

void feed_all(runtime::Session& s, const GradCase& c, const std::vector<Tensor>& values,
              const Tensor& r) {
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (c.inputs[i].value.dtype != DType::undefined && !c.inputs[i].constant)
      s.feed(numbered("x", i), values[i]);
  s.feed("r", r);
  Tensor count(DType::f64, {});
  count.data<double>()[0] = static_cast<double>(std::max<int64_t>(r.numel(), 1));
  s.feed("count", count);
  // Random nodes (Dropout in training mode) read the training step: one fixed step, so the
  // mask is the same in every run of the checker.
  const Value* step = s.graph().find_value("step");
  if (step && std::find(s.graph().inputs.begin(), s.graph().inputs.end(), step) != s.graph().inputs.end())
    s.feed("step", Tensor::from_int64({3}, {}));
}

double loss_at(runtime::Session& s, const GradCase& c, const std::vector<Tensor>& values,
               const Tensor& r) {
  feed_all(s, c, values, r);
  s.run();
  return s.fetch("L").data<double>()[0];
}

// Analytic and numeric agree to 1e-6 relative (absolute below 1); NaN never agrees.
bool agree(double analytic, double numeric) {
  return std::isfinite(analytic) && std::isfinite(numeric) &&
         std::fabs(analytic - numeric) <= 1e-6 * std::max(1.0, std::fabs(numeric));
}

}  // namespace

std::vector<std::string> gradient_problems(const GradCase& c, double h) {
  std::vector<std::string> problems;
  // Output shape: build once with a placeholder r to learn it.
  Graph probe;
  probe.opsets = {{"", c.opset}};
  if (!c.domain.empty()) probe.opsets.push_back({c.domain, 1});
  std::vector<Value*> ins;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    const In& in = c.inputs[i];
    if (in.value.dtype == DType::undefined) {
      ins.push_back(nullptr);
      continue;
    }
    Value* v = in.constant ? probe.add_initializer(numbered("x", i), in.value, Role::Constant)
                           : probe.add_value(numbered("x", i), in.value.dtype, in.value.shape,
                                             Role::Input);
    v->rank_known = true;
    if (!in.constant) probe.inputs.push_back(v);
    ins.push_back(v);
  }
  std::vector<Value*> outs;
  for (size_t i = 0; i < c.outputs; ++i) outs.push_back(probe.add_value(numbered("y", i)));
  probe.add_node(c.op, ins, outs, "op", c.domain)->attrs = c.attrs;
  probe.outputs.push_back(outs[0]);
  prepare(probe);
  Tensor r = f64(outs[0]->shape, 7777);

  Built b = build(c, r);
  std::vector<Tensor> values;
  for (const In& in : c.inputs) values.push_back(in.value);
  feed_all(*b.session, c, values, r);
  b.session->run();
  int checked_inputs = 0;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (!c.inputs[i].needs_grad || c.inputs[i].value.dtype == DType::undefined) continue;
    if (b.grad_of[i].empty()) return {"no gradient for input " + std::to_string(i)};
    ++checked_inputs;
  }
  if (checked_inputs == 0) return {"no input needs a gradient"};
  std::vector<Tensor> analytic(c.inputs.size());
  for (size_t i = 0; i < c.inputs.size(); ++i)
    if (!b.grad_of[i].empty()) analytic[i] = b.session->fetch(b.grad_of[i]);

  Rng rng(123);
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    if (b.grad_of[i].empty()) continue;
    const Tensor& a = analytic[i];
    if (a.shape != c.inputs[i].value.shape) return {"gradient " + std::to_string(i) + " has the wrong shape"};
    int64_t n = a.numel();
    // A gradient that is zero everywhere would match a broken kernel that outputs zeros.
    double largest = 0;
    for (int64_t j = 0; j < n; ++j) largest = std::max(largest, std::fabs(a.data<double>()[j]));
    if (!(largest > 1e-3))
      problems.push_back("input " + std::to_string(i) + ": gradient is (almost) zero everywhere");
    // Every element of small tensors, a random sample of 48 of larger ones.
    std::vector<int64_t> picks;
    if (n <= 48)
      for (int64_t j = 0; j < n; ++j) picks.push_back(j);
    else
      for (int k = 0; k < 48; ++k) picks.push_back(static_cast<int64_t>(rng.next_u64() % n));
    for (int64_t j : picks) {
      std::vector<Tensor> plus = values, minus = values;
      double x = values[i].data<double>()[j];
      plus[i].data<double>()[j] = x + h;
      minus[i].data<double>()[j] = x - h;
      double numeric = (loss_at(*b.session, c, plus, r) - loss_at(*b.session, c, minus, r)) / (2 * h);
      double got = a.data<double>()[j];
      if (!agree(got, numeric))
        problems.push_back("input " + std::to_string(i) + " element " + std::to_string(j) +
                           ": analytic " + std::to_string(got) + ", numeric " + std::to_string(numeric));
    }
    // All elements at once: the derivative along a random direction.
    Tensor dir = f64(a.shape, 4242 + i);
    std::vector<Tensor> plus = values, minus = values;
    double dot = 0;
    for (int64_t j = 0; j < n; ++j) {
      plus[i].data<double>()[j] += h * dir.data<double>()[j];
      minus[i].data<double>()[j] -= h * dir.data<double>()[j];
      dot += a.data<double>()[j] * dir.data<double>()[j];
    }
    double numeric = (loss_at(*b.session, c, plus, r) - loss_at(*b.session, c, minus, r)) / (2 * h);
    if (!agree(dot, numeric))
      problems.push_back("input " + std::to_string(i) + " along a random direction: analytic " +
                         std::to_string(dot) + ", numeric " + std::to_string(numeric));
  }
  return problems;
}

void check_gradients(const GradCase& c, const std::string& label, double h) {
  SCOPED_TRACE(label);
  std::vector<std::string> problems = gradient_problems(c, h);
  std::string all;
  for (const auto& p : problems) all += "\n  " + p;
  EXPECT_TRUE(problems.empty()) << problems.size() << " gradient mismatches:" << all;
}

}  // namespace oxtrain::test
