// SampleRng: a counter-based generator. The state is a hash of (seed, epoch, sample), so the
// numbers of one sample never depend on which thread draws them or in which order; the
// stream itself is splitmix64.
#include "io/image.h"

#include <string>

#include "base/error.h"

namespace oxtrain::io {

namespace {

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;

// splitmix64's finaliser: a bijection of 64-bit words with good avalanche.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

SampleRng::SampleRng(uint64_t seed, int64_t epoch, int64_t sample) {
  // Each input goes through its own round with a distinct offset, so (seed, epoch, sample)
  // and any permutation of it give unrelated streams.
  uint64_t h = mix64(seed + kGolden);
  h = mix64(h ^ (static_cast<uint64_t>(epoch) + 2 * kGolden));
  h = mix64(h ^ (static_cast<uint64_t>(sample) + 3 * kGolden));
  state_ = h;
}

uint64_t SampleRng::next_u64() {
  state_ += kGolden;
  return mix64(state_);
}

double SampleRng::uniform() {
  return static_cast<double>(next_u64() >> 11) * 0x1.0p-53;  // 53 random bits
}

double SampleRng::uniform(double lo, double hi) {
  double v = lo + (hi - lo) * uniform();
  return v < hi ? v : lo;  // rounding can land on hi when hi - lo is tiny; keep [lo, hi)
}

int64_t SampleRng::integer(int64_t lo, int64_t hi) {
  if (hi < lo)
    throw Error("SampleRng::integer: empty range [" + std::to_string(lo) + ", " +
                std::to_string(hi) + "]");
  uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;  // 0: all 2^64
  if (range == 0) return static_cast<int64_t>(next_u64());
  // Lemire's multiply-and-reject: unbiased, usually without a division.
  unsigned __int128 m = static_cast<unsigned __int128>(next_u64()) * range;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < range) {
    uint64_t threshold = (0 - range) % range;  // 2^64 mod range
    while (low < threshold) {
      m = static_cast<unsigned __int128>(next_u64()) * range;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<int64_t>(static_cast<uint64_t>(lo) + static_cast<uint64_t>(m >> 64));
}

}  // namespace oxtrain::io
