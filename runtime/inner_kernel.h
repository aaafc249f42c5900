// A kernel made of another op's kernel: a one-node graph of that op over values shaped and
// typed like the caller's (a null value: the input or output omitted), and the device's
// registered kernel for it (with the registry's wrappers: half and layout emulation). The
// fused kernels (runtime/fused_batchnorm.h, runtime/conv_stats.h) run their inner ops this way.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/kernel.h"

namespace oxtrain::runtime {

// Bytes a composed kernel keeps for itself at the start of its workspace, rounded up to the
// 256-byte alignment the inner kernel's slice after them must have (cuDNN's workspaces).
inline size_t workspace_slice(size_t bytes) { return (bytes + 255) / 256 * 256; }

struct InnerKernel {
  graph::Graph graph;
  graph::Node* node = nullptr;
  std::unique_ptr<Kernel> kernel;

  // `attributes`: which of the outer node's attributes the inner node takes (empty: all).
  InnerKernel(const KernelInit& init, const std::string& domain, const std::string& op,
              const std::vector<const graph::Value*>& ins, const std::vector<const graph::Value*>& outs,
              std::initializer_list<const char*> attributes = {});
};

}  // namespace oxtrain::runtime
