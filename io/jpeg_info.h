// A JPEG's frame header (SOFn), read without decoding, and whether the image can go to nvJPEG's
// hardware decoder (baseline Huffman, 8-bit, common samplings) or must be decoded on the CPU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace oxtrain::io {

// What a JPEG's frame header (SOFn) says, read without decoding.
struct JpegInfo {
  int width = 0, height = 0;
  int precision = 0;   // bits per sample (8 or 12, 16 for lossless)
  int components = 0;  // 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
  // Marker byte: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, 0xC3 lossless, 0xC9..
  // arithmetic.
  int sof = 0;
  int h[4] = {}, v[4] = {};           // per-component sampling factors
  // The colour transform of an APP14 "Adobe" segment before the frame: 0 none (RGB or CMYK as
  // stored), 1 YCbCr, 2 YCCK; -1 without such a segment.
  int adobe_transform = -1;
};

// Parses markers from SOI up to the first SOFn. Returns false (never throws, never reads out of
// bounds) for anything that is not a well-formed JPEG up to its frame header; `info` is written
// only on success.
bool read_jpeg_info(const uint8_t* data, size_t size, JpegInfo* info);

// Whether the hardware decoder path takes it: SOF0 or SOF1 (Huffman, sequential), 8-bit,
// 1 component, or 3 components whose chroma (components 2 and 3) are 1x1 and whose luma
// sampling is one of 4:4:4 (1x1), 4:2:2 (2x1), 4:2:0 (2x2), 4:4:0 (1x2). Progressive,
// arithmetic-coded, lossless, 12-bit, CMYK/YCCK, RGB-coded (Adobe transform 0), 4:1:1, 4:1:0
// and other samplings go to the CPU.
bool hardware_decodable(const JpegInfo& info);

}  // namespace oxtrain::io
