#include "runtime/checkpoint.h"

#include <array>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "base/checked.h"
#include "base/files.h"
#include "base/text.h"

namespace oxtrain::runtime {

namespace {

constexpr char kMagic[12] = {'O', 'X', 'T', 'R', 'A', 'I', 'N', '-', 'C', 'K', 'P', 'T'};
constexpr uint32_t kVersion = 1;
// Larger files are refused before being read (the largest zoo model's checkpoint is ~700 MB).
constexpr uint64_t kMaxCheckpointBytes = uint64_t(64) << 30;

void put_u32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void put_u64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }

graph::DType dtype_named(const std::string& name, const std::string& path) {
  for (graph::DType d : {graph::DType::f32, graph::DType::f64, graph::DType::f16, graph::DType::bf16,
                         graph::DType::i64, graph::DType::i32, graph::DType::i8, graph::DType::u8,
                         graph::DType::boolean, graph::DType::i16, graph::DType::u16, graph::DType::u32,
                         graph::DType::u64})
    if (name == graph::dtype_name(d)) return d;
  throw Error("checkpoint '" + path + "' holds a tensor of unknown type '" + escape_name(name) +
              "'; the file is damaged or from a newer oxtrain");
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

  AtomicFile file(path);
  uint32_t crc = 0;
  auto write = [&](const void* data, size_t size) {
    crc = crc32(static_cast<const uint8_t*>(data), size, crc);
    file.write(data, size);
  };
  write(head.data(), head.size());
  for (const auto& [name, t] : ck.tensors) write(t.bytes.data(), t.bytes.size());
  uint32_t final_crc = crc;
  file.write(&final_crc, 4);
  file.commit();
}

namespace {

// The checkpoint's parts as the file lays them out, checked against its size.
struct Layout {
  std::string_view header;  // the JSON text
  std::string_view data;    // the tensor bytes
};

Layout check_layout(const std::string& bytes, const std::string& path) {
  const std::string shown = escape_name(path);
  const size_t fixed = sizeof kMagic + 4 + 8;
  if (bytes.empty()) throw Error("checkpoint '" + shown + "' is empty; use an earlier checkpoint");
  // A file that starts as a checkpoint does but ends early is a truncated one.
  if (std::memcmp(bytes.data(), kMagic, std::min(bytes.size(), sizeof kMagic)) != 0)
    throw Error("'" + shown + "' is not an oxtrain checkpoint");
  if (bytes.size() < fixed + 4)
    throw Error("checkpoint '" + shown + "' is truncated: " + std::to_string(bytes.size()) +
                " bytes, shorter than the " + std::to_string(fixed + 4) +
                " of an empty checkpoint; use an earlier checkpoint");
  uint32_t version;
  uint64_t header_len;
  std::memcpy(&version, bytes.data() + sizeof kMagic, 4);
  std::memcpy(&header_len, bytes.data() + sizeof kMagic + 4, 8);
  if (version != kVersion)
    throw Error("checkpoint '" + shown + "' has format version " + std::to_string(version) +
                "; this oxtrain reads version " + std::to_string(kVersion));
  const uint64_t room = bytes.size() - 4 - fixed;  // header and tensor bytes
  if (header_len > room)
    throw Error("checkpoint '" + shown + "' is truncated: its header claims " +
                std::to_string(header_len) + " bytes but the file holds " + std::to_string(room) +
                " after the fixed part; use an earlier checkpoint");
  uint32_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 4, 4);
  if (crc32(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size() - 4) != stored)
    throw Error("checkpoint '" + shown + "' is corrupt or truncated (checksum mismatch); use an "
                "earlier checkpoint");
  std::string_view all(bytes);
  return {all.substr(fixed, header_len), all.substr(fixed + header_len, room - header_len)};
}

// A non-negative integer of the header (offsets, byte counts); refuses negative numbers and
// fractions rather than letting a cast wrap them.
uint64_t header_count(const nlohmann::json& j, const std::string& what) {
  if (!j.is_number_unsigned())
    throw Error(what + " is " + j.dump() + ", not a byte count");
  return j.get<uint64_t>();
}

graph::Shape header_shape(const nlohmann::json& j, const std::string& what) {
  if (!j.is_array()) throw Error(what + " has no shape list");
  graph::Shape shape;
  for (const auto& d : j) {
    if (!d.is_number_integer() || (d.is_number_unsigned() && d.get<uint64_t>() > uint64_t(INT64_MAX)))
      throw Error(what + " has a dimension of " + d.dump() + ", not an integer");
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

// One tensor of the header, its bytes checked (overflow-safe) to lie inside the data part
// and to match dtype x shape before anything is allocated.
std::pair<std::string, graph::Tensor> read_tensor(const nlohmann::json& t, std::string_view data,
                                                  const std::string& path) {
  const std::string shown = escape_name(path);
  const std::string name = t.at("name").get<std::string>();
  const std::string what = "tensor '" + escape_name(name) + "' of checkpoint '" + shown + "'";
  graph::DType dtype = dtype_named(t.at("dtype").get<std::string>(), shown);
  graph::Shape shape = header_shape(t.at("shape"), what);
  const uint64_t expected = static_cast<uint64_t>(bytes_or_throw(shape, graph::dtype_size(dtype), what));
  const uint64_t offset = header_count(t.at("offset"), "the offset of " + what);
  const uint64_t size = header_count(t.at("bytes"), "the size of " + what);
  if (size != expected)
    throw Error(what + " claims " + std::to_string(size) + " bytes but " + graph::dtype_name(dtype) +
                " " + dims_text(shape) + " takes " + std::to_string(expected) +
                "; the file is damaged, use an earlier checkpoint");
  auto end = checked_add_u64(offset, size);
  if (!end || *end > data.size())
    throw Error(what + " lies outside the file (offset " + std::to_string(offset) + ", " +
                std::to_string(size) + " bytes, " + std::to_string(data.size()) +
                " bytes of tensor data); the file is damaged, use an earlier checkpoint");
  graph::Tensor tensor;
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  tensor.bytes.assign(data.begin() + static_cast<ptrdiff_t>(offset),
                      data.begin() + static_cast<ptrdiff_t>(*end));
  return {name, std::move(tensor)};
}

}  // namespace

Checkpoint load_checkpoint(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    throw Error("checkpoint '" + escape_name(path) + "' does not exist");
  // The whole file is read (it is bounded by its real size); every number of its header is
  // then checked against it.
  const std::string bytes = read_regular_file(path, kMaxCheckpointBytes, "checkpoint");
  Layout layout = check_layout(bytes, path);
  Checkpoint ck;
  try {
    nlohmann::json header = nlohmann::json::parse(layout.header);
    ck.meta = header.at("meta").get<std::map<std::string, std::string>>();
    std::set<std::string> seen;
    for (const auto& t : header.at("tensors")) {
      ck.tensors.push_back(read_tensor(t, layout.data, path));
      if (!seen.insert(ck.tensors.back().first).second)
        throw Error("checkpoint '" + escape_name(path) + "' holds tensor '" +
                    escape_name(ck.tensors.back().first) + "' twice; the file is damaged");
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error("checkpoint '" + escape_name(path) + "' has a malformed header (" +
                one_line(e.what(), 120) + "); use an earlier checkpoint");
  }
  return ck;
}

}  // namespace oxtrain::runtime
