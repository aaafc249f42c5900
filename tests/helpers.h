// Shared helpers of the test suite: building small ONNX models in memory, comparing graphs,
// running the oxtrain binary.
#pragma once

#include <onnx/onnx_pb.h>

#include <memory>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "graph/ir.h"
#include "io/image.h"
#include "runtime/session.h"

namespace oxtrain::test {

// A tiny ModelProto builder, so error cases are made by the test itself.
struct ModelBuilder {
  onnx::ModelProto model;
  explicit ModelBuilder(int64_t opset = 17, int64_t ir_version = 8);
  onnx::GraphProto& graph() { return *model.mutable_graph(); }
  // dims: -1 for a symbolic dim named `sym`
  void input(const std::string& name, std::vector<int64_t> dims, int elem_type = 1,
             const std::string& sym = "N");
  void output(const std::string& name, int elem_type = 1);
  void initializer(const std::string& name, std::vector<int64_t> dims, float fill);
  void int_initializer(const std::string& name, std::vector<int64_t> values);
  onnx::NodeProto& node(const std::string& op, std::vector<std::string> inputs,
                        std::vector<std::string> outputs, const std::string& name = "");
  void save(const std::string& path) const;
};

// Moves a tensor to external data: clears its raw data and writes the entries location, offset
// and length (an empty string leaves that entry out), as given (tests write bad values too).
void set_external_data(onnx::TensorProto& t, const std::string& location, const std::string& offset,
                       const std::string& length);

void set_ints(onnx::NodeProto& n, const std::string& key, std::vector<int64_t> values);
void set_int(onnx::NodeProto& n, const std::string& key, int64_t value);

// A small conv net: Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->5).
ModelBuilder small_convnet(int64_t opset = 17);

// A model of the zoo (graph/zoo.h) imported at a fixed batch, as the tests build ResNets.
graph::Graph zoo_at_batch(const std::string& name, int64_t batch, int64_t image_size = 224, int64_t classes = 1000,
                          uint64_t seed = 0);

// A training graph in a session (its gradients in the gradient arena), for comparing runs
// step by step. `states` are the values a step updates, sorted by name: graphs that compute
// the same may finish their gradients in other orders.
struct TrainingRun {
  autodiff::TrainingGraph tg;
  std::unique_ptr<runtime::Session> session;
  std::vector<std::string> states;
};
TrainingRun make_training_run(graph::Graph forward, const autodiff::TrainingOptions& options,
                              runtime::SessionOptions session = {});
// One step: random float images (from `image_seed`) into "input", `labels`, learning rate `lr`.
void run_training_step(TrainingRun& run, uint64_t image_seed, const std::vector<int64_t>& labels, float lr,
                       int64_t step);
// How many of the states differ in any bit between two runs with the same states.
int differing_states(const TrainingRun& a, const TrainingRun& b);

// Empty string when equal; otherwise what differs first.
std::string graph_difference(const graph::Graph& a, const graph::Graph& b);

struct RunResult {
  int exit_code;
  std::string out, err;
};
// Runs a shell command line (sh -c), capturing stdout and stderr.
RunResult run_shell(const std::string& command_line);
// Runs the oxtrain binary with `args` (shell-quoted by the caller).
RunResult run_oxtrain(const std::string& args);
// Runs it with `seconds` of wall time at most (exit code 124 when killed, as timeout(1)) and,
// when address_space_mib > 0, an address-space limit (ulimit -v) of that many MiB beyond what
// the program's libraries take (this test program's own size at its first call): an allocation
// beyond it fails inside oxtrain instead of taking the machine's memory.
RunResult run_oxtrain_limited(const std::string& args, int seconds, int64_t address_space_mib = 0);

// What every error path of the program must look like: exit code 2, stderr exactly one line
// "oxtrain: error: ..." of at most max_chars, no bare exception text (std::, stoll, bad_alloc,
// what()). Returns "" when it does, else what is wrong (for EXPECT_EQ(..., "")).
std::string clean_error_problem(const RunResult& result, size_t max_chars = 300);

// True in an ASan/UBSan build: tests that bound memory by RSS or address space skip there
// (ASan reserves terabytes of shadow memory and its quarantine inflates RSS).
bool running_under_sanitizer();

std::string temp_dir();  // a fresh folder for this test

// A fresh folder under the system's temp dir, removed with everything in it (read-only parts
// included) when the object goes.
struct ScopedTempDir {
  std::string path;
  ScopedTempDir();
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
};
std::string read_text(const std::string& path);

// Uniform random RGB pixels, the same for a seed (a JPEG of it is mostly entropy-coded data).
io::Image random_image(int width, int height, uint64_t seed);

// Writes `bytes` to `path`, making its folder first.
void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes);

// A JPEG of `pixels` through TurboJPEG (pixel_format TJPF_*, subsamp TJSAMP_*, flags TJFLAG_*,
// e.g. progressive), for tests that need a file of a particular kind.
std::vector<uint8_t> tj_compress(const uint8_t* pixels, int width, int height, int pixel_format,
                                 int subsamp, int quality, int flags = 0);

}  // namespace oxtrain::test
