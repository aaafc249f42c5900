#include "runtime/dist/store.h"

#include <condition_variable>
#include <map>
#include <mutex>

#include "base/error.h"
#include "base/text.h"

namespace oxtrain::runtime::dist {
namespace {

std::string missing_keys(const std::vector<std::string>& keys, const std::map<std::string, Bytes>& have) {
  std::vector<std::string> missing;
  for (const auto& k : keys)
    if (!have.count(k)) missing.push_back(quote_name(k, 60));
  return join_limited(missing, 160);
}

class MemoryStore : public Store {
 public:
  explicit MemoryStore(std::chrono::milliseconds timeout) : timeout_(timeout) {}
  void set(const std::string& key, const Bytes& value) override {
    check_sizes(key, value.size());
    {
      std::lock_guard<std::mutex> lock(mutex_);
      values_[key] = value;
    }
    changed_.notify_all();
  }
  Bytes get(const std::string& key) override {
    std::unique_lock<std::mutex> lock(mutex_);
    wait_locked(lock, {key});
    return values_.at(key);
  }
  int64_t add(const std::string& key, int64_t delta) override {
    int64_t now = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = values_.find(key);
      if (it != values_.end()) {
        auto parsed = parse_int64(std::string(it->second.begin(), it->second.end()));
        if (!parsed) throw Error("store: key '" + escape_name(key) + "' does not hold a number");
        now = *parsed;
      }
      now += delta;
      std::string text = std::to_string(now);
      values_[key] = Bytes(text.begin(), text.end());
    }
    changed_.notify_all();
    return now;
  }
  void wait(const std::vector<std::string>& keys) override {
    std::unique_lock<std::mutex> lock(mutex_);
    wait_locked(lock, keys);
  }
  bool check(const std::vector<std::string>& keys) override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& k : keys)
      if (!values_.count(k)) return false;
    return true;
  }
  std::chrono::milliseconds timeout() const override { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) override { timeout_ = timeout; }

 private:
  static void check_sizes(const std::string& key, size_t value_bytes) {
    if (key.size() > kMaxKeyBytes || value_bytes > kMaxValueBytes)
      throw Error("store: key of " + std::to_string(key.size()) + " bytes or value of " + std::to_string(value_bytes) +
                  " bytes is over the limit (" + std::to_string(kMaxKeyBytes) + " / " +
                  std::to_string(kMaxValueBytes) + ")");
  }
  void wait_locked(std::unique_lock<std::mutex>& lock, const std::vector<std::string>& keys) {
    auto all = [&] {
      for (const auto& k : keys)
        if (!values_.count(k)) return false;
      return true;
    };
    if (!changed_.wait_for(lock, timeout_, all))
      throw Error("store: timed out after " + std::to_string(timeout_.count()) + " ms waiting for " +
                  missing_keys(keys, values_));
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, Bytes> values_;
  std::chrono::milliseconds timeout_;
};

class PrefixStore : public Store {
 public:
  PrefixStore(Store& base, std::string prefix) : base_(base), prefix_(std::move(prefix)) {}
  void set(const std::string& key, const Bytes& value) override { base_.set(prefix_ + key, value); }
  Bytes get(const std::string& key) override { return base_.get(prefix_ + key); }
  int64_t add(const std::string& key, int64_t delta) override { return base_.add(prefix_ + key, delta); }
  void wait(const std::vector<std::string>& keys) override { base_.wait(with_prefix(keys)); }
  bool check(const std::vector<std::string>& keys) override { return base_.check(with_prefix(keys)); }
  std::chrono::milliseconds timeout() const override { return base_.timeout(); }
  void set_timeout(std::chrono::milliseconds timeout) override { base_.set_timeout(timeout); }

 private:
  std::vector<std::string> with_prefix(const std::vector<std::string>& keys) const {
    std::vector<std::string> out;
    for (const auto& k : keys) out.push_back(prefix_ + k);
    return out;
  }
  Store& base_;
  std::string prefix_;
};

}  // namespace

std::unique_ptr<Store> prefixed(Store& base, const std::string& prefix) {
  return std::make_unique<PrefixStore>(base, prefix + "/");
}

std::shared_ptr<Store> make_memory_store(std::chrono::milliseconds timeout) {
  return std::make_shared<MemoryStore>(timeout);
}

}  // namespace oxtrain::runtime::dist
