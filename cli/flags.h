// Checks of command-line values shared by the subcommands: each failure is one Error naming the
// flag, what it allows and what was given.
#pragma once

#include <cstdint>
#include <string>

#include "autodiff/training.h"
#include "graph/ir.h"
#include "runtime/kernel.h"

namespace oxtrain::cli {

// The largest batch any subcommand accepts: generous for real use, small enough that a typo
// cannot size a plan beyond every machine.
constexpr int64_t kMaxBatchSize = int64_t(1) << 16;

// value in [lo, hi], else "FLAG must be in [lo, hi]NOTE, got value".
void check_range(const std::string& flag, int64_t value, int64_t lo, int64_t hi, const std::string& note = "");

// A file a command writes (possibly at the end of a long run): its folder must exist and be
// writable now, and the path must not be a folder.
void check_output_file(const std::string& flag, const std::string& path);

// --precision: fp32 (strict float32), tf32 (float32 with tensor cores in convolutions and
// matrix products), bf16 or fp16 (mixed precision: the model computes in that type, float32
// master weights; fp16 with dynamic loss scaling). `half` is undefined for fp32 and tf32; the
// float32 work of a mixed-precision run uses tf32.
struct PrecisionChoice {
  runtime::Precision math = runtime::Precision::tf32;
  graph::DType half = graph::DType::undefined;
};
PrecisionChoice parse_precision(const std::string& value);
inline constexpr const char* kPrecisionHelp =
    "fp32 (strict), tf32 (tensor cores in convolutions and matrix products, as PyTorch's default), "
    "bf16 or fp16 (mixed precision: activations, convolutions and matrix products in half, float32 master "
    "weights, momentum, batch-norm statistics and loss; fp16 with dynamic loss scaling). In every precision batch "
    "norm is fused with the ReLU and residual Add after it, and backward recomputes the fused outputs instead of "
    "keeping them";

// What --precision and --no-recompute make of the training graph: the half type; batch norm
// fused with its ReLU (in every precision: the same numbers, fewer passes), and the fused
// outputs recomputed in backward unless `no_recompute`.
// `conv_bn_fusion` (--conv-bn-fusion): auto, on or off; auto fuses convolutions with their batch
// norms (autodiff::fuse_conv_batchnorm) in fp16, where cuDNN has the fused engines.
void apply_precision(autodiff::TrainingOptions& options, const PrecisionChoice& precision, bool no_recompute,
                     const std::string& conv_bn_fusion = "auto");
inline constexpr const char* kConvBnFusionHelp =
    "auto, on or off: compute batch norm's statistics with the convolution before it, and apply a batch norm's "
    "output in the next convolution's prologue instead of writing it (cuDNN's fused ResNet graphs; the same "
    "numbers to rounding). auto: with --precision fp16, where cuDNN has these engines";
inline constexpr const char* kChannelsLastHelp =
    "store activations channels-last (NHWC) between convolutions, batch norms and pooling, as PyTorch's "
    "channels_last memory format: cuDNN's tensor-core kernels without transposes";
inline constexpr const char* kNoRecomputeHelp =
    "keep the fused batch norms' outputs from the forward instead of recomputing them in backward (for a ResNet "
    "about half as much activation memory again, one element-wise pass less per recomputed value)";

}  // namespace oxtrain::cli
