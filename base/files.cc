#include "base/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace oxtrain {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

void sync_parent_folder(const std::string& path) {
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) parent = ".";
  int fd = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // best effort: some file systems refuse to open folders
  ::fsync(fd);
  ::close(fd);
}

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

}  // namespace

std::string atomic_tmp_path(const std::string& path) { return path + ".tmp"; }

AtomicFile::AtomicFile(std::string path, AtomicWriteOptions options)
    : path_(std::move(path)), tmp_(atomic_tmp_path(path_)), options_(options) {
  ::unlink(tmp_.c_str());  // a stale tmp (or a symlink planted there) is not followed
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error("cannot write '" + tmp_ + "': " + errno_text(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void AtomicFile::fail(const std::string& what) {
  int err = errno;
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(tmp_.c_str());
  throw Error(what + " '" + tmp_ + "' failed: " + errno_text(err));
}

void AtomicFile::write(const void* data, size_t size) {
  if (fd_ < 0) throw Error("writing '" + tmp_ + "' after it was closed");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("writing");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw Error("committing '" + tmp_ + "' after it was closed");
  if (options_.durable && ::fsync(fd_) != 0) fail("flushing");
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp_.c_str());
    throw Error("closing '" + tmp_ + "' failed: " + errno_text(err));
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp_.c_str());
    throw Error("cannot rename '" + tmp_ + "' to '" + path_ + "': " + errno_text(err));
  }
  committed_ = true;
  if (options_.durable) sync_parent_folder(path_);
}

void write_file_atomic(const std::string& path, std::string_view bytes, AtomicWriteOptions options) {
  AtomicFile file(path, options);
  file.write(bytes);
  file.commit();
}

void copy_file_atomic(const std::string& from, const std::string& to) {
  std::string why;
  int in = open_regular_file(from, &why);
  if (in < 0) throw Error("cannot copy '" + from + "': " + why);
  AtomicFile out(to);
  char buffer[1 << 16];
  for (;;) {
    ssize_t n = ::read(in, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(in);
      throw Error("reading '" + from + "' failed: " + errno_text(err));
    }
    if (n == 0) break;
    out.write(buffer, static_cast<size_t>(n));
  }
  ::close(in);
  out.commit();
}

bool remove_stale_tmp(const std::string& path) {
  std::string tmp = atomic_tmp_path(path);
  struct stat st;
  if (::lstat(tmp.c_str(), &st) != 0) return false;
  return ::unlink(tmp.c_str()) == 0;
}

int open_regular_file(const std::string& path, std::string* why) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (why) *why = errno_text(errno);
    return -1;
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (why) *why = std::string("is ") + file_kind(st.st_mode) + ", not a regular file";
    ::close(fd);
    return -1;
  }
  int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string read_regular_file(const std::string& path, uint64_t max_bytes, const std::string& what) {
  std::string why;
  int fd = open_regular_file(path, &why);
  if (fd < 0) throw Error(what + " '" + path + "' cannot be read: " + why);
  struct stat st;
  ::fstat(fd, &st);
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    ::close(fd);
    throw Error(what + " '" + path + "' is " + std::to_string(st.st_size) + " bytes, more than the " +
                std::to_string(max_bytes) + " allowed");
  }
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  long got = read_fully(fd, bytes.data(), bytes.size());
  int err = errno;
  ::close(fd);
  if (got < 0) throw Error(what + " '" + path + "' cannot be read: " + errno_text(err));
  bytes.resize(static_cast<size_t>(got));  // the file may have shrunk while we read it
  return bytes;
}

long read_fully(int fd, void* data, size_t size) {
  char* p = static_cast<char*>(data);
  size_t got = 0;
  while (got < size) {
    ssize_t n = ::read(fd, p + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return static_cast<long>(got);
}

bool path_within(const std::filesystem::path& root, const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::path r = std::filesystem::weakly_canonical(root, ec);
  if (ec) return false;
  std::filesystem::path p = std::filesystem::weakly_canonical(path, ec);
  if (ec) return false;
  auto rit = r.begin(), pit = p.begin();
  for (; rit != r.end(); ++rit, ++pit) {
    if (rit->empty()) continue;  // a trailing separator of the root
    if (pit == p.end() || *rit != *pit) return false;
  }
  return true;
}

}  // namespace oxtrain
