// launch_env: the job's ranks and store address from main.py's flags, torchrun, Open MPI or
// Slurm (the rules are in the header).
#include "runtime/dist/launch_env.h"

#include <climits>
#include <cstdint>
#include <vector>

#include "base/error.h"
#include "base/text.h"

extern char** environ;

namespace oxtrain::runtime::dist {
namespace {

const std::string* find(const Environment& env, const std::string& name) {
  auto it = env.find(name);
  return it == env.end() ? nullptr : &it->second;
}

// `name`'s value as an int; nullopt when absent; an Error when present and not an integer.
std::optional<int> env_int(const Environment& env, const std::string& name, const std::string& source) {
  const std::string* text = find(env, name);
  if (!text) return std::nullopt;
  auto value = parse_int64(*text);
  if (!value || *value < INT_MIN || *value > INT_MAX)
    throw Error(source + ": " + name + "=" + quote_name(*text, 40) + " is not an integer");
  return static_cast<int>(*value);
}

int required_int(const Environment& env, const std::string& name, const std::string& source,
                 const std::string& hint) {
  auto value = env_int(env, name, source);
  if (!value) throw Error(source + ": " + name + " is not set" + hint);
  return *value;
}

int checked_port(int port, const std::string& what, const std::string& source) {
  if (port < 1 || port > 65535)
    throw Error(source + ": " + what + "=" + std::to_string(port) + " is outside 1..65535");
  return port;
}

// The names a source gives its numbers, for messages.
struct Names {
  std::string source, rank, world, local_rank, local_world;
};

// Checks the four numbers against each other; an Error naming the variables otherwise.
void check_ranks(const DistConfig& c, const Names& n) {
  if (c.world_size < 1)
    throw Error(n.source + ": " + n.world + "=" + std::to_string(c.world_size) + " must be at least 1");
  if (c.rank < 0 || c.rank >= c.world_size)
    throw Error(n.source + ": " + n.rank + "=" + std::to_string(c.rank) + " is outside [0, " + n.world + "=" +
                std::to_string(c.world_size) + ")");
  if (c.local_world_size < 1 || c.local_world_size > c.world_size)
    throw Error(n.source + ": " + n.local_world + "=" + std::to_string(c.local_world_size) + " is outside [1, " +
                n.world + "=" + std::to_string(c.world_size) + "]");
  if (c.local_rank < 0 || c.local_rank >= c.local_world_size)
    throw Error(n.source + ": " + n.local_rank + "=" + std::to_string(c.local_rank) + " is outside [0, " +
                n.local_world + "=" + std::to_string(c.local_world_size) + ")");
}

std::string master_addr(const Environment& env, const std::string& source, const std::string& hint) {
  const std::string* addr = find(env, "MASTER_ADDR");
  if (!addr) throw Error(source + ": MASTER_ADDR is not set" + hint);
  if (addr->empty()) throw Error(source + ": MASTER_ADDR is empty" + hint);
  return *addr;
}

bool truthy(const std::string& value) {
  return value == "True" || value == "true" || value == "TRUE" || value == "1" || value == "yes";
}

std::optional<DistConfig> from_torchrun(const Environment& env) {
  if (!find(env, "RANK") && !find(env, "WORLD_SIZE")) return std::nullopt;
  const std::string source = "torchrun";
  const std::string hint = " (torchrun sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT together)";
  DistConfig c;
  c.source = source;
  c.rank = required_int(env, "RANK", source, hint);
  c.world_size = required_int(env, "WORLD_SIZE", source, hint);
  c.local_rank = env_int(env, "LOCAL_RANK", source).value_or(0);
  c.local_world_size = env_int(env, "LOCAL_WORLD_SIZE", source).value_or(1);
  check_ranks(c, {source, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"});
  c.store_host = master_addr(env, source, hint);
  int port = checked_port(required_int(env, "MASTER_PORT", source, hint), "MASTER_PORT", source);
  const std::string* agent = find(env, "TORCHELASTIC_USE_AGENT_STORE");
  if (agent && truthy(*agent)) {
    // torchrun's agent hosts PyTorch's TCPStore on MASTER_PORT; ours goes beside it.
    if (port == 65535)
      throw Error(source + ": MASTER_PORT=65535 leaves no port for oxtrain's store, which goes on MASTER_PORT + 1 "
                           "beside torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True); choose a lower "
                           "--master-port");
    ++port;
  }
  c.store_port = port;
  return c;
}

std::optional<DistConfig> from_mpirun(const Environment& env) {
  if (!find(env, "OMPI_COMM_WORLD_RANK") && !find(env, "OMPI_COMM_WORLD_SIZE")) return std::nullopt;
  const std::string source = "mpirun";
  const std::string hint = " (Open MPI's mpirun sets OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK and _LOCAL_SIZE)";
  DistConfig c;
  c.source = source;
  c.rank = required_int(env, "OMPI_COMM_WORLD_RANK", source, hint);
  c.world_size = required_int(env, "OMPI_COMM_WORLD_SIZE", source, hint);
  c.local_rank = required_int(env, "OMPI_COMM_WORLD_LOCAL_RANK", source, hint);
  c.local_world_size = required_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", source, hint);
  check_ranks(c, {source, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                  "OMPI_COMM_WORLD_LOCAL_SIZE"});
  const std::string where_hint =
      " (under mpirun the store's address is given as: mpirun -x MASTER_ADDR=<first host> -x MASTER_PORT=29500)";
  c.store_host = master_addr(env, source, where_hint);
  c.store_port = checked_port(required_int(env, "MASTER_PORT", source, where_hint), "MASTER_PORT", source);
  return c;
}

// SLURM_TASKS_PER_NODE's form: "2(x3),1" is 2, 2, 2, 1. Returns the entry of node `node`, or,
// when the node is not known (-1), the one count every node has.
int tasks_on_node(const std::string& text, int node, const std::string& variable) {
  auto bad = [&]() -> Error {
    return Error("slurm: " + variable + "=" + quote_name(text, 60) + " is not a list like '2(x3),1'");
  };
  std::vector<std::pair<int64_t, int64_t>> runs;  // (tasks, nodes)
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int64_t repeat = 1;
    size_t paren = item.find('(');
    if (paren != std::string::npos) {
      if (item.size() < paren + 4 || item.compare(paren, 2, "(x") != 0 || item.back() != ')') throw bad();
      auto r = parse_int64(std::string_view(item).substr(paren + 2, item.size() - paren - 3));
      if (!r || *r < 1) throw bad();
      repeat = *r;
      item.resize(paren);
    }
    auto tasks = parse_int64(item);
    if (!tasks || *tasks < 1 || *tasks > INT_MAX) throw bad();
    runs.emplace_back(*tasks, repeat);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (node < 0) {
    for (const auto& run : runs)
      if (run.first != runs[0].first)
        throw Error("slurm: " + variable + "=" + quote_name(text, 60) +
                    " differs between nodes and SLURM_NODEID is not set to say which is this one");
    return static_cast<int>(runs[0].first);
  }
  int64_t left = node;
  for (const auto& run : runs) {
    if (left < run.second) return static_cast<int>(run.first);
    left -= run.second;
  }
  throw Error("slurm: SLURM_NODEID=" + std::to_string(node) + " is beyond the nodes of " + variable + "=" +
              quote_name(text, 60));
}

std::optional<DistConfig> from_slurm(const Environment& env) {
  if (!find(env, "SLURM_PROCID")) return std::nullopt;
  const std::string source = "slurm";
  DistConfig c;
  c.source = source;
  c.rank = required_int(env, "SLURM_PROCID", source, "");
  std::string world_name = !find(env, "SLURM_NTASKS") && find(env, "SLURM_NPROCS") ? "SLURM_NPROCS" : "SLURM_NTASKS";
  c.world_size = required_int(env, world_name, source, " (run the job's processes through srun)");
  c.local_rank = required_int(env, "SLURM_LOCALID", source, " (run the job's processes through srun)");
  std::string local_name;
  if (find(env, "SLURM_NTASKS_PER_NODE")) {
    local_name = "SLURM_NTASKS_PER_NODE";
    c.local_world_size = required_int(env, local_name, source, "");
  } else {
    for (const char* name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"})
      if (find(env, name)) {
        local_name = name;
        break;
      }
    if (local_name.empty())
      throw Error("slurm: none of SLURM_NTASKS_PER_NODE, SLURM_STEP_TASKS_PER_NODE and SLURM_TASKS_PER_NODE is "
                  "set, so the tasks on this node are unknown (run the job's processes through srun)");
    int node = env_int(env, "SLURM_NODEID", source).value_or(-1);
    if (find(env, "SLURM_NODEID") && node < 0)
      throw Error("slurm: SLURM_NODEID=" + std::to_string(node) + " is negative");
    c.local_world_size = tasks_on_node(*find(env, local_name), node, local_name);
  }
  check_ranks(c, {source, "SLURM_PROCID", world_name, "SLURM_LOCALID", local_name});
  if (find(env, "MASTER_ADDR")) {
    c.store_host = master_addr(env, source, "");
  } else {
    // The step's nodes first: rank 0 of the step runs on its first node.
    std::string list_name;
    for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"})
      if (find(env, name)) {
        list_name = name;
        break;
      }
    if (list_name.empty())
      throw Error("slurm: neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set, so the store's host is "
                  "unknown; set MASTER_ADDR to the host of rank 0");
    c.store_host = first_slurm_host(*find(env, list_name), list_name);
  }
  auto port = env_int(env, "MASTER_PORT", source);
  c.store_port = port ? checked_port(*port, "MASTER_PORT", source) : kDefaultStorePort;
  return c;
}

std::optional<DistConfig> from_environment(const Environment& env) {
  if (auto c = from_torchrun(env)) return c;
  if (auto c = from_mpirun(env)) return c;
  return from_slurm(env);
}

std::optional<DistConfig> from_flags(const DistFlags& flags, const Environment& env) {
  const std::string source = "flags";
  // main.py's defaults (-1) mean "not given".
  const bool world_given = flags.world_size.value_or(-1) != -1;
  const bool rank_given = flags.rank.value_or(-1) != -1;
  const int world_flag = world_given ? *flags.world_size : 1;
  const int rank_flag = rank_given ? *flags.rank : 0;
  if (world_flag < 1) throw Error("--world-size must be at least 1, got " + std::to_string(world_flag));
  if (rank_flag < 0) throw Error("--rank must be at least 0, got " + std::to_string(rank_flag));

  if (flags.dist_url && *flags.dist_url == "env://") {
    if (flags.multiprocessing_distributed)
      throw Error("--multiprocessing-distributed with --dist-url env:// is not supported: let the launcher start "
                  "one process per GPU (torchrun --nproc-per-node, srun --ntasks-per-node, mpirun -npernode)");
    auto c = from_environment(env);
    if (!c)
      throw Error("--dist-url env:// needs a launcher's variables (torchrun: RANK, WORLD_SIZE, MASTER_ADDR, "
                  "MASTER_PORT; Open MPI: OMPI_COMM_WORLD_*; Slurm: SLURM_PROCID, ...) and none is set");
    if (world_given && world_flag != c->world_size)
      throw Error("--world-size " + std::to_string(world_flag) + " disagrees with " + c->source + "'s world of " +
                  std::to_string(c->world_size) + " (--dist-url env://); leave --world-size out");
    if (rank_given && rank_flag != c->rank)
      throw Error("--rank " + std::to_string(rank_flag) + " disagrees with " + c->source + "'s rank " +
                  std::to_string(c->rank) + " (--dist-url env://); leave --rank out");
    return c;
  }

  if (flags.workers_per_node < 1)
    throw Error("workers per node must be at least 1, got " + std::to_string(flags.workers_per_node));
  DistConfig c;
  c.source = source;
  if (flags.multiprocessing_distributed) {
    int nodes = world_flag;
    int node = rank_flag;
    if (nodes > 1 && !rank_given)
      throw Error("--rank (this node's rank) is required with --world-size " + std::to_string(nodes) +
                  " nodes and --multiprocessing-distributed");
    if (node >= nodes)
      throw Error("--rank " + std::to_string(node) + " (this node's rank) is outside [0, --world-size=" +
                  std::to_string(nodes) + ") (with --multiprocessing-distributed --world-size counts nodes)");
    if (flags.local_worker < 0 || flags.local_worker >= flags.workers_per_node)
      throw Error("worker " + std::to_string(flags.local_worker) + " of this node is outside [0, " +
                  std::to_string(flags.workers_per_node) + ")");
    int64_t total = static_cast<int64_t>(nodes) * flags.workers_per_node;
    if (total > INT_MAX)
      throw Error("--world-size " + std::to_string(nodes) + " nodes of " + std::to_string(flags.workers_per_node) +
                  " workers is too many processes");
    c.world_size = static_cast<int>(total);
    c.rank = node * flags.workers_per_node + flags.local_worker;
    c.local_rank = flags.local_worker;
    c.local_world_size = flags.workers_per_node;
  } else {
    c.world_size = world_flag;
    if (c.world_size > 1 && !rank_given)
      throw Error("--rank is required with --world-size " + std::to_string(c.world_size));
    c.rank = rank_flag;
    if (c.rank >= c.world_size)
      throw Error("--rank " + std::to_string(c.rank) + " is outside [0, --world-size=" +
                  std::to_string(c.world_size) + ")");
  }
  HostPort where;
  if (flags.dist_url) {
    where = parse_tcp_url(*flags.dist_url);
  } else if (c.world_size > 1) {
    throw Error("--world-size " + std::to_string(world_flag) + (flags.multiprocessing_distributed ? " nodes" : "") +
                " needs --dist-url tcp://HOST:PORT: the address of rank 0's host and a free port there");
  }
  // One process is a job only where main.py makes it one: --multiprocessing-distributed (DDP
  // then runs on the one GPU), with a --dist-url for its store.
  if (c.world_size == 1 && !(flags.multiprocessing_distributed && flags.dist_url)) return std::nullopt;
  c.store_host = where.host;
  c.store_port = where.port;
  return c;
}

}  // namespace

Environment current_environment() {
  Environment env;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string text = *entry;
    size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    env.emplace(text.substr(0, eq), text.substr(eq + 1));
  }
  return env;
}

HostPort parse_tcp_url(const std::string& url, const std::string& flag) {
  auto bad = [&](const std::string& why) -> Error {
    return Error(flag + " " + quote_name(url, 80) + ": " + why +
                 "; expected tcp://HOST:PORT (e.g. tcp://10.1.1.20:23456; IPv6 as tcp://[fe80::1]:23456)");
  };
  const std::string scheme = "tcp://";
  if (url.compare(0, scheme.size(), scheme) != 0) {
    size_t sep = url.find("://");
    if (sep != std::string::npos) throw bad("the scheme '" + escape_name(url.substr(0, sep)) + "' is not supported");
    throw bad("no tcp:// scheme");
  }
  std::string rest = url.substr(scheme.size());
  HostPort out;
  std::string port_text;
  if (!rest.empty() && rest[0] == '[') {
    size_t close = rest.find(']');
    if (close == std::string::npos) throw bad("the IPv6 address has no closing ']'");
    out.host = rest.substr(1, close - 1);
    if (close + 1 >= rest.size() || rest[close + 1] != ':') throw bad("no port");
    port_text = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos) throw bad("no port");
    out.host = rest.substr(0, colon);
    port_text = rest.substr(colon + 1);
    if (out.host.find(':') != std::string::npos) throw bad("an IPv6 address must be in brackets");
  }
  if (out.host.empty()) throw bad("no host");
  for (char ch : out.host)
    if (static_cast<unsigned char>(ch) <= ' ' || ch == '/' || ch == '[' || ch == ']' || ch == '@' || ch == '?' ||
        ch == '#' || static_cast<unsigned char>(ch) >= 0x7f)
      throw bad("the host holds '" + escape_name(std::string(1, ch)) + "'");
  if (port_text.empty()) throw bad("no port");
  for (char ch : port_text)
    if (ch < '0' || ch > '9') throw bad("the port '" + escape_name(port_text, 20) + "' is not a number");
  auto port = parse_int64(port_text);
  if (!port || *port < 1 || *port > 65535)
    throw bad("the port " + escape_name(port_text, 20) + " is outside 1..65535");
  out.port = static_cast<int>(*port);
  return out;
}

std::string first_slurm_host(const std::string& nodelist, const std::string& variable) {
  auto bad = [&](const std::string& why) -> Error {
    return Error("slurm: " + variable + "=" + quote_name(nodelist, 80) + " " + why +
                 "; set MASTER_ADDR to the host of rank 0");
  };
  // The first host ends at the first comma outside brackets; each bracket group in it
  // ("[01-04,07]") stands for its first number ("01", zero padding kept).
  std::string host;
  size_t i = 0;
  while (i < nodelist.size() && nodelist[i] != ',') {
    char ch = nodelist[i];
    if (ch == ']') throw bad("has a ']' without '['");
    if (ch != '[') {
      host += ch;
      ++i;
      continue;
    }
    size_t close = nodelist.find(']', i);
    if (close == std::string::npos) throw bad("has a '[' without ']'");
    std::string group = nodelist.substr(i + 1, close - i - 1);
    std::string first = group.substr(0, group.find(','));
    first = first.substr(0, first.find('-'));
    if (first.empty()) throw bad("has an empty range");
    for (char d : first)
      if (d < '0' || d > '9') throw bad("has a range that is not numeric");
    host += first;
    i = close + 1;
  }
  if (host.empty()) throw bad("names no host");
  for (char ch : host)
    if (static_cast<unsigned char>(ch) <= ' ' || static_cast<unsigned char>(ch) >= 0x7f) throw bad("is not a host list");
  return host;
}

std::optional<DistConfig> dist_config(const DistFlags& flags, const Environment& env) {
  bool flags_given = flags.dist_url || (flags.world_size && *flags.world_size != -1) ||
                     (flags.rank && *flags.rank != -1) || flags.multiprocessing_distributed;
  std::optional<DistConfig> c = flags_given ? from_flags(flags, env) : from_environment(env);
  if (!c || (c->world_size == 1 && !flags.multiprocessing_distributed)) return std::nullopt;  // one process alone
  c->host_store = c->rank == 0;
  return c;
}

std::string describe(const DistConfig& c) {
  std::string host = c.store_host.find(':') != std::string::npos ? "[" + c.store_host + "]" : c.store_host;
  return "rank " + std::to_string(c.rank) + " of " + std::to_string(c.world_size) + " (local " +
         std::to_string(c.local_rank) + " of " + std::to_string(c.local_world_size) + ") from " + c.source +
         "; store at " + escape_name(host) + ":" + std::to_string(c.store_port) +
         (c.host_store ? ", hosted by this process" : ", hosted by rank 0");
}

}  // namespace oxtrain::runtime::dist
