// `oxtrain train` as one rank of a data-parallel job: spawning a node's workers
// (--multiprocessing-distributed), joining the job through the rendezvous store, checking that
// every rank runs the same thing, and the collectives the training loop needs around the step.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/dist/communicator.h"
#include "runtime/dist/launch_env.h"
#include "runtime/dist/store.h"
#include "runtime/session.h"

namespace oxtrain::cli {

// Environment variables a spawned worker finds its place in.
inline constexpr const char* kLocalWorkerVariable = "OXTRAIN_LOCAL_WORKER";
inline constexpr const char* kWorkersPerNodeVariable = "OXTRAIN_WORKERS_PER_NODE";

// --multiprocessing-distributed in the launching process: runs `workers` copies of this very
// command, each with its worker index in the environment, and waits for them. When one fails,
// the others are stopped (SIGTERM, then SIGKILL after `grace_seconds`) and one line on stderr
// says which worker failed and how ("worker 1 of 2 was killed by SIGKILL ..."; a killed worker
// prints nothing itself). Returns the exit code
// for the launcher: 0, or the first failing worker's. In a worker (the variable is set), returns
// std::nullopt: go on and train.
std::optional<int> run_local_workers(int workers, int grace_seconds = 10);
// This process's worker index and count when it was spawned by run_local_workers.
std::optional<std::pair<int, int>> spawned_worker();

struct Job {
  runtime::dist::DistConfig config;
  std::unique_ptr<runtime::dist::Store> store;
  std::unique_ptr<runtime::dist::Communicator> comm;
  bool is_root() const { return config.rank == 0; }
};

struct JoinOptions {
  std::string backend = "gloo";  // "gloo" (CPU buffers) or "nccl" (GPU buffers)
  std::chrono::milliseconds timeout{30 * 60 * 1000};
};

// Joins the job `config` describes: hosts or reaches the store, checks through it that every
// rank was given the same world size (a rank that differs, and rank 0, stop at once naming both
// sizes; a rank that never comes is named after `timeout`), then makes the communicator. Gloo
// binds OXTRAIN_GLOO_ADDRESS when set, 127.0.0.1 for a store on loopback, else the address of
// this host's interface that routes to the store. An Error names this rank and what failed.
Job join_job(const runtime::dist::DistConfig& config, const JoinOptions& options);

// Every rank publishes what it runs (named facts: model, batch, world size, ...) and compares
// them with rank 0's; a difference is an Error on that rank naming the facts that differ, and
// on rank 0 naming the first rank that differs and how. All ranks pass a barrier before comparing.
using JobFacts = std::vector<std::pair<std::string, std::string>>;
void check_same_job(Job& job, const JobFacts& facts);

// Every persistent value of `session` (parameters, state) becomes rank 0's.
void broadcast_persistent(Job& job, runtime::Session& session);

// Sums across ranks, in place (host doubles: metrics of validation).
void allreduce_host(Job& job, std::vector<double>& values);

}  // namespace oxtrain::cli
