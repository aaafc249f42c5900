// Image decoding: JPEG with libjpeg-turbo (TurboJPEG), decoded in the DCT domain at the
// smallest scale of 1/8, 1/4, 1/2 or 1 that still covers what the transform needs (the other
// factors have no SIMD code in libjpeg-turbo 2.1 and decode slower than full size); grayscale
// and CMYK come out RGB. PNG (ImageNet has a PNG named .JPEG) goes through libpng, by its
// content, whatever the file's name. Other formats (BMP, TIFF, WebP, ...) are refused with a
// DecodeError that says what the file is; every failure is a DecodeError naming the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "io/image.h"

namespace oxtrain::io {

struct ImageHeader {
  int width = 0, height = 0;
  bool jpeg = false;
};

// Reads the size without decoding (the JPEG or PNG header).
ImageHeader read_header(const uint8_t* data, size_t size, const std::string& path);

struct DecodeRequest {
  // The region of the full-size image the transform will use, and the size it becomes;
  // decoding may shrink the image as long as that region keeps at least `target_width` x
  // `target_height` pixels. A zero target decodes at full size.
  int region_width = 0, region_height = 0;
  int target_width = 0, target_height = 0;
};

struct Decoded {
  Image image;
  int full_width = 0, full_height = 0;  // size of the image in the file
  int scale_num = 1, scale_denom = 1;   // image = full size * num / denom (rounded up)
};

Decoded decode_image(const uint8_t* data, size_t size, const std::string& path,
                     const DecodeRequest& request = {});
// Reads a whole image file into `data` (its capacity is kept from file to file). Only a
// regular file is read: a FIFO named x.JPEG would block a worker in open() forever. Throws
// DecodeError naming the file when it cannot be opened or read, or is empty.
void read_image_file(const std::string& path, std::vector<uint8_t>& data);
// Reads the file and decodes it.
Decoded decode_file(const std::string& path, const DecodeRequest& request = {});

// Writes an RGB image as a baseline JPEG (for make-dataset and tests).
std::vector<uint8_t> encode_jpeg(const Image& image, int quality = 90);

}  // namespace oxtrain::io
