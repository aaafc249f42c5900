#include "tests/dist_helpers.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "graph/passes.h"
#include "tests/helpers.h"
#include "tests/kernel_helpers.h"

namespace oxtrain::test {

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

JobFiles make_job_files() {
  JobFiles s;
  s.dir = temp_dir();
  s.model = s.dir + "/m.onnx";
  EXPECT_EQ(run_oxtrain("zoo resnet18 --num-classes 10 --image-size 32 --seed 4 -o " + s.model).exit_code, 0);
  graph::write_tensor_file(random_tensor(graph::DType::f32, {4, 3, 32, 32}, 9, -2, 2), s.dir + "/x.pb");
  graph::write_tensor_file(graph::Tensor::from_int64({3, 1, 4, 1}, {4}), s.dir + "/y.pb");
  s.tensors = s.dir + "/x.pb," + s.dir + "/y.pb";
  return s;
}

}  // namespace oxtrain::test
