// Channels-last nodes (graph::to_channels_last) on kernels that compute channels-first: the
// node's activations ([N, H, W, C] as stored, per its schema's LayoutSlots) are transposed
// into the workspace as [N, C, H, W], the device's own kernel for the op runs on those, and
// its activation outputs are transposed back. Transposes are exact, so a channels-last graph
// computes the channels-first graph's numbers bit for bit; the cost is two passes over each
// activation. This is the CPU's form (the reference) and the form of every CUDA kernel that
// has no channels-last path of its own yet.
#pragma once

#include <set>
#include <string>
#include <utility>

#include "runtime/kernel.h"

namespace oxtrain::runtime {

// A wrapper for KernelRegistry::wrap: the factory itself for ops without a channels-last form,
// for ops in `native` (whose kernels take channels-last nodes as they are) and for nodes
// without the attribute; else the emulation around it. The transposes are the device's
// Transpose kernels.
// `wrapped`, where given, collects the ops the wrapper put the emulation around.
using OpNames = std::set<std::pair<std::string, std::string>>;  // (domain, op type); "" is ai.onnx
KernelRegistry::Wrapper layout_emulation(OpNames native, OpNames* wrapped = nullptr);

// The fused batch norms (runtime/fused_batchnorm.h): their inner kernels see the attribute.
const OpNames& layout_transparent_ops();

}  // namespace oxtrain::runtime
