// What the data-parallel tests that run the oxtrain program share: a free loopback port and
// one small job (a zoo model and a fixed batch as tensor files).
#pragma once

#include <string>

namespace oxtrain::test {

// A port on 127.0.0.1 that was free a moment ago.
int free_port();

// A zoo resnet18 (10 classes, 32x32) and one fixed batch of 4 as tensor files, in a fresh folder.
struct JobFiles {
  std::string dir, model, tensors;  // tensors: "IMAGES.pb,LABELS.pb" for --input-tensors
};
JobFiles make_job_files();

}  // namespace oxtrain::test
