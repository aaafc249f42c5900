#include "graph/ops.h"

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <map>
#include <numeric>
#include <sstream>

#include "base/checked.h"
#include "base/half.h"
#include "base/text.h"
#include "graph/inspect.h"
#include "graph/op_helpers.h"

namespace oxtrain::graph {
namespace detail {

// ---------------------------------------------------------------------------------------
// Small helpers shared by the rules below and the op families' files (graph/op_helpers.h).

// A double as a message shows it: "nan", "1e+30", "2.5".
std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

const Value& in(const Node& n, size_t i) {
  const Value* v = n.input(i);
  if (!v) throw Error(n.describe() + ": input " + std::to_string(i) + " is missing");
  return *v;
}

const Shape& in_shape(const Node& n, size_t i) {
  const Value& v = in(n, i);
  if (!v.rank_known || !shape_known(v.shape))
    throw Error(n.describe() + ": shape of input '" + v.name + "' is unknown " +
                v.shape_string() + "; give --batch-size for a symbolic batch dimension");
  return v.shape;
}

void set_out(Node& n, size_t i, DType dtype, Shape shape) {
  Value* v = n.output(i);
  if (!v) return;
  v->dtype = dtype;
  v->shape = std::move(shape);
  v->rank_known = true;
}

int64_t norm_axis(const Node& n, int64_t axis, int64_t rank, bool allow_end) {
  int64_t limit = allow_end ? rank + 1 : rank;
  if (axis < -limit || axis >= limit)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range for rank " +
                std::to_string(rank));
  return axis < 0 ? axis + limit : axis;
}

std::string join(const std::vector<int64_t>& v) { return shape_str(v); }

void require_rank(const Node& n, size_t i, size_t min_rank, const char* what) {
  const Shape& s = in_shape(n, i);
  if (s.size() < min_rank)
    throw Error(n.describe() + ": " + what + " '" + in(n, i).name + "' has shape " + join(s) +
                ", expected at least " + std::to_string(min_rank) + " dimensions");
}

void same_as_input(Node& n, const InferContext&) {
  const Value& x = in(n, 0);
  set_out(n, 0, x.dtype, in_shape(n, 0));
}

// ---------------------------------------------------------------------------------------
// Constant folding helpers: byte-level data movement, so folding works for any dtype.

// Folded outputs take their shape from the file but their bytes from nothing: refuse one over
// kMaxSynthesizedTensorBytes before allocating it.
void check_synthesized(const Node& n, DType dtype, const Shape& shape) {
  int64_t bytes = bytes_or_throw(shape, dtype_size(dtype), n.describe() + ": the folded output");
  if (bytes > kMaxSynthesizedTensorBytes)
    throw Error(n.describe() + ": the folded output " + dims_text(shape) + " of " + dtype_name(dtype) +
                " would take " + human_bytes(bytes) + ", more than the " +
                std::to_string(kMaxSynthesizedTensorBytes >> 30) +
                " GiB oxtrain builds from a shape in a file");
}

Tensor& out_data(Node& n, size_t i, DType dtype, Shape shape) {
  check_synthesized(n, dtype, shape);
  Value* v = n.output(i);
  v->data = std::make_shared<Tensor>(dtype, shape);
  v->dtype = dtype;
  v->shape = std::move(shape);
  v->rank_known = true;
  v->role = Role::Constant;
  return *v->data;
}

const Tensor& in_data(const Node& n, size_t i) {
  const Value& v = in(n, i);
  if (!v.data) throw Error(n.describe() + ": input '" + v.name + "' is not a constant");
  return *v.data;
}

std::vector<int64_t> strides_of(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int64_t i = static_cast<int64_t>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

template <typename F>
void elementwise_fold(Node& n, F op) {
  const Tensor& a = in_data(n, 0);
  const Tensor& b = in_data(n, 1);
  Shape out_shape = broadcast_shapes(n, a.shape, b.shape);
  auto index_of = [&](const Tensor& t, int64_t flat) {
    // Maps an output flat index to the (broadcast) input's flat index.
    auto ost = strides_of(out_shape);
    auto ist = strides_of(t.shape);
    int64_t offset = static_cast<int64_t>(out_shape.size() - t.shape.size());
    int64_t idx = 0;
    for (size_t d = 0; d < out_shape.size(); ++d) {
      int64_t coord = (flat / ost[d]) % out_shape[d];
      int64_t td = static_cast<int64_t>(d) - offset;
      if (td >= 0 && t.shape[td] != 1) idx += coord * ist[td];
    }
    return idx;
  };
  check_synthesized(n, DType::i64, out_shape);  // the integer path's buffer is int64
  int64_t count = shape_numel(out_shape);
  if (is_float(a.dtype)) {
    if (a.dtype != DType::f32 && a.dtype != DType::f64)
      throw Error(n.describe() + ": cannot fold " + dtype_name(a.dtype) + " arithmetic");
    Tensor& o = out_data(n, 0, a.dtype, out_shape);
    for (int64_t i = 0; i < count; ++i) {
      double x = a.dtype == DType::f32 ? a.data<float>()[index_of(a, i)]
                                       : a.data<double>()[index_of(a, i)];
      double y = b.dtype == DType::f32 ? b.data<float>()[index_of(b, i)]
                                       : b.data<double>()[index_of(b, i)];
      double r = op(x, y);
      if (a.dtype == DType::f32)
        o.data<float>()[i] = static_cast<float>(r);
      else
        o.data<double>()[i] = r;
    }
  } else {
    auto av = a.to_int64();
    auto bv = b.to_int64();
    std::vector<int64_t> r(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      double v = op(static_cast<double>(av[index_of(a, i)]), static_cast<double>(bv[index_of(b, i)]));
      auto as_int = double_to_int64(v);
      if (!as_int)
        throw Error(n.describe() + ": the folded integer result " + number_text(v) +
                    " is not a finite int64 (division by zero or overflow)");
      r[i] = *as_int;
    }
    Tensor& o = out_data(n, 0, DType::i64, out_shape);
    if (!o.bytes.empty()) std::memcpy(o.bytes.data(), r.data(), o.bytes.size());
    if (a.dtype != DType::i64) {
      // Keep the input's integer type.
      Tensor cast(a.dtype, out_shape);
      for (int64_t i = 0; i < count; ++i) {
        if (a.dtype == DType::i32) cast.data<int32_t>()[i] = static_cast<int32_t>(r[i]);
        else cast.bytes[i] = static_cast<uint8_t>(r[i]);
      }
      o = std::move(cast);
      n.output(0)->dtype = a.dtype;
    }
  }
}

// Gathers bytes of `src` (shape `s`) into a new tensor of `out_shape`, where `src_index` maps
// each output multi-index to a source flat index.
template <typename IndexFn>
void remap_fold(Node& n, const Tensor& src, const Shape& out_shape, IndexFn src_index) {
  Tensor& o = out_data(n, 0, src.dtype, out_shape);
  size_t es = dtype_size(src.dtype);
  int64_t count = shape_numel(out_shape);
  auto ost = strides_of(out_shape);
  std::vector<int64_t> coord(out_shape.size());
  for (int64_t i = 0; i < count; ++i) {
    for (size_t d = 0; d < out_shape.size(); ++d) coord[d] = (i / ost[d]) % out_shape[d];
    std::memcpy(o.bytes.data() + i * es, src.bytes.data() + src_index(coord) * es, es);
  }
}

void reshape_fold(Node& n) {
  const Tensor& src = in_data(n, 0);
  Tensor& o = out_data(n, 0, src.dtype, n.output(0)->shape);
  o.bytes = src.bytes;
}

// ---------------------------------------------------------------------------------------
// The rules.

void infer_conv(Node& n, const InferContext&) {
  require_rank(n, 0, 3, "input");
  const Shape& x = in_shape(n, 0);
  const Shape& w = in_shape(n, 1);
  if (w.size() != x.size())
    throw Error(n.describe() + ": input '" + in(n, 0).name + "' has shape " + join(x) +
                " but weight '" + in(n, 1).name + "' has shape " + join(w) +
                " (ranks must match)");
  int64_t group = n.attr_int("group", 1);
  auto expected = checked_mul(w[1], group);
  if (group < 1 || !expected)
    throw Error(n.describe() + ": group=" + std::to_string(group) + " is out of range for input " +
                join(x) + " and weight " + join(w) + " (it must be at least 1 and divide the channels)");
  if (x[1] != *expected)
    throw Error(n.describe() + ": input has " + std::to_string(x[1]) +
                " channels but weight expects " + std::to_string(*expected) +
                " (group=" + std::to_string(group) + "); input " + join(x) + ", weight " +
                join(w));
  if (w[0] % group != 0)
    throw Error(n.describe() + ": " + std::to_string(w[0]) +
                " output channels are not divisible by group=" + std::to_string(group));
  if (const Value* b = n.input(2)) {
    const Shape& bs = in_shape(n, 2);
    if (bs != Shape{w[0]})
      throw Error(n.describe() + ": bias '" + b->name + "' has shape " + join(bs) +
                  ", expected [" + std::to_string(w[0]) + "]");
  }
  std::vector<int64_t> kernel(w.begin() + 2, w.end());
  if (n.has_attr("kernel_shape") && n.attr_ints("kernel_shape") != kernel)
    throw Error(n.describe() + ": kernel_shape " + join(n.attr_ints("kernel_shape")) +
                " disagrees with weight shape " + join(w));
  WindowGeometry g = window_geometry(n, x, kernel, false);
  Shape out{x[0], w[0]};
  out.insert(out.end(), g.output.begin(), g.output.end());
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_pool(Node& n, const InferContext& ctx) {
  require_rank(n, 0, 3, "input");
  const Shape& x = in_shape(n, 0);
  if (!n.has_attr("kernel_shape"))
    throw Error(n.describe() + ": attribute kernel_shape is required");
  auto kernel = n.attr_ints("kernel_shape");
  if (kernel.size() + 2 != x.size())
    throw Error(n.describe() + ": kernel_shape " + join(kernel) + " does not fit input " +
                join(x));
  bool ceil_mode = ctx.opset >= 10 && n.attr_int("ceil_mode", 0) != 0;
  WindowGeometry g = window_geometry(n, x, kernel, ceil_mode);
  Shape out{x[0], x[1]};
  out.insert(out.end(), g.output.begin(), g.output.end());
  set_out(n, 0, in(n, 0).dtype, out);
  set_out(n, 1, DType::i64, out);  // MaxPool's optional Indices
}

void infer_global_pool(Node& n, const InferContext&) {
  require_rank(n, 0, 3, "input");
  Shape out = in_shape(n, 0);
  std::fill(out.begin() + 2, out.end(), 1);
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_batchnorm(Node& n, const InferContext& ctx) {
  require_rank(n, 0, 2, "input");
  const Shape& x = in_shape(n, 0);
  if (ctx.opset <= 8 && n.attr_int("spatial", 1) == 0)
    throw Error(n.describe() + ": spatial=0 (per-activation statistics) is not supported");
  const char* names[] = {"", "scale", "bias", "mean", "var"};
  for (size_t i = 1; i < 5; ++i) {
    const Shape& s = in_shape(n, i);
    if (s != Shape{x[1]})
      throw Error(n.describe() + ": " + names[i] + " '" + in(n, i).name + "' has shape " +
                  join(s) + " but the input " + join(x) + " has " + std::to_string(x[1]) +
                  " channels");
  }
  DType dt = in(n, 0).dtype;
  set_out(n, 0, dt, x);
  // Training mode: running mean/var (and, before opset 14, saved mean/var) per channel.
  for (size_t i = 1; i < n.outputs.size(); ++i) set_out(n, i, in(n, 1).dtype, Shape{x[1]});
}

void infer_dropout(Node& n, const InferContext& ctx) {
  same_as_input(n, ctx);
  set_out(n, 1, DType::boolean, in_shape(n, 0));
}

void infer_broadcast(Node& n, const InferContext&) {
  if (n.inputs.empty()) throw Error(n.describe() + ": needs at least one input");
  Shape s = in_shape(n, 0);
  DType dt = in(n, 0).dtype;
  for (size_t i = 1; i < n.inputs.size(); ++i) {
    if (in(n, i).dtype != dt)
      throw Error(n.describe() + ": inputs have different types (" + dtype_name(dt) + " and " +
                  dtype_name(in(n, i).dtype) + ")");
    s = broadcast_shapes(n, s, in_shape(n, i));
  }
  set_out(n, 0, dt, s);
}

void infer_flatten(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 0);
  // axis in [-r, r]; a negative one counts from the end (-1: all but the last dimension).
  const int64_t rank = static_cast<int64_t>(x.size());
  int64_t axis = n.attr_int("axis", 1);
  if (axis < -rank || axis > rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " is out of range [-" +
                std::to_string(rank) + ", " + std::to_string(rank) + "] for input " + join(x));
  if (axis < 0) axis += rank;
  const std::string what = n.describe() + ": input " + join(x);
  int64_t a = numel_or_throw(std::span(x).first(static_cast<size_t>(axis)), what);
  int64_t b = numel_or_throw(std::span(x).subspan(static_cast<size_t>(axis)), what);
  set_out(n, 0, in(n, 0).dtype, Shape{a, b});
}

void infer_reshape(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 0);
  std::vector<int64_t> target = constant_ints(n, 1);
  bool allow_zero = n.attr_int("allowzero", 0) != 0;
  Shape out(target.size());
  int64_t infer_at = -1, known = 1;
  for (size_t i = 0; i < target.size(); ++i) {
    int64_t d = target[i];
    if (d == 0 && !allow_zero) {
      if (i >= x.size())
        throw Error(n.describe() + ": shape " + join(target) + " copies dimension " +
                    std::to_string(i) + " of an input of shape " + join(x));
      d = x[i];
    }
    if (d == -1) {
      if (infer_at >= 0) throw Error(n.describe() + ": shape " + join(target) + " has two -1");
      infer_at = static_cast<int64_t>(i);
      continue;
    }
    if (d < 0) throw Error(n.describe() + ": invalid shape " + join(target));
    out[i] = d;
    auto product = checked_mul(known, d);
    if (!product)
      throw Error(n.describe() + ": target shape " + join(target) + ", whose element count overflows 64 bits");
    known = *product;
  }
  int64_t total = numel_or_throw(x, n.describe() + ": input");
  if (infer_at >= 0) {
    if (known == 0 || total % known != 0)
      throw Error(n.describe() + ": cannot reshape " + join(x) + " to " + join(target));
    out[infer_at] = total / known;
  } else if (known != total) {
    throw Error(n.describe() + ": cannot reshape " + join(x) + " (" + std::to_string(total) +
                " elements) to " + join(target) + " (" + std::to_string(known) + ")");
  }
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_gemm(Node& n, const InferContext&) {
  const Shape& a = in_shape(n, 0);
  const Shape& b = in_shape(n, 1);
  if (a.size() != 2 || b.size() != 2)
    throw Error(n.describe() + ": A " + join(a) + " and B " + join(b) + " must be matrices");
  bool ta = n.attr_int("transA", 0) != 0, tb = n.attr_int("transB", 0) != 0;
  int64_t m = ta ? a[1] : a[0], k = ta ? a[0] : a[1];
  int64_t kb = tb ? b[1] : b[0], nn = tb ? b[0] : b[1];
  if (k != kb)
    throw Error(n.describe() + ": A " + join(a) + (ta ? " (transposed)" : "") + " and B " +
                join(b) + (tb ? " (transposed)" : "") + " disagree on the inner dimension (" +
                std::to_string(k) + " vs " + std::to_string(kb) + ")");
  if (n.input(2)) {
    const Shape& c = in_shape(n, 2);
    Shape mn{m, nn};
    // C broadcasts unidirectionally to (M, N).
    bool ok = c.size() <= 2;
    for (size_t i = 0; ok && i < c.size(); ++i) {
      int64_t target = mn[2 - c.size() + i];
      ok = c[i] == 1 || c[i] == target;
    }
    if (!ok)
      throw Error(n.describe() + ": C " + join(c) + " does not broadcast to " + join(mn));
  }
  set_out(n, 0, in(n, 0).dtype, Shape{m, nn});
}

void infer_matmul(Node& n, const InferContext&) {
  Shape a = in_shape(n, 0), b = in_shape(n, 1);
  if (a.empty() || b.empty()) throw Error(n.describe() + ": inputs must not be scalars");
  bool a1 = a.size() == 1, b1 = b.size() == 1;
  if (a1) a.insert(a.begin(), 1);
  if (b1) b.push_back(1);
  if (a.back() != b[b.size() - 2])
    throw Error(n.describe() + ": shapes " + join(in_shape(n, 0)) + " and " +
                join(in_shape(n, 1)) + " disagree on the inner dimension");
  Shape batch = broadcast_shapes(n, Shape(a.begin(), a.end() - 2), Shape(b.begin(), b.end() - 2));
  Shape out = batch;
  if (!a1) out.push_back(a[a.size() - 2]);
  if (!b1) out.push_back(b.back());
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_reduce_mean(Node& n, const InferContext& ctx) {
  const Shape& x = in_shape(n, 0);
  auto axes = axes_of(n, ctx, 18);
  bool keep = n.attr_int("keepdims", 1) != 0;
  int64_t rank = static_cast<int64_t>(x.size());
  std::vector<bool> reduce(x.size(), false);
  if (axes.empty()) {
    if (n.attr_int("noop_with_empty_axes", 0) == 0) std::fill(reduce.begin(), reduce.end(), true);
  } else {
    for (int64_t a : axes) reduce[norm_axis(n, a, rank)] = true;
  }
  Shape out;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!reduce[i]) out.push_back(x[i]);
    else if (keep) out.push_back(1);
  }
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_softmax(Node& n, const InferContext& ctx) {
  const Shape& x = in_shape(n, 0);
  norm_axis(n, n.attr_int("axis", ctx.opset >= 13 ? -1 : 1), static_cast<int64_t>(x.size()));
  set_out(n, 0, in(n, 0).dtype, x);
}

void infer_sce_loss(Node& n, const InferContext&) {
  require_rank(n, 0, 2, "scores");
  const Shape& scores = in_shape(n, 0);
  const Shape& labels = in_shape(n, 1);
  Shape expected{scores[0]};
  expected.insert(expected.end(), scores.begin() + 2, scores.end());
  if (labels != expected)
    throw Error(n.describe() + ": labels '" + in(n, 1).name + "' have shape " + join(labels) +
                " but scores " + join(scores) + " need labels of shape " + join(expected));
  DType ldt = in(n, 1).dtype;
  if (ldt != DType::i64 && ldt != DType::i32)
    throw Error(n.describe() + ": labels must be int64 or int32, not " + dtype_name(ldt));
  if (const Value* w = n.input(2)) {
    if (in_shape(n, 2) != Shape{scores[1]})
      throw Error(n.describe() + ": weights '" + w->name + "' must have shape [" +
                  std::to_string(scores[1]) + "]");
  }
  std::string reduction = n.attr_string("reduction", "mean");
  if (reduction != "mean" && reduction != "sum" && reduction != "none")
    throw Error(n.describe() + ": unknown reduction '" + reduction + "'");
  DType dt = in(n, 0).dtype;
  set_out(n, 0, dt, reduction == "none" ? expected : Shape{});
  set_out(n, 1, dt, scores);
}

void infer_momentum(Node& n, const InferContext&) {
  const size_t lead = momentum_leading_inputs(n);
  if (n.inputs.size() < lead + 3 || (n.inputs.size() - lead) % 3 != 0)
    throw Error(n.describe() + ": expects " + (lead == 2 ? "R, T" : "R, T, found_inf, loss_scale") +
                ", then X..., G..., V... (3 groups of equal size)");
  size_t count = (n.inputs.size() - lead) / 3;
  if (n.outputs.size() != 2 * count)
    throw Error(n.describe() + ": expects " + std::to_string(2 * count) + " outputs");
  for (size_t i = 0; i < count; ++i) {
    const Shape& x = in_shape(n, lead + i);
    for (size_t g : {lead + count + i, lead + 2 * count + i})
      if (in_shape(n, g) != x)
        throw Error(n.describe() + ": '" + in(n, g).name + "' has shape " +
                    join(in_shape(n, g)) + " but '" + in(n, lead + i).name + "' has " + join(x));
    set_out(n, i, in(n, lead + i).dtype, x);
    set_out(n, count + i, in(n, lead + i).dtype, x);
  }
}

// ---- ops that only compute shapes: inferred by evaluating them (folding) ----

void fold_constant(Node& n, const InferContext&) {
  Value* out = n.output(0);
  if (const Tensor* t = n.attr_tensor("value")) {
    out_data(n, 0, t->dtype, t->shape) = *t;
  } else if (n.has_attr("value_float")) {
    out_data(n, 0, DType::f32, {}) = Tensor::from_float({n.attr_float("value_float", 0)}, {});
  } else if (n.has_attr("value_floats")) {
    auto it = n.attrs.find("value_floats");
    const auto& f = std::get<std::vector<float>>(it->second.value);
    out_data(n, 0, DType::f32, {}) = Tensor::from_float(f, {static_cast<int64_t>(f.size())});
  } else if (n.has_attr("value_int")) {
    out_data(n, 0, DType::i64, {}) = Tensor::from_int64({n.attr_int("value_int", 0)}, {});
  } else if (n.has_attr("value_ints")) {
    auto v = n.attr_ints("value_ints");
    out_data(n, 0, DType::i64, {}) = Tensor::from_int64(v, {static_cast<int64_t>(v.size())});
  } else {
    throw Error(n.describe() + ": needs one of the attributes value, value_float(s), value_int(s)");
  }
  out->shape = out->data->shape;
}

void fold_shape(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 0);
  int64_t rank = static_cast<int64_t>(x.size());
  int64_t start = n.attr_int("start", 0), end = n.attr_int("end", rank);
  if (start < 0) start += rank;
  if (end < 0) end += rank;
  start = std::clamp<int64_t>(start, 0, rank);
  end = std::clamp<int64_t>(end, start, rank);
  std::vector<int64_t> dims(x.begin() + start, x.begin() + end);
  const int64_t count = static_cast<int64_t>(dims.size());
  out_data(n, 0, DType::i64, {count}) = Tensor::from_int64(dims, {count});
}

void fold_gather(Node& n, const InferContext&) {
  const Tensor& data = in_data(n, 0);
  const Tensor& idx_t = in_data(n, 1);
  int64_t rank = static_cast<int64_t>(data.shape.size());
  int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
  auto idx = idx_t.to_int64();
  for (int64_t& i : idx) {
    if (i < -data.shape[axis] || i >= data.shape[axis])
      throw Error(n.describe() + ": index " + std::to_string(i) + " out of range for axis of size " +
                  std::to_string(data.shape[axis]));
    if (i < 0) i += data.shape[axis];
  }
  Shape out(data.shape.begin(), data.shape.begin() + axis);
  out.insert(out.end(), idx_t.shape.begin(), idx_t.shape.end());
  out.insert(out.end(), data.shape.begin() + axis + 1, data.shape.end());
  auto dst = strides_of(data.shape);
  auto ist = strides_of(idx_t.shape);
  size_t irank = idx_t.shape.size();
  remap_fold(n, data, out, [&](const std::vector<int64_t>& c) {
    int64_t flat = 0;
    for (int64_t d = 0; d < axis; ++d) flat += c[d] * dst[d];
    int64_t ipos = 0;
    for (size_t d = 0; d < irank; ++d) ipos += c[axis + d] * ist[d];
    flat += idx[ipos] * dst[axis];
    for (int64_t d = axis + 1; d < rank; ++d) flat += c[d - 1 + irank] * dst[d];
    return flat;
  });
}

void fold_unsqueeze(Node& n, const InferContext& ctx) {
  const Tensor& x = in_data(n, 0);
  auto axes = axes_of(n, ctx, 13);
  int64_t rank = static_cast<int64_t>(x.shape.size() + axes.size());
  std::vector<bool> inserted(rank, false);
  for (int64_t a : axes) inserted[norm_axis(n, a, rank)] = true;
  Shape out;
  size_t j = 0;
  for (int64_t i = 0; i < rank; ++i) out.push_back(inserted[i] ? 1 : x.shape.at(j++));
  n.output(0)->shape = out;
  reshape_fold(n);
}

void fold_squeeze(Node& n, const InferContext& ctx) {
  const Tensor& x = in_data(n, 0);
  auto axes = axes_of(n, ctx, 13);
  int64_t rank = static_cast<int64_t>(x.shape.size());
  std::vector<bool> removed(rank, false);
  for (int64_t a : axes) removed[norm_axis(n, a, rank)] = true;
  Shape out;
  for (int64_t i = 0; i < rank; ++i) {
    bool drop = axes.empty() ? x.shape[i] == 1 : removed[i];
    if (drop && x.shape[i] != 1)
      throw Error(n.describe() + ": cannot squeeze axis " + std::to_string(i) + " of size " +
                  std::to_string(x.shape[i]));
    if (!drop) out.push_back(x.shape[i]);
  }
  n.output(0)->shape = out;
  reshape_fold(n);
}

void fold_concat(Node& n, const InferContext&) {
  const Tensor& first = in_data(n, 0);
  int64_t rank = static_cast<int64_t>(first.shape.size());
  int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
  Shape out = first.shape;
  out[axis] = 0;
  std::vector<const Tensor*> parts;
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    const Tensor& t = in_data(n, i);
    if (t.dtype != first.dtype || t.shape.size() != first.shape.size())
      throw Error(n.describe() + ": inputs disagree in type or rank");
    for (int64_t d = 0; d < rank; ++d)
      if (d != axis && t.shape[d] != first.shape[d])
        throw Error(n.describe() + ": input shapes " + join(first.shape) + " and " +
                    join(t.shape) + " disagree outside axis " + std::to_string(axis));
    out[axis] += t.shape[axis];
    parts.push_back(&t);
  }
  // Copy part by part: outer = product of dims before axis, inner = elements after it.
  Tensor& o = out_data(n, 0, first.dtype, out);
  size_t es = dtype_size(first.dtype);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= out[d];
  for (int64_t d = axis + 1; d < rank; ++d) inner *= out[d];
  size_t row = static_cast<size_t>(out[axis] * inner) * es;
  size_t offset = 0;
  for (const Tensor* t : parts) {
    size_t chunk = static_cast<size_t>(t->shape[axis] * inner) * es;
    for (int64_t o_i = 0; chunk > 0 && o_i < outer; ++o_i)
      std::memcpy(o.bytes.data() + o_i * row + offset, t->bytes.data() + o_i * chunk, chunk);
    offset += chunk;
  }
}

namespace {

// The values an integer type holds that folding (in int64) can write: uint64 up to 2^63 - 1.
std::pair<int64_t, int64_t> integer_range(DType t) {
  switch (t) {
    case DType::i8: return {INT8_MIN, INT8_MAX};
    case DType::u8: return {0, UINT8_MAX};
    case DType::i16: return {INT16_MIN, INT16_MAX};
    case DType::u16: return {0, UINT16_MAX};
    case DType::i32: return {INT32_MIN, INT32_MAX};
    case DType::u32: return {0, UINT32_MAX};
    case DType::u64: return {0, INT64_MAX};
    default: return {INT64_MIN, INT64_MAX};
  }
}

// `v` rounded once to float16 or bfloat16 (round to nearest even), as numpy's astype from
// float64: the float32 in between is rounded to odd, so the second rounding sees whether the
// first was exact.
uint16_t double_to_half(double v, bool bf16) {
  float f = static_cast<float>(v);
  if (std::isfinite(f) && static_cast<double>(f) != v) {
    if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);  // toward zero
    f = bits_float(float_bits(f) | 1u);
  }
  return float_to_half(f, bf16);
}

}  // namespace

void fold_cast(Node& n, const InferContext&) {
  const Tensor& x = in_data(n, 0);
  int64_t to_onnx = n.attr_int("to", 0);
  DType to = dtype_from_onnx(static_cast<int>(to_onnx));
  if (to == DType::undefined)
    throw Error(n.describe() + ": cannot fold a cast to ONNX type " + std::to_string(to_onnx));
  Tensor& o = out_data(n, 0, to, x.shape);
  const bool saturate = n.attr_int("saturate", 1) != 0;
  const std::string round_mode = cast_round_mode(n);
  int64_t count = x.numel();
  for (int64_t i = 0; i < count; ++i) {
    double v;
    if (is_narrow(x.dtype)) {
      v = narrow_value(x.dtype, x.data<uint8_t>()[i]);
    } else switch (x.dtype) {
      case DType::f32: v = x.data<float>()[i]; break;
      case DType::f64: v = x.data<double>()[i]; break;
      case DType::i64: v = static_cast<double>(x.data<int64_t>()[i]); break;
      case DType::i32: v = x.data<int32_t>()[i]; break;
      case DType::i8: v = x.data<int8_t>()[i]; break;
      case DType::i16: v = x.data<int16_t>()[i]; break;
      case DType::u16: v = x.data<uint16_t>()[i]; break;
      case DType::u32: v = x.data<uint32_t>()[i]; break;
      case DType::u64: v = static_cast<double>(x.data<uint64_t>()[i]); break;
      case DType::f16:
      case DType::bf16: v = half_to_float(x.data<uint16_t>()[i], x.dtype == DType::bf16); break;
      case DType::u8:
      case DType::boolean: v = x.data<uint8_t>()[i]; break;
      default: throw Error(n.describe() + ": cannot fold a cast from " + dtype_name(x.dtype));
    }
    // A narrow type, as Cast's kernel converts (saturating, or to infinity, NaN or 0).
    if (is_narrow(to)) {
      o.data<uint8_t>()[i] = narrow_byte(to, v, saturate, round_mode);
      continue;
    }
    // To an integer type: a NaN, an infinity or a value out of the target's range has no
    // defined result (and a plain cast is undefined behaviour), so it is refused.
    std::optional<int64_t> as_int;
    if (to != DType::boolean && !is_float(to)) {
      // Integers exactly (beyond 2^53 too) from int64 and uint64 below 2^63.
      if (x.dtype == DType::i64) as_int = x.data<int64_t>()[i];
      else if (x.dtype == DType::u64 && x.data<uint64_t>()[i] <= static_cast<uint64_t>(INT64_MAX))
        as_int = static_cast<int64_t>(x.data<uint64_t>()[i]);
      else as_int = double_to_int64(v);
      const auto [lo, hi] = integer_range(to);
      if (!as_int || *as_int < lo || *as_int > hi)
        throw Error(n.describe() + ": cannot fold the value " + number_text(v) + " to " +
                    dtype_name(to) + " (not finite or out of its range)");
    }
    switch (to) {
      case DType::f32: o.data<float>()[i] = static_cast<float>(v); break;
      case DType::f64: o.data<double>()[i] = v; break;
      case DType::f16:
      case DType::bf16: o.data<uint16_t>()[i] = double_to_half(v, to == DType::bf16); break;
      case DType::i64: o.data<int64_t>()[i] = *as_int; break;  // exact beyond 2^53 from int64
      case DType::i32: o.data<int32_t>()[i] = static_cast<int32_t>(*as_int); break;
      case DType::i8: o.data<int8_t>()[i] = static_cast<int8_t>(*as_int); break;
      case DType::u8: o.data<uint8_t>()[i] = static_cast<uint8_t>(*as_int); break;
      case DType::i16: o.data<int16_t>()[i] = static_cast<int16_t>(*as_int); break;
      case DType::u16: o.data<uint16_t>()[i] = static_cast<uint16_t>(*as_int); break;
      case DType::u32: o.data<uint32_t>()[i] = static_cast<uint32_t>(*as_int); break;
      case DType::u64: o.data<uint64_t>()[i] = static_cast<uint64_t>(*as_int); break;
      case DType::boolean: o.data<uint8_t>()[i] = v != 0; break;
      default: break;
    }
  }
}

void fold_constant_of_shape(Node& n, const InferContext&) {
  auto dims = constant_ints(n, 0);
  const Tensor* value = n.attr_tensor("value");
  DType dt = value ? value->dtype : DType::f32;
  Tensor& o = out_data(n, 0, dt, dims);
  size_t es = dtype_size(dt);
  if (value && es > 0 && value->bytes.size() >= es)
    for (size_t i = 0; i < o.bytes.size(); i += es)
      std::memcpy(o.bytes.data() + i, value->bytes.data(), es);
}

void fold_expand(Node& n, const InferContext&) {
  const Tensor& x = in_data(n, 0);
  auto target = constant_ints(n, 1);
  Shape out = broadcast_shapes(n, x.shape, target);
  auto xst = strides_of(x.shape);
  size_t offset = out.size() - x.shape.size();
  remap_fold(n, x, out, [&](const std::vector<int64_t>& c) {
    int64_t flat = 0;
    for (size_t d = 0; d < x.shape.size(); ++d)
      if (x.shape[d] != 1) flat += c[d + offset] * xst[d];
    return flat;
  });
}

void fold_cast(Node& n, const InferContext& ctx);

void fold_cast_like(Node& n, const InferContext& ctx) {
  // Cast to the type of input 1: rewritten as a Cast so one evaluator serves both.
  Node as_cast = n;
  as_cast.attrs["to"].value = static_cast<int64_t>(dtype_to_onnx(in(n, 1).dtype));
  as_cast.inputs.resize(1);
  fold_cast(as_cast, ctx);
}

void fold_identity(Node& n, const InferContext&) {
  n.output(0)->shape = in_data(n, 0).shape;
  reshape_fold(n);
}

void fold_reshape(Node& n, const InferContext& ctx) {
  infer_reshape(n, ctx);
  reshape_fold(n);
}

void fold_flatten(Node& n, const InferContext& ctx) {
  infer_flatten(n, ctx);
  reshape_fold(n);
}

// Shape inference for the folding ops when their inputs are not constant (they then stay in
// the graph and need kernels later): only the ops that can be inferred without data.
void infer_shape_op(Node& n, const InferContext& ctx) { fold_shape(n, ctx); }

// Import reports these ops (OpSchema::constant_inputs_only) before reaching here; a graph
// built in code may still call it.
void infer_unfoldable(Node& n, const InferContext&) {
  throw Error(n.describe() + ": oxtrain supports " + escape_name(n.op_type) +
              " only on constant inputs (it folds it at import); here an input is computed at run time");
}

void infer_cast(Node& n, const InferContext&) {
  DType to = dtype_from_onnx(static_cast<int>(n.attr_int("to", 0)));
  if (to == DType::undefined)
    throw Error(n.describe() + ": unsupported target type " + std::to_string(n.attr_int("to", 0)));
  cast_round_mode(n);
  set_out(n, 0, to, in_shape(n, 0));
}

// ---- ops of the oxtrain domain that autodiff emits ----

// Output 0 takes its shape from an attribute (the forward input's shape) and input 0's type.
std::function<void(Node&, const InferContext&)> shape_from_attr(const char* attr) {
  return [attr](Node& n, const InferContext&) {
    if (!n.has_attr(attr)) throw Error(n.describe() + ": attribute " + attr + " is required");
    set_out(n, 0, in(n, 0).dtype, n.attr_ints(attr));
  };
}

void infer_batchnorm_training(Node& n, const InferContext& ctx) {
  infer_batchnorm(n, ctx);  // Y like X; every other output per channel
}

void infer_batchnorm_grad(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 1);
  if (in_shape(n, 0) != x)
    throw Error(n.describe() + ": dY " + join(in_shape(n, 0)) + " and X " + join(x) + " differ");
  set_out(n, 0, in(n, 0).dtype, x);
  set_out(n, 1, in(n, 2).dtype, Shape{x[1]});
  set_out(n, 2, in(n, 2).dtype, Shape{x[1]});
}

void infer_like_input1(Node& n, const InferContext&) {
  set_out(n, 0, in(n, 0).dtype, in_shape(n, 1));
}

void infer_transpose(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 0);
  std::vector<int64_t> perm = n.attr_ints("perm");
  if (perm.empty())
    for (int64_t i = static_cast<int64_t>(x.size()) - 1; i >= 0; --i) perm.push_back(i);
  if (perm.size() != x.size())
    throw Error(n.describe() + ": perm " + join(perm) + " does not fit input " + join(x));
  Shape out;
  std::vector<bool> seen(x.size(), false);
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(x.size()) || seen[p])
      throw Error(n.describe() + ": perm " + join(perm) + " is not a permutation");
    seen[p] = true;
    out.push_back(x[p]);
  }
  set_out(n, 0, in(n, 0).dtype, out);
}

// oxtrain.CastTranspose(X) -> Y = Transpose(Cast(X, to), perm), between float32, float16 and
// bfloat16: one pass where mixed precision and channels-last put a Cast and a Transpose in a
// row (a parameter's half filter made [K, R, S, C], its gradient made [K, C, R, S] float32;
// graph/passes.h fuse_cast_transpose).
void infer_cast_transpose(Node& n, const InferContext& ctx) {
  const DType to = dtype_from_onnx(static_cast<int>(n.attr_int("to", 0)));
  auto castable = [](DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16; };
  if (!castable(in(n, 0).dtype) || !castable(to))
    throw Error(n.describe() + ": converts between float32, float16 and bfloat16, not " + dtype_name(in(n, 0).dtype) +
                " to " + dtype_name(to));
  infer_transpose(n, ctx);
  set_out(n, 0, to, n.output(0)->shape);
}

void infer_reduce_sum_to(Node& n, const InferContext&) {
  Shape target = n.attr_ints("shape");
  const Shape& x = in_shape(n, 0);
  if (broadcast_shapes(n, x, target) != x)
    throw Error(n.describe() + ": " + join(x) + " does not reduce to " + join(target));
  set_out(n, 0, in(n, 0).dtype, target);
}

// AllReduce: output i is input i summed (averaged) over ranks, computed in input i's buffer.
OpFacts all_reduce_facts(const Node& n) {
  OpFacts f;
  for (size_t i = 0; i < n.inputs.size(); ++i) f.shares_input.push_back({i, i});
  return f;
}

void infer_all_reduce(Node& n, const InferContext&) {
  if (n.inputs.size() != n.outputs.size())
    throw Error(n.describe() + ": " + std::to_string(n.inputs.size()) + " inputs but " +
                std::to_string(n.outputs.size()) + " outputs; each input has its output");
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    if (in(n, i).dtype != DType::f32 && in(n, i).dtype != DType::f64)
      throw Error(n.describe() + ": input " + std::to_string(i) + " is " + dtype_name(in(n, i).dtype) +
                  "; AllReduce sums floating-point gradients");
    set_out(n, i, in(n, i).dtype, in_shape(n, i));
  }
}

// Sum: the output may take any input's buffer.
OpFacts sum_facts(const Node& n) {
  OpFacts f;
  for (size_t i = 0; i < n.inputs.size(); ++i) f.shares_input.push_back({0, i});
  return f;
}

// Momentum: R, T, X1..Xn, G1..Gn, V1..Vn -> X1_new..Xn_new, V1_new..Vn_new (ScaledMomentum
// has found_inf and loss_scale after T). The new values update X and V; the leading inputs and
// the gradients take no gradient; V is state.
OpFacts momentum_facts(const Node& n) {
  OpFacts f;
  const size_t lead = momentum_leading_inputs(n);
  size_t count = n.inputs.size() >= lead ? (n.inputs.size() - lead) / 3 : 0;
  for (size_t i = 0; i < lead; ++i) f.non_trainable.push_back(i);
  for (size_t k = 0; k < count; ++k) {
    f.non_trainable.push_back(lead + count + k);
    f.state.push_back(lead + 2 * count + k);
    f.updates_input.push_back({k, lead + k});
    f.updates_input.push_back({count + k, lead + 2 * count + k});
  }
  return f;
}

// oxtrain.BatchNormReluTraining(X, scale, B, running_mean, running_var[, R]) -> (Z, running
// mean, running var, saved mean, saved inverse std): Z = Relu(BatchNormTraining(X) + R), R of
// X's shape and type. The fusion of autodiff/fusion.h.
void infer_batchnorm_relu_training(Node& n, const InferContext& ctx) {
  infer_batchnorm(n, ctx);
  if (const Value* r = n.input(5); r && (r->dtype != in(n, 0).dtype || r->shape != in_shape(n, 0)))
    throw Error(n.describe() + ": the residual '" + r->name + "' is " + dtype_name(r->dtype) + " " + join(r->shape) +
                ", X is " + dtype_name(in(n, 0).dtype) + " " + join(in_shape(n, 0)));
}

// oxtrain.BatchNormApply(X, scale, B, mean, inv_std) -> Y = (X - mean) * inv_std * scale + B per
// channel: oxtrain.BatchNormTraining's output recomputed from its saved statistics, and
// oxtrain.BatchNormReluApply(X, scale, B, mean, inv_std[, R]) -> Z = Relu(Y + R), the fused
// node's output recomputed in backward (autodiff/fusion.h).
void infer_batchnorm_apply(Node& n, const InferContext& ctx) {
  if (n.outputs.size() != 1) throw Error(n.describe() + ": has one output");
  if (n.op_type == "BatchNormApply" && n.inputs.size() > 5) throw Error(n.describe() + ": has five inputs");
  infer_batchnorm_relu_training(n, ctx);
}

// oxtrain.NormalizeImages(pixels) -> images: uint8 [N, H, W, C] as the loader decodes them to
// [N, C, H, W] of type `to` (float32 unless it says float16 or bfloat16), y = (x / 255 -
// mean[c]) / std[c] (attributes mean and std, C floats each).
void infer_normalize_images(Node& n, const InferContext&) {
  require_rank(n, 0, 4, "pixels");
  const Shape& x = in_shape(n, 0);
  if (in(n, 0).dtype != DType::u8)
    throw Error(n.describe() + ": pixels '" + in(n, 0).name + "' must be uint8, got " + dtype_name(in(n, 0).dtype));
  for (const char* key : {"mean", "std"})
    if (static_cast<int64_t>(n.attr_floats(key).size()) != x[3])
      throw Error(n.describe() + ": " + key + " needs " + std::to_string(x[3]) + " values (the images' channels), got " +
                  std::to_string(n.attr_floats(key).size()));
  const DType to = dtype_from_onnx(static_cast<int>(n.attr_int("to", dtype_to_onnx(DType::f32))));
  if (to != DType::f32 && to != DType::f16 && to != DType::bf16)
    throw Error(n.describe() + ": to must be float32, float16 or bfloat16, got " + dtype_name(to));
  if (x.size() != 4) throw Error(n.describe() + ": pixels must be [N, H, W, C], got " + join(x));
  set_out(n, 0, to, Shape{x[0], x[3], x[1], x[2]});
}

// oxtrain.BatchNormReluGrad(dZ, Z, X, scale, saved_mean, saved_inv_std) -> (dX, dScale, dBias
// [, dR]): dS = ReluGrad(dZ, Z), then BatchNormGrad(dS, X, ...); dR = dS.
void infer_batchnorm_relu_grad(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 2);
  if (in_shape(n, 0) != x || in_shape(n, 1) != x)
    throw Error(n.describe() + ": dZ " + join(in_shape(n, 0)) + ", Z " + join(in_shape(n, 1)) + " and X " + join(x) +
                " differ");
  set_out(n, 0, in(n, 2).dtype, x);
  set_out(n, 1, in(n, 3).dtype, Shape{x[1]});
  set_out(n, 2, in(n, 3).dtype, Shape{x[1]});
  if (n.outputs.size() > 3) set_out(n, 3, in(n, 0).dtype, x);
}

// The convolution and batch-norm fusion (autodiff/fusion.h, fuse_conv_batchnorm):
// oxtrain.ConvStats(X, W[, scale, bias]) -> (Y, sum, sum_sq): Y = Conv(P(X), W) with Conv's
// attributes (no bias), P(X) = Relu(X * scale + bias) per input channel when scale and bias are
// given ([C] of X's type; both or neither), else X; sum and sum_sq the per-output-channel sums of
// Y and Y^2 over batch and positions, float32 [K] (float64 for a float64 X).
void infer_conv_stats(Node& n, const InferContext& ctx) {
  const Value* scale = n.input(2);
  const Value* bias = n.input(3);
  if (n.inputs.size() > 4 || (scale == nullptr) != (bias == nullptr))
    throw Error(n.describe() + ": takes X, W and optionally both scale and bias");
  // Conv's own rule on X and W alone (its input 2 would be a bias).
  std::vector<Value*> extra(n.inputs.begin() + std::min<size_t>(2, n.inputs.size()), n.inputs.end());
  n.inputs.resize(std::min<size_t>(2, n.inputs.size()));
  struct Restore {
    Node& n;
    std::vector<Value*>& extra;
    ~Restore() { n.inputs.insert(n.inputs.end(), extra.begin(), extra.end()); }
  } restore{n, extra};
  infer_conv(n, ctx);
  const Shape& x = in_shape(n, 0);
  for (const Value* v : {scale, bias})
    if (v && (v->dtype != in(n, 0).dtype || v->shape != Shape{x[1]}))
      throw Error(n.describe() + ": the prologue's '" + v->name + "' is " + dtype_name(v->dtype) + " " +
                  join(v->shape) + ", expected " + dtype_name(in(n, 0).dtype) + " [" + std::to_string(x[1]) + "]");
  const DType stats = in(n, 0).dtype == DType::f64 ? DType::f64 : DType::f32;
  const int64_t k = in_shape(n, 1)[0];
  set_out(n, 1, stats, Shape{k});
  set_out(n, 2, stats, Shape{k});
}

// oxtrain.BatchNormFinalize(sum, sum_sq, scale, B, running_mean, running_var) -> (running_mean
// next, running_var next, saved_mean, saved_inv_std[, apply_scale, apply_bias]): batch norm's
// statistics from oxtrain.ConvStats's sums over `count` elements per channel (attributes
// epsilon, momentum, unbiased_running_var as oxtrain.BatchNormTraining's), and the output's
// per-channel affine form Y = X * apply_scale + apply_bias, of type `to` (the activations').
void infer_batchnorm_finalize(Node& n, const InferContext&) {
  if (n.inputs.size() != 6) throw Error(n.describe() + ": takes sum, sum_sq, scale, B, running_mean, running_var");
  if (n.attr_int("count", 0) < 1) throw Error(n.describe() + ": attribute count (elements per channel) must be positive");
  const Shape& c = in_shape(n, 0);
  const DType t = in(n, 2).dtype;
  if (c.size() != 1) throw Error(n.describe() + ": sum '" + in(n, 0).name + "' must be [C], got " + join(c));
  for (size_t i = 1; i < 6; ++i)
    if (in_shape(n, i) != c || (i >= 2 && in(n, i).dtype != t))
      throw Error(n.describe() + ": input " + std::to_string(i) + " '" + in(n, i).name + "' is " +
                  dtype_name(in(n, i).dtype) + " " + join(in_shape(n, i)) + ", expected " + join(c) +
                  (i >= 2 ? std::string(" of ") + dtype_name(t) : std::string()));
  for (size_t i = 0; i < 4; ++i) set_out(n, i, t, c);
  const DType to = n.has_attr("to") ? dtype_from_onnx(static_cast<int>(n.attr_int("to", 0))) : t;
  if (to != DType::f32 && to != DType::f64 && to != DType::f16 && to != DType::bf16)
    throw Error(n.describe() + ": to must be a float type, got " + dtype_name(to));
  set_out(n, 4, to, c);
  set_out(n, 5, to, c);
}

// oxtrain.ConvGradFilterScaleBiasRelu(dY, X, scale, bias) -> dW: ConvGradFilter(dY, Relu(X *
// scale + bias)) (attributes as ConvGradFilter's), the filter gradient of an oxtrain.ConvStats
// with a prologue.
void infer_conv_grad_filter_sbr(Node& n, const InferContext& ctx) {
  if (n.inputs.size() != 4) throw Error(n.describe() + ": takes dY, X, scale and bias");
  const Shape& x = in_shape(n, 1);
  require_rank(n, 1, 3, "X");
  for (size_t i = 2; i < 4; ++i)
    if (in(n, i).dtype != in(n, 1).dtype || in_shape(n, i) != Shape{x[1]})
      throw Error(n.describe() + ": the prologue's '" + in(n, i).name + "' is " + dtype_name(in(n, i).dtype) + " " +
                  join(in_shape(n, i)) + ", expected " + dtype_name(in(n, 1).dtype) + " [" + std::to_string(x[1]) + "]");
  shape_from_attr("filter_shape")(n, ctx);
}

// oxtrain.ConvGradDataReluBatchNormWeight(dY, W, X, scale, B, saved_mean, saved_inv_std) ->
// (dS, dScale, dB): the data gradient of the convolution that read Relu(BN(X)), through the
// ReLU and into batch norm's weight gradients: dS = ConvGradData(dY, W) * (BN(X) > 0) with
// BN(X) = (X - mean) * inv_std * scale + B, dScale = sum(dS * xhat), dB = sum(dS) per channel.
// Attributes as ConvGradData's; dS is X's shape (input_shape) and dY's type.
void infer_conv_grad_data_relu_bn(Node& n, const InferContext& ctx) {
  if (n.inputs.size() != 7) throw Error(n.describe() + ": takes dY, W, X, scale, B, saved_mean, saved_inv_std");
  shape_from_attr("input_shape")(n, ctx);
  const Shape& x = in_shape(n, 2);
  if (x != n.attr_ints("input_shape") || in(n, 2).dtype != in(n, 0).dtype)
    throw Error(n.describe() + ": X '" + in(n, 2).name + "' is " + dtype_name(in(n, 2).dtype) + " " + join(x) +
                ", expected " + dtype_name(in(n, 0).dtype) + " " + join(n.attr_ints("input_shape")));
  const DType t = in(n, 3).dtype;
  for (size_t i = 3; i < 7; ++i)
    if (in(n, i).dtype != t || in_shape(n, i) != Shape{x[1]})
      throw Error(n.describe() + ": input " + std::to_string(i) + " '" + in(n, i).name + "' is " + dtype_name(in(n, i).dtype) +
                  " " + join(in_shape(n, i)) + ", expected " + dtype_name(t) + " [" + std::to_string(x[1]) + "]");
  set_out(n, 1, t, Shape{x[1]});
  set_out(n, 2, t, Shape{x[1]});
}

// oxtrain.BatchNormGradApply(dS, X, scale, saved_mean, saved_inv_std, dScale, dB) -> dX: batch
// norm's input gradient from its weight gradients (the sums BatchNormGrad computes itself).
void infer_batchnorm_grad_apply(Node& n, const InferContext&) {
  if (n.inputs.size() != 7) throw Error(n.describe() + ": takes dS, X, scale, saved_mean, saved_inv_std, dScale, dB");
  const Shape& x = in_shape(n, 1);
  if (in_shape(n, 0) != x || in(n, 0).dtype != in(n, 1).dtype)
    throw Error(n.describe() + ": dS and X must have one type and shape, got " + join(in_shape(n, 0)) + " and " + join(x));
  for (size_t i = 2; i < 7; ++i)
    if (in_shape(n, i) != Shape{x[1]} || in(n, i).dtype != in(n, 2).dtype)
      throw Error(n.describe() + ": input " + std::to_string(i) + " '" + in(n, i).name + "' must be " +
                  dtype_name(in(n, 2).dtype) + " [" + std::to_string(x[1]) + "]");
  set_out(n, 0, in(n, 1).dtype, x);
}

// oxtrain.NonFinite(G1..Gn) -> found_inf: float32 scalar, 1 when any element of any input is
// infinite or NaN, else 0.
void infer_non_finite(Node& n, const InferContext&) {
  if (n.inputs.empty()) throw Error(n.describe() + ": needs at least one input");
  for (size_t i = 0; i < n.inputs.size(); ++i)
    if (!n.inputs[i] || !is_float(in(n, i).dtype))
      throw Error(n.describe() + ": input " + std::to_string(i) + " must be a float tensor");
  set_out(n, 0, DType::f32, Shape{});
}

OpFacts non_finite_facts(const Node& n) {
  OpFacts f;
  for (size_t i = 0; i < n.inputs.size(); ++i) f.non_trainable.push_back(i);
  return f;
}

// oxtrain.LossScaleUpdate(scale, good_steps, found_inf) -> (scale_new, good_steps_new):
// float32, int64 and float32 scalars; attributes growth_factor, backoff_factor,
// growth_interval (runtime/math/optimizer.h has the rule).
void infer_loss_scale_update(Node& n, const InferContext&) {
  const DType want[] = {DType::f32, DType::i64, DType::f32};
  const char* names[] = {"scale", "good_steps", "found_inf"};
  if (n.inputs.size() != 3) throw Error(n.describe() + ": expects scale, good_steps, found_inf");
  for (size_t i = 0; i < 3; ++i)
    if (in(n, i).dtype != want[i] || shape_numel(in_shape(n, i)) != 1)
      throw Error(n.describe() + ": " + names[i] + " must be a " + dtype_name(want[i]) + " scalar, not " +
                  dtype_name(in(n, i).dtype) + " " + join(in_shape(n, i)));
  set_out(n, 0, DType::f32, in_shape(n, 0));
  set_out(n, 1, DType::i64, in_shape(n, 1));
}

// Mixed precision's op lists (HalfPolicy), in the spirit of PyTorch's autocast: matrix work in
// half, what is exact or cheap in any precision follows its input, the rest in float32.
void set_half_policies(std::vector<OpSchema>& r) {
  auto set = [&](const char* domain, std::initializer_list<const char*> ops, HalfPolicy policy) {
    for (const char* op : ops)
      for (OpSchema& s : r)
        if (s.domain == domain && s.op_type == op) s.half = policy;
  };
  set("", {"Conv", "Gemm", "MatMul"}, {HalfMode::compute});
  set("",
      {"Relu", "Add", "Sub", "Mul", "Div", "Sum", "Neg", "Abs", "Max", "Min", "Clip", "Sigmoid", "Tanh", "HardSigmoid",
       "HardSwish", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Identity", "Concat", "Transpose"},
      {HalfMode::follow});
  set("", {"Reshape", "Dropout", "Split", "Slice", "Squeeze", "Unsqueeze", "Expand", "Gather", "BatchNormalization"},
      {HalfMode::follow, {0}});
  set(kOxtrainDomain, {"BatchNormTraining", "DropoutTraining", "BatchNormApply"}, {HalfMode::follow, {0}});
  set(kOxtrainDomain, {"BatchNormReluTraining", "BatchNormReluApply"}, {HalfMode::follow, {0, 5}});
  set("", {"Where"}, {HalfMode::follow, {1, 2}});
}

// Which ops have a channels-last form (their activation slots), and which are agnostic.
void set_layouts(std::vector<OpSchema>& r) {
  auto set = [&](const char* domain, std::initializer_list<const char*> ops, LayoutSlots slots) {
    for (const char* op : ops)
      for (OpSchema& s : r)
        if (s.domain == domain && s.op_type == op) s.layout = slots;
  };
  // Convolutions' filters too: [K, C, R, S] as [K, R, S, C].
  set("", {"Conv"}, {{0, 1}, {0}});
  set(kOxtrainDomain, {"ConvGradData"}, {{0, 1}, {0}});
  set(kOxtrainDomain, {"ConvGradFilter"}, {{0, 1}, {0}});
  set(kOxtrainDomain, {"ConvStats"}, {{0, 1}, {0}});
  set(kOxtrainDomain, {"ConvGradFilterScaleBiasRelu"}, {{0, 1}, {0}});
  set(kOxtrainDomain, {"ConvGradDataReluBatchNormWeight"}, {{0, 1, 2}, {0}});
  set(kOxtrainDomain, {"BatchNormGradApply"}, {{0, 1}, {0}});
  set("", {"BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool"}, {{0}, {0}});
  set(kOxtrainDomain, {"BatchNormTraining", "BatchNormApply", "AveragePoolGrad", "GlobalAveragePoolGrad"}, {{0}, {0}});
  set(kOxtrainDomain, {"NormalizeImages"}, {{}, {0}});  // its pixels are always [N, H, W, C]
  set(kOxtrainDomain, {"BatchNormGrad", "MaxPoolGradFromInput"}, {{0, 1}, {0}});
  set(kOxtrainDomain, {"BatchNormReluTraining", "BatchNormReluApply"}, {{0, 5}, {0}});
  set(kOxtrainDomain, {"BatchNormReluGrad"}, {{0, 1, 2}, {0, 3}});
  set("", {"Relu", "Add", "Sum", "Cast", "Identity"}, {{}, {}, true});
  set(kOxtrainDomain, {"ReluGrad"}, {{}, {}, true});
  // Shape inference of a channels-last node: its activations seen channels-first by the
  // op's own rule, its outputs stored channels-last.
  for (OpSchema& s : r) {
    if (!s.layout.channels_last_form() || !s.infer) continue;
    s.infer = [infer = s.infer, slots = s.layout](Node& n, const InferContext& ctx) {
      if (!is_channels_last(n)) return infer(n, ctx);
      std::vector<std::pair<Value*, Shape>> restore;
      for (size_t i : slots.inputs)
        if (Value* v = n.input(i); v && v->shape.size() == 4) {
          restore.push_back({v, v->shape});
          v->shape = to_channels_first_shape(v->shape);
        }
      struct Restore {
        std::vector<std::pair<Value*, Shape>>& r;
        ~Restore() {
          for (auto& [v, shape] : r) v->shape = shape;
        }
      } guard{restore};
      infer(n, ctx);
      for (size_t i : slots.outputs)
        if (Value* v = n.output(i); v && v->shape.size() == 4) v->shape = to_channels_last_shape(v->shape);
    };
  }
}

std::vector<OpSchema>& registry() {
  static std::vector<OpSchema> ops = [] {
    using F = std::function<void(Node&, const InferContext&)>;
    auto fold_arith = [](double (*f)(double, double)) -> F {
      return [f](Node& n, const InferContext&) { elementwise_fold(n, f); };
    };
    std::vector<OpSchema> r = {
        {"", "Conv", infer_conv, nullptr},
        {"", "BatchNormalization", infer_batchnorm, nullptr, {}, false, {.state = {3, 4}}},
        {"", "Relu", same_as_input, nullptr, {}, false, {.shares_input = {{0, 0}}}},
        {"", "MaxPool", infer_pool, nullptr},
        {"", "AveragePool", infer_pool, nullptr},
        {"", "GlobalAveragePool", infer_global_pool, nullptr},
        {"", "ReduceMean", infer_reduce_mean, nullptr, {}, false, {.compile_time = {1}}},
        {"", "Add", infer_broadcast, fold_arith([](double a, double b) { return a + b; }), {}, false, {.shares_input = {{0, 0}, {0, 1}}}},
        {"", "Sub", infer_broadcast, fold_arith([](double a, double b) { return a - b; }), {}, false, {.shares_input = {{0, 0}, {0, 1}}}},
        {"", "Mul", infer_broadcast, fold_arith([](double a, double b) { return a * b; }), {}, false, {.shares_input = {{0, 0}, {0, 1}}}},
        {"", "Div", infer_broadcast,
         fold_arith([](double a, double b) { return b == 0 ? NAN : a / b; })},
        {"", "Sum", infer_broadcast, nullptr, {}, false, {}, sum_facts},
        {"", "Flatten", infer_flatten, fold_flatten, {}, false, {.shares_input = {{0, 0}}}},
        {"", "Reshape", infer_reshape, fold_reshape, {}, false, {.compile_time = {1}, .shares_input = {{0, 0}}}},
        {"", "Gemm", infer_gemm, nullptr},
        {"", "MatMul", infer_matmul, nullptr},
        {"", "Identity", same_as_input, fold_identity, {}, false, {.shares_input = {{0, 0}}}},
        {"", "Dropout", infer_dropout, nullptr, {}, false, {.compile_time = {1, 2}, .shares_input = {{0, 0}}}},
        {"", "Softmax", infer_softmax, nullptr},
        {"", "LogSoftmax", infer_softmax, nullptr},
        {"", "SoftmaxCrossEntropyLoss", infer_sce_loss, nullptr, {}, false, {.non_trainable = {1, 2}}},
        {"", "Constant", fold_constant, fold_constant},
        {"", "Shape", infer_shape_op, fold_shape, {0}},
        {"", "Gather", infer_unfoldable, fold_gather, {}, true},
        {"", "Unsqueeze", infer_unfoldable, fold_unsqueeze, {}, true, {.compile_time = {1}}},
        {"", "Squeeze", infer_unfoldable, fold_squeeze, {}, true, {.compile_time = {1}}},
        {"", "Concat", infer_unfoldable, fold_concat, {}, true},
        {"", "ConstantOfShape", infer_unfoldable, fold_constant_of_shape, {}, true},
        {"", "Cast", infer_cast, fold_cast},
        {"", "CastLike", infer_unfoldable, fold_cast_like, {1}, true},
        {"", "Expand", infer_unfoldable, fold_expand, {}, true},
        {"", "Neg", same_as_input, nullptr, {}, false, {.shares_input = {{0, 0}}}},
        {"", "Transpose", infer_transpose, nullptr},
        {kTrainingDomain, "Momentum", infer_momentum, nullptr, {}, false, {}, momentum_facts},
        {kOxtrainDomain, "ScaledMomentum", infer_momentum, nullptr, {}, false, {}, momentum_facts},
        {kOxtrainDomain, "NonFinite", infer_non_finite, nullptr, {}, false, {}, non_finite_facts},
        {kOxtrainDomain, "LossScaleUpdate", infer_loss_scale_update, nullptr, {}, false,
         {.non_trainable = {2}, .state = {0, 1}, .updates_input = {{0, 0}, {1, 1}}}},
        {kOxtrainDomain, "BatchNormTraining", infer_batchnorm_training, nullptr, {}, false, {.state = {3, 4}, .updates_input = {{1, 3}, {2, 4}}}},
        {kOxtrainDomain, "BatchNormGrad", infer_batchnorm_grad, nullptr},
        {kOxtrainDomain, "BatchNormReluTraining", infer_batchnorm_relu_training, nullptr, {}, false,
         {.state = {3, 4}, .updates_input = {{1, 3}, {2, 4}}}},
        {kOxtrainDomain, "BatchNormReluGrad", infer_batchnorm_relu_grad, nullptr},
        {kOxtrainDomain, "BatchNormApply", infer_batchnorm_apply, nullptr},
        {kOxtrainDomain, "NormalizeImages", infer_normalize_images, nullptr, {}, false, {.non_trainable = {0}}},
        {kOxtrainDomain, "BatchNormReluApply", infer_batchnorm_apply, nullptr},
        {kOxtrainDomain, "ReluGrad", same_as_input, nullptr, {}, false, {.shares_input = {{0, 0}, {0, 1}}}},
        {kOxtrainDomain, "ConvGradData", shape_from_attr("input_shape"), nullptr},
        {kOxtrainDomain, "ConvGradFilter", shape_from_attr("filter_shape"), nullptr},
        {kOxtrainDomain, "ConvStats", infer_conv_stats, nullptr},
        {kOxtrainDomain, "BatchNormFinalize", infer_batchnorm_finalize, nullptr, {}, false,
         {.state = {4, 5}, .updates_input = {{0, 4}, {1, 5}}}},
        {kOxtrainDomain, "ConvGradFilterScaleBiasRelu", infer_conv_grad_filter_sbr, nullptr},
        {kOxtrainDomain, "ConvGradDataReluBatchNormWeight", infer_conv_grad_data_relu_bn, nullptr},
        {kOxtrainDomain, "BatchNormGradApply", infer_batchnorm_grad_apply, nullptr},
        {kOxtrainDomain, "MaxPoolGrad", shape_from_attr("input_shape"), nullptr},
        {kOxtrainDomain, "MaxPoolGradFromInput", infer_like_input1, nullptr},
        {kOxtrainDomain, "AveragePoolGrad", shape_from_attr("input_shape"), nullptr},
        {kOxtrainDomain, "GlobalAveragePoolGrad", shape_from_attr("input_shape"), nullptr},
        {kOxtrainDomain, "ReduceMeanGrad", shape_from_attr("input_shape"), nullptr},
        {kOxtrainDomain, "SoftmaxGrad", same_as_input, nullptr},
        {kOxtrainDomain, "LogSoftmaxGrad", same_as_input, nullptr},
        {kOxtrainDomain, "SoftmaxCrossEntropyLossGrad", infer_like_input1, nullptr},
        {kOxtrainDomain, "ReduceSumTo", infer_reduce_sum_to, nullptr},
        {kOxtrainDomain, "CastTranspose", infer_cast_transpose, nullptr},
        {kOxtrainDomain, "AllReduce", infer_all_reduce, nullptr, {}, false, {}, all_reduce_facts},
    };
    // The families' schemas; one with a core entry's domain and op type replaces it.
    for (auto family : {pointwise_schemas, movement_schemas, normalization_schemas, random_schemas})
      for (OpSchema& s : family()) {
        auto same = [&](const OpSchema& o) { return o.domain == s.domain && o.op_type == s.op_type; };
        auto it = std::find_if(r.begin(), r.end(), same);
        if (it != r.end()) *it = std::move(s);
        else r.push_back(std::move(s));
      }
    set_half_policies(r);
    set_layouts(r);
    return r;
  }();
  return ops;
}

}  // namespace detail

std::string cast_round_mode(const Node& node) {
  const std::string mode = node.has_attr("round_mode") ? node.attr_string("round_mode", "") : "up";
  if (mode != "up" && mode != "down" && mode != "nearest")
    throw Error(node.describe() + ": round_mode '" + escape_name(mode) + "' must be up, down or nearest");
  return mode;
}

using namespace detail;

bool OpFacts::trainable(size_t input) const {
  auto in = [input](const std::vector<size_t>& list) {
    return std::find(list.begin(), list.end(), input) != list.end();
  };
  return !in(compile_time) && !in(non_trainable) && !in(state);
}

size_t momentum_leading_inputs(const Node& node) {
  return node.domain == kOxtrainDomain && node.op_type == "ScaledMomentum" ? 4 : 2;
}

OpFacts node_facts(const Node& node) {
  const OpSchema* schema = find_schema(node.domain, node.op_type);
  if (!schema) return {};
  return schema->facts_of ? schema->facts_of(node) : schema->facts;
}

bool is_channels_last(const Node& node) { return node.attr_int(kChannelsLast, 0) != 0; }

Shape to_channels_last_shape(const Shape& s) {
  if (s.size() != 4) throw Error("channels-last needs a rank-4 shape, got " + join(s));
  return {s[0], s[2], s[3], s[1]};
}

Shape to_channels_first_shape(const Shape& s) {
  if (s.size() != 4) throw Error("channels-last needs a rank-4 shape, got " + join(s));
  return {s[0], s[3], s[1], s[2]};
}

const OpSchema* find_schema(const std::string& domain, const std::string& op_type) {
  const std::string& d = domain == "ai.onnx" ? std::string() : domain;
  for (const OpSchema& s : registry())
    if (s.domain == d && s.op_type == op_type) return &s;
  return nullptr;
}

std::string nodes_by_op(const std::vector<const Node*>& nodes) {
  std::map<std::string, std::vector<std::string>> by_op;
  for (const Node* n : nodes) {
    std::string op = n->domain.empty() ? n->op_type : n->domain + "." + n->op_type;
    by_op[escape_name(op)].push_back(quote_name(n->name, 60));
  }
  std::vector<std::pair<std::string, const std::vector<std::string>*>> order;
  for (const auto& [op, names] : by_op) order.push_back({op, &names});
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.second->size() > b.second->size(); });
  std::vector<std::string> items;
  for (const auto& [op, names] : order)
    items.push_back(op + " (" + std::to_string(names->size()) +
                    (names->size() == 1 ? " node: " : " nodes: ") + join_limited(*names, 60) + ")");
  return join_limited(items, kMaxMessageLine - 40);
}

std::vector<std::string> supported_ops() {
  std::vector<std::string> out;
  for (const OpSchema& s : registry())
    out.push_back(s.domain.empty() ? s.op_type : s.domain + "." + s.op_type);
  return out;
}

WindowGeometry window_geometry(const Node& node, const Shape& input,
                               const std::vector<int64_t>& kernel, bool ceil_mode) {
  size_t r = kernel.size();
  if (input.size() != r + 2)
    throw Error(node.describe() + ": a " + std::to_string(r) + "-d window needs an input of rank " +
                std::to_string(r + 2) + ", got " + join(input));
  WindowGeometry g;
  g.kernel = kernel;
  g.strides = node.attr_ints("strides", std::vector<int64_t>(r, 1));
  g.dilations = node.attr_ints("dilations", std::vector<int64_t>(r, 1));
  auto pads = node.attr_ints("pads", std::vector<int64_t>(2 * r, 0));
  if (g.strides.size() != r || g.dilations.size() != r || pads.size() != 2 * r)
    throw Error(node.describe() + ": strides " + dims_text(g.strides) + ", dilations " +
                dims_text(g.dilations) + " or pads " + dims_text(pads) + " do not fit a " +
                std::to_string(r) + "-d kernel");
  for (int64_t p : pads)
    if (p < 0) throw Error(node.describe() + ": pads " + dims_text(pads) + " must not be negative");
  std::string auto_pad = node.attr_string("auto_pad", "NOTSET");
  g.pads_begin.assign(pads.begin(), pads.begin() + r);
  g.pads_end.assign(pads.begin() + r, pads.end());
  for (size_t i = 0; i < r; ++i) {
    int64_t in = input[i + 2], s = g.strides[i], d = g.dilations[i], k = kernel[i];
    if (s < 1 || d < 1 || k < 1)
      throw Error(node.describe() + ": kernel, strides and dilations must be positive");
    // Attributes come from the file: every sum and product below is checked.
    auto scaled = checked_mul(k - 1, d);
    auto padded = checked_add(in, g.pads_begin[i]);
    if (padded) padded = checked_add(*padded, g.pads_end[i]);
    if (!scaled || !padded)
      throw Error(node.describe() + ": kernel " + dims_text(kernel) + ", dilations " + dims_text(g.dilations) +
                  " or pads " + dims_text(pads) + " are too large");
    int64_t eff = *scaled + 1;
    if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
      int64_t out = in / s + (in % s != 0);
      int64_t total = std::max<int64_t>(0, (out - 1) * s + eff - in);  // <= eff + s: no overflow
      int64_t small = total / 2;
      g.pads_begin[i] = auto_pad == "SAME_UPPER" ? small : total - small;
      g.pads_end[i] = total - g.pads_begin[i];
    } else if (auto_pad == "VALID") {
      g.pads_begin[i] = g.pads_end[i] = 0;
    } else if (auto_pad != "NOTSET") {
      throw Error(node.describe() + ": unknown auto_pad '" + auto_pad + "'");
    }
    int64_t span = in + g.pads_begin[i] + g.pads_end[i] - eff;  // checked above (auto_pad: <= eff + s)
    if (span < 0)
      throw Error(node.describe() + ": window of " + std::to_string(eff) +
                  " is larger than the padded input " + join(input));
    int64_t out = span / s + (ceil_mode && span % s != 0) + 1;
    // As PyTorch: the last window must start inside the input or the left padding.
    auto last_start = checked_mul(out - 1, s);
    if (ceil_mode && (!last_start || *last_start >= in + g.pads_begin[i])) --out;
    g.output.push_back(out);
  }
  return g;
}

Shape broadcast_shapes(const Node& node, const Shape& a, const Shape& b) {
  size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t i = 0; i < rank; ++i) {
    int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    if (da != db && da != 1 && db != 1)
      throw Error(node.describe() + ": shapes " + join(a) + " and " + join(b) +
                  " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

std::vector<int64_t> constant_ints(const Node& node, size_t input_index) {
  const Value* v = node.input(input_index);
  if (!v) throw Error(node.describe() + ": input " + std::to_string(input_index) + " is missing");
  if (!v->data)
    throw Error(node.describe() + ": input '" + v->name +
                "' must be a constant (it is computed at run time)");
  return v->data->to_int64();
}

std::vector<int64_t> axes_of(const Node& node, const InferContext& ctx, int64_t input_since) {
  if (ctx.opset >= input_since) {
    if (node.input(1)) return constant_ints(node, 1);
    return {};
  }
  return node.attr_ints("axes");
}

}  // namespace oxtrain::graph
