// libFuzzer harness: fuzz_checkpoint (see tests/fuzz/targets.h for what it feeds and what it catches;
// scripts/fuzz.sh builds, seeds and runs it).
#include "tests/fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  oxtrain::fuzz::checkpoint_reader(data, size);  // read or refused: both fine
  return 0;
}
