#include "runtime/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace oxtrain::runtime {

namespace {

constexpr char kMagic[12] = {'O', 'X', 'T', 'R', 'A', 'I', 'N', '-', 'C', 'K', 'P', 'T'};
constexpr uint32_t kVersion = 1;

void put_u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }

graph::DType dtype_named(const std::string& name, const std::string& path) {
  for (graph::DType d : {graph::DType::f32, graph::DType::f64, graph::DType::f16, graph::DType::bf16,
                         graph::DType::i64, graph::DType::i32, graph::DType::i8, graph::DType::u8,
                         graph::DType::boolean})
    if (name == graph::dtype_name(d)) return d;
  throw Error("checkpoint '" + path + "' holds a tensor of unknown type '" + name + "'");
}

}  // namespace

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

const graph::Tensor* Checkpoint::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

std::string Checkpoint::get(const std::string& key, const std::string& fallback) const {
  auto it = meta.find(key);
  return it == meta.end() ? fallback : it->second;
}

void save_checkpoint(const Checkpoint& ck, const std::string& path) {
  nlohmann::json header;
  header["meta"] = ck.meta;
  header["tensors"] = nlohmann::json::array();
  uint64_t offset = 0;
  for (const auto& [name, t] : ck.tensors) {
    header["tensors"].push_back({{"name", name}, {"dtype", graph::dtype_name(t.dtype)},
                                 {"shape", t.shape}, {"offset", offset}, {"bytes", t.bytes.size()}});
    offset += t.bytes.size();
  }
  std::string head(kMagic, sizeof kMagic);
  put_u32(head, kVersion);
  std::string json = header.dump();
  put_u64(head, json.size());
  head += json;

  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw Error("cannot write checkpoint '" + tmp + "': " + std::strerror(errno));
  uint32_t crc = 0;
  auto write_all = [&](const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    crc = crc32(reinterpret_cast<const uint8_t*>(p), size, crc);
    while (size > 0) {
      ssize_t n = ::write(fd, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::string why = std::strerror(errno);
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error("writing checkpoint '" + tmp + "' failed: " + why);
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
  };
  write_all(head.data(), head.size());
  for (const auto& [name, t] : ck.tensors) write_all(t.bytes.data(), t.bytes.size());
  uint32_t final_crc = crc;
  write_all(&final_crc, 4);
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error("cannot flush checkpoint '" + tmp + "' to disk");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

Checkpoint load_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("checkpoint '" + path + "' does not exist or cannot be read");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  const size_t fixed = sizeof kMagic + 4 + 8;
  if (bytes.size() < fixed + 4 || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0)
    throw Error("'" + path + "' is not an oxtrain checkpoint");
  uint32_t version;
  uint64_t header_len;
  std::memcpy(&version, bytes.data() + sizeof kMagic, 4);
  std::memcpy(&header_len, bytes.data() + sizeof kMagic + 4, 8);
  if (version != kVersion)
    throw Error("checkpoint '" + path + "' has format version " + std::to_string(version) +
                "; this oxtrain reads version " + std::to_string(kVersion));
  uint32_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 4, 4);
  if (crc32(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size() - 4) != stored)
    throw Error("checkpoint '" + path + "' is corrupt or truncated (checksum mismatch); use an "
                "earlier checkpoint");
  if (fixed + header_len > bytes.size() - 4)
    throw Error("checkpoint '" + path + "' is truncated");
  Checkpoint ck;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.substr(fixed, header_len));
    ck.meta = header.at("meta").get<std::map<std::string, std::string>>();
    const size_t data_start = fixed + header_len;
    const size_t data_size = bytes.size() - 4 - data_start;
    for (const auto& t : header.at("tensors")) {
      graph::Tensor tensor(dtype_named(t.at("dtype"), path), t.at("shape").get<graph::Shape>());
      uint64_t offset = t.at("offset"), size = t.at("bytes");
      if (size != tensor.bytes.size() || offset + size > data_size)
        throw Error("checkpoint '" + path + "': tensor '" + t.at("name").get<std::string>() +
                    "' lies outside the file");
      std::memcpy(tensor.bytes.data(), bytes.data() + data_start + offset, size);
      ck.tensors.emplace_back(t.at("name").get<std::string>(), std::move(tensor));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error("checkpoint '" + path + "' has a malformed header: " + e.what());
  }
  return ck;
}

}  // namespace oxtrain::runtime
