// libFuzzer harness: fuzz_onnx (see tests/fuzz/targets.h for what it feeds and what it catches;
// scripts/fuzz.sh builds, seeds and runs it).
#include "tests/fuzz/targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  oxtrain::fuzz::onnx_importer(data, size);  // read or refused: both fine
  return 0;
}
