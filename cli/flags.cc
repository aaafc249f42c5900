#include "cli/flags.h"

#include <unistd.h>

#include <filesystem>

#include "base/error.h"
#include "base/text.h"

namespace fs = std::filesystem;

namespace oxtrain::cli {

void check_range(const std::string& flag, int64_t value, int64_t lo, int64_t hi, const std::string& note) {
  if (value < lo || value > hi)
    throw Error(flag + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" + note +
                ", got " + std::to_string(value));
}

void check_output_file(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  std::error_code ec;
  fs::path folder = fs::path(path).parent_path();
  if (folder.empty()) folder = ".";
  const std::string shown = flag + " '" + escape_name(path) + "'";
  if (!fs::is_directory(folder, ec))
    throw Error(shown + ": folder '" + escape_name(folder.string()) + "' does not exist; create it first");
  if (fs::is_directory(path, ec)) throw Error(shown + " is a folder; give a file name");
  if (::access(folder.c_str(), W_OK | X_OK) != 0)
    throw Error(shown + ": folder '" + escape_name(folder.string()) + "' is not writable");
}

PrecisionChoice parse_precision(const std::string& value) {
  if (value == "fp32") return {runtime::Precision::fp32, graph::DType::undefined};
  if (value == "tf32") return {runtime::Precision::tf32, graph::DType::undefined};
  if (value == "bf16") return {runtime::Precision::tf32, graph::DType::bf16};
  if (value == "fp16") return {runtime::Precision::tf32, graph::DType::f16};
  throw Error("--precision is fp32, tf32, bf16 or fp16, got '" + escape_name(value) + "'");
}

void apply_precision(autodiff::TrainingOptions& options, const PrecisionChoice& precision, bool no_recompute,
                     const std::string& conv_bn_fusion) {
  options.half = precision.half;
  options.fuse_batchnorm_relu = true;
  options.recompute_batchnorm_relu = !no_recompute;
  if (conv_bn_fusion == "auto") options.fuse_conv_batchnorm = precision.half == graph::DType::f16;
  else if (conv_bn_fusion == "on" || conv_bn_fusion == "off") options.fuse_conv_batchnorm = conv_bn_fusion == "on";
  else throw Error("--conv-bn-fusion is auto, on or off, got '" + escape_name(conv_bn_fusion) + "'");
}

}  // namespace oxtrain::cli
