// CPU batch normalisation kernels: inference and training forms against the formulas in
// double, the running statistics (unbiased variance, as PyTorch), in-place running stats,
// determinism, and BatchNormGrad as the derivative of BatchNormTraining.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "runtime/kernel.h"
#include "tests/kernel_helpers.h"

using namespace oxtrain;
using graph::Attribute;
using graph::DType;
using graph::Shape;
using graph::Tensor;
using test::close;
using test::element;
using test::kFloatTypes;
using test::tolerance;
using test::values;
using test::KernelCase;
using test::OutputSpec;
using test::random_tensor;

namespace {

struct Dims {
  int64_t n, c, s;  // batch, channels, spatial size
};

Dims dims_of(const Shape& x) {
  Dims d{x[0], x[1], 1};
  for (size_t i = 2; i < x.size(); ++i) d.s *= x[i];
  return d;
}

int64_t at(const Dims& d, int64_t n, int64_t c, int64_t i) { return (n * d.c + c) * d.s + i; }

// Batch statistics of channel c in double: mean and biased variance.
void channel_stats(const Tensor& x, const Dims& d, int64_t c, double* mean, double* var) {
  double s = 0, q = 0;
  const double m = static_cast<double>(d.n * d.s);
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.s; ++i) s += element(x, at(d, n, c, i));
  *mean = s / m;
  for (int64_t n = 0; n < d.n; ++n)
    for (int64_t i = 0; i < d.s; ++i) {
      double v = element(x, at(d, n, c, i)) - *mean;
      q += v * v;
    }
  *var = q / m;
}

struct TrainingInputs {
  Tensor x, scale, bias, mean, var;
};

TrainingInputs training_inputs(DType dt, const Shape& shape, uint64_t seed) {
  const int64_t c = shape[1];
  return {random_tensor(dt, shape, seed, -2, 3), random_tensor(dt, {c}, seed + 1, 0.5, 1.5),
          random_tensor(dt, {c}, seed + 2), random_tensor(dt, {c}, seed + 3),
          random_tensor(dt, {c}, seed + 4, 0.5, 2)};
}

std::vector<OutputSpec> training_outputs(DType dt, const Shape& shape, bool running = true,
                                         bool saved = true) {
  const Shape c{shape[1]};
  OutputSpec none{DType::undefined, {}};
  return {{dt, shape}, running ? OutputSpec{dt, c} : none, running ? OutputSpec{dt, c} : none,
          saved ? OutputSpec{dt, c} : none, saved ? OutputSpec{dt, c} : none};
}

KernelCase training_case(const TrainingInputs& in, DType dt, bool running = true,
                         bool saved = true) {
  return KernelCase("BatchNormTraining", "oxtrain", {in.x, in.scale, in.bias, in.mean, in.var},
                    training_outputs(dt, in.x.shape, running, saved));
}

}  // namespace

TEST(CpuNorm, InferenceMatchesFormula) {
  const Shape shapes[] = {{5, 7, 11, 13}, {6, 3}, {3, 1, 4}, {16, 32, 24, 24}};
  for (DType dt : kFloatTypes) {
    uint64_t seed = 1;
    for (const Shape& s : shapes) {
      for (float eps : {1e-5f, 1e-2f}) {
        TrainingInputs in = training_inputs(dt, s, seed);
        seed += 5;
        KernelCase kc("BatchNormalization", "", {in.x, in.scale, in.bias, in.mean, in.var},
                      {{dt, s}});
        if (eps != 1e-5f) kc.set_attr("epsilon", Attribute{eps});
        kc.run();
        Dims d = dims_of(s);
        std::vector<double> want(static_cast<size_t>(in.x.numel()));
        for (int64_t n = 0; n < d.n; ++n)
          for (int64_t c = 0; c < d.c; ++c)
            for (int64_t i = 0; i < d.s; ++i) {
              int64_t k = at(d, n, c, i);
              want[k] = (element(in.x, k) - element(in.mean, c)) /
                            std::sqrt(element(in.var, c) + static_cast<double>(eps)) *
                            element(in.scale, c) +
                        element(in.bias, c);
            }
        EXPECT_TRUE(close(kc.output(0), want, tolerance(dt)))
            << graph::shape_str(s) << " eps " << eps << " " << graph::dtype_name(dt);
      }
    }
  }
}

TEST(CpuNorm, InferenceRejectsTrainingMode) {
  TrainingInputs in = training_inputs(DType::f32, {2, 3, 4}, 1);
  std::vector<Tensor> ins{in.x, in.scale, in.bias, in.mean, in.var};
  for (bool by_outputs : {false, true}) {
    std::vector<OutputSpec> outs{{DType::f32, {2, 3, 4}}};
    if (by_outputs) {
      outs.push_back({DType::f32, {3}});
      outs.push_back({DType::f32, {3}});
    }
    KernelCase kc("BatchNormalization", "", ins, outs);
    if (!by_outputs) kc.set_attr("training_mode", Attribute{int64_t{1}});
    try {
      kc.run(15);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find("test_BatchNormalization"), std::string::npos) << msg;
      EXPECT_NE(msg.find("oxtrain.BatchNormTraining"), std::string::npos) << msg;
    }
  }
}

TEST(CpuNorm, TrainingMatchesHandFormulas) {
  struct Case {
    Shape shape;
    float momentum, eps;
  };
  const Case cases[] = {
      {{5, 7, 11, 13}, 0.9f, 1e-5f},
      {{3, 1, 4}, 0.7f, 1e-3f},
      {{6, 3}, 0.9f, 1e-5f},
      {{1, 4}, 0.9f, 1e-5f},  // one element per channel: the biased variance
      {{16, 32, 24, 24}, 0.1f, 1e-5f},
  };
  for (DType dt : kFloatTypes) {
    uint64_t seed = 100;
    for (const Case& cs : cases) {
      TrainingInputs in = training_inputs(dt, cs.shape, seed);
      seed += 5;
      auto set_attrs = [&](KernelCase& k) {
        if (cs.momentum != 0.9f) k.set_attr("momentum", Attribute{cs.momentum});
        if (cs.eps != 1e-5f) k.set_attr("epsilon", Attribute{cs.eps});
      };
      KernelCase kc = training_case(in, dt);
      set_attrs(kc);
      kc.run();
      Dims d = dims_of(cs.shape);
      const double m = static_cast<double>(d.n * d.s), mom = cs.momentum, eps = cs.eps;
      std::vector<double> y(static_cast<size_t>(in.x.numel())), rm, rv, sm, sis;
      for (int64_t c = 0; c < d.c; ++c) {
        double mean, var;
        channel_stats(in.x, d, c, &mean, &var);
        const double inv_std = 1.0 / std::sqrt(var + eps);
        for (int64_t n = 0; n < d.n; ++n)
          for (int64_t i = 0; i < d.s; ++i) {
            int64_t k = at(d, n, c, i);
            y[k] = (element(in.x, k) - mean) * inv_std * element(in.scale, c) +
                   element(in.bias, c);
          }
        const double unbiased = m > 1 ? var * m / (m - 1) : var;
        rm.push_back(mom * element(in.mean, c) + (1 - mom) * mean);
        rv.push_back(mom * element(in.var, c) + (1 - mom) * unbiased);
        sm.push_back(mean);
        sis.push_back(inv_std);
      }
      const double tol = dt == DType::f32 ? 2e-5 : 1e-11;
      const std::string what = graph::shape_str(cs.shape) + " " + graph::dtype_name(dt);
      EXPECT_TRUE(close(kc.output(0), y, tol)) << "Y " << what;
      EXPECT_TRUE(close(kc.output(1), rm, tol)) << "running mean " << what;
      EXPECT_TRUE(close(kc.output(2), rv, tol)) << "running var " << what;
      EXPECT_TRUE(close(kc.output(3), sm, tol)) << "saved mean " << what;
      EXPECT_TRUE(close(kc.output(4), sis, tol)) << "saved inv std " << what;

      // Optional outputs may be absent; what is present is unchanged.
      KernelCase y_only = training_case(in, dt, false, false);
      set_attrs(y_only);
      y_only.run();
      EXPECT_EQ(y_only.output(0).bytes, kc.output(0).bytes) << what;
      KernelCase running_only = training_case(in, dt, true, false);
      set_attrs(running_only);
      running_only.run();
      EXPECT_EQ(running_only.output(1).bytes, kc.output(1).bytes) << what;
      EXPECT_EQ(running_only.output(2).bytes, kc.output(2).bytes) << what;

      // ONNX's running variance (unbiased_running_var=0, `oxtrain run`): the population one.
      KernelCase population = training_case(in, dt);
      set_attrs(population);
      population.set_attr("unbiased_running_var", Attribute{int64_t{0}});
      population.run();
      std::vector<double> rv_population;
      for (int64_t c = 0; c < d.c; ++c) {
        double mean, var;
        channel_stats(in.x, d, c, &mean, &var);
        rv_population.push_back(mom * element(in.var, c) + (1 - mom) * var);
      }
      EXPECT_TRUE(close(population.output(2), rv_population, tol)) << "population running var " << what;
      EXPECT_EQ(population.output(0).bytes, kc.output(0).bytes) << what;
      EXPECT_EQ(population.output(1).bytes, kc.output(1).bytes) << what;
    }
  }
}

TEST(CpuNorm, TrainingRunningStatsInPlace) {
  using namespace runtime;
  for (DType dt : kFloatTypes) {
    TrainingInputs in = training_inputs(dt, {5, 7, 11, 13}, 7);
    KernelCase ref = training_case(in, dt);
    ref.run();
    KernelCase kc = training_case(in, dt);
    const KernelFactory* f = KernelRegistry::global().find("oxtrain", "BatchNormTraining", Device::cpu);
    ASSERT_NE(f, nullptr);
    auto kernel = (*f)(KernelInit{kc.node(), 17, Device::cpu});
    KernelArgs args;
    for (size_t i = 0; i < 5; ++i)
      args.inputs.push_back(TensorView{kc.input(i).bytes.data(), dt, kc.input(i).shape});
    for (size_t o = 0; o < 5; ++o) {
      // Running mean and var written over their inputs.
      Tensor& t = o == 1 ? kc.input(3) : o == 2 ? kc.input(4) : kc.output(o);
      args.outputs.push_back(TensorView{t.bytes.data(), dt, t.shape});
    }
    kernel->run(args);
    EXPECT_EQ(kc.input(3).bytes, ref.output(1).bytes);
    EXPECT_EQ(kc.input(4).bytes, ref.output(2).bytes);
    EXPECT_EQ(kc.output(0).bytes, ref.output(0).bytes);
  }
}

TEST(CpuNorm, TrainingIsDeterministic) {
  for (DType dt : kFloatTypes) {
    TrainingInputs in = training_inputs(dt, {8, 16, 32, 32}, 11);
    KernelCase a = training_case(in, dt);
    KernelCase b = training_case(in, dt);
    a.run();
    b.run();
    for (size_t o = 0; o < 5; ++o) {
      ASSERT_EQ(a.output(o).bytes.size(), b.output(o).bytes.size());
      EXPECT_EQ(std::memcmp(a.output(o).bytes.data(), b.output(o).bytes.data(),
                            a.output(o).bytes.size()),
                0)
          << "output " << o;
    }
    // Whatever the thread count.
    for (int threads : {1, 3}) {
      runtime::set_cpu_threads(threads);
      KernelCase c = training_case(in, dt);
      c.run();
      for (size_t o = 0; o < 5; ++o)
        EXPECT_EQ(std::memcmp(a.output(o).bytes.data(), c.output(o).bytes.data(),
                              a.output(o).bytes.size()),
                  0)
            << "output " << o << " with " << threads << " threads";
    }
    runtime::set_cpu_threads(0);
  }
}

namespace {

// L = sum(Y * dY) of BatchNormTraining's Y.
double loss(const TrainingInputs& in, const Tensor& dy) {
  KernelCase kc = training_case(in, DType::f64, false, false);
  kc.run();
  double s = 0;
  for (int64_t i = 0; i < dy.numel(); ++i) s += element(kc.output(0), i) * element(dy, i);
  return s;
}

// Central difference of loss() along element i of tensor t.
double central_difference(TrainingInputs in, Tensor TrainingInputs::*t, int64_t i,
                          const Tensor& dy) {
  const double h = 1e-5;
  double v = element(in.*t, i);
  test::set_element(in.*t, i, v + h);
  double up = loss(in, dy);
  test::set_element(in.*t, i, v - h);
  double down = loss(in, dy);
  return (up - down) / (2 * h);
}

KernelCase grad_case(const TrainingInputs& in, KernelCase& fwd, const Tensor& dy, DType dt,
                     bool dx, bool dparams) {
  const Shape c{in.x.shape[1]};
  OutputSpec none{DType::undefined, {}};
  return KernelCase("BatchNormGrad", "oxtrain",
                    {dy, in.x, in.scale, fwd.output(3), fwd.output(4)},
                    {dx ? OutputSpec{dt, in.x.shape} : none, dparams ? OutputSpec{dt, c} : none,
                     dparams ? OutputSpec{dt, c} : none});
}

Tensor to_f32(const Tensor& t) {
  Tensor out(DType::f32, t.shape);
  for (int64_t i = 0; i < t.numel(); ++i) test::set_element(out, i, element(t, i));
  return out;
}

}  // namespace

TEST(CpuNorm, GradIsTheDerivativeOfTraining) {
  for (const Shape& s : {Shape{3, 4, 5, 2}, Shape{5, 3}, Shape{2, 1, 7}}) {
    TrainingInputs in = training_inputs(DType::f64, s, 21);
    Tensor dy = random_tensor(DType::f64, s, 27);
    KernelCase fwd = training_case(in, DType::f64);
    fwd.run();
    KernelCase grad = grad_case(in, fwd, dy, DType::f64, true, true);
    grad.run();
    std::vector<double> dx, dscale, dbias;
    for (int64_t i = 0; i < in.x.numel(); ++i)
      dx.push_back(central_difference(in, &TrainingInputs::x, i, dy));
    for (int64_t c = 0; c < s[1]; ++c) {
      dscale.push_back(central_difference(in, &TrainingInputs::scale, c, dy));
      dbias.push_back(central_difference(in, &TrainingInputs::bias, c, dy));
    }
    EXPECT_TRUE(close(grad.output(0), dx, 1e-6)) << "dX " << graph::shape_str(s);
    EXPECT_TRUE(close(grad.output(1), dscale, 1e-6)) << "dScale " << graph::shape_str(s);
    EXPECT_TRUE(close(grad.output(2), dbias, 1e-6)) << "dBias " << graph::shape_str(s);

    // Absent outputs: the others unchanged.
    KernelCase only_dx = grad_case(in, fwd, dy, DType::f64, true, false);
    only_dx.run();
    EXPECT_EQ(only_dx.output(0).bytes, grad.output(0).bytes);
    KernelCase only_params = grad_case(in, fwd, dy, DType::f64, false, true);
    only_params.run();
    EXPECT_EQ(only_params.output(1).bytes, grad.output(1).bytes);
    EXPECT_EQ(only_params.output(2).bytes, grad.output(2).bytes);

    // float32 agrees with float64.
    TrainingInputs in32{to_f32(in.x), to_f32(in.scale), to_f32(in.bias), to_f32(in.mean),
                        to_f32(in.var)};
    Tensor dy32 = to_f32(dy);
    KernelCase fwd32 = training_case(in32, DType::f32);
    fwd32.run();
    KernelCase grad32 = grad_case(in32, fwd32, dy32, DType::f32, true, true);
    grad32.run();
    for (size_t o = 0; o < 3; ++o) {
      std::vector<double> want;
      for (int64_t i = 0; i < grad.output(o).numel(); ++i) want.push_back(element(grad.output(o), i));
      EXPECT_TRUE(close(grad32.output(o), want, 1e-4)) << "float32 output " << o;
    }
  }
}
