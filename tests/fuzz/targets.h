// The fuzz targets: one entry point per reader of untrusted bytes, shared by the libFuzzer
// harnesses (tests/fuzz/fuzz_<target>.cc) and the regression test that replays every input
// they ever crashed on (tests/test_fuzz_regressions.cc over tests/fixtures/fuzz/<target>/).
//
// Each entry point hands the bytes to the reader the way a user's file reaches it (a file
// written to a per-process scratch folder where the reader takes a path). The refusal a bad
// file must get, oxtrain::Error (io::DecodeError for images), is caught; anything else (a bare
// std::bad_alloc, std::out_of_range, a signal, a sanitizer report) escapes and is a finding.
// Each returns true when the input was read, false when it was refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace oxtrain::fuzz {

// ModelProto bytes, imported with prepare on; external data resolves in an empty folder.
bool onnx_importer(const uint8_t* data, size_t size);
// A checkpoint file (runtime::load_checkpoint).
bool checkpoint_reader(const uint8_t* data, size_t size);
// A TensorProto file (graph::read_tensor_file, as --input-tensors reads it).
bool tensor_reader(const uint8_t* data, size_t size);
// A dataset's index cache (DATA/.oxtrain-index), read by io::ImageFolder::scan over a fixed
// tree of two class folders "a" and "b" with one file each. "@ROOT@" in the bytes is replaced
// by that tree's path and "@A@", "@B@" by the folders' "inode mtime ctime", so inputs get past
// the root line and the signature whatever the scratch folder is. Read means the index was used
// (not refused and the tree rescanned).
bool index_cache_reader(const uint8_t* data, size_t size);
// JPEG or PNG bytes (io::read_header, then io::decode_image at full size or, for a large image,
// scaled to cover 64x64 as the loader asks).
bool image_decoder(const uint8_t* data, size_t size);

struct Target {
  std::string name;  // fuzz_<name>, tests/fixtures/fuzz/<name>/
  bool (*run)(const uint8_t* data, size_t size);
};
// Every target, in the order scripts/fuzz.sh runs them.
const std::vector<Target>& targets();

// This process's scratch folder (created on first use, removed at exit).
const std::string& scratch_dir();

}  // namespace oxtrain::fuzz
