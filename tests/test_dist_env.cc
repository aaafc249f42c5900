// launch_env: the job's ranks and the store's address from main.py's flags, torchrun, Open MPI
// and Slurm, and a clear Error naming the flag or variable for every inconsistency.
#include <gtest/gtest.h>

#include <cstdlib>

#include "base/error.h"
#include "runtime/dist/launch_env.h"

using namespace oxtrain;
using namespace oxtrain::runtime::dist;

namespace {

DistFlags url_flags(const std::string& url, int world, int rank) {
  DistFlags f;
  f.dist_url = url;
  f.world_size = world;
  f.rank = rank;
  return f;
}

DistFlags mp_flags(const std::string& url, int nodes, int node, int workers, int worker) {
  DistFlags f = url_flags(url, nodes, node);
  f.multiprocessing_distributed = true;
  f.workers_per_node = workers;
  f.local_worker = worker;
  return f;
}

const Environment kTorchrun = {{"RANK", "3"},          {"WORLD_SIZE", "8"},     {"LOCAL_RANK", "1"},
                               {"LOCAL_WORLD_SIZE", "2"}, {"MASTER_ADDR", "node01"}, {"MASTER_PORT", "29400"}};

Environment with(Environment env, const Environment& changes, const std::vector<std::string>& removed = {}) {
  for (const auto& [k, v] : changes) env[k] = v;
  for (const auto& k : removed) env.erase(k);
  return env;
}

const Environment kSlurm = {{"SLURM_PROCID", "5"},
                            {"SLURM_NTASKS", "8"},
                            {"SLURM_LOCALID", "1"},
                            {"SLURM_NTASKS_PER_NODE", "4"},
                            {"SLURM_JOB_NODELIST", "node[01-04,07]"}};

const Environment kMpirun = {{"OMPI_COMM_WORLD_RANK", "6"},       {"OMPI_COMM_WORLD_SIZE", "12"},
                             {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                             {"MASTER_ADDR", "10.0.0.5"},          {"MASTER_PORT", "29600"}};

struct Expected {
  int rank, world_size, local_rank, local_world_size;
  std::string store_host;
  int store_port;
  bool host_store;
  std::string source;
};

struct Case {
  std::string name;
  DistFlags flags;
  Environment env;
  std::optional<Expected> expected;  // nullopt: a single process
};

TEST(DistLaunchEnv, EverySourceGivesItsRanksAndStore) {
  const std::vector<Case> cases = {
      {"flags", url_flags("tcp://10.1.1.20:23456", 4, 2), {}, Expected{2, 4, 0, 1, "10.1.1.20", 23456, false, "flags"}},
      {"flags rank 0 hosts", url_flags("tcp://10.1.1.20:23456", 4, 0), {},
       Expected{0, 4, 0, 1, "10.1.1.20", 23456, true, "flags"}},
      {"main.py's default url", url_flags("tcp://224.66.41.62:23456", 2, 1), {},
       Expected{1, 2, 0, 1, "224.66.41.62", 23456, false, "flags"}},
      {"IPv6 url", url_flags("tcp://[fe80::1]:29500", 2, 1), {}, Expected{1, 2, 0, 1, "fe80::1", 29500, false, "flags"}},
      {"host name url", url_flags("tcp://gpu-node-7.cluster:1", 3, 2), {},
       Expected{2, 3, 0, 1, "gpu-node-7.cluster", 1, false, "flags"}},
      // main.py: 2 nodes of 4 GPUs, node 1, GPU 3: rank 1 * 4 + 3 = 7 of 8.
      {"multiprocessing", mp_flags("tcp://h:23456", 2, 1, 4, 3), {}, Expected{7, 8, 3, 4, "h", 23456, false, "flags"}},
      {"multiprocessing node 0 worker 0", mp_flags("tcp://h:23456", 2, 0, 4, 0), {},
       Expected{0, 8, 0, 4, "h", 23456, true, "flags"}},
      {"multiprocessing one node", mp_flags("tcp://127.0.0.1:23456", 1, 0, 4, 2), {},
       Expected{2, 4, 2, 4, "127.0.0.1", 23456, false, "flags"}},
      {"flags win over the environment", url_flags("tcp://h:5", 2, 1), kTorchrun,
       Expected{1, 2, 0, 1, "h", 5, false, "flags"}},
      {"flags of one process", url_flags("tcp://h:5", 1, 0), kTorchrun, std::nullopt},
      // As main.py: --multiprocessing-distributed makes one worker a job (DDP on one GPU).
      {"multiprocessing of one worker", mp_flags("tcp://h:5", 1, 0, 1, 0), kTorchrun,
       Expected{0, 1, 0, 1, "h", 5, true, "flags"}},
      {"multiprocessing of one worker without a url", [] {
         DistFlags f = mp_flags("tcp://h:5", 1, 0, 1, 0);
         f.dist_url.reset();
         return f;
       }(), {}, std::nullopt},
      {"main.py's -1 defaults read the environment", [] {
         DistFlags f;
         f.world_size = -1;
         f.rank = -1;
         return f;
       }(), kTorchrun, Expected{3, 8, 1, 2, "node01", 29400, false, "torchrun"}},
      {"env:// reads torchrun", [] {
         DistFlags f;
         f.dist_url = "env://";
         return f;
       }(), kTorchrun, Expected{3, 8, 1, 2, "node01", 29400, false, "torchrun"}},
      {"env:// with agreeing flags", url_flags("env://", 8, 3), kTorchrun,
       Expected{3, 8, 1, 2, "node01", 29400, false, "torchrun"}},
      {"torchrun", {}, kTorchrun, Expected{3, 8, 1, 2, "node01", 29400, false, "torchrun"}},
      {"torchrun rank 0", {}, with(kTorchrun, {{"RANK", "0"}, {"LOCAL_RANK", "0"}}),
       Expected{0, 8, 0, 2, "node01", 29400, true, "torchrun"}},
      // torchrun's agent hosts PyTorch's store on MASTER_PORT: ours goes on the next port.
      {"torchrun agent store", {}, with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "True"}}),
       Expected{3, 8, 1, 2, "node01", 29401, false, "torchrun"}},
      {"torchrun without agent store", {}, with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "False"}}),
       Expected{3, 8, 1, 2, "node01", 29400, false, "torchrun"}},
      {"env:// convention without local ranks", {}, with(kTorchrun, {}, {"LOCAL_RANK", "LOCAL_WORLD_SIZE"}),
       Expected{3, 8, 0, 1, "node01", 29400, false, "torchrun"}},
      {"torchrun of one process", {}, with(kTorchrun, {{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"LOCAL_RANK", "0"},
                                                       {"LOCAL_WORLD_SIZE", "1"}}),
       std::nullopt},
      {"slurm", {}, kSlurm, Expected{5, 8, 1, 4, "node01", kDefaultStorePort, false, "slurm"}},
      {"slurm MASTER_ADDR and MASTER_PORT", {}, with(kSlurm, {{"MASTER_ADDR", "login2"}, {"MASTER_PORT", "31000"}}),
       Expected{5, 8, 1, 4, "login2", 31000, false, "slurm"}},
      {"slurm step nodelist first", {}, with(kSlurm, {{"SLURM_STEP_NODELIST", "gpu[007-009]"}}),
       Expected{5, 8, 1, 4, "gpu007", kDefaultStorePort, false, "slurm"}},
      {"slurm plain host list", {}, with(kSlurm, {{"SLURM_JOB_NODELIST", "gpu7,gpu[10-11]"}}),
       Expected{5, 8, 1, 4, "gpu7", kDefaultStorePort, false, "slurm"}},
      // 4 tasks on each of nodes 0 and 1, 2 on node 2: ranks 8 and 9 are node 2's.
      {"slurm tasks per node by node id", {},
       with(kSlurm, {{"SLURM_PROCID", "9"}, {"SLURM_NTASKS", "10"}, {"SLURM_NODEID", "2"},
                     {"SLURM_TASKS_PER_NODE", "4(x2),2"}},
            {"SLURM_NTASKS_PER_NODE"}),
       Expected{9, 10, 1, 2, "node01", kDefaultStorePort, false, "slurm"}},
      {"slurm step tasks per node before the job's", {},
       with(kSlurm, {{"SLURM_NODEID", "0"}, {"SLURM_STEP_TASKS_PER_NODE", "3,1"}, {"SLURM_TASKS_PER_NODE", "8"}},
            {"SLURM_NTASKS_PER_NODE"}),
       Expected{5, 8, 1, 3, "node01", kDefaultStorePort, false, "slurm"}},
      {"slurm equal tasks per node without node id", {},
       with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4(x2)"}}, {"SLURM_NTASKS_PER_NODE"}),
       Expected{5, 8, 1, 4, "node01", kDefaultStorePort, false, "slurm"}},
      {"slurm old SLURM_NPROCS", {}, with(kSlurm, {{"SLURM_NPROCS", "8"}}, {"SLURM_NTASKS"}),
       Expected{5, 8, 1, 4, "node01", kDefaultStorePort, false, "slurm"}},
      {"mpirun", {}, kMpirun, Expected{6, 12, 2, 4, "10.0.0.5", 29600, false, "mpirun"}},
      // mpirun inside Slurm: SLURM_PROCID describes mpirun's daemons, not the ranks.
      {"mpirun inside slurm", {}, with(kMpirun, {{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "3"}, {"SLURM_LOCALID", "0"}}),
       Expected{6, 12, 2, 4, "10.0.0.5", 29600, false, "mpirun"}},
      {"torchrun inside slurm", {}, with(kTorchrun, kSlurm), Expected{3, 8, 1, 2, "node01", 29400, false, "torchrun"}},
      {"nothing", {}, {}, std::nullopt},
      {"unrelated variables", {}, {{"HOME", "/root"}, {"MASTER_ADDR", "x"}, {"LOCAL_RANK", "0"}}, std::nullopt},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    std::optional<DistConfig> got;
    try {
      got = dist_config(c.flags, c.env);
    } catch (const Error& e) {
      ADD_FAILURE() << "unexpected error: " << e.what();
      continue;
    }
    ASSERT_EQ(got.has_value(), c.expected.has_value());
    if (!got) continue;
    const Expected& e = *c.expected;
    EXPECT_EQ(got->rank, e.rank);
    EXPECT_EQ(got->world_size, e.world_size);
    EXPECT_EQ(got->local_rank, e.local_rank);
    EXPECT_EQ(got->local_world_size, e.local_world_size);
    EXPECT_EQ(got->store_host, e.store_host);
    EXPECT_EQ(got->store_port, e.store_port);
    EXPECT_EQ(got->host_store, e.host_store);
    EXPECT_EQ(got->source, e.source);
  }
}

struct ErrorCase {
  std::string name;
  DistFlags flags;
  Environment env;
  std::vector<std::string> needles;  // every one in the message
};

TEST(DistLaunchEnv, EveryInconsistencyIsAnErrorNamingIt) {
  const std::vector<ErrorCase> cases = {
      // --dist-url
      {"other scheme", url_flags("http://h:80", 2, 0), {}, {"--dist-url 'http://h:80'", "scheme 'http'"}},
      {"file scheme", url_flags("file:///tmp/x", 2, 0), {}, {"--dist-url", "scheme 'file'", "tcp://HOST:PORT"}},
      {"no scheme", url_flags("10.0.0.1:23456", 2, 0), {}, {"--dist-url '10.0.0.1:23456'", "no tcp:// scheme"}},
      {"no port", url_flags("tcp://node01", 2, 0), {}, {"--dist-url 'tcp://node01'", "no port"}},
      {"empty port", url_flags("tcp://node01:", 2, 0), {}, {"--dist-url", "no port"}},
      {"no host", url_flags("tcp://:23456", 2, 0), {}, {"--dist-url", "no host"}},
      {"port 0", url_flags("tcp://h:0", 2, 0), {}, {"--dist-url", "the port 0 is outside 1..65535"}},
      {"port 65536", url_flags("tcp://h:65536", 2, 0), {}, {"--dist-url", "the port 65536 is outside 1..65535"}},
      {"huge port", url_flags("tcp://h:99999999999999999999", 2, 0), {}, {"--dist-url", "outside 1..65535"}},
      {"negative port", url_flags("tcp://h:-5", 2, 0), {}, {"--dist-url", "'-5' is not a number"}},
      {"port with junk", url_flags("tcp://h:23456/", 2, 0), {}, {"--dist-url", "is not a number"}},
      {"bare IPv6", url_flags("tcp://fe80::1:23456", 2, 0), {}, {"--dist-url", "IPv6 address must be in brackets"}},
      {"unclosed IPv6", url_flags("tcp://[fe80::1:23456", 2, 0), {}, {"--dist-url", "no closing ']'"}},
      {"space in host", url_flags("tcp://no de:23456", 2, 0), {}, {"--dist-url", "the host holds ' '"}},
      {"bad url even for one process", url_flags("tcp://h", 1, 0), {}, {"--dist-url", "no port"}},
      // --world-size, --rank
      {"world 0", url_flags("tcp://h:1", 0, 0), {}, {"--world-size must be at least 1, got 0"}},
      {"world -2", url_flags("tcp://h:1", -2, 0), {}, {"--world-size must be at least 1, got -2"}},
      {"rank = world", url_flags("tcp://h:1", 4, 4), {}, {"--rank 4 is outside [0, --world-size=4)"}},
      {"negative rank", url_flags("tcp://h:1", 4, -3), {}, {"--rank must be at least 0, got -3"}},
      {"no rank", [] {
         DistFlags f = url_flags("tcp://h:1", 4, 0);
         f.rank.reset();
         return f;
       }(), {}, {"--rank is required with --world-size 4"}},
      {"no url", [] {
         DistFlags f = url_flags("", 4, 1);
         f.dist_url.reset();
         return f;
       }(), {}, {"--world-size 4 needs --dist-url tcp://HOST:PORT"}},
      {"node rank beyond nodes", mp_flags("tcp://h:1", 2, 2, 4, 0), {},
       {"--rank 2 (this node's rank) is outside [0, --world-size=2)"}},
      {"worker beyond workers", mp_flags("tcp://h:1", 2, 1, 4, 4), {}, {"worker 4 of this node is outside [0, 4)"}},
      {"no workers", mp_flags("tcp://h:1", 2, 1, 0, 0), {}, {"workers per node must be at least 1, got 0"}},
      {"too many processes", mp_flags("tcp://h:1", 1 << 20, 0, 1 << 12, 0), {}, {"too many processes"}},
      // env://
      {"env:// without a launcher", url_flags("env://", -1, -1), {}, {"--dist-url env:// needs a launcher's variables"}},
      {"env:// disagreeing world", url_flags("env://", 4, 3), kTorchrun,
       {"--world-size 4 disagrees with torchrun's world of 8"}},
      {"env:// disagreeing rank", url_flags("env://", -1, 2), kTorchrun, {"--rank 2 disagrees with torchrun's rank 3"}},
      {"env:// with multiprocessing", mp_flags("env://", 1, 0, 2, 0), kTorchrun,
       {"--multiprocessing-distributed with --dist-url env:// is not supported"}},
      // torchrun
      {"RANK not a number", {}, with(kTorchrun, {{"RANK", "abc"}}), {"torchrun: RANK='abc' is not an integer"}},
      {"RANK empty", {}, with(kTorchrun, {{"RANK", ""}}), {"torchrun: RANK='' is not an integer"}},
      {"RANK with a space", {}, with(kTorchrun, {{"RANK", " 1"}}), {"RANK=' 1' is not an integer"}},
      {"RANK over int", {}, with(kTorchrun, {{"RANK", "99999999999"}}), {"RANK='99999999999' is not an integer"}},
      {"WORLD_SIZE fractional", {}, with(kTorchrun, {{"WORLD_SIZE", "8.0"}}), {"WORLD_SIZE='8.0' is not an integer"}},
      {"RANK = WORLD_SIZE", {}, with(kTorchrun, {{"RANK", "8"}}), {"torchrun: RANK=8 is outside [0, WORLD_SIZE=8)"}},
      {"negative RANK", {}, with(kTorchrun, {{"RANK", "-1"}}), {"RANK=-1 is outside [0, WORLD_SIZE=8)"}},
      {"WORLD_SIZE 0", {}, with(kTorchrun, {{"WORLD_SIZE", "0"}}), {"torchrun: WORLD_SIZE=0 must be at least 1"}},
      {"no WORLD_SIZE", {}, with(kTorchrun, {}, {"WORLD_SIZE"}), {"torchrun: WORLD_SIZE is not set"}},
      {"no RANK", {}, with(kTorchrun, {}, {"RANK"}), {"torchrun: RANK is not set"}},
      {"LOCAL_RANK beyond", {}, with(kTorchrun, {{"LOCAL_RANK", "2"}}),
       {"torchrun: LOCAL_RANK=2 is outside [0, LOCAL_WORLD_SIZE=2)"}},
      {"LOCAL_WORLD_SIZE beyond world", {}, with(kTorchrun, {{"LOCAL_WORLD_SIZE", "9"}}),
       {"LOCAL_WORLD_SIZE=9 is outside [1, WORLD_SIZE=8]"}},
      {"LOCAL_RANK not a number", {}, with(kTorchrun, {{"LOCAL_RANK", "x1"}}), {"LOCAL_RANK='x1' is not an integer"}},
      {"no MASTER_ADDR", {}, with(kTorchrun, {}, {"MASTER_ADDR"}), {"torchrun: MASTER_ADDR is not set"}},
      {"empty MASTER_ADDR", {}, with(kTorchrun, {{"MASTER_ADDR", ""}}), {"torchrun: MASTER_ADDR is empty"}},
      {"no MASTER_PORT", {}, with(kTorchrun, {}, {"MASTER_PORT"}), {"torchrun: MASTER_PORT is not set"}},
      {"MASTER_PORT 70000", {}, with(kTorchrun, {{"MASTER_PORT", "70000"}}),
       {"torchrun: MASTER_PORT=70000 is outside 1..65535"}},
      {"MASTER_PORT 0", {}, with(kTorchrun, {{"MASTER_PORT", "0"}}), {"MASTER_PORT=0 is outside 1..65535"}},
      {"MASTER_PORT text", {}, with(kTorchrun, {{"MASTER_PORT", "http"}}), {"MASTER_PORT='http' is not an integer"}},
      {"agent store on the last port", {},
       with(kTorchrun, {{"MASTER_PORT", "65535"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}}),
       {"MASTER_PORT=65535 leaves no port", "MASTER_PORT + 1"}},
      // Open MPI
      {"mpirun without MASTER_ADDR", {}, with(kMpirun, {}, {"MASTER_ADDR"}),
       {"mpirun: MASTER_ADDR is not set", "mpirun -x MASTER_ADDR="}},
      {"mpirun without MASTER_PORT", {}, with(kMpirun, {}, {"MASTER_PORT"}), {"mpirun: MASTER_PORT is not set"}},
      {"mpirun without local rank", {}, with(kMpirun, {}, {"OMPI_COMM_WORLD_LOCAL_RANK"}),
       {"mpirun: OMPI_COMM_WORLD_LOCAL_RANK is not set"}},
      {"mpirun rank beyond", {}, with(kMpirun, {{"OMPI_COMM_WORLD_RANK", "12"}}),
       {"mpirun: OMPI_COMM_WORLD_RANK=12 is outside [0, OMPI_COMM_WORLD_SIZE=12)"}},
      {"mpirun size not a number", {}, with(kMpirun, {{"OMPI_COMM_WORLD_SIZE", "twelve"}}),
       {"OMPI_COMM_WORLD_SIZE='twelve' is not an integer"}},
      {"mpirun port", {}, with(kMpirun, {{"MASTER_PORT", "65536"}}), {"mpirun: MASTER_PORT=65536 is outside 1..65535"}},
      // Slurm
      {"SLURM_PROCID beyond", {}, with(kSlurm, {{"SLURM_PROCID", "8"}}),
       {"slurm: SLURM_PROCID=8 is outside [0, SLURM_NTASKS=8)"}},
      {"SLURM_NTASKS not a number", {}, with(kSlurm, {{"SLURM_NTASKS", "8x"}}),
       {"slurm: SLURM_NTASKS='8x' is not an integer"}},
      {"no SLURM_NTASKS", {}, with(kSlurm, {}, {"SLURM_NTASKS"}), {"slurm: SLURM_NTASKS is not set", "srun"}},
      {"no SLURM_LOCALID", {}, with(kSlurm, {}, {"SLURM_LOCALID"}), {"slurm: SLURM_LOCALID is not set"}},
      {"SLURM_LOCALID beyond", {}, with(kSlurm, {{"SLURM_LOCALID", "4"}}),
       {"slurm: SLURM_LOCALID=4 is outside [0, SLURM_NTASKS_PER_NODE=4)"}},
      {"no tasks per node", {}, with(kSlurm, {}, {"SLURM_NTASKS_PER_NODE"}),
       {"none of SLURM_NTASKS_PER_NODE, SLURM_STEP_TASKS_PER_NODE and SLURM_TASKS_PER_NODE is set"}},
      {"tasks per node malformed", {}, with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4(x2"}}, {"SLURM_NTASKS_PER_NODE"}),
       {"slurm: SLURM_TASKS_PER_NODE='4(x2' is not a list like '2(x3),1'"}},
      {"tasks per node zero", {}, with(kSlurm, {{"SLURM_TASKS_PER_NODE", "0"}}, {"SLURM_NTASKS_PER_NODE"}),
       {"SLURM_TASKS_PER_NODE='0' is not a list"}},
      {"tasks per node empty item", {}, with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4,,4"}}, {"SLURM_NTASKS_PER_NODE"}),
       {"SLURM_TASKS_PER_NODE='4,,4' is not a list"}},
      {"uneven tasks per node without node id", {},
       with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4,2"}}, {"SLURM_NTASKS_PER_NODE"}),
       {"SLURM_TASKS_PER_NODE='4,2' differs between nodes and SLURM_NODEID is not set"}},
      {"node id beyond the list", {},
       with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4(x2)"}, {"SLURM_NODEID", "2"}}, {"SLURM_NTASKS_PER_NODE"}),
       {"SLURM_NODEID=2 is beyond the nodes of SLURM_TASKS_PER_NODE='4(x2)'"}},
      {"node id not a number", {},
       with(kSlurm, {{"SLURM_TASKS_PER_NODE", "4(x2)"}, {"SLURM_NODEID", "a"}}, {"SLURM_NTASKS_PER_NODE"}),
       {"SLURM_NODEID='a' is not an integer"}},
      {"nodelist unclosed", {}, with(kSlurm, {{"SLURM_JOB_NODELIST", "node[01-04"}}),
       {"slurm: SLURM_JOB_NODELIST='node[01-04' has a '[' without ']'", "set MASTER_ADDR"}},
      {"nodelist stray bracket", {}, with(kSlurm, {{"SLURM_JOB_NODELIST", "node]1"}}), {"has a ']' without '['"}},
      {"nodelist empty", {}, with(kSlurm, {{"SLURM_JOB_NODELIST", ""}}), {"SLURM_JOB_NODELIST='' names no host"}},
      {"nodelist letters in range", {}, with(kSlurm, {{"SLURM_JOB_NODELIST", "node[a-c]"}}),
       {"has a range that is not numeric"}},
      {"nodelist empty range", {}, with(kSlurm, {{"SLURM_STEP_NODELIST", "node[]"}}),
       {"slurm: SLURM_STEP_NODELIST='node[]' has an empty range"}},
      {"no nodelist", {}, with(kSlurm, {}, {"SLURM_JOB_NODELIST"}),
       {"neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set", "MASTER_ADDR"}},
      {"slurm MASTER_PORT", {}, with(kSlurm, {{"MASTER_PORT", "-1"}}), {"slurm: MASTER_PORT=-1 is outside 1..65535"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    try {
      auto got = dist_config(c.flags, c.env);
      ADD_FAILURE() << "no error; got " << (got ? describe(*got) : std::string("a single process"));
    } catch (const Error& e) {
      std::string msg = e.what();
      for (const auto& n : c.needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
  }
}

TEST(DistLaunchEnv, TcpUrlsParse) {
  auto a = parse_tcp_url("tcp://224.66.41.62:23456");  // main.py's default
  EXPECT_EQ(a.host, "224.66.41.62");
  EXPECT_EQ(a.port, 23456);
  auto b = parse_tcp_url("tcp://[::1]:65535");
  EXPECT_EQ(b.host, "::1");
  EXPECT_EQ(b.port, 65535);
  auto c = parse_tcp_url("tcp://localhost:1");
  EXPECT_EQ(c.host, "localhost");
  EXPECT_EQ(c.port, 1);
  try {
    parse_tcp_url("tcp://h", "MY_FLAG");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("MY_FLAG 'tcp://h'"), std::string::npos) << e.what();
  }
}

TEST(DistLaunchEnv, FirstSlurmHost) {
  EXPECT_EQ(first_slurm_host("node[01-04,07]"), "node01");
  EXPECT_EQ(first_slurm_host("node[7,01-04]"), "node7");
  EXPECT_EQ(first_slurm_host("node5"), "node5");
  EXPECT_EQ(first_slurm_host("a1,b[2-3]"), "a1");
  EXPECT_EQ(first_slurm_host("rack[2-3]-gpu[009-012]"), "rack2-gpu009");
  EXPECT_EQ(first_slurm_host("x-[0001-0100],y"), "x-0001");
  EXPECT_THROW(first_slurm_host(",node1"), Error);
  EXPECT_THROW(first_slurm_host("node[-3]"), Error);
}

TEST(DistLaunchEnv, DescribeAndCurrentEnvironment) {
  auto config = dist_config({}, with(kTorchrun, {{"TORCHELASTIC_USE_AGENT_STORE", "True"}}));
  ASSERT_TRUE(config);
  EXPECT_EQ(describe(*config), "rank 3 of 8 (local 1 of 2) from torchrun; store at node01:29401, hosted by rank 0");
  auto v6 = dist_config(url_flags("tcp://[::1]:7", 2, 0), {});
  ASSERT_TRUE(v6);
  EXPECT_EQ(describe(*v6), "rank 0 of 2 (local 0 of 1) from flags; store at [::1]:7, hosted by this process");

  ASSERT_EQ(setenv("OXTRAIN_TEST_DIST_ENV", "a=b", 1), 0);
  Environment env = current_environment();
  unsetenv("OXTRAIN_TEST_DIST_ENV");
  ASSERT_TRUE(env.count("OXTRAIN_TEST_DIST_ENV"));
  EXPECT_EQ(env.at("OXTRAIN_TEST_DIST_ENV"), "a=b");  // split at the first '='
}

}  // namespace
