#include "io/jpeg_info.h"

#include <cstring>

namespace oxtrain::io {

namespace {

int be16(const uint8_t* p) { return (p[0] << 8) | p[1]; }

// SOF0..SOF15 less DHT (C4), JPG (C8) and DAC (CC), which share the range.
bool is_sof(int m) { return m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC; }

// The frame header's payload (after the length bytes), `n` bytes long.
bool parse_sof(int marker, const uint8_t* p, size_t n, JpegInfo* out) {
  if (n < 6) return false;
  JpegInfo info;
  info.sof = marker;
  info.precision = p[0];
  info.height = be16(p + 1);  // 0: the height comes later in a DNL segment; not supported
  info.width = be16(p + 3);
  info.components = p[5];
  if (info.width == 0 || info.height == 0 || info.components < 1 || info.components > 4 ||
      n != 6 + 3 * size_t(info.components))
    return false;
  for (int c = 0; c < info.components; ++c) {
    const uint8_t hv = p[6 + 3 * c + 1];
    info.h[c] = hv >> 4;
    info.v[c] = hv & 15;
    if (info.h[c] < 1 || info.h[c] > 4 || info.v[c] < 1 || info.v[c] > 4) return false;
  }
  info.adobe_transform = out->adobe_transform;
  *out = info;
  return true;
}

}  // namespace

bool read_jpeg_info(const uint8_t* data, size_t size, JpegInfo* info) {
  if (data == nullptr || info == nullptr || size < 2 || data[0] != 0xFF || data[1] != 0xD8)
    return false;
  JpegInfo found;
  size_t pos = 2;
  for (;;) {
    // A marker: 0xFF, any number of 0xFF fill bytes, then the marker byte.
    if (pos >= size || data[pos] != 0xFF) return false;
    while (pos < size && data[pos] == 0xFF) ++pos;
    if (pos >= size) return false;
    const int m = data[pos++];
    if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) continue;  // TEM, RSTn: no length
    // 00 is a stuffed byte, not a marker; a second SOI, EOI or scan before any frame header
    // means there is none.
    if (m == 0x00 || m == 0xD8 || m == 0xD9 || m == 0xDA) return false;
    if (size - pos < 2) return false;
    const size_t len = be16(data + pos);  // counts its own two bytes
    if (len < 2 || len > size - pos) return false;
    const uint8_t* payload = data + pos + 2;
    const size_t n = len - 2;
    if (is_sof(m)) {
      if (!parse_sof(m, payload, n, &found)) return false;
      *info = found;
      return true;
    }
    // "Adobe", version (2 bytes), flags0 (2), flags1 (2), transform (1).
    if (m == 0xEE && n >= 12 && std::memcmp(payload, "Adobe", 5) == 0)
      found.adobe_transform = payload[11];
    pos += len;
  }
}

bool hardware_decodable(const JpegInfo& info) {
  if ((info.sof != 0xC0 && info.sof != 0xC1) || info.precision != 8) return false;
  if (info.components == 1) return true;
  if (info.components != 3) return false;
  if (info.adobe_transform == 0) return false;  // RGB stored as is; the decoder assumes YCbCr
  if (info.h[1] != 1 || info.v[1] != 1 || info.h[2] != 1 || info.v[2] != 1) return false;
  // Luma h x v: 4:4:4, 4:2:2, 4:2:0, 4:4:0. nvJPEG's hardware backend has no 4:1:1 and 4:1:0
  // (nvjpeg.h, NVJPEG_BACKEND_HARDWARE).
  static const int kLuma[][2] = {{1, 1}, {2, 1}, {2, 2}, {1, 2}};
  for (const auto& hv : kLuma)
    if (info.h[0] == hv[0] && info.v[0] == hv[1]) return true;
  return false;
}

}  // namespace oxtrain::io
