// Crafted ONNX and TensorProto files against the graph layer: external data that escapes the
// model's folder, sizes claimed by headers that the bytes do not back, shape arithmetic that
// wraps, flags out of range, and errors a person can read (one line, names escaped, every
// unsupported construct at once). Each bad input is built here; through the CLI each gives
// exit code 2 and one clean "oxtrain: error: " line.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <sys/stat.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <tuple>

#include "base/text.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "runtime/session.h"
#include "tests/helpers.h"

namespace fs = std::filesystem;
using namespace oxtrain;
using namespace oxtrain::graph;
using oxtrain::test::ModelBuilder;

namespace {


std::string q(const std::string& path) { return "'" + path + "'"; }

// `oxtrain graph ARGS` must fail cleanly; returns its stderr.
std::string graph_error(const std::string& args, int64_t address_space_mib = 0) {
  auto r = test::run_oxtrain_limited("graph " + args, 60, address_space_mib);
  EXPECT_EQ(test::clean_error_problem(r), "") << "graph " << args;
  return r.err;
}

std::string import_error(const std::string& path, const ImportOptions& options = {}) {
  try {
    import_onnx(path, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "(imported without an error)";
}

void expect_has(const std::string& text, const std::vector<std::string>& needles) {
  for (const auto& n : needles) EXPECT_NE(text.find(n), std::string::npos) << "'" << n << "' in: " << text;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// x [1,4] + w: w an initializer of `dims` with `raw` bytes.
ModelBuilder add_of_initializer(std::vector<int64_t> dims, const std::string& raw) {
  ModelBuilder b(17);
  b.input("x", {1, 4});
  auto* t = b.graph().add_initializer();
  t->set_name("w");
  t->set_data_type(1);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(raw);
  b.node("Add", {"x", "w"}, {"y"}, "add");
  b.output("y");
  return b;
}

}  // namespace

// ----- external data stays inside the model's folder -----

TEST(HardeningGraph, ExternalDataOutsideTheModelsFolderIsRefused) {
  test::ScopedTempDir dir;
  fs::create_directories(dir.path + "/model");
  ModelBuilder good = test::small_convnet();
  const std::string raw = good.graph().initializer(0).raw_data();  // conv.weight, 432 bytes
  // A "secret" of exactly the size conv.weight needs, outside the model's folder, and a
  // symlink inside the folder that points at it.
  write_bytes(dir.path + "/secret.bin", std::string(raw.size(), 'S'));
  fs::create_symlink(dir.path + "/secret.bin", dir.path + "/model/link.bin");
  const std::string model = dir.path + "/model/model.onnx";
  const std::string exported = dir.path + "/exported.onnx";
  for (std::string location : {std::string("../../../../etc/passwd"), std::string("/etc/passwd"),
                               std::string("../secret.bin"), dir.path + "/secret.bin",
                               std::string("link.bin")}) {
    ModelBuilder b = test::small_convnet();
    test::set_external_data(*b.graph().mutable_initializer(0), location, "0", std::to_string(raw.size()));
    b.save(model);
    std::string err = graph_error(q(model));
    expect_has(err, {"'conv.weight'", "'" + location + "'", "outside the model's folder",
                     "--allow-external-data-anywhere"});
    // --export never writes the foreign bytes into a model.
    graph_error(q(model) + " --export " + q(exported));
    EXPECT_FALSE(fs::exists(exported)) << location;
    EXPECT_FALSE(fs::exists(exported + ".tmp")) << location;
  }
  // With the flag the user trusts the model: the secret is read (the same size as the weight).
  ModelBuilder b = test::small_convnet();
  test::set_external_data(*b.graph().mutable_initializer(0), "../secret.bin", "0", std::to_string(raw.size()));
  b.save(model);
  auto r = test::run_oxtrain("graph " + q(model) + " --allow-external-data-anywhere");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  ImportOptions anywhere;
  anywhere.allow_external_data_anywhere = true;
  Graph g = import_onnx(model, anywhere);
  EXPECT_EQ(g.value("conv.weight")->data->bytes[0], 'S');
}

TEST(HardeningGraph, ExternalDataInsideTheFolderStillLoads) {
  test::ScopedTempDir dir;
  fs::create_directories(dir.path + "/model/weights");
  ModelBuilder b = test::small_convnet();
  const std::string raw = b.graph().initializer(0).raw_data();
  write_bytes(dir.path + "/model/weights/w.bin", raw);
  // A symlink that stays inside the folder is fine.
  fs::create_symlink("weights/w.bin", dir.path + "/model/inside.bin");
  for (const char* location : {"weights/w.bin", "weights/../weights/w.bin", "inside.bin"}) {
    ModelBuilder m = test::small_convnet();
    test::set_external_data(*m.graph().mutable_initializer(0), location, "0", std::to_string(raw.size()));
    m.save(dir.path + "/model/model.onnx");
    Graph g = import_onnx(dir.path + "/model/model.onnx");
    EXPECT_EQ(g.value("conv.weight")->data->bytes, std::vector<uint8_t>(raw.begin(), raw.end())) << location;
  }
}

TEST(HardeningGraph, ExternalDataThatIsNotARegularFileIsRefusedWithoutHanging) {
  test::ScopedTempDir dir;
  ASSERT_EQ(::mkfifo((dir.path + "/w.bin").c_str(), 0600), 0);
  ModelBuilder b = test::small_convnet();
  test::set_external_data(*b.graph().mutable_initializer(0), "w.bin", "0", "432");
  b.save(dir.path + "/model.onnx");
  std::string err = graph_error(q(dir.path + "/model.onnx"));
  expect_has(err, {"'conv.weight'", "w.bin", "FIFO"});
  // The model file itself as a FIFO: refused at once, too.
  ASSERT_EQ(::mkfifo((dir.path + "/fifo.onnx").c_str(), 0600), 0);
  expect_has(graph_error(q(dir.path + "/fifo.onnx")), {"fifo.onnx", "FIFO"});
}

// ----- nothing allocated before the bytes are there -----

TEST(HardeningGraph, HugeClaimedDimsAllocateNothing) {
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not apply under a sanitizer";
  test::ScopedTempDir dir;
  // The limit itself lets a normal model through.
  test::small_convnet().save(dir.path + "/small.onnx");
  auto ok = test::run_oxtrain_limited("graph " + q(dir.path + "/small.onnx"), 60, 1024);
  ASSERT_EQ(ok.exit_code, 0) << ok.err;

  for (int64_t d : {int64_t(1) << 30, int64_t(1) << 40}) {
    const std::string tag = std::to_string(d);
    // raw_data of 4 bytes for [d] floats.
    std::string raw_path = dir.path + "/raw" + tag + ".onnx";
    add_of_initializer({d}, std::string(4, '\0')).save(raw_path);
    EXPECT_LT(fs::file_size(raw_path), 400u);
    expect_has(graph_error(q(raw_path), 1024), {"'w'", "[" + tag + "]", "needs " + std::to_string(4 * d) + " bytes", "holds 4"});
    // No data at all (an empty float_data).
    ModelBuilder none = add_of_initializer({d}, "");
    none.graph().mutable_initializer(0)->clear_raw_data();
    none.save(dir.path + "/none.onnx");
    expect_has(graph_error(q(dir.path + "/none.onnx"), 1024), {"'w'", "needs " + tag + " values", "holds 0"});
    // External data whose file holds 16 bytes.
    write_bytes(dir.path + "/w.bin", std::string(16, '\0'));
    ModelBuilder ext = add_of_initializer({d}, "");
    test::set_external_data(*ext.graph().mutable_initializer(0), "w.bin", "0", "");
    ext.save(dir.path + "/ext.onnx");
    expect_has(graph_error(q(dir.path + "/ext.onnx"), 1024), {"'w'", "w.bin", "16 bytes"});
  }
}

TEST(HardeningGraph, FoldingRefusesOutputsOverTheSynthesisLimit) {
  if (test::running_under_sanitizer()) GTEST_SKIP() << "address-space limits do not apply under a sanitizer";
  test::ScopedTempDir dir;
  const int64_t big = int64_t(1) << 31;  // 2^31 floats: 8 GiB, over kMaxSynthesizedTensorBytes
  {
    ModelBuilder b(17);
    b.int_initializer("shape", {big});
    b.node("ConstantOfShape", {"shape"}, {"c"}, "zeros");
    b.node("Shape", {"c"}, {"y"}, "shape_of");
    b.output("y", 7);
    b.save(dir.path + "/cos.onnx");
  }
  expect_has(graph_error(q(dir.path + "/cos.onnx"), 1024),
             {"ConstantOfShape 'zeros'", "[2147483648]", "8.0 GiB", "more than the 4 GiB"});
  {
    ModelBuilder b(17);
    b.int_initializer("one", {1});  // int64: a constant (a float initializer is a parameter)
    b.int_initializer("shape", {big / 2, 2});
    b.node("Expand", {"one", "shape"}, {"c"}, "expand");
    b.node("Shape", {"c"}, {"y"}, "shape_of");
    b.output("y", 7);
    b.save(dir.path + "/expand.onnx");
  }
  expect_has(graph_error(q(dir.path + "/expand.onnx"), 1024), {"Expand 'expand'", "[1073741824,2] of int64", "16.0 GiB", "more than the 4 GiB"});
}

// ----- shape arithmetic that wraps -----

TEST(HardeningGraph, DimsWhoseProductWrapsAreRefused) {
  test::ScopedTempDir dir;
  // 4611686018427387905 * 4 wraps to 4: 16 bytes of data "fit" the shape without the check.
  add_of_initializer({4611686018427387905, 1, 4}, std::string(16, '\0')).save(dir.path + "/wrap.onnx");
  std::string err = import_error(dir.path + "/wrap.onnx");
  expect_has(err, {"'w'", "[4611686018427387905,1,4]", "overflows"});
  expect_has(graph_error(q(dir.path + "/wrap.onnx")), {"'w'", "overflows"});

  // A graph input whose byte size wraps.
  ModelBuilder in(17);
  in.input("x", {1, int64_t(1) << 32, int64_t(1) << 32});
  in.node("Flatten", {"x"}, {"y"}, "flat");
  in.output("y");
  in.save(dir.path + "/input.onnx");
  expect_has(graph_error(q(dir.path + "/input.onnx")), {"'x'", "overflows"});

  // Reshape whose target's product wraps to the input's element count.
  ModelBuilder r(17);
  r.input("x", {4});
  r.int_initializer("shape", {4611686018427387905, 4});
  r.node("Reshape", {"x", "shape"}, {"y"}, "reshape");
  r.output("y");
  r.save(dir.path + "/reshape.onnx");
  expect_has(graph_error(q(dir.path + "/reshape.onnx")), {"Reshape 'reshape'", "overflows"});
}

TEST(HardeningGraph, ConvAttributesOutOfRangeAreRefused) {
  test::ScopedTempDir dir;
  struct Case {
    const char* attr;
    std::vector<int64_t> value;
    std::vector<std::string> needles;
  };
  const std::vector<Case> cases = {
      {"group", {int64_t(1) << 62}, {"Conv 'conv'", "group=4611686018427387904"}},
      {"group", {0}, {"Conv 'conv'", "group=0"}},
      {"strides", {0, 0}, {"Conv 'conv'", "positive"}},
      {"pads", {-5, -5, -5, -5}, {"Conv 'conv'", "pads [-5,-5,-5,-5]", "negative"}},
      {"pads", {0, 0, std::numeric_limits<int64_t>::max(), 0}, {"Conv 'conv'", "pads"}},
      {"dilations", {std::numeric_limits<int64_t>::max(), 1}, {"Conv 'conv'", "dilations"}},
  };
  for (const Case& c : cases) {
    ModelBuilder b = test::small_convnet();
    auto& conv = *b.graph().mutable_node(0);
    conv.clear_attribute();
    if (c.value.size() == 1) test::set_int(conv, c.attr, c.value[0]);
    else test::set_ints(conv, c.attr, c.value);
    b.save(dir.path + "/conv.onnx");
    expect_has(graph_error(q(dir.path + "/conv.onnx")), c.needles);
  }
  // A kernel larger than the (unpadded) input.
  ModelBuilder b = test::small_convnet();
  b.graph().mutable_node(0)->clear_attribute();
  b.graph().mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(2)->set_dim_value(2);
  b.save(dir.path + "/small_input.onnx");
  expect_has(graph_error(q(dir.path + "/small_input.onnx")), {"Conv 'conv'", "larger than the padded input"});
}

TEST(HardeningGraph, CastOfNaNOrHugeFloatsToIntegersIsRefused) {
  test::ScopedTempDir dir;
  const std::vector<std::pair<float, std::string>> values = {
      {std::nanf(""), "the value nan"}, {1e30f, "the value 1e+30"}, {-1e30f, "the value -1e+30"}};
  for (const auto& [value, text] : values) {
    ModelBuilder b(17);
    b.input("x", {1}, 7);
    auto& k = b.node("Constant", {}, {"f"}, "value");
    auto* a = k.add_attribute();
    a->set_name("value_float");
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(value);
    test::set_int(b.node("Cast", {"f"}, {"i"}, "to_int"), "to", 7);
    b.node("Add", {"x", "i"}, {"y"}, "add");
    b.output("y", 7);
    b.save(dir.path + "/cast.onnx");
    expect_has(graph_error(q(dir.path + "/cast.onnx")), {"Cast 'to_int': cannot fold " + text + " to int64"});
  }
}

TEST(HardeningGraph, SliceFoldingWithExtremeStepsDoesNotWrap) {
  const int64_t max = std::numeric_limits<int64_t>::max(), min = std::numeric_limits<int64_t>::min();
  // (starts, ends, steps) on [4, 9, 9]: each takes only the first element.
  for (auto [start, end, step] : {std::tuple{int64_t(0), max, max}, std::tuple{int64_t(0), min, min}}) {
    ModelBuilder b(17);
    b.input("x", {4});
    b.int_initializer("data", {4, 9, 9});
    b.int_initializer("starts", {start});
    b.int_initializer("ends", {end});
    b.int_initializer("axes", {0});
    b.int_initializer("steps", {step});
    b.node("Slice", {"data", "starts", "ends", "axes", "steps"}, {"shape"}, "slice");
    b.node("Reshape", {"x", "shape"}, {"y"}, "reshape");
    b.output("y");
    Graph g = import_onnx_model(b.model, ".");
    EXPECT_EQ(g.outputs[0]->shape, Shape{4}) << step;
  }
}

TEST(HardeningGraph, ZeroSizedTensorsImport) {
  test::ScopedTempDir dir;
  ModelBuilder b(17);
  b.input("x", {0, 4});
  auto* t = b.graph().add_initializer();
  t->set_name("w");
  t->set_data_type(1);
  t->add_dims(0);
  t->add_dims(4);
  t->set_raw_data("");
  b.node("Add", {"x", "w"}, {"y"}, "add");
  b.output("y");
  b.save(dir.path + "/zero.onnx");
  ImportOptions options;
  options.batch_size = std::nullopt;
  Graph g = import_onnx(dir.path + "/zero.onnx");
  EXPECT_EQ(g.value("w")->data->bytes.size(), 0u);
}

// ----- graph --batch-size -----

TEST(HardeningGraph, BatchSizeOutOfRangeIsRefused) {
  test::ScopedTempDir dir;
  test::small_convnet().save(dir.path + "/m.onnx");
  for (const char* value : {"0", "-3", "100000"}) {
    std::string err = graph_error(q(dir.path + "/m.onnx") + " --batch-size " + value);
    expect_has(err, {"--batch-size must be in [1, 65536]", std::string("got ") + value});
  }
  auto r = test::run_oxtrain("graph " + q(dir.path + "/m.onnx") + " --batch-size 3");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("batch        3"), std::string::npos) << r.out;
}

// ----- errors a person can use -----

TEST(HardeningGraph, BadExternalOffsetOrLengthNamesTheTensorAndKey) {
  test::ScopedTempDir dir;
  ModelBuilder good = test::small_convnet();
  const std::string raw = good.graph().initializer(0).raw_data();
  write_bytes(dir.path + "/w.bin", raw);
  for (const char* key : {"offset", "length"}) {
    for (const char* bad : {"abc", "-5", "99999999999999999999", "12abc", ""}) {
      ModelBuilder b = test::small_convnet();
      bool offset = std::string(key) == "offset";
      test::set_external_data(*b.graph().mutable_initializer(0), "w.bin", offset ? bad : "0",
                   offset ? std::to_string(raw.size()) : bad);
      if (std::string(bad).empty()) {  // a key present with an empty value
        auto* e = b.graph().mutable_initializer(0)->add_external_data();
        e->set_key(key);
        e->set_value("");
      }
      b.save(dir.path + "/m.onnx");
      expect_has(graph_error(q(dir.path + "/m.onnx")), {"'conv.weight'", quote_name(key), quote_name(bad)});
    }
  }
  // An offset near 2^63 that wraps when the length is added.
  ModelBuilder b = test::small_convnet();
  test::set_external_data(*b.graph().mutable_initializer(0), "w.bin", "9223372036854775807", std::to_string(raw.size()));
  b.save(dir.path + "/m.onnx");
  expect_has(graph_error(q(dir.path + "/m.onnx")), {"'conv.weight'", "w.bin", "offset 9223372036854775807"});
}

TEST(HardeningGraph, UnsupportedOpsAreGroupedOnOneShortLine) {
  test::ScopedTempDir dir;
  ModelBuilder b = test::small_convnet();
  std::string prev = "r";
  for (int i = 0; i < 40; ++i) {
    std::string out = "foo" + std::to_string(i);
    b.node("Foo", {prev}, {out}, "a_rather_long_node_name_that_an_exporter_might_write_" + std::to_string(i));
    prev = out;
  }
  b.node("Bar", {prev}, {"bar"}, "only_bar");
  b.output("bar");
  b.save(dir.path + "/m.onnx");
  std::string err = graph_error(q(dir.path + "/m.onnx"));
  expect_has(err, {"unsupported ops: ", "Bar (1 node: 'only_bar')", "Foo (40 nodes: 'a_rather_long", "more)"});
  EXPECT_LE(err.size(), 260u) << err;
  // --verbose (set_verbose_messages) lists every node.
  set_verbose_messages(true);
  std::string all = import_error(dir.path + "/m.onnx");
  set_verbose_messages(false);
  for (int i = 0; i < 40; ++i)
    EXPECT_NE(all.find("_might_write_" + std::to_string(i) + "'"), std::string::npos) << i;
}

TEST(HardeningGraph, NamesWithNewlinesAreEscaped) {
  test::ScopedTempDir dir;
  ModelBuilder b = test::small_convnet();
  b.node("Foo", {"r"}, {"foo"}, "evil\nname\x01");
  b.output("foo");
  b.save(dir.path + "/m.onnx");
  expect_has(graph_error(q(dir.path + "/m.onnx")), {"'evil\\nname\\x01'"});
  // A tensor name from the file in a data error.
  ModelBuilder t = add_of_initializer({8}, std::string(4, '\0'));
  t.graph().mutable_initializer(0)->set_name("w\nline2");
  t.graph().mutable_node(0)->set_input(1, "w\nline2");
  t.save(dir.path + "/t.onnx");
  expect_has(graph_error(q(dir.path + "/t.onnx")), {"'w\\nline2'"});
}

TEST(HardeningGraph, EveryUnsupportedConstructIsReportedTogether) {
  test::ScopedTempDir dir;
  // ConstantOfShape of shapes computed at run time (oxtrain folds it only on constants) and an
  // op oxtrain does not know: all in one message.
  ModelBuilder b(17);
  b.input("x", {2, 3});
  b.input("dims", {2}, 7);
  b.input("more", {1}, 7);
  b.node("ConstantOfShape", {"dims"}, {"c1"}, "fill_a");
  b.node("ConstantOfShape", {"more"}, {"c2"}, "fill_b");
  b.node("LRN", {"x"}, {"l"}, "norm");
  b.output("c1");
  b.output("c2");
  b.output("l");
  b.save(dir.path + "/m.onnx");
  std::string err = graph_error(q(dir.path + "/m.onnx"));
  expect_has(err, {"unsupported ops: LRN (1 node: 'norm')", "ConstantOfShape (2 nodes: 'fill_a', 'fill_b')",
                   "only on constant inputs, folded at import"});
  EXPECT_EQ(err.find("must be constants"), std::string::npos) << err;
}

TEST(HardeningGraph, SessionReportsEveryNodeWithoutAKernelAtOnce) {
  // Import folds Shape (a graph output included); a graph built in code may still hold it on a
  // run-time value, which no kernel computes.
  ModelBuilder b(17);
  b.input("x", {2, 3});
  b.node("Relu", {"x"}, {"r"}, "relu");
  b.output("r");
  Graph g = import_onnx_model(b.model, ".");
  for (const char* name : {"shape_a", "shape_b"}) {
    Value* s = g.add_value(std::string(name) + "_out", DType::i64, {2}, Role::Activation);
    s->rank_known = true;
    g.add_node("Shape", {g.value(name == std::string("shape_a") ? "x" : "r")}, {s}, name);
    g.outputs.push_back(s);
  }
  try {
    runtime::Session session(std::move(g));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    expect_has(e.what(), {"unsupported at run time", "Shape (2 nodes: 'shape_a', 'shape_b')"});
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
  }
}

// A fold-only op whose value is a graph output is folded, and an Identity writes it out.
TEST(HardeningGraph, ShapeAsAGraphOutputIsFolded) {
  ModelBuilder b(17);
  b.input("x", {2, 3});
  b.node("Shape", {"x"}, {"s"}, "shape");
  b.node("Relu", {"x"}, {"r"}, "relu");
  b.output("s", 7);
  b.output("r");
  Graph g = import_onnx_model(b.model, ".");
  EXPECT_EQ(g.value("s")->shape, (Shape{2}));
  runtime::Session session(std::move(g));
  session.feed("x", Tensor::from_float({1, -2, 3, -4, 5, -6}, {2, 3}));
  session.run();
  EXPECT_EQ(session.fetch("s").to_int64(), (std::vector<int64_t>{2, 3}));
}

// ----- the TensorProto reader -----

TEST(HardeningGraph, TensorFileSizesAreBoundedByItsBytes) {
  test::ScopedTempDir dir;
  auto write_proto = [&](const onnx::TensorProto& p) {
    std::string path = dir.path + "/t.pb";
    write_bytes(path, p.SerializeAsString());
    return path;
  };
  auto error_of = [](const std::string& path) -> std::string {
    try {
      read_tensor_file(path);
    } catch (const Error& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("not an Error: ") + e.what();
    }
    return "(no error)";
  };
  for (std::vector<int64_t> dims : {std::vector<int64_t>{int64_t(1) << 40},
                                    std::vector<int64_t>{4611686018427387905, 4},
                                    std::vector<int64_t>{-2, 2}}) {
    onnx::TensorProto p;
    p.set_data_type(1);
    for (int64_t d : dims) p.add_dims(d);
    p.set_raw_data(std::string(16, '\0'));
    std::string err = error_of(write_proto(p));
    expect_has(err, {"t.pb"});
    EXPECT_EQ(err.find("not an Error"), std::string::npos) << err;
    p.clear_raw_data();
    err = error_of(write_proto(p));
    expect_has(err, {"t.pb"});
    EXPECT_EQ(err.find("not an Error"), std::string::npos) << err;
  }
  onnx::TensorProto p;
  p.set_data_type(1);
  p.add_dims(1 << 28);
  p.add_float_data(1.0f);
  expect_has(error_of(write_proto(p)), {"t.pb", "[268435456]", "needs 268435456 values but holds 1"});
  // A folder is refused by name.
  fs::create_directories(dir.path + "/folder.pb");
  expect_has(error_of(dir.path + "/folder.pb"), {"folder.pb"});
  // A good file round-trips.
  Tensor t = Tensor::from_float({1, 2, 3, 4, 5, 6}, {2, 3});
  write_tensor_file(t, dir.path + "/good.pb");
  EXPECT_FALSE(fs::exists(dir.path + "/good.pb.tmp"));
  Tensor back = read_tensor_file(dir.path + "/good.pb");
  EXPECT_EQ(back.shape, t.shape);
  EXPECT_EQ(back.bytes, t.bytes);
}

// ----- files the graph layer writes -----

TEST(HardeningGraph, ExportAndReportFilesAreWrittenWhole) {
  test::ScopedTempDir dir;
  test::small_convnet().save(dir.path + "/m.onnx");
  const std::string m = q(dir.path + "/m.onnx");
  // Into a folder that does not exist: one clean line naming the path, nothing left behind.
  for (const char* flag : {"--export", "--dot"})
    expect_has(graph_error(m + " " + flag + " " + q(dir.path + "/missing/out")), {dir.path + "/missing/out"});
  expect_has(graph_error(m + " --training --plot " + q(dir.path + "/missing/p.svg")), {"p.svg"});
  // Export with external data: the model and its .data file, no tmp files.
  Graph g = import_onnx(dir.path + "/m.onnx");
  ExportOptions options;
  options.external_data_threshold = 64;
  export_onnx(g, dir.path + "/ext.onnx", options);
  EXPECT_TRUE(fs::exists(dir.path + "/ext.onnx.data"));
  EXPECT_FALSE(fs::exists(dir.path + "/ext.onnx.tmp"));
  EXPECT_FALSE(fs::exists(dir.path + "/ext.onnx.data.tmp"));
  Graph back = import_onnx(dir.path + "/ext.onnx");
  EXPECT_EQ(test::graph_difference(g, back), "");
}

// ----- the CPU session checks its plan against the machine -----

TEST(HardeningGraph, SessionRefusesAPlanLargerThanTheMachine) {
  // x [N, 2^20] float: 4 MiB per sample; at a batch of 2^22 the plan needs 32 TiB.
  ModelBuilder b(17);
  b.input("x", {-1, int64_t(1) << 20});
  b.node("Relu", {"x"}, {"y"}, "relu");
  b.output("y");
  ImportOptions options;
  options.batch_size = int64_t(1) << 22;
  Graph g = import_onnx_model(b.model, ".", options);
  try {
    runtime::Session session(std::move(g));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    expect_has(msg, {"the plan needs 32.0 TiB", "this machine has", "lower --batch-size", "fits)"});
    EXPECT_LE(msg.size(), 220u) << msg;
  }
  // Per sample too big: even a batch of 1 does not fit.
  ModelBuilder huge(17);
  huge.input("x", {-1, int64_t(1) << 45});
  huge.node("Relu", {"x"}, {"y"}, "relu");
  huge.output("y");
  Graph h = import_onnx_model(huge.model, ".");
  try {
    runtime::Session session(std::move(h));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    expect_has(e.what(), {"the plan needs", "even a batch of 1 does not fit"});
  }
}
