// Where this process stands in a data-parallel job, and where the rendezvous store is: from
// PyTorch examples/imagenet/main.py's flags, or from the environment torchrun, Slurm's srun or
// Open MPI's mpirun give each process.
//
// Sources, first match wins:
//  1. flags: --dist-url tcp://HOST:PORT with --world-size and --rank. As in main.py, with
//     --multiprocessing-distributed --world-size counts nodes and --rank is the node's rank; the
//     process is worker `local_worker` of `workers_per_node` on its node (one per GPU), so
//     rank = node * workers_per_node + local_worker and world = nodes * workers_per_node. Without
//     it, --world-size and --rank are the process's own, and local_rank is 0 of 1.
//     "--dist-url env://" (main.py with torchrun) means: take everything from the environment
//     (sources 2 to 4); --world-size and --rank, if given, must then agree with it.
//  2. torchrun (or any launcher following PyTorch's env:// convention): RANK, WORLD_SIZE,
//     LOCAL_RANK, LOCAL_WORLD_SIZE (absent: 0 of 1), MASTER_ADDR, MASTER_PORT. With
//     TORCHELASTIC_USE_AGENT_STORE=True torchrun's agent already hosts PyTorch's own TCPStore on
//     MASTER_PORT, whose protocol oxtrain's TcpStore does not speak: oxtrain's store then goes on
//     MASTER_PORT + 1 (that port must be free on MASTER_ADDR's host).
//  3. Open MPI's mpirun: OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK, _LOCAL_SIZE; MASTER_ADDR and
//     MASTER_PORT are required (mpirun -x MASTER_ADDR=host -x MASTER_PORT=29500). Read before
//     Slurm because mpirun inside a Slurm allocation starts its daemons through srun, leaving
//     SLURM_PROCID and SLURM_NTASKS describing the daemons (one per node), not the ranks.
//  4. Slurm's srun: SLURM_PROCID, SLURM_NTASKS (or SLURM_NPROCS), SLURM_LOCALID; tasks on this
//     node from SLURM_NTASKS_PER_NODE, else SLURM_STEP_TASKS_PER_NODE or SLURM_TASKS_PER_NODE
//     ("2(x3),1": this node's entry by SLURM_NODEID); the store on MASTER_ADDR if set, else the
//     first host of SLURM_STEP_NODELIST or SLURM_JOB_NODELIST ("node[01-04,07]" -> node01: with
//     srun's block distribution rank 0 runs there), port MASTER_PORT if set, else
//     kDefaultStorePort (29500, torchrun's default). Run through srun: a batch script's own
//     process also sees SLURM_PROCID and SLURM_NTASKS.
// Nothing found: std::nullopt, a single process. A world of one process is also std::nullopt
// (no store, no collectives), except as main.py has it: --multiprocessing-distributed with a
// --dist-url makes even one worker a job (main.py then runs DDP on its one GPU), so a one-GPU
// run of the DLPerf benchmark reduces its gradients over NCCL as PyTorch's does.
//
// Every inconsistency is an Error naming the flag or variable and its value: a rank outside
// [0, world), a world below 1, a local rank outside [0, local world), a --dist-url that is not
// tcp://HOST:PORT (IPv6 as tcp://[::1]:PORT), a port outside 1..65535, a variable that is not
// an integer, MASTER_ADDR or MASTER_PORT missing where needed.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace oxtrain::runtime::dist {

inline constexpr int kDefaultStorePort = 29500;

struct DistConfig {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        // this process's index on its node (the GPU it takes)
  int local_world_size = 1;  // processes on this node
  std::string store_host;    // where the rendezvous store listens (TcpStore)
  int store_port = 0;
  bool host_store = false;   // this process hosts the store (rank 0)
  std::string source;        // "flags", "torchrun", "slurm" or "mpirun"
};

// main.py's distributed flags; absent (std::nullopt, or main.py's default -1) when not given.
struct DistFlags {
  std::optional<std::string> dist_url;  // --dist-url
  std::optional<int> world_size;        // --world-size
  std::optional<int> rank;              // --rank
  bool multiprocessing_distributed = false;
  int workers_per_node = 1;  // with --multiprocessing-distributed: processes on each node (its GPUs)
  int local_worker = 0;      // this process's index among them
};

using Environment = std::map<std::string, std::string>;

// This process's environment variables, copied.
Environment current_environment();

// The job this process is part of, or std::nullopt for a single process. Throws oxtrain::Error
// for inconsistent flags or variables.
std::optional<DistConfig> dist_config(const DistFlags& flags, const Environment& env);

// "tcp://HOST:PORT" -> host and port; an Error naming `flag` otherwise.
struct HostPort {
  std::string host;
  int port = 0;
};
HostPort parse_tcp_url(const std::string& url, const std::string& flag = "--dist-url");

// The first host of a Slurm host list: "node[01-04,07],gpu5" -> "node01". An Error naming
// `variable` when the list does not parse.
std::string first_slurm_host(const std::string& nodelist, const std::string& variable = "SLURM_JOB_NODELIST");

// One line for logs: "rank 3 of 8 (local 1 of 2) from torchrun; store at node01:29501, hosted by rank 0".
std::string describe(const DistConfig& config);

}  // namespace oxtrain::runtime::dist
