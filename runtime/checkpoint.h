// Checkpoints: named tensors (parameters, momentum, BN statistics) plus string metadata
// (epoch, step, best accuracy, ...) in one file with a checksum.
//
// Layout: "OXTRAIN-CKPT" magic, u32 format version, u64 header length, a JSON header (metadata
// and, per tensor, name, dtype, shape, offset, bytes), the tensor bytes, and a CRC-32 of all
// that precedes it. save_checkpoint writes through AtomicFile (base/files.h), so a crash never
// leaves a half-written checkpoint. load_checkpoint refuses a truncated or corrupt file with a
// message that says which, and checks every offset, size and shape of the header against the
// file (overflow-safe) before allocating anything: a crafted header cannot make it read
// outside the file or allocate more than the file holds.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "graph/ir.h"

namespace oxtrain::runtime {

struct Checkpoint {
  std::map<std::string, std::string> meta;
  std::vector<std::pair<std::string, graph::Tensor>> tensors;

  const graph::Tensor* find(const std::string& name) const;
  std::string get(const std::string& key, const std::string& fallback = "") const;
};

void save_checkpoint(const Checkpoint& checkpoint, const std::string& path);
Checkpoint load_checkpoint(const std::string& path);

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);

}  // namespace oxtrain::runtime
