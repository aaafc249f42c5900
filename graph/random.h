// What the random ops' nodes say about their randomness, read by the schemas (graph/
// ops_random.cc), the training graph's rewrite (autodiff/rules_random.cc) and the kernels
// (runtime/cpu/random.cc, runtime/cuda/random.cu). The generator itself, and why every
// number is a function of (key, step, element index), is described in runtime/math/random.h.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "graph/ir.h"

namespace oxtrain::graph {

// SplitMix64's finaliser: a bijection of 64-bit words that spreads every input bit.
inline uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// FNV-1a over a string's bytes.
inline uint64_t hash_text(const std::string& text, uint64_t h = 0xCBF29CE484222325ull) {
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 0x100000001B3ull;
  }
  return h;
}

// The generator key of a random node: the run's seed, the node's name and its first output's
// name (stable across runs, distinct between nodes), and the node's ONNX `seed` attribute
// (a float) when it has one. The same three give the same numbers in every run.
inline uint64_t random_node_key(uint64_t run_seed, const Node& node) {
  uint64_t id = hash_text(node.name);
  id = hash_text(std::string(1, '\0'), id);
  if (const Value* out = node.output(0)) id = hash_text(out->name, id);
  if (node.has_attr("seed")) {
    float seed = node.attr_float("seed", 0.0f);
    uint32_t bits = 0;
    std::memcpy(&bits, &seed, sizeof bits);
    id = mix64(id ^ (0x5EEDull << 32 | bits));
  }
  return mix64(mix64(run_seed) ^ id);
}

// The mode and ratio of an ONNX Dropout node. Opsets 12+: the ratio and training_mode inputs
// (constants; absent: 0.5 and inference). Opsets 7-11: the ratio attribute, and training mode
// unless the node carries is_test=1 (the attribute of opsets before 7, honoured where a file
// still has it): the op is the identity at inference and drops elements while training.
// Throws naming the node when an input is computed at run time or the ratio is outside [0, 1].
struct DropoutMode {
  bool training = false;
  float ratio = 0.5f;
};
DropoutMode dropout_mode(const Node& node, int64_t opset);

}  // namespace oxtrain::graph
