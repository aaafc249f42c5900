// CPU kernels of the random family (the design: autodiff/rules_random.cc; the generator:
// runtime/math/random.h, shared with runtime/cuda/random.cu):
//   Dropout (ONNX, any mode)    the identity, mask all true: inference, as in an evaluation
//                               graph (the training graph rewrites training-mode Dropout)
//   oxtrain.DropoutTraining     Y = X * (kept ? 1 / (1 - ratio) : 0), mask = kept
//   oxtrain.DropoutGrad         dX = dY * (mask ? 1 / (1 - ratio) : 0)            (writes, =)
//   oxtrain.RandomUniform/RandomNormal(step)           at the step read from the input
//   RandomUniform(Like), RandomNormal(Like) (ONNX)     at step 0, key from run seed 0: the
//                               same numbers every run (outside a training graph no step
//                               exists)
// Element i of every output depends only on (key, step, i): the loops hand whole generator
// blocks to threads, so results are the same bytes whatever the thread count. Element-wise
// kernels read element i before writing element i (Y may take X's buffer, dX dY's).
#include <algorithm>
#include <cstring>
#include <string>

#include "graph/random.h"
#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/kernels.h"
#include "runtime/math/random.h"
#include "runtime/node_values.h"

namespace oxtrain::runtime {
namespace {

using cpu::dispatch_float;
using cpu::parallel_chunks;

void require_step(const Node& n, size_t i) {
  const graph::Value& s = input_value(n, i);
  if (s.dtype != DType::i64 || s.numel() != 1)
    throw Error(n.describe() + ": the step input '" + s.name + "' must be an int64 scalar, got " +
                graph::dtype_name(s.dtype) + " " + s.shape_string());
}

void require_same_count(const Node& n, const graph::Value& a, const graph::Value& b) {
  if (a.numel() != b.numel())
    throw Error(n.describe() + ": '" + a.name + "' " + a.shape_string() + " and '" + b.name + "' " +
                b.shape_string() + " differ in element count");
}

// Calls f(begin_block, end_block) over the generator blocks of `count` elements, `per` to a
// block, spread over threads for large outputs.
template <typename F>
void for_blocks(int64_t count, int per, F&& f) {
  parallel_chunks((count + per - 1) / per, f);
}

// Fills y[0, count) with value(words, lane) at (key, step).
template <typename T, typename V>
void fill_random(T* y, int64_t count, uint64_t key, int64_t step, V value) {
  const int per = math::values_per_block<T>();
  for_blocks(count, per, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint32_t w[4];
      math::random_block(key, step, b, w);
      const int64_t first = b * per;
      for (int lane = 0; lane < per && first + lane < count; ++lane) y[first + lane] = value(w, lane);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Inference Dropout: a copy (any element type), the mask all true (bool, or the input's type
// before opset 10).

void fill_ones(const TensorView& m) {
  const int64_t count = m.numel();
  switch (m.dtype) {
    case DType::f32: std::fill(m.as<float>(), m.as<float>() + count, 1.0f); break;
    case DType::f64: std::fill(m.as<double>(), m.as<double>() + count, 1.0); break;
    default: std::memset(m.data, 1, m.bytes()); break;
  }
}

KernelFactory inference_dropout_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value* y = n.output(0);
    if (y && y->dtype != x.dtype)
      throw Error(n.describe() + ": output type " + graph::dtype_name(y->dtype) +
                  " differs from the input's " + graph::dtype_name(x.dtype));
    if (y) require_same_count(n, x, *y);
    if (const graph::Value* m = n.output(1)) {
      if (m->dtype != DType::boolean && m->dtype != DType::f32 && m->dtype != DType::f64)
        throw Error(n.describe() + ": the mask output is " + graph::dtype_name(m->dtype) +
                    "; the CPU kernel writes bool, float32 or float64 masks");
      require_same_count(n, x, *m);
    }
    return make_kernel([](const KernelArgs& a) {
      const TensorView& x = a.inputs[0];
      if (a.outputs[0].present() && a.outputs[0].data != x.data && x.bytes() > 0)
        std::memcpy(a.outputs[0].data, x.data, x.bytes());
      if (a.outputs.size() > 1 && a.outputs[1].present()) fill_ones(a.outputs[1]);
    });
  };
}

// ---------------------------------------------------------------------------------------
// Training Dropout and its gradient.

float ratio_of(const Node& n) {
  float ratio = n.attr_float("ratio", 0.5f);
  if (!(ratio >= 0 && ratio <= 1))
    throw Error(n.describe() + ": ratio " + std::to_string(ratio) + " is outside [0, 1]");
  return ratio;
}

uint64_t key_of(const Node& n) {
  if (!n.has_attr("key")) throw Error(n.describe() + ": attribute key is required");
  return static_cast<uint64_t>(n.attr_int("key", 0));
}

template <typename T>
void dropout_training(const T* x, T* y, uint8_t* mask, int64_t count, uint64_t key, int64_t step,
                      float ratio) {
  const T scale = static_cast<T>(math::dropout_scale(ratio));
  for_blocks(count, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      uint32_t w[4];
      math::random_block(key, step, b, w);
      const int64_t first = b * 4;
      for (int lane = 0; lane < 4 && first + lane < count; ++lane) {
        const bool keep = math::dropout_keep(w, lane, ratio);
        const int64_t i = first + lane;
        y[i] = math::dropout_apply(x[i], keep, scale);
        if (mask) mask[i] = keep;
      }
    }
  });
}

KernelFactory dropout_training_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& x = input_value(n, 0);
    const graph::Value& y = output_value(n, 0);
    require_step(n, 1);
    require_same_count(n, x, y);
    if (y.dtype != x.dtype)
      throw Error(n.describe() + ": output type " + graph::dtype_name(y.dtype) + " differs from the input's " +
                  graph::dtype_name(x.dtype));
    if (const graph::Value* m = n.output(1)) {
      if (m->dtype != DType::boolean) throw Error(n.describe() + ": the mask output must be bool");
      require_same_count(n, x, *m);
    }
    const float ratio = ratio_of(n);
    const uint64_t key = key_of(n);
    const std::string what = n.describe();
    return dispatch_float(x.dtype, what, [&](auto zero) {
      using T = decltype(zero);
      return make_kernel([ratio, key](const KernelArgs& a) {
        uint8_t* mask = a.outputs.size() > 1 && a.outputs[1].present() ? a.outputs[1].as<uint8_t>() : nullptr;
        dropout_training(a.inputs[0].as<T>(), a.outputs[0].as<T>(), mask, a.inputs[0].numel(), key,
                         *a.inputs[1].as<int64_t>(), ratio);
      });
    });
  };
}

KernelFactory dropout_grad_factory() {
  return [](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& dy = input_value(n, 0);
    const graph::Value& mask = input_value(n, 1);
    const graph::Value& dx = output_value(n, 0);
    if (mask.dtype != DType::boolean) throw Error(n.describe() + ": the mask input must be bool");
    require_same_count(n, dy, mask);
    require_same_count(n, dy, dx);
    const double scale = math::dropout_scale(ratio_of(n));
    return dispatch_float(dy.dtype, n.describe(), [&](auto zero) {
      using T = decltype(zero);
      return make_kernel([scale](const KernelArgs& a) {
        const T* g = a.inputs[0].as<T>();
        const uint8_t* m = a.inputs[1].as<uint8_t>();
        T* out = a.outputs[0].as<T>();
        const T s = static_cast<T>(scale);
        parallel_chunks(a.inputs[0].numel(), [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) out[i] = math::dropout_apply(g[i], m[i] != 0, s);
        });
      });
    });
  };
}

// ---------------------------------------------------------------------------------------
// RandomUniform / RandomNormal: the oxtrain forms read the step from input 0; the ONNX forms
// run at step 0.

KernelFactory random_factory(bool normal, bool training) {
  return [normal, training](const KernelInit& init) {
    const Node& n = init.node;
    const graph::Value& y = output_value(n, 0);
    if (training) require_step(n, 0);
    const uint64_t key = training ? key_of(n) : graph::random_node_key(0, n);
    const double a = normal ? n.attr_float("mean", 0.0f) : n.attr_float("low", 0.0f);
    const double b = normal ? n.attr_float("scale", 1.0f) : n.attr_float("high", 1.0f);
    return dispatch_float(y.dtype, n.describe(), [&](auto zero) {
      using T = decltype(zero);
      return make_kernel([normal, training, key, a, b](const KernelArgs& args) {
        const int64_t step = training ? *args.inputs[0].as<int64_t>() : 0;
        const T pa = static_cast<T>(a), pb = static_cast<T>(b);
        T* out = args.outputs[0].as<T>();
        const int64_t count = args.outputs[0].numel();
        if (normal)
          fill_random(out, count, key, step, [&](const uint32_t* w, int lane) { return math::normal_value(w, lane, pa, pb); });
        else
          fill_random(out, count, key, step, [&](const uint32_t* w, int lane) { return math::uniform_value(w, lane, pa, pb); });
      });
    });
  };
}

}  // namespace

void register_cpu_random_kernels(KernelRegistry& registry) {
  const Device cpu = Device::cpu;
  registry.add("", "Dropout", cpu, inference_dropout_factory());
  registry.add("oxtrain", "DropoutTraining", cpu, dropout_training_factory());
  registry.add("oxtrain", "DropoutGrad", cpu, dropout_grad_factory());
  registry.add("oxtrain", "RandomUniform", cpu, random_factory(false, true));
  registry.add("oxtrain", "RandomNormal", cpu, random_factory(true, true));
  registry.add("", "RandomUniform", cpu, random_factory(false, false));
  registry.add("", "RandomNormal", cpu, random_factory(true, false));
  registry.add("", "RandomUniformLike", cpu, random_factory(false, false));
  registry.add("", "RandomNormalLike", cpu, random_factory(true, false));
}

}  // namespace oxtrain::runtime
