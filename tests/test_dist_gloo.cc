// The Gloo communicator: allreduce, broadcast and barrier between ranks run as threads of this
// process (each with its own communicator over one memory store, on 127.0.0.1) and as two
// forked processes meeting through a directory (Gloo's FileStore behind our Store); a rank that
// never arrives and a rank that vanishes mid-run end in an Error on the others, not a hang.
#include <gloo/common/error.h>
#include <gloo/rendezvous/file_store.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "runtime/dist/communicator.h"
#include "runtime/dist/store.h"

namespace oxtrain::runtime::dist {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

CommOptions options_for(int rank, int world_size, milliseconds timeout = milliseconds(60'000)) {
  CommOptions options;
  options.rank = rank;
  options.world_size = world_size;
  options.interface_address = "127.0.0.1";
  options.timeout = timeout;
  return options;
}

// Runs body(rank) on world_size threads; returns what each rank threw (null: nothing).
std::vector<std::exception_ptr> run_ranks(int world_size, const std::function<void(int)>& body) {
  std::vector<std::exception_ptr> thrown(world_size);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world_size; ++rank)
    threads.emplace_back([&, rank] {
      try {
        body(rank);
      } catch (...) {
        thrown[rank] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  return thrown;
}

std::string message_of(const std::exception_ptr& thrown) {
  try {
    std::rethrow_exception(thrown);
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("not an oxtrain::Error: ") + e.what();
  }
}

void expect_no_failures(const std::vector<std::exception_ptr>& thrown) {
  for (size_t rank = 0; rank < thrown.size(); ++rank)
    if (thrown[rank]) ADD_FAILURE() << "rank " << rank << ": " << message_of(thrown[rank]);
}

// Small integers: every partial sum is exact in float, whatever order Gloo adds them in.
float small_integer(int rank, size_t i) { return float((rank + 1) * (int(i % 1001) - 500)); }

TEST(DistGlooAllreduce, SmallIntegersSumExactlyForTwoThreeAndFourRanks) {
  for (int world_size : {2, 3, 4}) {
    SCOPED_TRACE("world size " + std::to_string(world_size));
    auto store = make_memory_store(milliseconds(60'000));
    std::vector<std::vector<float>> results(world_size);
    auto thrown = run_ranks(world_size, [&](int rank) {
      auto comm = make_gloo_communicator(*store, options_for(rank, world_size));
      EXPECT_STREQ(comm->backend(), "gloo");
      EXPECT_EQ(comm->rank(), rank);
      EXPECT_EQ(comm->world_size(), world_size);
      // Two calls in a row on one communicator: one float, then an odd length over many of
      // Gloo's 1 MiB segments.
      float one = float(rank + 1);
      comm->allreduce_sum(&one, 1);
      EXPECT_EQ(one, float(world_size * (world_size + 1) / 2));
      std::vector<float> data(1000003);
      for (size_t i = 0; i < data.size(); ++i) data[i] = small_integer(rank, i);
      comm->allreduce_sum(data.data(), data.size());
      results[rank] = std::move(data);
    });
    expect_no_failures(thrown);
    const float ranks_sum = float(world_size * (world_size + 1) / 2);
    for (int rank = 0; rank < world_size; ++rank) {
      ASSERT_EQ(results[rank].size(), 1000003u);
      size_t wrong = 0, first_wrong = 0;
      for (size_t i = 0; i < results[rank].size(); ++i)
        if (results[rank][i] != ranks_sum * float(int(i % 1001) - 500) && wrong++ == 0) first_wrong = i;
      EXPECT_EQ(wrong, 0u) << "rank " << rank << ", first wrong element " << first_wrong << " = "
                           << results[rank][first_wrong];
    }
  }
}

// A deterministic spread of magnitudes (1e-3 to 1e3, both signs), so the order of the additions
// changes the rounding.
float spread_value(int rank, size_t i) {
  uint64_t x = (uint64_t(rank) + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t(i) * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  double unit = double(x >> 11) / double(1ull << 53);          // [0, 1)
  double magnitude = std::pow(10.0, -3.0 + 6.0 * unit);        // [1e-3, 1e3)
  return float((x & 1) ? -magnitude : magnitude);
}

TEST(DistGlooAllreduce, FloatSumsAreIdenticalOnEveryRankAndWithinTheRoundingBound) {
  for (int world_size : {3, 4}) {
    SCOPED_TRACE("world size " + std::to_string(world_size));
    const size_t count = 100003;
    auto store = make_memory_store(milliseconds(60'000));
    std::vector<std::vector<float>> results(world_size);
    auto thrown = run_ranks(world_size, [&](int rank) {
      auto comm = make_gloo_communicator(*store, options_for(rank, world_size));
      std::vector<float> data(count);
      for (size_t i = 0; i < count; ++i) data[i] = spread_value(rank, i);
      comm->allreduce_sum(data.data(), count);
      results[rank] = std::move(data);
    });
    expect_no_failures(thrown);
    // The ring adds each chunk in a rank-dependent order but then copies the one result to
    // every rank: all ranks hold the same bits.
    for (int rank = 1; rank < world_size; ++rank)
      EXPECT_EQ(std::memcmp(results[rank].data(), results[0].data(), count * sizeof(float)), 0)
          << "rank " << rank << " differs from rank 0";
    // Against the sum in double (exact to ~1e-16 relative for these W terms): W-1 float
    // additions in any order are off by at most (W-1) u sum|x_r| (u = 2^-24, Higham's bound
    // gamma_{W-1}, the (1 - (W-1)u) denominator covered by the factor 1.001).
    const double u = std::ldexp(1.0, -24);
    size_t outside = 0;
    for (size_t i = 0; i < count; ++i) {
      double exact = 0, magnitude = 0;
      for (int r = 0; r < world_size; ++r) {
        exact += double(spread_value(r, i));
        magnitude += std::fabs(double(spread_value(r, i)));
      }
      double bound = (world_size - 1) * u * magnitude * 1.001;
      if (std::fabs(double(results[0][i]) - exact) > bound && outside++ < 5)
        ADD_FAILURE() << "element " << i << ": " << results[0][i] << " vs " << exact << " (bound " << bound << ")";
    }
    EXPECT_EQ(outside, 0u);
  }
}

TEST(DistGlooAllreduce, OneHundredMegabytes) {
  const size_t count = 25'000'000;  // 100 MB of float32
  auto store = make_memory_store(milliseconds(60'000));
  std::vector<size_t> wrong(2, 0);
  auto thrown = run_ranks(2, [&](int rank) {
    auto comm = make_gloo_communicator(*store, options_for(rank, 2));
    std::vector<float> data(count);
    for (size_t i = 0; i < count; ++i) data[i] = small_integer(rank, i);
    comm->allreduce_sum(data.data(), count);
    for (size_t i = 0; i < count; ++i)
      if (data[i] != 3.0f * float(int(i % 1001) - 500)) ++wrong[rank];
  });
  expect_no_failures(thrown);
  EXPECT_EQ(wrong[0], 0u);
  EXPECT_EQ(wrong[1], 0u);
}

TEST(DistGlooBroadcast, FromTheLastRankReachesEveryRank) {
  for (int world_size : {2, 3, 4}) {
    SCOPED_TRACE("world size " + std::to_string(world_size));
    const int root = world_size - 1;
    const size_t bytes = 12345;
    auto pattern = [](size_t i) { return uint8_t((i * 131 + 7) % 251); };
    auto store = make_memory_store(milliseconds(60'000));
    std::vector<std::vector<uint8_t>> results(world_size);
    auto thrown = run_ranks(world_size, [&](int rank) {
      auto comm = make_gloo_communicator(*store, options_for(rank, world_size));
      std::vector<uint8_t> data(bytes, 0xEE);
      if (rank == root)
        for (size_t i = 0; i < bytes; ++i) data[i] = pattern(i);
      comm->broadcast(data.data(), bytes, root);
      // Then from rank 1 (not the root above), one byte: a second broadcast on the same
      // communicator with another root.
      uint8_t flag = rank == 1 ? 42 : 0;
      comm->broadcast(&flag, 1, 1);
      EXPECT_EQ(flag, 42) << "rank " << rank;
      results[rank] = std::move(data);
    });
    expect_no_failures(thrown);
    for (int rank = 0; rank < world_size; ++rank) {
      ASSERT_EQ(results[rank].size(), bytes);
      size_t wrong = 0;
      for (size_t i = 0; i < bytes; ++i) wrong += results[rank][i] != pattern(i);
      EXPECT_EQ(wrong, 0u) << "rank " << rank;
    }
  }
}

TEST(DistGlooBroadcast, RootOutOfRangeIsRefused) {
  auto store = make_memory_store(milliseconds(60'000));
  auto thrown = run_ranks(2, [&](int rank) {
    auto comm = make_gloo_communicator(*store, options_for(rank, 2));
    uint8_t byte = 0;
    try {
      comm->broadcast(&byte, 1, 2);
      ADD_FAILURE() << "root 2 of world size 2 was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("root 2 is not a rank"), std::string::npos) << e.what();
    }
    // A refused call is not a failure: the communicator still works. The barrier also keeps
    // one rank from tearing its connections down while the other is still connecting.
    comm->barrier();
  });
  expect_no_failures(thrown);
}

TEST(DistGlooBarrier, NoRankLeavesBeforeTheLastArrives) {
  const int world_size = 3;
  auto store = make_memory_store(milliseconds(60'000));
  std::atomic<int> arrived{0};
  std::vector<int> seen_on_leaving(world_size, -1);
  auto thrown = run_ranks(world_size, [&](int rank) {
    auto comm = make_gloo_communicator(*store, options_for(rank, world_size));
    // Rank 2 arrives 300 ms after rank 0: a barrier that did not wait lets rank 0 leave
    // having seen fewer than 3 arrivals.
    std::this_thread::sleep_for(milliseconds(150 * rank));
    arrived.fetch_add(1);
    comm->barrier();
    seen_on_leaving[rank] = arrived.load();
  });
  expect_no_failures(thrown);
  for (int rank = 0; rank < world_size; ++rank) EXPECT_EQ(seen_on_leaving[rank], world_size) << "rank " << rank;
}

TEST(DistGlooWorldSizeOne, CollectivesAreIdentitiesWithoutANetwork) {
  auto store = make_memory_store(milliseconds(1000));
  CommOptions options;  // rank 0 of 1, no interface: nothing may be resolved or bound
  auto comm = make_gloo_communicator(*store, options);
  std::vector<float> data = {1.5f, -0.0f, 3.25f};
  comm->allreduce_sum(data.data(), data.size());
  EXPECT_EQ(data, (std::vector<float>{1.5f, -0.0f, 3.25f}));
  EXPECT_TRUE(std::signbit(data[1]));
  uint8_t bytes[3] = {1, 2, 3};
  comm->broadcast(bytes, sizeof(bytes), 0);
  EXPECT_EQ(bytes[2], 3);
  comm->barrier();
  EXPECT_THROW(comm->broadcast(bytes, sizeof(bytes), 1), Error);
  // Nothing was written to the store: no rendezvous took place.
  EXPECT_FALSE(store->check({"gloo/communicators/rank0"}));
}

TEST(DistGlooOptions, RankOutsideTheWorldIsRefused) {
  auto store = make_memory_store(milliseconds(1000));
  try {
    make_gloo_communicator(*store, options_for(3, 3));
    FAIL() << "rank 3 of 3 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank 3 of world size 3 is out of range"), std::string::npos) << e.what();
  }
}

TEST(DistGlooRendezvous, ARankThatNeverArrivesIsNamedAfterTheTimeout) {
  const int world_size = 3;  // rank 2 never comes
  auto store = make_memory_store(milliseconds(60'000));
  std::vector<double> seconds(world_size, 0);
  auto thrown = run_ranks(world_size - 1, [&](int rank) {
    auto start = Clock::now();
    try {
      make_gloo_communicator(*store, options_for(rank, world_size, milliseconds(500)));
    } catch (...) {
      seconds[rank] = std::chrono::duration<double>(Clock::now() - start).count();
      throw;
    }
  });
  for (int rank = 0; rank < world_size - 1; ++rank) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    ASSERT_TRUE(thrown[rank]) << "made a communicator without rank 2";
    std::string message = message_of(thrown[rank]);
    EXPECT_NE(message.find("gloo rendezvous (rank " + std::to_string(rank) + " of 3)"), std::string::npos) << message;
    EXPECT_NE(message.find("waiting for rank 2 to join (store key 'gloo/1/2')"), std::string::npos) << message;
    EXPECT_NE(message.find("the job cannot continue"), std::string::npos) << message;
    // The 500 ms timeout, not the store's minute: a slack of 4.5 s for a loaded machine.
    EXPECT_GE(seconds[rank], 0.45);
    EXPECT_LT(seconds[rank], 5.0);
  }
}

// Simulates a killed worker: the last rank stops after one allreduce and destroys its
// communicator (closing its sockets). Every other rank's next allreduce throws; the timeout is
// 30 s but the failure comes at once, because the ranks next to the vanished one reset their
// own connections when they fail and so wake the ranks further round the ring (the failed
// ranks keep their communicators until all have failed, so only that reset can wake them).
TEST(DistGlooFailure, APeerThatVanishesFailsTheOthersNextAllreduce) {
  for (int world_size : {2, 4}) {
    SCOPED_TRACE("world size " + std::to_string(world_size));
    const int vanishing = world_size - 1;
    auto store = make_memory_store(milliseconds(60'000));
    std::vector<double> seconds(world_size, 0);
    std::vector<std::string> later_message(world_size);
    std::atomic<int> failed{0};
    auto thrown = run_ranks(world_size, [&](int rank) {
      auto comm = make_gloo_communicator(*store, options_for(rank, world_size, milliseconds(30'000)));
      std::vector<float> data(1001, float(rank));
      comm->allreduce_sum(data.data(), data.size());
      if (rank == vanishing) {
        comm.reset();
        return;
      }
      auto start = Clock::now();
      try {
        for (int step = 0; step < 3; ++step) comm->allreduce_sum(data.data(), data.size());
      } catch (...) {
        seconds[rank] = std::chrono::duration<double>(Clock::now() - start).count();
        // The communicator refuses to be used again, at once.
        try {
          comm->allreduce_sum(data.data(), data.size());
        } catch (const Error& e) {
          later_message[rank] = e.what();
        }
        // Keep this communicator alive until every surviving rank has failed (as a worker
        // busy reporting would), so no rank is woken by a peer's destructor closing sockets.
        failed.fetch_add(1);
        auto give_up = Clock::now() + std::chrono::seconds(40);
        while (failed.load() < world_size - 1 && Clock::now() < give_up) std::this_thread::sleep_for(milliseconds(5));
        throw;
      }
    });
    EXPECT_FALSE(thrown[vanishing]);
    for (int rank = 0; rank < world_size; ++rank) {
      if (rank == vanishing) continue;
      SCOPED_TRACE("rank " + std::to_string(rank));
      ASSERT_TRUE(thrown[rank]) << "allreduce went on without rank " << vanishing;
      std::string message = message_of(thrown[rank]);
      EXPECT_NE(message.find("gloo allreduce (rank " + std::to_string(rank) + " of " + std::to_string(world_size) + ")"),
                std::string::npos)
          << message;
      EXPECT_NE(message.find("the job cannot continue"), std::string::npos) << message;
      EXPECT_LT(seconds[rank], 10.0) << message;
      EXPECT_NE(later_message[rank].find("failed earlier"), std::string::npos) << later_message[rank];
    }
  }
}

// --- Two processes -------------------------------------------------------------------------

// Our Store over Gloo's FileStore (a directory every process sees). FileStore keys are
// write-once, so add() writes "<key>#<n>" for each new value: enough where one process alone
// adds to a key, as the communicator does (one counter per rank).
class FileStoreForTest : public Store {
 public:
  FileStoreForTest(const std::string& dir, milliseconds timeout) : files_(dir), timeout_(timeout) {}
  void set(const std::string& key, const Bytes& value) override {
    files_.set(key, std::vector<char>(value.begin(), value.end()));
  }
  Bytes get(const std::string& key) override {
    wait({key});
    auto value = files_.get(key);
    return Bytes(value.begin(), value.end());
  }
  int64_t add(const std::string& key, int64_t delta) override {
    int64_t now = 0;
    int n = 0;
    while (files_.has({key + "#" + std::to_string(n + 1)})) {
      ++n;
      Bytes last = get(key + "#" + std::to_string(n));
      now = std::stoll(std::string(last.begin(), last.end()));
    }
    now += delta;
    std::string text = std::to_string(now);
    set(key + "#" + std::to_string(n + 1), Bytes(text.begin(), text.end()));
    return now;
  }
  void wait(const std::vector<std::string>& keys) override {
    try {
      files_.wait(keys, timeout_);
    } catch (const gloo::Exception& e) {
      throw Error(std::string("file store: ") + e.what());
    }
  }
  bool check(const std::vector<std::string>& keys) override { return files_.has(keys); }
  milliseconds timeout() const override { return timeout_; }
  void set_timeout(milliseconds timeout) override { timeout_ = timeout; }

 private:
  struct Files : gloo::rendezvous::FileStore {
    using FileStore::FileStore;
    bool has(const std::vector<std::string>& keys) { return check(keys); }
  };
  Files files_;
  milliseconds timeout_;
};

// The child's whole life: exit status 0 when every check passed, otherwise the number of the
// failed step (the message on stderr).
[[noreturn]] void run_child(const std::string& dir, int rank) {
  int status = 0;
  try {
    FileStoreForTest store(dir, milliseconds(20'000));
    auto comm = make_gloo_communicator(store, options_for(rank, 2, milliseconds(20'000)));
    std::vector<float> data(1000003);
    for (size_t i = 0; i < data.size(); ++i) data[i] = small_integer(rank, i);
    comm->allreduce_sum(data.data(), data.size());
    for (size_t i = 0; i < data.size() && status == 0; ++i)
      if (data[i] != 3.0f * float(int(i % 1001) - 500)) status = 3;
    int64_t word = rank == 1 ? 0x0123456789abcdefLL : 0;
    comm->broadcast(&word, sizeof(word), 1);
    if (status == 0 && word != 0x0123456789abcdefLL) status = 4;
    comm->barrier();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    status = 2;
  }
  std::fflush(stderr);
  _exit(status);
}

TEST(DistGlooProcesses, TwoProcessesMeetThroughAFileStore) {
  char pattern[] = "/tmp/oxtrain-gloo-XXXXXX";
  ASSERT_NE(mkdtemp(pattern), nullptr);
  const std::string dir = pattern;
  std::vector<pid_t> children;
  for (int rank = 0; rank < 2; ++rank) {
    pid_t pid = fork();
    ASSERT_NE(pid, -1) << std::strerror(errno);
    if (pid == 0) run_child(dir, rank);
    children.push_back(pid);
  }
  // Wait for both, for 60 s at most; a child still running then is killed and fails the test.
  std::vector<int> status(2, -1);
  auto deadline = Clock::now() + std::chrono::seconds(60);
  for (size_t done = 0; done < 2;) {
    for (size_t i = 0; i < 2; ++i) {
      if (status[i] != -1) continue;
      int raw = 0;
      if (waitpid(children[i], &raw, WNOHANG) == children[i]) {
        status[i] = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
        ++done;
      }
    }
    if (done < 2 && Clock::now() > deadline) {
      for (size_t i = 0; i < 2; ++i)
        if (status[i] == -1) {
          kill(children[i], SIGKILL);
          waitpid(children[i], nullptr, 0);
          status[i] = 999;
        }
      break;
    }
    std::this_thread::sleep_for(milliseconds(10));
  }
  std::filesystem::remove_all(dir);
  EXPECT_EQ(status[0], 0) << "rank 0 (2: an error, on stderr; 3: wrong sum; 4: wrong broadcast; 999: hung)";
  EXPECT_EQ(status[1], 0) << "rank 1 (2: an error, on stderr; 3: wrong sum; 4: wrong broadcast; 999: hung)";
}

}  // namespace
}  // namespace oxtrain::runtime::dist
