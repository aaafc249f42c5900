// Checks of command-line values shared by the subcommands: each failure is one Error naming the
// flag, what it allows and what was given.
#pragma once

#include <cstdint>
#include <string>

namespace oxtrain::cli {

// The largest batch any subcommand accepts: generous for real use, small enough that a typo
// cannot size a plan beyond every machine.
constexpr int64_t kMaxBatchSize = int64_t(1) << 16;

// value in [lo, hi], else "FLAG must be in [lo, hi]NOTE, got value".
void check_range(const std::string& flag, int64_t value, int64_t lo, int64_t hi, const std::string& note = "");

// A file a command writes (possibly at the end of a long run): its folder must exist and be
// writable now, and the path must not be a folder.
void check_output_file(const std::string& flag, const std::string& path);

}  // namespace oxtrain::cli
