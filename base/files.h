// Files: atomic writes, reads that cannot hang or overrun, and paths confined to a folder.
//
// Every file oxtrain writes (checkpoints, model_best, saved and exported models, metrics,
// dataset images and indexes) goes through AtomicFile: the bytes go to "<path>.tmp", are
// flushed with fsync, and the tmp file is renamed over the path (then the folder is synced).
// A crash leaves either the old file or the new one, never a half-written one; the stale
// "<path>.tmp" it may leave is removed by remove_stale_tmp() on the next start.
//
// Every file oxtrain reads from a user's tree is opened with open_regular_file(): a FIFO, a
// device or a folder is refused without blocking (O_NONBLOCK, then fstat).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "base/error.h"

namespace oxtrain {

struct AtomicWriteOptions {
  // fsync the data before the rename and the folder after it. Off only for bulk writes where
  // the caller syncs once at the end (a generated dataset's images).
  bool durable = true;
};

class AtomicFile {
 public:
  // Creates "<path>.tmp" (replacing a stale one). Throws Error naming the path and the reason.
  explicit AtomicFile(std::string path, AtomicWriteOptions options = {});
  ~AtomicFile();  // removes the tmp file unless commit() succeeded
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  // fsync, close, rename over the path, fsync the folder. Throws Error on failure (the tmp
  // file is removed and the old file, if any, is left as it was).
  void commit();

  const std::string& path() const { return path_; }
  const std::string& tmp_path() const { return tmp_; }

 private:
  void fail(const std::string& what);
  std::string path_, tmp_;
  AtomicWriteOptions options_;
  int fd_ = -1;
  bool committed_ = false;
};

// The tmp file name AtomicFile uses for path.
std::string atomic_tmp_path(const std::string& path);

// Writes bytes to path atomically (AtomicFile in one call).
void write_file_atomic(const std::string& path, std::string_view bytes, AtomicWriteOptions options = {});

// Copies a file atomically (model_best from checkpoint): the destination is the old file or
// the whole new one, never a truncated one.
void copy_file_atomic(const std::string& from, const std::string& to);

// Removes "<path>.tmp" left by a run that was killed while writing path. Returns true (and the
// caller may say so) when there was one.
bool remove_stale_tmp(const std::string& path);

// Opens a file for reading only if it is a regular file (symlinks to one are followed): never
// blocks on a FIFO, refuses folders and devices. Returns the descriptor, or -1 with *why set
// ("is a FIFO, not a regular file", strerror text, ...).
int open_regular_file(const std::string& path, std::string* why);

// Reads up to size bytes from fd, retrying on EINTR: the count read (less than size only at the
// end of the file), or -1 with errno set.
long read_fully(int fd, void* data, size_t size);

// Reads a whole regular file of at most max_bytes. Throws Error naming `what` and the path
// when it cannot be opened, is not a regular file, or is larger than max_bytes.
std::string read_regular_file(const std::string& path, uint64_t max_bytes, const std::string& what);

// True when path, with every symlink resolved, lies inside root (also resolved). A path that
// does not exist is judged by its lexically normal form under its deepest existing parent.
bool path_within(const std::filesystem::path& root, const std::filesystem::path& path);

}  // namespace oxtrain
