#include "tests/helpers.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "graph/onnx_io.h"
#include "graph/zoo.h"
#include "tests/kernel_helpers.h"

namespace fs = std::filesystem;

namespace oxtrain::test {

ModelBuilder::ModelBuilder(int64_t opset, int64_t ir_version) {
  model.set_ir_version(ir_version);
  model.set_producer_name("oxtrain-tests");
  auto* o = model.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  graph().set_name("test");
}

void ModelBuilder::input(const std::string& name, std::vector<int64_t> dims, int elem_type,
                         const std::string& sym) {
  auto* v = graph().add_input();
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(elem_type);
  auto* shape = tt->mutable_shape();
  for (int64_t d : dims) {
    auto* dim = shape->add_dim();
    if (d < 0) dim->set_dim_param(sym);
    else dim->set_dim_value(d);
  }
}

void ModelBuilder::output(const std::string& name, int elem_type) {
  auto* v = graph().add_output();
  v->set_name(name);
  v->mutable_type()->mutable_tensor_type()->set_elem_type(elem_type);
}

void ModelBuilder::initializer(const std::string& name, std::vector<int64_t> dims, float fill) {
  auto* t = graph().add_initializer();
  t->set_name(name);
  t->set_data_type(1);
  int64_t n = 1;
  for (int64_t d : dims) {
    t->add_dims(d);
    n *= d;
  }
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) values[i] = fill + 0.001f * static_cast<float>(i % 17);
  t->set_raw_data(values.data(), values.size() * sizeof(float));
}

void ModelBuilder::int_initializer(const std::string& name, std::vector<int64_t> values) {
  auto* t = graph().add_initializer();
  t->set_name(name);
  t->set_data_type(7);
  t->add_dims(static_cast<int64_t>(values.size()));
  for (int64_t v : values) t->add_int64_data(v);
}

onnx::NodeProto& ModelBuilder::node(const std::string& op, std::vector<std::string> inputs,
                                    std::vector<std::string> outputs, const std::string& name) {
  auto* n = graph().add_node();
  n->set_op_type(op);
  n->set_name(name.empty() ? op + "_" + std::to_string(graph().node_size()) : name);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return *n;
}

void ModelBuilder::save(const std::string& path) const {
  std::ofstream out(path, std::ios::binary);
  ASSERT_TRUE(model.SerializeToOstream(&out)) << path;
}

void set_ints(onnx::NodeProto& n, const std::string& key, std::vector<int64_t> values) {
  auto* a = n.add_attribute();
  a->set_name(key);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t v : values) a->add_ints(v);
}

void set_int(onnx::NodeProto& n, const std::string& key, int64_t value) {
  auto* a = n.add_attribute();
  a->set_name(key);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}

ModelBuilder small_convnet(int64_t opset) {
  ModelBuilder b(opset);
  b.input("x", {-1, 3, 8, 8});
  b.initializer("conv.weight", {4, 3, 3, 3}, 0.1f);
  b.initializer("conv.bias", {4}, 0.0f);
  b.initializer("fc.weight", {5, 4}, 0.2f);
  b.initializer("fc.bias", {5}, 0.0f);
  auto& conv = b.node("Conv", {"x", "conv.weight", "conv.bias"}, {"c"}, "conv");
  set_ints(conv, "pads", {1, 1, 1, 1});
  b.node("Relu", {"c"}, {"r"}, "relu");
  b.node("GlobalAveragePool", {"r"}, {"p"}, "pool");
  b.node("Flatten", {"p"}, {"f"}, "flatten");
  auto& fc = b.node("Gemm", {"f", "fc.weight", "fc.bias"}, {"y"}, "fc");
  set_int(fc, "transB", 1);
  b.output("y");
  return b;
}

namespace {

bool tensors_equal(const graph::Tensor& a, const graph::Tensor& b) {
  return a.dtype == b.dtype && a.shape == b.shape && a.bytes == b.bytes;
}

bool attrs_equal(const graph::Attribute& a, const graph::Attribute& b) {
  if (a.value.index() != b.value.index()) return false;
  if (const auto* ta = std::get_if<graph::Tensor>(&a.value))
    return tensors_equal(*ta, std::get<graph::Tensor>(b.value));
  return std::visit(
      [&](const auto& va) -> bool {
        using T = std::decay_t<decltype(va)>;
        if constexpr (std::is_same_v<T, graph::Tensor>) return true;
        else if constexpr (std::is_same_v<T, float>)
          // Bitwise, so NaN attributes compare equal to themselves and -0 differs from 0.
          return std::memcmp(&va, &std::get<T>(b.value), sizeof(float)) == 0;
        else return va == std::get<T>(b.value);
      },
      a.value);
}

std::string names(const std::vector<graph::Value*>& values) {
  std::string s;
  for (const auto* v : values) s += (v ? v->name : std::string("<none>")) + ",";
  return s;
}

}  // namespace

std::string graph_difference(const graph::Graph& a, const graph::Graph& b) {
  if (a.opsets.size() != b.opsets.size()) return "opset count";
  for (size_t i = 0; i < a.opsets.size(); ++i)
    if (a.opsets[i].domain != b.opsets[i].domain || a.opsets[i].version != b.opsets[i].version)
      return "opset " + a.opsets[i].domain;
  if (a.ir_version != b.ir_version) return "ir_version";
  if (names(a.inputs) != names(b.inputs)) return "inputs " + names(a.inputs) + " vs " + names(b.inputs);
  if (names(a.outputs) != names(b.outputs)) return "outputs";
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const auto* x = a.inputs[i];
    const auto* y = b.inputs[i];
    if (x->dtype != y->dtype || x->shape_string() != y->shape_string())
      return "input " + x->name + " " + x->shape_string() + " vs " + y->shape_string();
  }
  for (size_t i = 0; i < a.outputs.size(); ++i)
    if (a.outputs[i]->shape_string() != b.outputs[i]->shape_string())
      return "output " + a.outputs[i]->name;
  auto ia = a.initializers(), ib = b.initializers();
  if (ia.size() != ib.size())
    return "initializer count " + std::to_string(ia.size()) + " vs " + std::to_string(ib.size());
  for (const auto* v : ia) {
    const auto* w = b.find_value(v->name);
    if (!w || !w->data) return "initializer " + v->name + " missing";
    if (!tensors_equal(*v->data, *w->data)) return "initializer " + v->name + " differs";
    if (v->role != w->role) return "initializer " + v->name + " role";
  }
  if (a.nodes().size() != b.nodes().size()) return "node count";
  for (size_t i = 0; i < a.nodes().size(); ++i) {
    const auto& n = *a.nodes()[i];
    const auto& m = *b.nodes()[i];
    if (n.name != m.name || n.op_type != m.op_type || n.domain != m.domain)
      return "node " + std::to_string(i) + " " + n.describe() + " vs " + m.describe();
    if (names(n.inputs) != names(m.inputs) || names(n.outputs) != names(m.outputs))
      return "links of " + n.describe();
    if (n.attrs.size() != m.attrs.size()) return "attribute count of " + n.describe();
    for (const auto& [k, attr] : n.attrs) {
      auto it = m.attrs.find(k);
      if (it == m.attrs.end() || !attrs_equal(attr, it->second))
        return "attribute " + k + " of " + n.describe();
    }
    for (size_t o = 0; o < n.outputs.size(); ++o)
      if (n.outputs[o] && n.outputs[o]->shape_string() != m.outputs[o]->shape_string())
        return "shape of " + n.outputs[o]->name;
  }
  return "";
}

RunResult run_shell(const std::string& command_line) {
  std::string dir = temp_dir();
  std::string out_path = dir + "/stdout", err_path = dir + "/stderr";
  std::string cmd = command_line + " >" + out_path + " 2>" + err_path;
  int status = std::system(cmd.c_str());
  RunResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_text(out_path);
  r.err = read_text(err_path);
  return r;
}


void set_external_data(onnx::TensorProto& t, const std::string& location, const std::string& offset,
                       const std::string& length) {
  t.clear_raw_data();
  t.set_data_location(onnx::TensorProto::EXTERNAL);
  for (auto [key, value] : {std::pair{"location", &location}, {"offset", &offset}, {"length", &length}}) {
    if (value->empty() && std::string_view(key) != "location") continue;
    auto* e = t.add_external_data();
    e->set_key(key);
    e->set_value(*value);
  }
}

RunResult run_oxtrain(const std::string& args) { return run_shell(std::string(OXTRAIN_BINARY) + " " + args); }

namespace {

// The address space this test program held when it first asked: it links the same libraries as
// the oxtrain program (a CUDA build maps over a gigabyte of cuDNN, cuBLASLt and NCCL before
// main), so it stands for what oxtrain needs before it does anything.
int64_t baseline_address_space_kib() {
  static const int64_t kib = [] {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
      if (line.rfind("VmSize:", 0) == 0) return static_cast<int64_t>(std::strtoll(line.c_str() + 7, nullptr, 10));
    return int64_t{0};
  }();
  return kib;
}

}  // namespace

RunResult run_oxtrain_limited(const std::string& args, int seconds, int64_t address_space_mib) {
  std::string limit =
      address_space_mib > 0
          ? "ulimit -v " + std::to_string(baseline_address_space_kib() + address_space_mib * 1024) + "; "
          : "";
  return run_shell("(" + limit + "exec timeout -k 5 " + std::to_string(seconds) + " " +
                   std::string(OXTRAIN_BINARY) + " " + args + ")");
}

std::string clean_error_problem(const RunResult& r, size_t max_chars) {
  if (r.exit_code != 2) return "exit code " + std::to_string(r.exit_code) + " (stderr: " + r.err + ")";
  std::string err = r.err;
  if (!err.empty() && err.back() == '\n') err.pop_back();
  if (err.find('\n') != std::string::npos) return "more than one line on stderr: " + r.err;
  if (err.rfind("oxtrain: error: ", 0) != 0) return "no 'oxtrain: error: ' prefix: " + r.err;
  if (err.size() > max_chars) return "a line of " + std::to_string(err.size()) + " characters: " + err;
  for (const char* bare : {"std::", "stoll", "stoi", "stod", "bad_alloc", "what()", "basic_string"})
    if (err.find(bare) != std::string::npos) return std::string("bare exception text '") + bare + "': " + err;
  return "";
}

bool running_under_sanitizer() {
#if defined(__SANITIZE_ADDRESS__) || defined(OXTRAIN_SANITIZED)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(undefined_behavior_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

namespace {

// This test process's folder under the temp dir, removed with everything in it when the
// process ends (set OXTRAIN_KEEP_TEST_FILES to keep it for a look): a run of the suite would
// otherwise leave gigabytes of models and checkpoints behind.
struct ProcessTempRoot {
  fs::path path = fs::temp_directory_path() / ("oxtrain_tests_" + std::to_string(getpid()));
  ~ProcessTempRoot() {
    if (std::getenv("OXTRAIN_KEEP_TEST_FILES")) return;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(path, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_directory(ec)) fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
};

}  // namespace

std::string temp_dir() {
  static ProcessTempRoot root;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "oxtrain";
  fs::path dir = root.path / name;
  static int counter = 0;
  dir /= std::to_string(counter++);
  fs::create_directories(dir);
  return dir.string();
}

ScopedTempDir::ScopedTempDir() {
  std::string tmpl = (fs::temp_directory_path() / "oxtrain-test-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed for " + tmpl);
  path = tmpl;
}

ScopedTempDir::~ScopedTempDir() {
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(path, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_directory(ec))
      fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(path, ec);
}

io::Image random_image(int width, int height, uint64_t seed) {
  io::Image img;
  img.width = width;
  img.height = height;
  img.rgb.resize(size_t(width) * height * 3);
  io::SampleRng rng(seed, 1, 2);
  for (auto& v : img.rgb) v = static_cast<uint8_t>(rng.integer(0, 255));
  return img;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

graph::Graph zoo_at_batch(const std::string& name, int64_t batch, int64_t image_size, int64_t classes, uint64_t seed) {
  graph::ZooOptions zo;
  zo.image_size = image_size;
  zo.num_classes = classes;
  zo.seed = seed;
  graph::Graph g = graph::make_zoo_model(name, zo);
  graph::ImportOptions io;
  io.batch_size = batch;
  graph::prepare(g, io);
  return g;
}

TrainingRun make_training_run(graph::Graph forward, const autodiff::TrainingOptions& options,
                              runtime::SessionOptions so) {
  TrainingRun r{autodiff::build_training_graph(std::move(forward), options), nullptr, {}};
  for (const auto& [state, next] : r.tg.graph.updates) r.states.push_back(state->name);
  std::sort(r.states.begin(), r.states.end());
  for (const auto& [v, d] : r.tg.gradients) so.gradients.push_back(d);
  graph::Graph g = std::move(r.tg.graph);
  r.session = std::make_unique<runtime::Session>(std::move(g), so);
  return r;
}

void run_training_step(TrainingRun& r, uint64_t image_seed, const std::vector<int64_t>& labels, float lr,
                       int64_t step) {
  const graph::Value* images = r.session->graph().value("input");
  r.session->feed("input", random_tensor(images->dtype, images->shape, image_seed));
  r.session->feed(r.tg.labels, graph::Tensor::from_int64(labels, {static_cast<int64_t>(labels.size())}));
  r.session->feed(r.tg.learning_rate, graph::Tensor::from_float({lr}, {}));
  r.session->feed(r.tg.step, graph::Tensor::from_int64({step}, {}));
  r.session->run();
}

int differing_states(const TrainingRun& a, const TrainingRun& b) {
  int differing = 0;
  for (const std::string& state : a.states)
    differing += a.session->fetch(state).bytes != b.session->fetch(state).bytes;
  return differing;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> tj_compress(const uint8_t* pixels, int width, int height, int pixel_format,
                                 int subsamp, int quality, int flags) {
  tjhandle h = tjInitCompress();
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  const int rc = tjCompress2(h, pixels, width, 0, height, pixel_format, &buf, &size, subsamp, quality, flags);
  EXPECT_EQ(rc, 0) << tjGetErrorStr2(h);
  std::vector<uint8_t> out;
  if (rc == 0) out.assign(buf, buf + size);
  tjFree(buf);
  tjDestroy(h);
  return out;
}

}  // namespace oxtrain::test
