// Op schemas of the movement family (see graph/op_helpers.h): Concat, Split, Slice, Squeeze,
// Unsqueeze, Expand, Gather and GatherND, which run at run time and still fold at import when
// every input is a constant (Shape -> Gather -> Unsqueeze -> Concat -> Reshape), and the
// gradient ops oxtrain.SliceGrad and oxtrain.GatherGrad. Plus the import rewrite of
// SplitToSequence + SequenceAt into Slice.
//
// Inputs that say what to move (split sizes, starts/ends/axes/steps, axes, the target shape
// of Expand, the indices of Gather) are compile-time inputs: kernels read them when the graph
// is compiled.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <set>

#include "base/checked.h"
#include "graph/op_helpers.h"

namespace oxtrain::graph {
namespace detail {
namespace {

std::string dims(const std::vector<int64_t>& v) { return shape_str(v); }

DType index_type(const Node& n, size_t i, const char* what) {
  DType dt = in(n, i).dtype;
  if (dt != DType::i64 && dt != DType::i32)
    throw Error(n.describe() + ": " + what + " '" + in(n, i).name + "' must be int64 or int32, not " +
                dtype_name(dt));
  return dt;
}

// ---- Concat ----

void infer_concat(Node& n, const InferContext&) {
  if (n.inputs.empty()) throw Error(n.describe() + ": needs at least one input");
  if (!n.has_attr("axis")) throw Error(n.describe() + ": attribute axis is required");
  const Shape& first = in_shape(n, 0);
  const DType dt = in(n, 0).dtype;
  const int64_t rank = static_cast<int64_t>(first.size());
  if (rank == 0) throw Error(n.describe() + ": cannot concatenate scalars; give inputs of rank 1 or more");
  const int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
  Shape out = first;
  out[axis] = 0;
  for (size_t i = 0; i < n.inputs.size(); ++i) {
    const Shape& s = in_shape(n, i);
    if (in(n, i).dtype != dt)
      throw Error(n.describe() + ": input '" + in(n, i).name + "' is " + dtype_name(in(n, i).dtype) +
                  " but input '" + in(n, 0).name + "' is " + dtype_name(dt) + "; Concat needs one type");
    bool fits = s.size() == first.size();
    for (int64_t d = 0; fits && d < rank; ++d) fits = d == axis || s[d] == first[d];
    if (!fits)
      throw Error(n.describe() + ": input '" + in(n, i).name + "' has shape " + dims(s) + " but input '" +
                  in(n, 0).name + "' has " + dims(first) + "; they must agree on every axis but " +
                  std::to_string(axis));
    auto sum = checked_add(out[axis], s[axis]);
    if (!sum) throw Error(n.describe() + ": the concatenated axis overflows 64 bits");
    out[axis] = *sum;
  }
  set_out(n, 0, dt, out);
}

// ---- Split ----

// The sizes of Split's outputs along `axis` of an input whose axis has `dim` elements.
std::vector<int64_t> split_sizes(const Node& n, int64_t opset, int64_t dim) {
  const int64_t outputs = static_cast<int64_t>(n.outputs.size());
  std::vector<int64_t> sizes;
  bool given = false;
  if (opset < 13) {
    given = n.has_attr("split");
    if (given) sizes = n.attr_ints("split");
  } else if (n.input(1)) {
    given = true;
    sizes = constant_ints(n, 1);
  }
  if (opset >= 18 && n.has_attr("num_outputs")) {
    if (given) throw Error(n.describe() + ": give either the split input or num_outputs, not both");
    const int64_t num = n.attr_int("num_outputs", 0);
    if (num < 1 || num != outputs)
      throw Error(n.describe() + ": num_outputs=" + std::to_string(num) + " but the node has " +
                  std::to_string(outputs) + " outputs");
    // Chunks of ceil(dim / num); the last takes what is left (it may be smaller, even empty).
    const int64_t chunk = dim / num + (dim % num != 0);
    const int64_t last = dim - chunk * (num - 1);
    if (last < 0)
      throw Error(n.describe() + ": num_outputs=" + std::to_string(num) + " cannot split an axis of " +
                  std::to_string(dim) + " into chunks of " + std::to_string(chunk) +
                  " (the last would be negative)");
    sizes.assign(static_cast<size_t>(num), chunk);
    sizes.back() = last;
    return sizes;
  }
  if (!given) {
    if (outputs < 1) throw Error(n.describe() + ": needs at least one output");
    if (dim % outputs != 0)
      throw Error(n.describe() + ": an axis of " + std::to_string(dim) + " does not split into " +
                  std::to_string(outputs) + " equal parts; give the split sizes");
    return std::vector<int64_t>(static_cast<size_t>(outputs), dim / outputs);
  }
  if (static_cast<int64_t>(sizes.size()) != outputs)
    throw Error(n.describe() + ": split " + dims(sizes) + " has " + std::to_string(sizes.size()) +
                " sizes for " + std::to_string(outputs) + " outputs");
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) throw Error(n.describe() + ": split " + dims(sizes) + " has a negative size");
    auto sum = checked_add(total, s);
    if (!sum) throw Error(n.describe() + ": split " + dims(sizes) + " overflows 64 bits");
    total = *sum;
  }
  if (total != dim)
    throw Error(n.describe() + ": split " + dims(sizes) + " adds up to " + std::to_string(total) +
                " but the axis has " + std::to_string(dim) + " elements");
  return sizes;
}

void infer_split(Node& n, const InferContext& ctx) {
  const Shape& x = in_shape(n, 0);
  if (x.empty()) throw Error(n.describe() + ": cannot split a scalar");
  const int64_t axis = norm_axis(n, n.attr_int("axis", 0), static_cast<int64_t>(x.size()));
  std::vector<int64_t> sizes = split_sizes(n, ctx.opset, x[axis]);
  for (size_t i = 0; i < sizes.size(); ++i) {
    Shape s = x;
    s[axis] = sizes[i];
    set_out(n, i, in(n, 0).dtype, s);
  }
}

void fold_split(Node& n, const InferContext& ctx) {
  infer_split(n, ctx);
  const Tensor& x = in_data(n, 0);
  const int64_t axis = norm_axis(n, n.attr_int("axis", 0), static_cast<int64_t>(x.shape.size()));
  const size_t es = dtype_size(x.dtype);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape[d];
  for (size_t d = static_cast<size_t>(axis) + 1; d < x.shape.size(); ++d) inner *= x.shape[d];
  const size_t row = static_cast<size_t>(x.shape[axis] * inner) * es;
  size_t offset = 0;
  for (size_t i = 0; i < n.outputs.size(); ++i) {
    if (!n.output(i)) continue;
    Shape s = n.output(i)->shape;
    Tensor& o = out_data(n, i, x.dtype, s);
    const size_t chunk = static_cast<size_t>(s[axis] * inner) * es;
    for (int64_t r = 0; chunk > 0 && r < outer; ++r)
      std::memcpy(o.bytes.data() + r * chunk, x.bytes.data() + r * row + offset, chunk);
    offset += chunk;
  }
}

// ---- Slice ----

void infer_slice(Node& n, const InferContext& ctx) {
  set_out(n, 0, in(n, 0).dtype, slice_geometry(n, in_shape(n, 0), ctx.opset).output);
}

void fold_slice(Node& n, const InferContext& ctx) {
  const Tensor& x = in_data(n, 0);
  SliceGeometry g = slice_geometry(n, x.shape, ctx.opset);
  Tensor& o = out_data(n, 0, x.dtype, g.output);
  const size_t es = dtype_size(x.dtype);
  const std::vector<int64_t> xst = strides_of(x.shape), ost = strides_of(g.output);
  const int64_t count = shape_numel(g.output);
  for (int64_t i = 0; i < count; ++i) {
    int64_t src = 0;
    for (size_t d = 0; d < g.output.size(); ++d)
      src += (g.starts[d] + ((i / ost[d]) % g.output[d]) * g.steps[d]) * xst[d];
    std::memcpy(o.bytes.data() + i * es, x.bytes.data() + src * es, es);
  }
}

// ---- Squeeze, Unsqueeze ----

void infer_squeeze(Node& n, const InferContext& ctx) {
  const Shape& x = in_shape(n, 0);
  const std::vector<int64_t> axes = axes_of(n, ctx, 13);
  const int64_t rank = static_cast<int64_t>(x.size());
  std::vector<bool> removed(x.size(), false);
  for (int64_t a : axes) {
    int64_t d = norm_axis(n, a, rank);
    if (removed[d]) throw Error(n.describe() + ": axes " + dims(axes) + " name axis " + std::to_string(d) + " twice");
    removed[d] = true;
  }
  Shape out;
  for (int64_t d = 0; d < rank; ++d) {
    const bool drop = axes.empty() ? x[d] == 1 : removed[d];
    if (drop && x[d] != 1)
      throw Error(n.describe() + ": cannot squeeze axis " + std::to_string(d) + " of input " + dims(x) +
                  ": it has " + std::to_string(x[d]) + " elements, not 1");
    if (!drop) out.push_back(x[d]);
  }
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_unsqueeze(Node& n, const InferContext& ctx) {
  const Shape& x = in_shape(n, 0);
  const std::vector<int64_t> axes = axes_of(n, ctx, 13);
  if (axes.empty()) throw Error(n.describe() + ": needs the axes to insert");
  const int64_t rank = static_cast<int64_t>(x.size() + axes.size());
  std::vector<bool> inserted(static_cast<size_t>(rank), false);
  for (int64_t a : axes) {
    int64_t d = norm_axis(n, a, rank);
    if (inserted[d]) throw Error(n.describe() + ": axes " + dims(axes) + " name axis " + std::to_string(d) + " twice");
    inserted[d] = true;
  }
  Shape out;
  size_t j = 0;
  for (int64_t d = 0; d < rank; ++d) out.push_back(inserted[d] ? 1 : x[j++]);
  set_out(n, 0, in(n, 0).dtype, out);
}

// ---- Expand ----

void infer_expand(Node& n, const InferContext&) {
  const Shape& x = in_shape(n, 0);
  const std::vector<int64_t> target = constant_ints(n, 1);
  for (int64_t d : target)
    if (d < 0) throw Error(n.describe() + ": shape " + dims(target) + " has a negative dimension");
  set_out(n, 0, in(n, 0).dtype, broadcast_shapes(n, x, target));
}

// ---- Gather, GatherND ----

void check_index_range(const Node& n, const std::vector<int64_t>& idx, int64_t dim, const std::string& what) {
  for (int64_t i : idx)
    if (i < -dim || i >= dim)
      throw Error(n.describe() + ": index " + std::to_string(i) + " is out of range for " + what + " of " +
                  std::to_string(dim) + " elements");
}

void infer_gather(Node& n, const InferContext&) {
  const Shape& data = in_shape(n, 0);
  const Shape& idx = in_shape(n, 1);
  index_type(n, 1, "indices");
  const int64_t rank = static_cast<int64_t>(data.size());
  if (rank == 0) throw Error(n.describe() + ": cannot gather from a scalar");
  const int64_t axis = norm_axis(n, n.attr_int("axis", 0), rank);
  if (in(n, 1).has_data())
    check_index_range(n, in(n, 1).data->to_int64(), data[axis], "axis " + std::to_string(axis) + " of input " + dims(data));
  Shape out(data.begin(), data.begin() + axis);
  out.insert(out.end(), idx.begin(), idx.end());
  out.insert(out.end(), data.begin() + axis + 1, data.end());
  set_out(n, 0, in(n, 0).dtype, out);
}

void infer_gather_nd(Node& n, const InferContext&) {
  const Shape& data = in_shape(n, 0);
  const Shape& idx = in_shape(n, 1);
  index_type(n, 1, "indices");
  if (n.attr_int("batch_dims", 0) != 0)
    throw Error(n.describe() + ": batch_dims=" + std::to_string(n.attr_int("batch_dims", 0)) +
                " is not supported (only 0)");
  if (idx.empty()) throw Error(n.describe() + ": indices must have rank 1 or more");
  const int64_t depth = idx.back();
  if (depth < 1 || depth > static_cast<int64_t>(data.size()))
    throw Error(n.describe() + ": indices " + dims(idx) + " address " + std::to_string(depth) +
                " dimensions of data " + dims(data) + " (1 to its rank)");
  if (in(n, 1).has_data()) {
    std::vector<int64_t> v = in(n, 1).data->to_int64();
    for (size_t j = 0; j < v.size(); ++j) {
      const int64_t d = static_cast<int64_t>(j % static_cast<size_t>(depth));
      check_index_range(n, {v[j]}, data[d], "axis " + std::to_string(d) + " of data " + dims(data));
    }
  }
  Shape out(idx.begin(), idx.end() - 1);
  out.insert(out.end(), data.begin() + depth, data.end());
  set_out(n, 0, in(n, 0).dtype, out);
}

void fold_gather_nd(Node& n, const InferContext& ctx) {
  infer_gather_nd(n, ctx);
  const Tensor& x = in_data(n, 0);
  const Tensor& it = in_data(n, 1);
  const std::vector<int64_t> idx = it.to_int64();
  const size_t depth = static_cast<size_t>(it.shape.back());
  const std::vector<int64_t> xst = strides_of(x.shape);
  const int64_t inner = depth < x.shape.size() ? xst[depth - 1] : 1;
  Tensor& o = out_data(n, 0, x.dtype, n.output(0)->shape);
  const size_t es = dtype_size(x.dtype);
  const size_t tuples = depth > 0 ? idx.size() / depth : 0;
  for (size_t j = 0; j < tuples; ++j) {
    int64_t row = 0;
    for (size_t t = 0; t < depth; ++t) {
      int64_t v = idx[j * depth + t];
      row += (v < 0 ? v + x.shape[t] : v) * xst[t];
    }
    if (inner > 0)
      std::memcpy(o.bytes.data() + j * inner * es, x.bytes.data() + row * es, static_cast<size_t>(inner) * es);
  }
}

// ---- gradient ops ----

// SliceGrad(dY) -> dX: zeros of attribute input_shape with dY written where the Slice read;
// attributes starts and steps (per input axis) are the forward SliceGeometry's.
void infer_slice_grad(Node& n, const InferContext&) {
  for (const char* a : {"input_shape", "starts", "steps"})
    if (!n.has_attr(a)) throw Error(n.describe() + ": attribute " + a + " is required");
  Shape x = n.attr_ints("input_shape");
  std::vector<int64_t> starts = n.attr_ints("starts"), steps = n.attr_ints("steps");
  const Shape& dy = in_shape(n, 0);
  if (starts.size() != x.size() || steps.size() != x.size() || dy.size() != x.size())
    throw Error(n.describe() + ": dY " + dims(dy) + ", starts " + dims(starts) + " and steps " + dims(steps) +
                " do not fit input_shape " + dims(x));
  for (size_t d = 0; d < x.size(); ++d) {
    const int64_t last = starts[d] + (dy[d] - 1) * steps[d];
    if (dy[d] > 0 && (steps[d] == 0 || starts[d] < 0 || starts[d] >= x[d] || last < 0 || last >= x[d]))
      throw Error(n.describe() + ": dY " + dims(dy) + " with starts " + dims(starts) + " and steps " +
                  dims(steps) + " reaches outside input_shape " + dims(x));
  }
  set_out(n, 0, in(n, 0).dtype, x);
}

// GatherGrad(dY, order, row_start) -> dX of attribute input_shape. dX seen as [outer, rows,
// inner] (rows: the `count` axes from `axis` on), dY as [outer, J, inner]; row r of dX sums
// dY's rows order[row_start[r]] .. order[row_start[r+1] - 1], in that order.
void infer_gather_grad(Node& n, const InferContext&) {
  for (const char* a : {"input_shape", "axis"})
    if (!n.has_attr(a)) throw Error(n.describe() + ": attribute " + a + " is required");
  Shape x = n.attr_ints("input_shape");
  const int64_t axis = n.attr_int("axis", 0), count = n.attr_int("count", 1);
  const int64_t rank = static_cast<int64_t>(x.size());
  if (axis < 0 || count < 1 || axis + count > rank)
    throw Error(n.describe() + ": axis " + std::to_string(axis) + " and count " + std::to_string(count) +
                " do not fit input_shape " + dims(x));
  int64_t outer = 1, rows = 1, inner = 1;
  for (int64_t d = 0; d < rank; ++d) (d < axis ? outer : d < axis + count ? rows : inner) *= x[d];
  const int64_t j = in(n, 1).numel();
  if (in_shape(n, 2) != Shape{rows + 1})
    throw Error(n.describe() + ": row_start " + dims(in_shape(n, 2)) + " must have " +
                std::to_string(rows + 1) + " entries for input_shape " + dims(x));
  if (in(n, 0).numel() != outer * j * inner)
    throw Error(n.describe() + ": dY " + dims(in_shape(n, 0)) + " does not hold " + std::to_string(j) +
                " gathered rows of input_shape " + dims(x));
  if (in(n, 1).dtype != DType::i64 || in(n, 2).dtype != DType::i64)
    throw Error(n.describe() + ": order and row_start must be int64");
  set_out(n, 0, in(n, 0).dtype, x);
}

// ---- SplitToSequence + SequenceAt ----

// The integers a value holds when it is an initializer or a Constant node's output (before
// folding); nullopt otherwise.
std::optional<std::vector<int64_t>> known_ints(const Value* v, Shape* shape) {
  if (!v) return std::nullopt;
  const Tensor* t = v->data.get();
  Tensor from_attr;
  if (!t && v->producer && v->producer->op_type == "Constant" && v->producer->domain.empty()) {
    const Node& c = *v->producer;
    if (const Tensor* a = c.attr_tensor("value")) t = a;
    else if (c.has_attr("value_int")) from_attr = Tensor::from_int64({c.attr_int("value_int", 0)}, {});
    else if (c.has_attr("value_ints")) {
      auto ints = c.attr_ints("value_ints");
      from_attr = Tensor::from_int64(ints, {static_cast<int64_t>(ints.size())});
    } else return std::nullopt;
    if (!t) t = &from_attr;
  }
  if (!t || is_float(t->dtype) || t->dtype == DType::undefined) return std::nullopt;
  if (shape) *shape = t->shape;
  return t->to_int64();
}

}  // namespace

void lower_gather_nd_batch_dims(Graph& g, Node& n) {
  const int64_t b = n.attr_int("batch_dims", 0);
  if (b == 0) return;
  const Value* data = n.input(0);
  const Value* indices = n.input(1);
  if (!data || !indices || !data->rank_known || !indices->rank_known)
    throw Error(n.describe() + ": data and indices need known shapes");
  if (!indices->has_data())
    throw Error(n.describe() + ": batch_dims=" + std::to_string(b) +
                " needs indices known when the graph is compiled (a constant); these are computed at run time");
  const Shape& ds = data->shape;
  const Shape& is = indices->shape;
  const int64_t depth = is.empty() ? 0 : is.back();
  if (b < 0 || b >= static_cast<int64_t>(is.size()) || b + depth > static_cast<int64_t>(ds.size()) ||
      !std::equal(is.begin(), is.begin() + b, ds.begin()))
    throw Error(n.describe() + ": batch_dims=" + std::to_string(b) + " does not fit data " + dims(ds) +
                " and indices " + dims(is) + " (their first batch_dims dims must agree)");
  const std::vector<int64_t> old = indices->data->to_int64();
  const int64_t batches = shape_numel(Shape(is.begin(), is.begin() + b));
  const int64_t entries = depth > 0 ? static_cast<int64_t>(old.size()) / depth : 0;
  const int64_t per_batch = batches > 0 ? entries / batches : 0;
  Shape lowered_shape = is;
  lowered_shape.back() = b + depth;
  std::vector<int64_t> lowered;
  lowered.reserve(static_cast<size_t>(entries * (b + depth)));
  for (int64_t e = 0; e < entries; ++e) {
    // The batch coordinates of entry e: its batch's flat index unravelled over is[0..b).
    std::vector<int64_t> coords(static_cast<size_t>(b));
    for (int64_t d = b - 1, flat = per_batch > 0 ? e / per_batch : 0; d >= 0; --d) {
      coords[static_cast<size_t>(d)] = flat % is[static_cast<size_t>(d)];
      flat /= is[static_cast<size_t>(d)];
    }
    lowered.insert(lowered.end(), coords.begin(), coords.end());
    lowered.insert(lowered.end(), old.begin() + e * depth, old.begin() + (e + 1) * depth);
  }
  Value* v = g.add_initializer(g.unique_name(indices->name + "_with_batch"), Tensor::from_int64(lowered, lowered_shape),
                               Role::Constant);
  g.set_input(&n, 1, v);
  n.attrs.erase("batch_dims");
}

void rewrite_sequence_splits(Graph& g) {
  struct Read {
    Node* at;
    int64_t start, end;
  };
  std::vector<std::pair<Node*, std::vector<Read>>> rewrites;
  for (const auto& node : g.nodes()) {
    Node& s = *node;
    if (s.op_type != "SplitToSequence" || !s.domain.empty() || !s.input(0) || !s.output(0)) continue;
    if (std::find(g.outputs.begin(), g.outputs.end(), s.output(0)) != g.outputs.end()) continue;
    // Chunk boundaries: a scalar split gives chunks of that size (the last may be smaller), a
    // list the sizes, none chunks of 1.
    std::vector<int64_t> bounds{0};
    int64_t chunk = 0;
    Shape split_shape;
    if (s.input(1)) {
      auto split = known_ints(s.input(1), &split_shape);
      if (!split || split->empty()) continue;
      if (split_shape.empty()) {
        chunk = split->front();
        if (chunk < 1) continue;
      } else {
        bool ok = true;
        for (int64_t v : *split) {
          ok = ok && v >= 0;
          bounds.push_back(bounds.back() + v);
        }
        if (!ok) continue;
      }
    } else {
      chunk = 1;
    }
    std::vector<Read> reads;
    bool simple = true;
    for (Node* c : s.output(0)->consumers) {
      Shape pos_shape;
      auto pos = c->op_type == "SequenceAt" && c->domain.empty() && c->input(0) == s.output(0)
                     ? known_ints(c->input(1), &pos_shape)
                     : std::nullopt;
      // Positions from the end need the number of chunks, known here only for a list of sizes.
      const int64_t count = static_cast<int64_t>(bounds.size()) - 1;
      if (!pos || pos->size() != 1 || (chunk > 0 && pos->front() < 0) ||
          (chunk == 0 && (pos->front() < -count || pos->front() >= count))) {
        simple = false;
        break;
      }
      int64_t p = pos->front();
      if (chunk == 0 && p < 0) p += count;
      int64_t start = chunk > 0 ? p * chunk : bounds[p];
      int64_t end = chunk > 0 ? start + chunk : bounds[p + 1];
      reads.push_back({c, start, end});
    }
    if (simple && !reads.empty()) rewrites.push_back({&s, std::move(reads)});
  }
  // Every read becomes Slice(x, start, end, axis) (then Squeeze for keepdims=0), producing the
  // SequenceAt's own output value under the SequenceAt's name.
  struct Planned {
    std::string name;
    Value *x, *y;
    int64_t start, end, axis;
    bool squeeze;
  };
  std::vector<Planned> planned;
  std::set<const Node*> dead;
  for (auto& [s, reads] : rewrites) {
    dead.insert(s);
    for (const Read& r : reads) {
      dead.insert(r.at);
      // keepdims=0 squeezes the chunks of 1 that a split without sizes makes.
      planned.push_back({r.at->name, s->input(0), r.at->output(0), r.start, r.end, s->attr_int("axis", 0),
                         !s->input(1) && s->attr_int("keepdims", 1) == 0});
    }
  }
  if (planned.empty()) return;
  g.remove_nodes_if([&](const Node& n) { return dead.count(&n) != 0; });
  auto constant = [&](const std::string& base, std::vector<int64_t> v) {
    return g.add_initializer(g.unique_name(base), Tensor::from_int64(v, {static_cast<int64_t>(v.size())}),
                             Role::Constant);
  };
  for (const Planned& p : planned) {
    Value* axes = constant(p.name + "/axes", {p.axis});
    Value* sliced = p.y;
    if (p.squeeze) sliced = g.add_value(g.unique_name(p.name + "/chunk"));
    g.add_node("Slice", {p.x, constant(p.name + "/starts", {p.start}), constant(p.name + "/ends", {p.end}), axes},
               {sliced}, p.name);
    if (p.squeeze) {
      Node* sq = g.add_node("Squeeze", {sliced}, {p.y}, g.unique_name(p.name + "/squeeze"));
      if (g.opset("") >= 13) {
        sq->inputs.push_back(axes);
        axes->consumers.push_back(sq);
      } else {
        sq->attrs["axes"].value = std::vector<int64_t>{p.axis};
      }
    }
  }
}

}  // namespace detail

using namespace detail;

SliceGeometry slice_geometry(const Node& n, const Shape& x, int64_t opset) {
  std::vector<int64_t> starts, ends, axes, steps;
  if (opset < 10) {
    if (!n.has_attr("starts") || !n.has_attr("ends"))
      throw Error(n.describe() + ": attributes starts and ends are required before opset 10");
    starts = n.attr_ints("starts");
    ends = n.attr_ints("ends");
    axes = n.attr_ints("axes");
  } else {
    starts = constant_ints(n, 1);
    ends = constant_ints(n, 2);
    if (n.input(3)) axes = constant_ints(n, 3);
    if (n.input(4)) steps = constant_ints(n, 4);
  }
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    throw Error(n.describe() + ": starts " + dims(starts) + ", ends " + dims(ends) + ", axes " + dims(axes) +
                " and steps " + dims(steps) + " differ in length");
  const int64_t rank = static_cast<int64_t>(x.size());
  SliceGeometry g;
  g.starts.assign(x.size(), 0);
  g.steps.assign(x.size(), 1);
  g.output = x;
  std::vector<bool> seen(x.size(), false);
  for (size_t i = 0; i < starts.size(); ++i) {
    const int64_t a = norm_axis(n, axes[i], rank);
    if (seen[a]) throw Error(n.describe() + ": axes " + dims(axes) + " name axis " + std::to_string(a) + " twice");
    seen[a] = true;
    const int64_t dim = x[a];
    int64_t s = steps[i];
    if (s == 0) throw Error(n.describe() + ": steps " + dims(steps) + " has a step of 0");
    s = std::max<int64_t>(s, -INT64_MAX);  // so that -s exists
    // starts and ends may be anything from INT64_MIN to INT64_MAX; dim is a real size.
    int64_t b = starts[i] < 0 ? std::max<int64_t>(starts[i], -dim - 1) + dim : starts[i];
    int64_t e = ends[i] < 0 ? std::max<int64_t>(ends[i], -dim - 1) + dim : ends[i];
    int64_t out = 0;
    if (s > 0) {
      b = std::clamp<int64_t>(b, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
      out = e > b ? (e - b - 1) / s + 1 : 0;
    } else if (dim > 0) {
      b = std::clamp<int64_t>(b, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
      out = b > e ? (b - e - 1) / -s + 1 : 0;
    }
    g.output[a] = out;
    g.starts[a] = out > 0 ? b : 0;
    g.steps[a] = s;
  }
  return g;
}

namespace detail {

std::vector<OpSchema> movement_schemas() {
  return {
      {"", "Concat", infer_concat, fold_concat},
      {"", "Split", infer_split, fold_split, {}, false, {.compile_time = {1}}},
      {"", "Slice", infer_slice, fold_slice, {}, false, {.compile_time = {1, 2, 3, 4}}},
      {"", "Squeeze", infer_squeeze, fold_squeeze, {}, false, {.compile_time = {1}, .shares_input = {{0, 0}}}},
      {"", "Unsqueeze", infer_unsqueeze, fold_unsqueeze, {}, false, {.compile_time = {1}, .shares_input = {{0, 0}}}},
      {"", "Expand", infer_expand, fold_expand, {}, false, {.compile_time = {1}}},
      {"", "Gather", infer_gather, fold_gather, {}, false, {.compile_time = {1}}},
      {"", "GatherND", infer_gather_nd, fold_gather_nd, {}, false, {.compile_time = {1}}},
      {kOxtrainDomain, "SliceGrad", infer_slice_grad, nullptr},
      {kOxtrainDomain, "GatherGrad", infer_gather_grad, nullptr, {}, false, {.compile_time = {1, 2}}},
  };
}

}  // namespace detail
}  // namespace oxtrain::graph
