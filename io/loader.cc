// The threaded loader.
//
// Buffers: prefetch + 1 batch buffers in a ring (one when workers == 0); batch k of an epoch
// is written into slot k % buffers, and only once the consumer has given back batch
// k - buffers (by calling next() again or start_epoch()). Each buffer is one allocation:
// the images (batch x size x size x 3 bytes), padded to 64 bytes, then the labels (int64).
//
// Work: workers claim single samples in epoch order (position p of this rank's index list)
// from a shared counter, so every worker helps with the oldest unfinished batch, a batch is
// ready as soon as its last sample lands, and the first batch comes after
// batch / workers sample times rather than batch sample times. The consumer waits for batch k
// in order.
//
// Randomness: sample p of the epoch, dataset index i, draws from SampleRng(seed, epoch, i).
// The dataset index (not the position) makes an image's augmentation in an epoch independent
// of the thread count, the batch size, the rank and the world size. A file that cannot be
// decoded is replaced by the next index of the dataset that decodes (i + 1, i + 2, ...,
// wrapping), transformed with the same SampleRng(seed, epoch, i) and labelled with its own
// class, so the epoch keeps its length and the output stays deterministic.
#include "io/loader.h"

#include <pthread.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <new>
#include <set>

#include "base/error.h"
#include "base/text.h"
#include "io/decode.h"
#include "io/image.h"
#include "io/jpeg_info.h"
#include "io/transforms.h"

namespace oxtrain::io {
namespace {

constexpr size_t kLabelAlign = 64;

}  // namespace

struct Loader::Impl {
  const ImageFolder& data;
  LoaderOptions o;
  int64_t n = 0;
  int64_t classes = 0;
  size_t sample_bytes = 0;   // size * size * 3
  size_t labels_offset = 0;  // within a buffer
  size_t buffer_size = 0;
  int nbuf = 0;
  std::vector<uint8_t*> buffers;
  std::vector<std::vector<EncodedSample>> encoded;  // per buffer, with LoaderOptions::encoded

  std::mutex mu;
  std::condition_variable work_cv;   // workers: a sample may be claimed, or stop
  std::condition_variable ready_cv;  // consumer: a batch completed, or an error
  std::condition_variable idle_cv;   // start_epoch: no sample in flight
  bool stop = false;
  bool active = false;  // an epoch is set up
  uint64_t gen = 0;     // bumped by start_epoch: work of an older epoch is discarded
  int64_t epoch = 0;
  std::vector<int64_t> indices;
  int64_t total = 0;     // samples produced this epoch (after drop_last)
  int64_t nbatches = 0;
  int64_t next_pos = 0;  // next position to claim
  int64_t released = 0;  // batches below this have been given back by the consumer
  int64_t next_batch = 0;
  int64_t held = -1;     // batch the consumer holds
  std::vector<int64_t> remaining;  // per slot: samples of its batch not written yet
  int inflight = 0;
  std::exception_ptr error;
  int64_t delivered = 0;

  std::unique_ptr<std::atomic<bool>[]> bad;  // per dataset index: known undecodable
  std::mutex warn_mu;
  std::set<std::string> warned;

  std::vector<std::thread> threads;
  std::vector<uint8_t> caller_file;  // file buffer of the caller's thread (workers == 0)

  Impl(const ImageFolder& d, const LoaderOptions& opt) : data(d), o(opt) {}

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop = true;
    }
    work_cv.notify_all();
    for (auto& t : threads) t.join();
    for (uint8_t* b : buffers) {
      if (o.release)
        o.release(b);
      else
        delete[] b;
    }
  }

  int64_t batch_size_of(int64_t b) const {
    return std::min(o.batch_size, total - b * o.batch_size);
  }

  void init_slot(int64_t b) {
    if (b < nbatches) remaining[size_t(b % nbuf)] = batch_size_of(b);
  }

  // Why sample j failed, for its one warning: a DecodeError's text without its path, any
  // other failure (an allocation that failed, an Error of a transform) in words.
  static std::string failure_text(std::exception_ptr failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const DecodeError& e) {
      std::string why = e.what();
      const std::string& path = e.path();
      if (why.size() > path.size() + 2 && why.compare(0, path.size(), path) == 0 &&
          why.compare(path.size(), 2, ": ") == 0)
        why = why.substr(path.size() + 2);
      return why;
    } catch (const std::bad_alloc&) {
      return "out of memory while decoding it";
    } catch (const Error& e) {
      return e.what();
    } catch (...) {
      return "it could not be decoded";
    }
  }

  void mark_bad(int64_t j, std::exception_ptr failure) {
    bad[size_t(j)].store(true, std::memory_order_relaxed);
    const std::string& key = data.samples()[size_t(j)].path;
    std::lock_guard<std::mutex> lock(warn_mu);
    if (warned.insert(key).second) {
      const std::string why = one_line(failure_text(failure));
      std::string line = "oxtrain: warning: skipping unreadable image " +
                         escape_name(key, key.size() * 4 + 8) + ": " + why + "\n";
      std::fputs(line.c_str(), stderr);
      std::fflush(stderr);
    }
  }

  // Writes sample `pos_in_batch` of the batch in `slot` from dataset index i (or the first
  // decodable index after it).
  void produce(int64_t i, int64_t ep, int slot, int64_t pos_in_batch,
               std::vector<uint8_t>& file) {
    uint8_t* out = buffers[size_t(slot)] + size_t(pos_in_batch) * sample_bytes;
    int64_t* labels = reinterpret_cast<int64_t*>(buffers[size_t(slot)] + labels_offset);
    const auto& samples = data.samples();
    int64_t j = i;
    for (int64_t tries = 0; tries < n; ++tries, j = (j + 1 == n ? 0 : j + 1)) {
      if (bad[size_t(j)].load(std::memory_order_relaxed)) continue;
      const Sample& s = samples[size_t(j)];
      // Labels are checked where they enter a batch: one outside the classes would index
      // past the logits in the loss and the accuracy.
      if (s.label < 0 || s.label >= classes)
        throw Error("data loader: image '" + escape_name(s.path) + "' has label " +
                    std::to_string(s.label) + ", outside [0, " + std::to_string(classes) +
                    ") of the dataset's classes");
      try {
        read_image_file(s.path, file);
        if (o.encoded && leave_encoded(s, i, ep, file, encoded[size_t(slot)][size_t(pos_in_batch)])) {
          labels[pos_in_batch] = s.label;
          return;
        }
        if (o.train) {
          SampleRng rng(o.seed, ep, i);
          train_transform(file.data(), file.size(), s.path, o.image_size, rng, out, o.crop);
        } else {
          val_transform(file.data(), file.size(), s.path, o.image_size, out);
        }
        labels[pos_in_batch] = s.label;
        return;
      } catch (...) {  // any failure of one file replaces the sample; it never stops a run
        mark_bad(j, std::current_exception());
      }
    }
    throw Error("data loader: none of the " + std::to_string(n) + " images under '" +
                data.root() + "' can be decoded");
  }

  // A JPEG the GPU's hardware decoder takes: the file moves into `e` (its old buffer comes back
  // as the worker's file buffer) with the transform's taps. Anything else: false, and `e` says
  // the sample is decoded here.
  bool leave_encoded(const Sample& s, int64_t i, int64_t ep, std::vector<uint8_t>& file,
                     EncodedSample& e) const {
    JpegInfo info;
    if (!read_jpeg_info(file.data(), file.size(), &info) || !hardware_decodable(info)) {
      e.bytes.clear();
      return false;
    }
    if (o.train) {
      SampleRng rng(o.seed, ep, i);
      e.taps = train_taps(info.width, info.height, o.image_size, rng, o.crop);
    } else {
      e.taps = val_taps(info.width, info.height, o.image_size);
    }
    e.width = info.width;
    e.height = info.height;
    e.path = &s.path;
    e.bytes.swap(file);
    return true;
  }

  void start(int64_t new_epoch, int64_t first_batch, int64_t batches);

  void worker() {
    pthread_setname_np(pthread_self(), "oxtrain-load");
    std::vector<uint8_t> file;
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      work_cv.wait(lock, [&] {
        return stop || (active && !error && next_pos < total &&
                        next_pos / o.batch_size < released + nbuf);
      });
      if (stop) return;
      const int64_t p = next_pos++;
      const int64_t i = indices[size_t(p)];
      const int64_t ep = epoch;
      const uint64_t g = gen;
      const int64_t b = p / o.batch_size;
      const int slot = int(b % nbuf);
      ++inflight;
      lock.unlock();
      std::exception_ptr failed;
      try {
        produce(i, ep, slot, p - b * o.batch_size, file);
      } catch (...) {
        failed = std::current_exception();
      }
      lock.lock();
      --inflight;
      if (g == gen) {
        if (failed) {
          if (!error) error = failed;
          ready_cv.notify_all();
        } else if (--remaining[size_t(slot)] == 0) {
          ready_cv.notify_all();
        }
      }
      if (inflight == 0) idle_cv.notify_all();
    }
  }
};

Loader::Loader(const ImageFolder& dataset, const LoaderOptions& options)
    : impl_(std::make_unique<Impl>(dataset, options)) {
  Impl& m = *impl_;
  const LoaderOptions& o = m.o;
  if (o.batch_size < 1)
    throw Error("data loader: batch size " + std::to_string(o.batch_size) + " < 1");
  if (o.image_size < 1)
    throw Error("data loader: image size " + std::to_string(o.image_size) + " < 1");
  if (o.workers < 0) throw Error("data loader: " + std::to_string(o.workers) + " workers");
  if (o.prefetch < 0) throw Error("data loader: prefetch " + std::to_string(o.prefetch) + " < 0");
  if (o.world < 1 || o.rank < 0 || o.rank >= o.world)
    throw Error("data loader: rank " + std::to_string(o.rank) + " of world size " +
                std::to_string(o.world));
  if (bool(o.allocate) != bool(o.release))
    throw Error("data loader: allocate and release must be given together");
  m.n = dataset.size();
  m.classes = static_cast<int64_t>(dataset.classes().size());
  if (m.n == 0) throw Error("data loader: the dataset '" + dataset.root() + "' has no images");
  m.bad = std::make_unique<std::atomic<bool>[]>(size_t(m.n));
  for (int64_t j = 0; j < m.n; ++j) m.bad[size_t(j)].store(false, std::memory_order_relaxed);

  m.sample_bytes = size_t(o.image_size) * size_t(o.image_size) * 3;
  const size_t image_bytes = size_t(o.batch_size) * m.sample_bytes;
  m.labels_offset = (image_bytes + kLabelAlign - 1) / kLabelAlign * kLabelAlign;
  m.buffer_size = m.labels_offset + size_t(o.batch_size) * sizeof(int64_t);
  const int prefetch = o.prefetch > 0 ? o.prefetch : 3;  // every worker helps the oldest batch
  m.o.prefetch = prefetch;
  m.nbuf = o.workers == 0 ? 1 : prefetch + 1;
  for (int k = 0; k < m.nbuf; ++k) {
    uint8_t* b = o.allocate ? o.allocate(m.buffer_size) : new uint8_t[m.buffer_size];
    if (!b)
      throw Error("data loader: cannot allocate a batch buffer of " +
                  std::to_string(m.buffer_size) + " bytes");
    m.buffers.push_back(b);
    if (o.encoded) m.encoded.emplace_back(size_t(o.batch_size));
  }
  m.remaining.assign(size_t(m.nbuf), 0);
  for (int w = 0; w < o.workers; ++w) m.threads.emplace_back([&m] { m.worker(); });
}

Loader::~Loader() = default;

int64_t Loader::samples_per_epoch() const {
  return (impl_->n + impl_->o.world - 1) / impl_->o.world;
}

int64_t Loader::batches_per_epoch() const {
  const int64_t s = samples_per_epoch(), bs = impl_->o.batch_size;
  return impl_->o.drop_last ? s / bs : (s + bs - 1) / bs;
}

// Starts `epoch` at batch `first_batch`: the batches an uninterrupted epoch would have given
// from there on (a run resumed from a mid-epoch checkpoint). Samples are independent of one
// another, so nothing before first_batch is decoded.
void Loader::Impl::start(int64_t new_epoch, int64_t first_batch, int64_t batches) {
  std::vector<int64_t> order = epoch_indices(n, new_epoch, o.seed, o.train, o.rank, o.world);
  if (first_batch < 0 || first_batch > batches)
    throw Error("data loader: cannot start epoch " + std::to_string(new_epoch) + " at batch " +
                std::to_string(first_batch) + " of " + std::to_string(batches));
  {
    std::unique_lock<std::mutex> lock(mu);
    active = false;
    ++gen;
    idle_cv.wait(lock, [&] { return inflight == 0; });  // none writes a buffer after this
    indices = std::move(order);
    epoch = new_epoch;
    nbatches = batches;
    total = o.drop_last ? nbatches * o.batch_size : int64_t(indices.size());
    next_pos = first_batch * o.batch_size;
    released = first_batch;
    next_batch = first_batch;
    held = -1;
    error = nullptr;
    for (int64_t b = first_batch; b < first_batch + nbuf; ++b) init_slot(b);
    active = true;
  }
  work_cv.notify_all();
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
  impl_->start(epoch, first_batch, batches_per_epoch());
}

bool Loader::next(Batch& batch) {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> lock(m.mu);
  if (!m.active) throw Error("data loader: next() before start_epoch()");
  if (m.held >= 0) {  // give the previous batch back
    m.released = m.held + 1;
    m.init_slot(m.held + m.nbuf);
    m.held = -1;
    if (!m.threads.empty()) m.work_cv.notify_all();
  }
  if (m.next_batch >= m.nbatches) return false;
  const int64_t b = m.next_batch;
  const int slot = int(b % m.nbuf);
  if (m.threads.empty()) {
    // Decode on the caller's thread.
    const int64_t first = b * m.o.batch_size, count = m.batch_size_of(b);
    lock.unlock();
    for (int64_t k = 0; k < count; ++k)
      m.produce(m.indices[size_t(first + k)], m.epoch, slot, k, m.caller_file);
    lock.lock();
    m.remaining[size_t(slot)] = 0;
  } else {
    m.ready_cv.wait(lock, [&] { return m.error || m.remaining[size_t(slot)] == 0; });
    if (m.error) std::rethrow_exception(m.error);
  }
  m.next_batch = b + 1;
  m.held = b;
  m.delivered += m.batch_size_of(b);
  batch.size = m.batch_size_of(b);
  batch.index = b;
  batch.images = m.buffers[size_t(slot)];
  batch.labels = reinterpret_cast<const int64_t*>(m.buffers[size_t(slot)] + m.labels_offset);
  batch.image_size = m.o.image_size;
  batch.encoded = m.o.encoded ? m.encoded[size_t(slot)].data() : nullptr;
  return true;
}

LoaderStats Loader::stats() const {
  LoaderStats s;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    s.samples = impl_->delivered;
  }
  std::lock_guard<std::mutex> lock(impl_->warn_mu);
  s.bad_files = int64_t(impl_->warned.size());
  return s;
}

size_t Loader::buffer_bytes() const { return impl_->buffer_size * size_t(impl_->nbuf); }

}  // namespace oxtrain::io
