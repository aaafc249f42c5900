// ONNX's own operator tests (node tests) for the ops oxtrain supports, run on the CPU through
// the code of `oxtrain run` (cli/run_model.h), and `oxtrain run` itself end to end.
//
// tests/fixtures/onnx_node/ is written by scripts/onnx_node_tests.py: one folder per published
// case whose nodes are all supported ops (model.onnx, test_data_set_*/input_*.pb, output_*.pb)
// and manifest.json, which lists every published case of every supported op and whether it
// was committed or why not. Every committed case must reproduce its outputs as ONNX's backend
// runner compares them (same dtype and shape; |got - want| <= atol + rtol * |want|, NaN equal
// to NaN) or be in kExcluded below with its reason; an excluded case that passes, or a case of
// supported ops neither committed nor excluded, fails the test too, so the list stays true.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "base/error.h"
#include "base/narrow_types.h"
#include "cli/run_model.h"
#include "graph/onnx_io.h"
#include "graph/passes.h"
#include "tests/helpers.h"

namespace fs = std::filesystem;
using namespace oxtrain;
using cli::NamedTensor;
using graph::DType;
using graph::Tensor;

namespace {

// ONNX's backend runner: rtol 1e-3, atol 1e-7 for every node test.
constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-7;

struct Exclusion {
  const char* name;
  const char* reason;
};

// Why published cases do not pass (one line each).
constexpr const char* kString =
    "string tensors: oxtrain has no string type";
constexpr const char* kNonTensor =
    "a sequence- or optional-typed input: oxtrain has tensors only";
constexpr const char* kFloat16 =
    "float16 tensors: oxtrain's CPU kernels compute in float32 and float64";
constexpr const char* kRandomDraw =
    "a random draw: the expected output is numpy's generator's, not reproducible by another generator";
constexpr const char* kDropoutMask =
    "training-mode Dropout: the expected mask is numpy's random draw (oxtrain passes x through here)";

// Published cases that do not pass, each with the reason. Only these may fail.
const Exclusion kExcluded[] = {
    {"test_bernoulli_double_expanded", kRandomDraw},
    {"test_bernoulli_expanded", kRandomDraw},
    {"test_bernoulli_seed_expanded", kRandomDraw},
    {"test_equal_string", kString},
    {"test_equal_string_broadcast", kString},
    {"test_identity_opt", kNonTensor},
    {"test_identity_sequence", kNonTensor},
    {"test_training_dropout", kDropoutMask},
    {"test_training_dropout_default", kDropoutMask},
    {"test_training_dropout_default_mask", kDropoutMask},
    {"test_training_dropout_mask", kDropoutMask},
};

std::string node_dir() { return std::string(OXTRAIN_FIXTURES) + "/onnx_node"; }

const char* excluded_reason(const std::string& name) {
  for (const Exclusion& e : kExcluded)
    if (name == e.name) return e.reason;
  return nullptr;
}

float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  float magnitude;
  if (exp == 0) magnitude = std::ldexp(static_cast<float>(mant), -24);
  else if (exp == 31) magnitude = mant ? NAN : INFINITY;
  else magnitude = std::ldexp(static_cast<float>(mant | 0x400), static_cast<int>(exp) - 25);
  uint32_t bits;
  std::memcpy(&bits, &magnitude, 4);
  bits |= sign;
  std::memcpy(&magnitude, &bits, 4);
  return magnitude;
}

float bf16_to_float(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

double element(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::f32: return t.data<float>()[i];
    case DType::f64: return t.data<double>()[i];
    case DType::f16: return half_to_float(t.data<uint16_t>()[i]);
    case DType::bf16: return bf16_to_float(t.data<uint16_t>()[i]);
    case DType::i64: return static_cast<double>(t.data<int64_t>()[i]);
    case DType::i32: return t.data<int32_t>()[i];
    case DType::i8: return t.data<int8_t>()[i];
    case DType::i16: return t.data<int16_t>()[i];
    case DType::u16: return t.data<uint16_t>()[i];
    case DType::u32: return t.data<uint32_t>()[i];
    case DType::u64: return static_cast<double>(t.data<uint64_t>()[i]);
    case DType::u8:
    case DType::boolean: return t.data<uint8_t>()[i];
    // The narrow types, for messages (they compare as bytes).
    case DType::f8e4m3fn: return narrow_float_value(t.data<uint8_t>()[i], NarrowFloat::e4m3fn);
    case DType::f8e4m3fnuz: return narrow_float_value(t.data<uint8_t>()[i], NarrowFloat::e4m3fnuz);
    case DType::f8e5m2: return narrow_float_value(t.data<uint8_t>()[i], NarrowFloat::e5m2);
    case DType::f8e5m2fnuz: return narrow_float_value(t.data<uint8_t>()[i], NarrowFloat::e5m2fnuz);
    case DType::f4e2m1: return narrow_float_value(t.data<uint8_t>()[i], NarrowFloat::e2m1);
    case DType::f8e8m0: return e8m0_value(t.data<uint8_t>()[i]);
    case DType::i4:
    case DType::i2: return t.data<int8_t>()[i];
    case DType::u4:
    case DType::u2: return t.data<uint8_t>()[i];
    default: throw Error(std::string("no comparison for ") + graph::dtype_name(t.dtype));
  }
}

std::string number(double v) {
  std::ostringstream s;
  s.precision(9);
  s << v;
  return s.str();
}

}  // namespace

namespace oxtrain::test {

// "" when `got` matches `want` as numpy.testing.assert_allclose(got, want, rtol, atol) does
// after ONNX's runner has checked shape and dtype (bfloat16 with rtol at least 2^-6); otherwise
// what differs.
std::string compare_output(const Tensor& got, const Tensor& want, double rtol = kRtol, double atol = kAtol) {
  if (got.shape != want.shape)
    return "shape " + graph::shape_str(got.shape) + ", expected " + graph::shape_str(want.shape);
  if (got.dtype != want.dtype)
    return std::string("dtype ") + graph::dtype_name(got.dtype) + ", expected " + graph::dtype_name(want.dtype);
  if (got.dtype == DType::bf16) rtol = std::max(rtol, 1.0 / 64);
  // Integers and bools exactly (a uint64 or int64 beyond 2^53 has no exact double).
  const bool exact = !graph::is_float(got.dtype);
  const size_t size = graph::dtype_size(got.dtype);
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < want.numel(); ++i) {
    double g = element(got, i), w = element(want, i);
    bool ok = exact                           ? std::memcmp(got.bytes.data() + i * size, want.bytes.data() + i * size, size) == 0
              : std::isnan(g) || std::isnan(w) ? std::isnan(g) && std::isnan(w)
              : std::isinf(g) || std::isinf(w) ? g == w
                                               : std::fabs(g - w) <= atol + rtol * std::fabs(w);
    if (!ok && bad++ == 0) first = i;
  }
  if (bad == 0) return "";
  return std::to_string(bad) + " of " + std::to_string(want.numel()) + " elements differ; first at " +
         std::to_string(first) + ": " + number(element(got, first)) + ", expected " +
         number(element(want, first));
}

// "" when every data set of the case in `dir` reproduces its outputs; otherwise why not.
std::string run_node_case(const std::string& dir) {
  std::vector<fs::path> sets;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("test_data_set_", 0) == 0) sets.push_back(e.path());
  std::sort(sets.begin(), sets.end());
  if (sets.empty()) return "no test_data_set_* folder";
  for (const fs::path& set : sets) {
    auto files = [&](const std::string& prefix) {
      std::vector<std::string> out;
      for (int i = 0; fs::exists(set / (prefix + std::to_string(i) + ".pb")); ++i)
        out.push_back((set / (prefix + std::to_string(i) + ".pb")).string());
      return out;
    };
    std::vector<std::string> inputs = files("input_"), expected = files("output_");
    std::vector<NamedTensor> outputs;
    try {
      cli::RunModelOptions options;
      options.device = runtime::Device::cpu;
      outputs = cli::run_model(dir + "/model.onnx", inputs, options);
    } catch (const Error& e) {
      std::string why = e.what();  // without the fixture folder's path
      for (size_t at; (at = why.find(dir + "/")) != std::string::npos;) why.erase(at, dir.size() + 1);
      return why;
    }
    std::string where = set.filename().string() + ": ";
    if (outputs.size() != expected.size())
      return where + std::to_string(outputs.size()) + " outputs, expected " + std::to_string(expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      NamedTensor want = cli::read_named_tensor(expected[i]);
      std::string diff = compare_output(outputs[i].tensor, want.tensor);
      if (!diff.empty()) return where + "output " + std::to_string(i) + " '" + outputs[i].name + "': " + diff;
    }
  }
  return "";
}

}  // namespace oxtrain::test

namespace {

Tensor floats(std::vector<float> v, graph::Shape shape) { return Tensor::from_float(v, std::move(shape)); }

}  // namespace

TEST(OnnxNode, ComparisonFollowsOnnxRunner) {
  Tensor want = floats({1.0f, NAN, -2.0f, INFINITY}, {4});
  EXPECT_EQ(test::compare_output(want, want), "");
  // Within atol + rtol * |want|, and just beyond it.
  EXPECT_EQ(test::compare_output(floats({1.0009f, NAN, -2.0019f, INFINITY}, {4}), want), "");
  EXPECT_NE(test::compare_output(floats({1.0012f, NAN, -2.0f, INFINITY}, {4}), want), "");
  // NaN equals only NaN; infinities only themselves.
  EXPECT_NE(test::compare_output(floats({1.0f, 0.0f, -2.0f, INFINITY}, {4}), want), "");
  EXPECT_NE(test::compare_output(floats({1.0f, NAN, -2.0f, -INFINITY}, {4}), want), "");
  EXPECT_NE(test::compare_output(floats({1.0f, NAN, -2.0f, 1e30f}, {4}), want), "");
  // Shape and dtype must match exactly.
  EXPECT_NE(test::compare_output(floats({1.0f, NAN, -2.0f, INFINITY}, {2, 2}), want), "");
  Tensor ints = Tensor::from_int64({1, 2}, {2});
  EXPECT_NE(test::compare_output(floats({1.0f, 2.0f}, {2}), ints), "");
  EXPECT_EQ(test::compare_output(ints, ints), "");
  EXPECT_NE(test::compare_output(Tensor::from_int64({1, 3}, {2}), ints), "");
  // float16: 1.0 is 0x3c00, 1.0009765625 is 0x3c01 (inside rtol), 1.001953125 0x3c02 (outside).
  Tensor h(DType::f16, {1}), h1(DType::f16, {1}), h2(DType::f16, {1});
  h.data<uint16_t>()[0] = 0x3c00;
  h1.data<uint16_t>()[0] = 0x3c01;
  h2.data<uint16_t>()[0] = 0x3c02;
  EXPECT_EQ(test::compare_output(h1, h), "");
  EXPECT_NE(test::compare_output(h2, h), "");
  // bfloat16 takes two of its ULPs: 1.0 is 0x3f80, 0x3f81 = 1.0078125 passes, 0x3f83 does not.
  Tensor b(DType::bf16, {1}), b1(DType::bf16, {1}), b3(DType::bf16, {1});
  b.data<uint16_t>()[0] = 0x3f80;
  b1.data<uint16_t>()[0] = 0x3f81;
  b3.data<uint16_t>()[0] = 0x3f83;
  EXPECT_EQ(test::compare_output(b1, b), "");
  EXPECT_NE(test::compare_output(b3, b), "");
}

// Every committed case passes unless excluded; every exclusion still fails; every published
// case of supported ops is committed or excluded.
TEST(OnnxNode, PublishedCasesPass) {
  const std::string dir = node_dir();
  std::ifstream in(dir + "/manifest.json");
  ASSERT_TRUE(in) << "no " << dir << "/manifest.json: run scripts/onnx_node_tests.py";
  nlohmann::json manifest = nlohmann::json::parse(in);
  const auto& cases = manifest.at("cases");

  std::vector<std::string> committed;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().rfind("test_", 0) == 0)
      committed.push_back(e.path().filename().string());
  std::sort(committed.begin(), committed.end());
  ASSERT_GE(committed.size(), 50u) << "the fixtures hold too few cases";

  std::vector<std::string> problems;
  int passed = 0, excluded = 0;
  for (const std::string& name : committed) {
    if (!cases.contains(name) || cases[name].at("status") != "committed")
      problems.push_back(name + ": a folder the manifest does not list as committed; re-run the script");
    std::string why = test::run_node_case(dir + "/" + name);
    const char* reason = excluded_reason(name);
    if (reason) {
      ++excluded;
      if (why.empty()) problems.push_back(name + ": passes now; remove it from kExcluded");
    } else if (why.empty()) {
      ++passed;
    } else {
      problems.push_back(name + ": " + why);
    }
  }
  std::set<std::string> on_disk(committed.begin(), committed.end());
  for (const auto& [name, c] : cases.items()) {
    if (!c.at("all_ops_supported").get<bool>() || on_disk.count(name)) continue;
    if (excluded_reason(name)) ++excluded;
    else problems.push_back(name + ": uses only supported ops but is neither committed nor excluded (" +
                            c.at("status").get<std::string>() + ")");
  }
  for (const Exclusion& e : kExcluded)
    if (!cases.contains(e.name)) problems.push_back(std::string(e.name) + ": excluded but not a published case");

  std::string counts = std::to_string(committed.size()) + " cases run: " + std::to_string(passed) + " passed, " +
                       std::to_string(excluded) + " excluded";
  std::cout << "[ onnx node ] " << manifest.at("supported_ops").size() << " supported ops, " << cases.size()
            << " published cases use them; " << counts << "\n";
  RecordProperty("cases_run", static_cast<int>(committed.size()));
  RecordProperty("passed", passed);
  RecordProperty("excluded", excluded);
  std::string all;
  for (const auto& p : problems) all += "\n  " + p;
  EXPECT_TRUE(problems.empty()) << problems.size() << " problems (" << counts << "):" << all;
}

// ----- oxtrain run -----

namespace {

void save_tensor(const Tensor& t, const std::string& path) { graph::write_tensor_file(t, path); }

// y = Relu(x) + b with x [N, 3] and b [N, 3]: N is symbolic in both.
test::ModelBuilder symbolic_model() {
  test::ModelBuilder m(17);
  m.input("x", {-1, 3});
  m.input("b", {-1, 3});
  m.output("y");
  m.node("Relu", {"x"}, {"r"}, "relu");
  m.node("Add", {"r", "b"}, {"y"}, "add");
  return m;
}

}  // namespace

// One published case end to end: the files `oxtrain run` writes are the expected outputs, with
// the outputs' names; NAME=PATH binds inputs in any order.
// ONNX packs the 4- and 2-bit types (two or four per byte, the first in the lowest bits); in
// memory they take a byte each, the signed ones sign-extended.
TEST(OnnxNodeCli, PackedTypesRoundTripThroughTensorFiles) {
  const std::string dir = testing::TempDir() + "/packed_types";
  Tensor i4(DType::i4, {5}), u2(DType::u2, {6});
  const int8_t i4_values[] = {-8, 7, 0, -1, 3};
  const uint8_t u2_values[] = {3, 0, 1, 2, 3, 1};
  std::memcpy(i4.bytes.data(), i4_values, 5);
  std::memcpy(u2.bytes.data(), u2_values, 6);
  EXPECT_EQ(graph::onnx_raw_data(i4), std::string("\x78\xf0\x03", 3));
  EXPECT_EQ(graph::onnx_raw_data(u2), std::string("\x93\x07", 2));
  std::vector<std::string> paths = cli::write_outputs({{"a", i4}, {"b", u2}}, dir);
  ASSERT_EQ(paths.size(), 2u);
  NamedTensor a = cli::read_named_tensor(paths[0]), b = cli::read_named_tensor(paths[1]);
  EXPECT_EQ(a.tensor.dtype, DType::i4);
  EXPECT_EQ(a.tensor.bytes, i4.bytes);
  EXPECT_EQ(b.tensor.dtype, DType::u2);
  EXPECT_EQ(b.tensor.bytes, u2.bytes);
}

TEST(OnnxNodeCli, RunWritesOutputsAsOnnxTestData) {
  const std::string c = node_dir() + "/test_add_bcast";
  ASSERT_TRUE(fs::exists(c + "/model.onnx")) << c;
  const std::string set = c + "/test_data_set_0";
  test::ScopedTempDir tmp;
  for (const std::string& inputs : {set + "/input_0.pb," + set + "/input_1.pb",
                                    "y=" + set + "/input_1.pb,x=" + set + "/input_0.pb"}) {
    std::string out = tmp.path + "/out";
    fs::remove_all(out);
    auto r = test::run_oxtrain("run " + c + "/model.onnx --inputs " + inputs + " --outputs " + out + " --device cpu");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("output 0 'sum': float32 [3,4,5] -> " + out + "/output_0.pb"), std::string::npos) << r.out;
    NamedTensor got = cli::read_named_tensor(out + "/output_0.pb");
    NamedTensor want = cli::read_named_tensor(set + "/output_0.pb");
    EXPECT_EQ(got.name, "sum");
    EXPECT_EQ(got.name, want.name);
    EXPECT_EQ(test::compare_output(got.tensor, want.tensor), "");
    EXPECT_FALSE(fs::exists(out + "/output_1.pb"));
  }
}

TEST(OnnxNodeCli, SupportedOpsListsKernels) {
  auto r = test::run_oxtrain("run --supported-ops --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("opsets").at("ai.onnx"), nlohmann::json::parse("[1, 28]"));
  EXPECT_EQ(j.at("opsets").at("ai.onnx_every_op"), nlohmann::json::parse("[7, 21]"));
  const auto& ops = j.at("ops");
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& o : ops) by_name[o.at("op_type").get<std::string>()] = o;
  ASSERT_TRUE(by_name.count("Relu"));
  EXPECT_TRUE(by_name["Relu"].at("cpu").get<bool>());
  EXPECT_FALSE(by_name["Relu"].at("fold_only").get<bool>());
  // The versions of each ai.onnx op that import accepts.
  EXPECT_EQ(by_name["Relu"].at("versions"), nlohmann::json::parse("[6, 13, 14]"));
  EXPECT_EQ(by_name["Mod"].at("versions"), nlohmann::json::parse("[10, 13, 28]"));
  ASSERT_TRUE(by_name.count("Momentum"));
  EXPECT_EQ(by_name["Momentum"].at("domain"), "ai.onnx.preview.training");
  // The list is the registry's, each op with its kernels.
  std::vector<cli::OpSupport> list = cli::supported_op_list();
  ASSERT_EQ(ops.size(), list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    EXPECT_EQ(ops[i].at("op_type"), list[i].op_type);
    EXPECT_EQ(ops[i].at("domain"), list[i].domain);
    EXPECT_EQ(ops[i].at("cpu"), list[i].cpu) << list[i].op_type;
    EXPECT_EQ(ops[i].at("cuda"), list[i].cuda) << list[i].op_type;
    EXPECT_EQ(ops[i].at("fold_only"), list[i].fold_only) << list[i].op_type;
  }
  auto text = test::run_oxtrain("run --supported-ops");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("\nRelu "), std::string::npos) << text.out;
}

// Symbolic dimensions, the batch or any other, take the files' sizes; one name, one size.
TEST(OnnxNodeCli, SymbolicDimsComeFromTheTensors) {
  test::ScopedTempDir tmp;
  symbolic_model().save(tmp.path + "/m.onnx");
  save_tensor(floats({-1, 2, -3, 4, 5, -6, 7, 8}, {4, 2}), tmp.path + "/bad_rank.pb");
  save_tensor(floats({-1, 2, -3, 4, 5, -6}, {2, 3}), tmp.path + "/x.pb");
  save_tensor(floats({10, 20, 30, 40, 50, 60}, {2, 3}), tmp.path + "/b.pb");
  auto out = cli::run_model(tmp.path + "/m.onnx", {tmp.path + "/x.pb", tmp.path + "/b.pb"});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].name, "y");
  EXPECT_EQ(test::compare_output(out[0].tensor, floats({10, 22, 30, 44, 55, 60}, {2, 3})), "");

  save_tensor(floats({1, 2, 3, 4, 5, 6, 7, 8, 9}, {3, 3}), tmp.path + "/b3.pb");
  try {
    cli::run_model(tmp.path + "/m.onnx", {tmp.path + "/x.pb", tmp.path + "/b3.pb"});
    FAIL() << "N = 2 and N = 3 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("graph input 'b' (from '" + tmp.path + "/b3.pb'): symbolic dimension 'N' is 3 "
                                         "at axis 0 but 2 in '" + tmp.path + "/x.pb'"),
              std::string::npos)
        << e.what();
  }
  try {
    cli::run_model(tmp.path + "/m.onnx", {tmp.path + "/bad_rank.pb", tmp.path + "/b.pb"});
    FAIL() << "[4,2] accepted for [N,3]";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("graph input 'x' (from '" + tmp.path +
                                         "/bad_rank.pb'): the model expects float32 [N,3] but the file holds "
                                         "float32 [4,2] (axis 1: 3 vs 2)"),
              std::string::npos)
        << e.what();
  }
}

// Inputs an op reads when the graph is compiled (Reshape's shape) hold the file's values.
TEST(OnnxNodeCli, CompileTimeInputsComeFromTheFiles) {
  test::ScopedTempDir tmp;
  test::ModelBuilder m(17);
  m.input("x", {2, 3});
  m.input("shape", {2}, 7);
  m.output("y");
  m.node("Reshape", {"x", "shape"}, {"y"}, "reshape");
  m.save(tmp.path + "/m.onnx");
  save_tensor(floats({1, 2, 3, 4, 5, 6}, {2, 3}), tmp.path + "/x.pb");
  save_tensor(Tensor::from_int64({3, -1}, {2}), tmp.path + "/shape.pb");
  auto out = cli::run_model(tmp.path + "/m.onnx", {"shape=" + tmp.path + "/shape.pb", tmp.path + "/x.pb"});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(test::compare_output(out[0].tensor, floats({1, 2, 3, 4, 5, 6}, {3, 2})), "");
}

// Every error is one line naming the input, the file and what was expected.
TEST(OnnxNodeCli, ClearErrors) {
  test::ScopedTempDir tmp;
  const std::string model = tmp.path + "/m.onnx";
  symbolic_model().save(model);
  save_tensor(floats({1, 2, 3}, {1, 3}), tmp.path + "/x.pb");
  save_tensor(Tensor::from_int64({1, 2, 3}, {1, 3}), tmp.path + "/i.pb");
  const std::string x = tmp.path + "/x.pb";
  struct Case {
    std::string args, message;
  } cases[] = {
      {"--inputs " + x + "," + tmp.path + "/i.pb",
       "graph input 'b' (from '" + tmp.path + "/i.pb'): the model expects float32 [N,3] but the file holds int64 [1,3]"},
      {"--inputs " + x, "graph input 'b' (2 of 2) has no tensor file; give one file per graph input, in the graph's "
                        "order ('x', 'b'), or NAME=PATH"},
      {"--inputs " + x + "," + x + "," + x, "3 tensor files for 2 graph inputs ('x', 'b'); '" + x +
                                               "' has no input left to feed"},
      {"--inputs x=" + x + ",x=" + x + "," + x, "graph input 'x' is given twice"},
      {"--inputs " + x + ",z=" + x,
       "--inputs: 'z=" + x + "' is neither a file nor NAME=PATH with NAME a graph input ('x', 'b')"},
      {"--inputs " + x + "," + tmp.path + "/missing.pb", "graph input 'b': "},
      {"--inputs " + x + "," + x + " --device tpu", "--device is cpu, cuda or auto"},
  };
  for (const auto& c : cases) {
    auto r = test::run_oxtrain("run " + model + " " + c.args + " --outputs " + tmp.path + "/out");
    EXPECT_EQ(test::clean_error_problem(r), "") << c.args;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << c.args << "\n" << r.err;
    EXPECT_FALSE(fs::exists(tmp.path + "/out")) << c.args;
  }

  // Ops oxtrain lacks are named all at once, with their nodes, before any file is read.
  test::ModelBuilder u(17);
  u.input("x", {1, 3});
  u.output("y");
  u.node("FooOp", {"x"}, {"a"}, "foo");
  u.node("Relu", {"a"}, {"b"}, "relu");
  u.node("BarOp", {"b"}, {"y"}, "bar");
  u.save(tmp.path + "/u.onnx");
  auto r = test::run_oxtrain("run " + tmp.path + "/u.onnx --inputs " + tmp.path + "/missing.pb");
  EXPECT_EQ(test::clean_error_problem(r), "");
  EXPECT_NE(r.err.find("unsupported ops: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("FooOp (1 node: 'foo')"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("BarOp (1 node: 'bar')"), std::string::npos) << r.err;
}
