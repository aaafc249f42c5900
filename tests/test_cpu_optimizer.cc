// CPU ai.onnx.preview.training.Momentum: three steps against a hand-written PyTorch SGD loop
// (momentum, weight decay, dampening 0, standard and Nesterov), in place and not, and the
// ONNX formula with beta != 1.
#include <gtest/gtest.h>

#include <cmath>
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

const char* kDomain = "ai.onnx.preview.training";

Tensor scalar(DType dt, double v) {
  Tensor t(dt, {});
  test::set_element(t, 0, v);
  return t;
}

struct Config {
  float alpha, beta, norm_coefficient;
  std::string mode;
};

// One Momentum step over tensors xs (grads gs, momenta vs). In place: the outputs are written
// over X and V (as the runtime may plan them); otherwise into fresh buffers, copied back.
void momentum_step(const Config& cfg, DType lr_type, double lr, int64_t t, std::vector<Tensor>& xs,
                   const std::vector<Tensor>& gs, std::vector<Tensor>& vs, bool in_place) {
  using namespace runtime;
  const size_t n = xs.size();
  std::vector<Tensor> ins{scalar(lr_type, lr), Tensor::from_int64({t}, {})};
  for (const Tensor& x : xs) ins.push_back(x);
  for (const Tensor& g : gs) ins.push_back(g);
  for (const Tensor& v : vs) ins.push_back(v);
  std::vector<OutputSpec> outs;
  for (int k = 0; k < 2; ++k)
    for (const Tensor& x : xs) outs.push_back({x.dtype, x.shape});
  KernelCase kc("Momentum", kDomain, ins, outs);
  kc.set_attr("alpha", Attribute{cfg.alpha});
  kc.set_attr("beta", Attribute{cfg.beta});
  kc.set_attr("norm_coefficient", Attribute{cfg.norm_coefficient});
  kc.set_attr("mode", Attribute{cfg.mode});
  if (!in_place) {
    kc.run();
    for (size_t i = 0; i < n; ++i) {
      xs[i] = kc.output(i);
      vs[i] = kc.output(n + i);
    }
    return;
  }
  const KernelFactory* f = KernelRegistry::global().find(kDomain, "Momentum", Device::cpu);
  ASSERT_NE(f, nullptr);
  auto kernel = (*f)(KernelInit{kc.node(), 1, Device::cpu});
  KernelArgs args;
  for (size_t i = 0; i < ins.size(); ++i) {
    Tensor& in = kc.input(i);
    args.inputs.push_back(TensorView{in.bytes.data(), in.dtype, in.shape});
  }
  for (size_t o = 0; o < 2 * n; ++o) {
    Tensor& target = kc.input(o < n ? 2 + o : 2 + 2 * n + (o - n));
    args.outputs.push_back(TensorView{target.bytes.data(), target.dtype, target.shape});
  }
  kernel->run(args);
  for (size_t i = 0; i < n; ++i) {
    xs[i] = kc.input(2 + i);
    vs[i] = kc.input(2 + 2 * n + i);
  }
}

}  // namespace

TEST(CpuOptimizer, MomentumIsPyTorchSgd) {
  const std::vector<Shape> shapes = {{5, 7, 3}, {11}, {64, 32, 3, 3}};
  const double lrs[] = {0.1, 0.05, 0.2};  // a schedule
  for (DType dt : {DType::f32, DType::f64}) {
    for (DType lr_type : {DType::f32, DType::f64}) {
      for (bool nesterov : {false, true}) {
        for (bool in_place : {false, true}) {
          const float momentum = 0.9f, weight_decay = 1e-2f;
          Config cfg{momentum, 1.0f, weight_decay, nesterov ? "nesterov" : "standard"};
          uint64_t seed = 1;
          std::vector<Tensor> xs, vs;
          for (const Shape& s : shapes) {
            xs.push_back(random_tensor(dt, s, seed++));
            vs.push_back(Tensor(dt, s));  // zeros
          }
          // PyTorch SGD, by hand, in double: p, and the momentum buffer (absent at first).
          std::vector<std::vector<double>> p, buf(shapes.size());
          for (const Tensor& x : xs) p.push_back(values(x));
          const double mom = momentum, wd = weight_decay;
          for (int step = 0; step < 3; ++step) {
            std::vector<Tensor> gs;
            for (const Shape& s : shapes) gs.push_back(random_tensor(dt, s, 100 + seed++));
            const double lr = lr_type == DType::f32 ? static_cast<double>(static_cast<float>(lrs[step]))
                                                    : lrs[step];
            for (size_t t = 0; t < shapes.size(); ++t) {
              std::vector<double> g = values(gs[t]);
              for (size_t i = 0; i < g.size(); ++i) {
                double d_p = g[i] + wd * p[t][i];
                if (step == 0) {
                  if (i == 0) buf[t].assign(g.size(), 0.0);
                  buf[t][i] = d_p;
                } else {
                  buf[t][i] = mom * buf[t][i] + d_p;
                }
                if (nesterov) d_p = d_p + mom * buf[t][i];
                else d_p = buf[t][i];
                p[t][i] -= lr * d_p;
              }
            }
            momentum_step(cfg, lr_type, lrs[step], step, xs, gs, vs, in_place);
          }
          const double tol = dt == DType::f32 ? 1e-5 : 1e-12;
          for (size_t t = 0; t < shapes.size(); ++t) {
            EXPECT_TRUE(close(xs[t], p[t], tol))
                << graph::shape_str(shapes[t]) << " " << graph::dtype_name(dt) << " lr "
                << graph::dtype_name(lr_type) << " nesterov " << nesterov << " in place "
                << in_place;
            EXPECT_TRUE(close(vs[t], buf[t], tol)) << "momentum buffer";
          }
        }
      }
    }
  }
}

TEST(CpuOptimizer, MomentumOnnxFormulaWithBeta) {
  // beta' = beta when T > 0, 1 on the first update (T = 0).
  for (DType dt : {DType::f32, DType::f64}) {
    for (const char* mode : {"standard", "nesterov"}) {
      for (int64_t t : {0, 5}) {
        Config cfg{0.8f, 0.5f, 0.25f, mode};
        std::vector<Tensor> xs{random_tensor(dt, {3, 1, 4}, 1)};
        std::vector<Tensor> gs{random_tensor(dt, {3, 1, 4}, 2)};
        std::vector<Tensor> vs{random_tensor(dt, {3, 1, 4}, 3)};
        std::vector<double> x = values(xs[0]), g = values(gs[0]), v = values(vs[0]);
        const double r = 0.125, a = cfg.alpha, b = t > 0 ? cfg.beta : 1.0,
                     nc = cfg.norm_coefficient;
        std::vector<double> want_x, want_v;
        for (size_t i = 0; i < x.size(); ++i) {
          double gp = nc * x[i] + g[i];
          double vn = a * v[i] + b * gp;
          want_v.push_back(vn);
          want_x.push_back(std::string(mode) == "standard" ? x[i] - r * vn
                                                           : x[i] - r * (gp + a * vn));
        }
        momentum_step(cfg, DType::f32, r, t, xs, gs, vs, true);
        const double tol = dt == DType::f32 ? 1e-6 : 1e-14;
        EXPECT_TRUE(close(xs[0], want_x, tol)) << mode << " T=" << t;
        EXPECT_TRUE(close(vs[0], want_v, tol)) << mode << " T=" << t;
      }
    }
  }
}

TEST(CpuOptimizer, MomentumRejectsBadConfigurations) {
  Tensor x = random_tensor(DType::f32, {3}, 1);
  Tensor r = scalar(DType::f32, 0.1), t = Tensor::from_int64({0}, {});
  {
    KernelCase kc("Momentum", kDomain, {r, t, x, x, x}, {{DType::f32, {3}}, {DType::f32, {3}}});
    kc.set_attr("alpha", Attribute{0.9f});
    kc.set_attr("beta", Attribute{1.0f});
    kc.set_attr("mode", Attribute{std::string("adam")});
    EXPECT_THROW(kc.run(), Error);
  }
  {
    KernelCase kc("Momentum", kDomain, {r, t, x, x}, {{DType::f32, {3}}, {DType::f32, {3}}});
    kc.set_attr("alpha", Attribute{0.9f});
    kc.set_attr("beta", Attribute{1.0f});
    EXPECT_THROW(kc.run(), Error);
  }
}
