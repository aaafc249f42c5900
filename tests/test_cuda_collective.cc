// The CUDA oxtrain.AllReduce kernel and the NCCL communicator. On a GPU: a job of one rank over
// NCCL (its collectives leave the data bit for bit as it was, ncclAvg included), the kernel
// without a communicator (a copy, as the CPU kernel), and AllReduce nodes run by a Session over
// NCCL through an eager step, the captured step and replays, with the outputs contiguous (one
// NCCL call), out of order (one NCCL group) and in buffers apart from the inputs (copied first);
// a small ResNet trained as a job of one rank over NCCL, bit for bit as without one.
// Without a GPU: the factory's refusals (float64, a Gloo communicator), checked before any CUDA
// call. The GPU tests skip, with one message, where no GPU is at hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "autodiff/training.h"
#include "base/error.h"
#include "graph/ir.h"
#include "graph/ops.h"
#include "runtime/dist/communicator.h"
#include "runtime/dist/store.h"
#include "runtime/kernel.h"
#include "runtime/session.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

#ifdef OXTRAIN_HAVE_CUDA
#include <cuda_runtime.h>

#include "runtime/dist/nccl_communicator.h"
#endif

using namespace oxtrain;
using namespace oxtrain::graph;

namespace {

std::string indexed(const char* prefix, size_t i) { return std::string(prefix) + std::to_string(i); }

// One AllReduce node over values of the given dtype and shapes, for calling the factory.
struct OneNode {
  Graph g;
  Node* node = nullptr;
  OneNode(DType dtype, const std::vector<Shape>& shapes) {
    std::vector<Value*> ins, outs;
    for (size_t i = 0; i < shapes.size(); ++i) {
      Value* in = g.add_value(indexed("g", i), dtype, shapes[i], Role::Input);
      Value* out = g.add_value(indexed("r", i), dtype, shapes[i]);
      in->rank_known = out->rank_known = true;
      ins.push_back(in);
      outs.push_back(out);
    }
    node = g.add_node("AllReduce", ins, outs, "bucket0", kOxtrainDomain);
  }
};

const runtime::KernelFactory* cuda_all_reduce() {
  return runtime::KernelRegistry::global().find(kOxtrainDomain, "AllReduce", runtime::Device::cuda);
}

std::string refusal(const runtime::KernelInit& init) {
  try {
    (*cuda_all_reduce())(init);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The factory, without a GPU.

TEST(CudaCollective, FactoryRefusesFloat64BeforeTouchingTheGpu) {
  if (!cuda_all_reduce()) GTEST_SKIP() << "this build has no CUDA kernels";
  OneNode n(DType::f64, {{5, 7}, {3}});
  runtime::ExecContext context;
  context.device = runtime::Device::cuda;  // no CUDA context: a CUDA call would fail differently
  std::string what = refusal(runtime::KernelInit{*n.node, 1, runtime::Device::cuda, &context});
  EXPECT_NE(what.find("AllReduce 'bucket0'"), std::string::npos) << what;
  EXPECT_NE(what.find("takes float32, got float64"), std::string::npos) << what;
}

TEST(CudaCollective, FactoryRefusesAGlooCommunicator) {
  if (!cuda_all_reduce()) GTEST_SKIP() << "this build has no CUDA kernels";
  auto store = runtime::dist::make_memory_store();
  runtime::dist::CommOptions options;  // rank 0 of 1: Gloo makes no device and no connection
  auto gloo = runtime::dist::make_gloo_communicator(*store, options);
  OneNode n(DType::f32, {{5, 7}});
  runtime::ExecContext context;
  context.device = runtime::Device::cuda;
  context.communicator = gloo.get();
  std::string what = refusal(runtime::KernelInit{*n.node, 1, runtime::Device::cuda, &context});
  EXPECT_NE(what.find("AllReduce 'bucket0'"), std::string::npos) << what;
  EXPECT_NE(what.find("communicator is gloo"), std::string::npos) << what;
  EXPECT_NE(what.find("--dist-backend nccl"), std::string::npos) << what;
}

TEST(CudaCollective, FactoryWithoutACommunicatorMakesASynchronousCopy) {
  if (!cuda_all_reduce()) GTEST_SKIP() << "this build has no CUDA kernels";
  OneNode n(DType::f32, {{5, 7}, {3}});
  // Planning only (no context): no communicator, no CUDA call at compile time.
  auto kernel = (*cuda_all_reduce())(runtime::KernelInit{*n.node, 1, runtime::Device::cuda, nullptr});
  ASSERT_NE(kernel, nullptr);
  EXPECT_FALSE(kernel->asynchronous());
  EXPECT_EQ(kernel->workspace_bytes(), 0u);
  EXPECT_NE(kernel->describe().find("copy"), std::string::npos) << kernel->describe();
}

// ---------------------------------------------------------------------------------------
// On a GPU.

// Without a communicator the kernel copies, bit for bit (negative zero, infinities and NaN
// included), as the CPU kernel does: tolerance 0.
TEST(CudaCollective, AloneTheKernelCopiesItsInputs) {
  OXTRAIN_REQUIRE_GPU();
  Tensor a = test::random_tensor(DType::f32, {5, 7, 11, 13}, 71);
  Tensor b = test::random_tensor(DType::f32, {3}, 72);
  a.data<float>()[0] = -0.0f;
  a.data<float>()[1] = std::numeric_limits<float>::infinity();
  a.data<float>()[2] = std::numeric_limits<float>::quiet_NaN();
  a.data<float>()[5004] = -std::numeric_limits<float>::denorm_min();
  test::KernelCase c("AllReduce", kOxtrainDomain, {a, b}, {{DType::f32, a.shape}, {DType::f32, b.shape}});
  c.set_attr("average", Attribute{int64_t{1}});
  c.run(1, runtime::Device::cuda);
  EXPECT_EQ(c.output(0).bytes, a.bytes);
  EXPECT_EQ(c.output(1).bytes, b.bytes);
}

#ifdef OXTRAIN_HAVE_CUDA

namespace {

runtime::dist::CommOptions alone(std::chrono::milliseconds timeout = std::chrono::milliseconds(60'000)) {
  runtime::dist::CommOptions options;
  options.rank = 0;
  options.world_size = 1;
  options.timeout = timeout;
  return options;
}

// A device buffer for the communicator's synchronous calls.
struct DeviceBuffer {
  void* data = nullptr;
  explicit DeviceBuffer(size_t bytes) { EXPECT_EQ(cudaMalloc(&data, bytes), cudaSuccess); }
  ~DeviceBuffer() { cudaFree(data); }
};

}  // namespace

// A job of one rank over NCCL: the sum, the broadcast and the barrier leave the data as it was.
TEST(CudaCollective, NcclWorldOfOneLeavesTheDataAsItWas) {
  OXTRAIN_REQUIRE_GPU();
  auto store = runtime::dist::make_memory_store();
  auto comm = runtime::dist::make_nccl_communicator(*store, alone(), 0);
  EXPECT_STREQ(comm->backend(), "nccl");
  EXPECT_EQ(comm->world_size(), 1);
  ASSERT_NE(comm->comm(), nullptr);
  ASSERT_NE(comm->stream(), nullptr);

  Tensor t = test::random_tensor(DType::f32, {1001}, 73);  // odd: no vector-width multiple
  t.data<float>()[0] = -0.0f;
  DeviceBuffer buffer(t.bytes.size());
  ASSERT_EQ(cudaMemcpy(buffer.data, t.bytes.data(), t.bytes.size(), cudaMemcpyHostToDevice), cudaSuccess);
  comm->allreduce_sum(static_cast<float*>(buffer.data), static_cast<size_t>(t.numel()));
  comm->broadcast(buffer.data, 777, 0);  // not a multiple of 4 bytes: a byte broadcast
  comm->barrier();
  std::vector<uint8_t> back(t.bytes.size());
  ASSERT_EQ(cudaMemcpy(back.data(), buffer.data, back.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, t.bytes);

  // A root outside the job is refused, naming the rank and the world size.
  try {
    comm->broadcast(buffer.data, 4, 1);
    ADD_FAILURE() << "broadcast from root 1 in a world of 1 did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("nccl broadcast (rank 0 of 1): root 1 is not a rank"), std::string::npos)
        << e.what();
  }
  // A second communicator on the same store takes the next rendezvous generation.
  auto second = runtime::dist::make_nccl_communicator(*store, alone(), 0);
  EXPECT_TRUE(store->check({"nccl/2/unique_id"}));
}

TEST(CudaCollective, NcclRefusesARankOutsideTheJobAndAMissingGpu) {
  OXTRAIN_REQUIRE_GPU();
  auto store = runtime::dist::make_memory_store();
  runtime::dist::CommOptions bad = alone();
  bad.rank = 2;
  bad.world_size = 2;
  EXPECT_THROW(runtime::dist::make_nccl_communicator(*store, bad, 0), Error);
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  try {
    runtime::dist::make_nccl_communicator(*store, alone(), count);
    ADD_FAILURE() << "a communicator on GPU " << count << " of " << count << " did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
}

// Rank 1 of 2 whose rank 0 never comes: an Error at the deadline naming the rank, not a hang.
TEST(CudaCollective, NcclRankWaitingForAnAbsentRankZeroTimesOut) {
  OXTRAIN_REQUIRE_GPU();
  auto store = runtime::dist::make_memory_store();
  runtime::dist::CommOptions options = alone(std::chrono::milliseconds(300));
  options.rank = 1;
  options.world_size = 2;
  auto start = std::chrono::steady_clock::now();
  try {
    runtime::dist::make_nccl_communicator(*store, options, 0);
    ADD_FAILURE() << "no error without rank 0";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("nccl init (rank 1 of 2)"), std::string::npos) << what;
    EXPECT_NE(what.find("rank 0's NCCL unique id"), std::string::npos) << what;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

namespace {

struct AllReduceJob {
  bool average = true;
  // Gradient-arena order of g0, g1, g2 (empty: no gradient arena, and the AllReduce reads
  // the graph inputs directly, so its outputs lie apart from its inputs).
  std::vector<std::string> gradients;
};

// inputs x0 [5,7,11], x1 [13], x2 [3,3] -> Neg -> g0 g1 g2 -> AllReduce -> r0 r1 r2 (outputs).
Graph all_reduce_graph(bool through_neg, bool average) {
  Graph g;
  g.opsets = {{"", 17}, {kOxtrainDomain, 1}};
  const std::vector<Shape> shapes = {{5, 7, 11}, {13}, {3, 3}};
  std::vector<Value*> reduced_in, reduced_out;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const std::string k = std::to_string(i);
    Value* x = g.add_value("x" + k, DType::f32, shapes[i], Role::Input);
    x->rank_known = true;
    g.inputs.push_back(x);
    Value* in = x;
    if (through_neg) {
      in = g.add_value("g" + k, DType::f32, shapes[i]);
      in->rank_known = true;
      g.add_node("Neg", {x}, {in}, "neg" + k);
    }
    Value* out = g.add_value("r" + k, DType::f32, shapes[i]);
    out->rank_known = true;
    reduced_in.push_back(in);
    reduced_out.push_back(out);
    g.outputs.push_back(out);
  }
  Node* n = g.add_node("AllReduce", reduced_in, reduced_out, "bucket0", kOxtrainDomain);
  n->attrs["average"] = Attribute{int64_t{average ? 1 : 0}};
  return g;
}

// Four steps (eager, captured, replayed twice), new data each: the outputs are exactly the
// (negated) inputs, and no step after the first allocates or waits for the device.
void run_job(const AllReduceJob& job) {
  auto store = runtime::dist::make_memory_store();
  auto comm = runtime::dist::make_nccl_communicator(*store, alone(), 0);
  const bool through_neg = !job.gradients.empty();
  runtime::SessionOptions so;
  so.device = runtime::Device::cuda;
  so.communicator = comm.get();
  so.gradients = job.gradients;
  runtime::Session s(all_reduce_graph(through_neg, job.average), so);
  runtime::DeviceCounters before{};
  for (int64_t step = 0; step < 4; ++step) {
    std::vector<Tensor> xs;
    for (size_t i = 0; i < 3; ++i) {
      Tensor x = test::random_tensor(DType::f32, s.graph().value(indexed("x", i))->shape,
                                     900 + 10 * static_cast<uint64_t>(step) + i);
      x.data<float>()[0] = step % 2 ? -0.0f : 0.0f;
      s.feed(indexed("x", i), x);
      xs.push_back(std::move(x));
    }
    if (step == 2) before = s.device().counters();
    s.run();
    if (step == 2) {
      EXPECT_EQ(s.device().counters().allocations, before.allocations);
      EXPECT_EQ(s.device().counters().synchronizations, before.synchronizations);
    }
    for (size_t i = 0; i < 3; ++i) {
      Tensor want = xs[i];
      if (through_neg)
        for (int64_t k = 0; k < want.numel(); ++k) want.data<float>()[k] = -want.data<float>()[k];
      // Exact: negation is exact, and the sum or average over one rank is the value itself.
      EXPECT_EQ(s.fetch(indexed("r", i)).bytes, want.bytes) << "r" << i << " at step " << step;
    }
  }
  EXPECT_TRUE(s.replaying_graph());
}

}  // namespace

TEST(CudaCollective, SessionAveragesAContiguousBucketOverNccl) {
  OXTRAIN_REQUIRE_GPU();
  run_job({true, {"g0", "g1", "g2"}});
}

TEST(CudaCollective, SessionSumsABucketOutOfOrderInOneNcclGroup) {
  OXTRAIN_REQUIRE_GPU();
  run_job({false, {"g2", "g0", "g1"}});  // r0 after r2 in memory: one call per tensor
}

TEST(CudaCollective, SessionCopiesInputsApartFromTheOutputsFirst) {
  OXTRAIN_REQUIRE_GPU();
  run_job({true, {}});
}

// The planner keeps a bucket in place and in order in the gradient arena: the case that makes
// one NCCL call over the slice.
TEST(CudaCollective, PlannerKeepsABucketOneSliceInPlace) {
  OXTRAIN_REQUIRE_GPU();
  auto store = runtime::dist::make_memory_store();
  auto comm = runtime::dist::make_nccl_communicator(*store, alone(), 0);
  runtime::SessionOptions so;
  so.device = runtime::Device::cuda;
  so.communicator = comm.get();
  so.gradients = {"g0", "g1", "g2"};
  runtime::Session s(all_reduce_graph(true, true), so);
  const uint8_t* previous_end = nullptr;
  for (size_t i = 0; i < 3; ++i) {
    const std::string k = std::to_string(i);
    const auto* g = static_cast<const uint8_t*>(s.device_address("g" + k));
    EXPECT_EQ(s.device_address("r" + k), g) << "r" << k << " not in g" << k << "'s buffer";
    if (previous_end) {
      EXPECT_GE(g, previous_end);
      EXPECT_LT(g - previous_end, 256);  // alignment padding only
    }
    previous_end = g + s.graph().value("g" + k)->bytes();
  }
}

// One GPU as a job of one rank over NCCL (DDP on one GPU, as main.py's
// --multiprocessing-distributed runs it) trains a small ResNet to the very bits of the same
// training without a communicator: the bucketed AllReduce nodes run on NCCL's stream beside
// backward, through the eager step, the capture and replays, and the average over one rank is
// the gradient itself. Both sessions live in this process, so they share cuDNN's plans.
TEST(CudaCollective, NcclJobOfOneTrainsAResNetLikeOneProcess) {
  OXTRAIN_REQUIRE_GPU();
  auto store = runtime::dist::make_memory_store();
  auto comm = runtime::dist::make_nccl_communicator(*store, alone(), 0);
  auto start = [&](bool job) {
    autodiff::TrainingOptions to;
    to.allreduce = job;
    to.bucket_bytes = 1 << 20;  // resnet18's 45 MB of gradients in many buckets
    to.last_bucket_bytes = 1 << 18;
    runtime::SessionOptions so;
    so.device = runtime::Device::cuda;
    so.precision = runtime::Precision::tf32;
    so.communicator = job ? comm.get() : nullptr;
    return test::make_training_run(test::zoo_at_batch("resnet18", 4, 64, 10, 3), to, so);
  };
  test::TrainingRun alone_run = start(false), job_run = start(true);
  EXPECT_TRUE(alone_run.tg.allreduce_nodes.empty());
  EXPECT_GE(job_run.tg.allreduce_nodes.size(), 10u);
  for (int64_t step = 0; step < 4; ++step)
    for (test::TrainingRun* r : {&alone_run, &job_run})
      test::run_training_step(*r, 300 + static_cast<uint64_t>(step), {3, 7, 0, 9}, 0.1f, step);
  EXPECT_TRUE(job_run.session->replaying_graph());
  ASSERT_EQ(alone_run.states, job_run.states);
  EXPECT_GT(alone_run.states.size(), 100u);  // weights, momenta and batch-norm statistics
  EXPECT_EQ(test::differing_states(alone_run, job_run), 0) << "of " << alone_run.states.size() << " after 4 steps";
}

#endif  // OXTRAIN_HAVE_CUDA
