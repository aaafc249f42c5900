// Data-pipeline throughput: oxtrain's loader (TurboJPEG with DCT scaling, bilinear resize)
// running the training transform (RandomResizedCrop 224 + flip) over an ImageFolder.
// Prints one JSON line: images/s, images/s per worker, peak RSS and batch-buffer bytes.
//
//   oxtrain_loader_bench DATA/train --workers 1 --images 2000
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "io/dataset.h"
#include "io/loader.h"

namespace {
// Peak resident set size of this process in bytes (VmHWM).
int64_t peak_rss_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}
}  // namespace

int main(int argc, char** argv) {
  std::string root;
  int workers = 1, prefetch = 0, size = 224;
  int64_t batch = 64, images = 2000;
  bool val = false;
  CLI::App app{"oxtrain loader benchmark"};
  app.add_option("data", root, "class-folder root, e.g. DATA/train")->required();
  app.add_option("--workers", workers);
  app.add_option("--prefetch", prefetch);
  app.add_option("--batch-size", batch);
  app.add_option("--image-size", size);
  app.add_option("--images", images, "images to load (after one warm-up batch)");
  app.add_flag("--val", val, "validation transform instead of training");
  CLI11_PARSE(app, argc, argv);
  try {
    oxtrain::io::ImageFolder data = oxtrain::io::ImageFolder::scan(root);
    oxtrain::io::LoaderOptions o;
    o.batch_size = batch;
    o.image_size = size;
    o.train = !val;
    o.workers = workers;
    o.prefetch = prefetch;
    oxtrain::io::Loader loader(data, o);
    int64_t rss_before = peak_rss_bytes();
    int64_t done = 0, epoch = 0;
    oxtrain::io::Batch b;
    loader.start_epoch(epoch);
    if (!loader.next(b)) throw std::runtime_error("dataset smaller than one batch");
    auto start = std::chrono::steady_clock::now();
    while (done < images) {
      if (!loader.next(b)) {
        loader.start_epoch(++epoch);
        continue;
      }
      done += b.size;
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "{\"framework\": \"oxtrain\", \"workers\": %d, \"images\": %lld, \"img_s\": %.1f, "
        "\"img_s_per_worker\": %.1f, \"batch_buffer_mib\": %.1f, \"peak_rss_mib\": %.1f, "
        "\"rss_growth_mib\": %.1f, \"bad_files\": %lld}\n",
        workers, static_cast<long long>(done), done / seconds, done / seconds / std::max(workers, 1),
        loader.buffer_bytes() / 1048576.0, peak_rss_bytes() / 1048576.0,
        (peak_rss_bytes() - rss_before) / 1048576.0,
        static_cast<long long>(loader.stats().bad_files));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "oxtrain_loader_bench: error: " << e.what() << "\n";
    return 2;
  }
}
