// torchvision's ImageNet transforms on decoded RGB images.
//
// Resizing is a separable bilinear resampler with the half-pixel convention of OpenCV's
// INTER_LINEAR and of torch's interpolate(align_corners=False, antialias=False): output pixel
// o of a resize from n to m pixels reads source position (o + 0.5) * n / m - 0.5, clamped to
// the input. It is written here rather than taken from cv::resize because the source
// rectangle is fractional when the JPEG was decoded at a DCT scale (a crop box in full-size
// pixels lands between decoded pixels), because the mirror comes free by reversing the column
// table, and because it writes straight into the caller's buffer on the calling thread
// (OpenCV would start its own thread pool inside every loader worker).
#include "io/transforms.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "base/error.h"
#include "io/decode.h"
#include "runtime/math/resample.h"

namespace oxtrain::io {

namespace {

using Tap = runtime::math::ResampleTap;

// Taps of `count` output pixels. Output pixel o sits at full-size position
//   u = clamp(origin + (first + o + 0.5) * step - 0.5, lo, hi),
// which lies at (u + 0.5) * scale - 0.5 in the decoded image of `decoded` pixels (scale =
// decoded / full size: pixel centres of a DCT-scaled decode are where that puts them).
std::vector<Tap> make_taps(int count, double origin, int first, double step, double lo, double hi,
                           double scale, int decoded) {
  std::vector<Tap> taps(count);
  for (int o = 0; o < count; ++o) {
    double u = origin + (first + o + 0.5) * step - 0.5;
    u = std::clamp(u, lo, hi);
    double d = scale == 1.0 ? u : (u + 0.5) * scale - 0.5;
    d = std::clamp(d, 0.0, double(decoded - 1));
    int i0 = static_cast<int>(d);  // d >= 0: truncation is floor
    Tap& t = taps[o];
    t.i0 = i0;
    t.i1 = std::min(i0 + 1, decoded - 1);
    t.w = t.i1 == i0 ? 0.0f : static_cast<float>(d - i0);
  }
  return taps;
}

// Bilinear resampling of an RGB image by the column and row taps; writes
// rows.size() x cols.size() x 3 bytes to `out`. Each output row blends its two source rows
// over the span of columns the taps touch, then interpolates along that blended row, one
// pixel (three floats, in a four-float register) at a time, and rounds the row to bytes
// (to nearest, ties to even). Every output pixel is the same function of its column and row
// taps, so reversing the column taps mirrors the output exactly.
void resample(const Image& src, const std::vector<Tap>& cols, const std::vector<Tap>& rows,
              uint8_t* out) {
  int x_min = src.width, x_max = 0;
  for (const Tap& t : cols) {
    x_min = std::min(x_min, t.i0);
    x_max = std::max(x_max, t.i1);
  }
  const int span = (x_max - x_min + 1) * 3;
  const int out_w = static_cast<int>(cols.size());
  const int row_values = out_w * 3;
  // +1: a pixel is read and written as four floats.
  std::vector<float> line(span + 1, 0.0f), blended(row_values + 1, 0.0f);
  std::vector<int> c0(out_w), c1(out_w);
  std::vector<float> cw(out_w);
  for (int i = 0; i < out_w; ++i) {
    c0[i] = (cols[i].i0 - x_min) * 3;
    c1[i] = (cols[i].i1 - x_min) * 3;
    cw[i] = cols[i].w;
  }
  const size_t stride = size_t(src.width) * 3;
  const uint8_t* base = src.rgb.data() + size_t(x_min) * 3;
  float* l = line.data();
  float* h = blended.data();
  int last_i0 = -1, last_i1 = -1;
  float last_w = -1;
  for (const Tap& r : rows) {
    if (r.i0 != last_i0 || r.i1 != last_i1 || r.w != last_w) {
      const uint8_t* a = base + stride * r.i0;
      const uint8_t* b = base + stride * r.i1;
      const float w = r.w;
      if (w == 0.0f) {
        for (int k = 0; k < span; ++k) l[k] = a[k];
      } else {
        for (int k = 0; k < span; ++k) {
          float fa = a[k];
          l[k] = runtime::math::resample_lerp(fa, float(b[k]), w);
        }
      }
      last_i0 = r.i0;
      last_i1 = r.i1;
      last_w = r.w;
    }
#if defined(__SSE2__)
    for (int x = 0; x < out_w; ++x) {
      __m128 p = _mm_loadu_ps(l + c0[x]);
      __m128 q = _mm_loadu_ps(l + c1[x]);
      __m128 v = _mm_add_ps(p, _mm_mul_ps(_mm_set1_ps(cw[x]), _mm_sub_ps(q, p)));
      _mm_storeu_ps(h + 3 * x, v);  // the fourth float is overwritten by the next pixel
    }
    int k = 0;
    for (; k + 16 <= row_values; k += 16) {
      __m128i i0 = _mm_cvtps_epi32(_mm_loadu_ps(h + k));
      __m128i i1 = _mm_cvtps_epi32(_mm_loadu_ps(h + k + 4));
      __m128i i2 = _mm_cvtps_epi32(_mm_loadu_ps(h + k + 8));
      __m128i i3 = _mm_cvtps_epi32(_mm_loadu_ps(h + k + 12));
      __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(i0, i1), _mm_packs_epi32(i2, i3));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), bytes);
    }
    for (; k < row_values; ++k) out[k] = runtime::math::resample_round(h[k]);
#else
    for (int x = 0; x < out_w; ++x) {
      const float* p = l + c0[x];
      const float* q = l + c1[x];
      for (int c = 0; c < 3; ++c) h[3 * x + c] = runtime::math::resample_lerp(p[c], q[c], cw[x]);
    }
    for (int k = 0; k < row_values; ++k) out[k] = runtime::math::resample_round(h[k]);
#endif
    out += row_values;
  }
}

void check_image(const Image& image, int full_width, int full_height, const char* what) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != size_t(image.width) * image.height * 3)
    throw Error(std::string(what) + ": image of " + std::to_string(image.width) + "x" +
                std::to_string(image.height) + " with " + std::to_string(image.rgb.size()) +
                " bytes is not an RGB image");
  if (full_width <= 0 || full_height <= 0)
    throw Error(std::string(what) + ": bad full size " + std::to_string(full_width) + "x" +
                std::to_string(full_height));
}

// decoded / full size along one axis. A DCT-scaled decode is ceil(full * n / 8) pixels
// (TJSCALED) whose pixel centres follow the exact factor n / 8, so that factor is recovered
// when the sizes fit it; anything else uses the ratio of the sizes.
void decoded_scale(const Image& image, int full_width, int full_height, double* sx, double* sy) {
  if (image.width == full_width && image.height == full_height) {
    *sx = *sy = 1.0;
    return;
  }
  for (int n = 7; n >= 1; --n) {
    if ((int64_t{full_width} * n + 7) / 8 == image.width &&
        (int64_t{full_height} * n + 7) / 8 == image.height) {
      *sx = *sy = n / 8.0;
      return;
    }
  }
  *sx = double(image.width) / full_width;
  *sy = double(image.height) / full_height;
}

SampleTaps crop_resize_taps(int decoded_width, int decoded_height, double sx, double sy,
                            const CropBox& box, int size, bool flip) {
  SampleTaps taps;
  taps.cols = make_taps(size, box.x, 0, double(box.width) / size, box.x, box.x + box.width - 1,
                        sx, decoded_width);
  taps.rows = make_taps(size, box.y, 0, double(box.height) / size, box.y,
                        box.y + box.height - 1, sy, decoded_height);
  if (flip) std::reverse(taps.cols.begin(), taps.cols.end());
  return taps;
}

void crop_resize_scaled(const Image& decoded, double sx, double sy, const CropBox& box, int size,
                        bool flip, uint8_t* out) {
  SampleTaps taps = crop_resize_taps(decoded.width, decoded.height, sx, sy, box, size, flip);
  resample(decoded, taps.cols, taps.rows, out);
}

// torchvision's Resize(int): the shorter side becomes resize_to, the longer one
// int(resize_to * long / short).
void resized_size(int width, int height, int resize_to, int* new_width, int* new_height) {
  if (width <= height) {
    *new_width = resize_to;
    *new_height = static_cast<int>(double(int64_t{resize_to} * height) / width);
  } else {
    *new_height = resize_to;
    *new_width = static_cast<int>(double(int64_t{resize_to} * width) / height);
  }
}

SampleTaps center_crop_taps(int full_width, int full_height, int decoded_width,
                            int decoded_height, double sx, double sy, int resize_to, int size) {
  int rw = 0, rh = 0;
  resized_size(full_width, full_height, resize_to, &rw, &rh);
  // CenterCrop: int(round((H' - size) / 2.0)), Python rounding half to even.
  int top = static_cast<int>(std::nearbyint((rh - size) / 2.0));
  int left = static_cast<int>(std::nearbyint((rw - size) / 2.0));
  SampleTaps taps;
  taps.cols =
      make_taps(size, 0.0, left, double(full_width) / rw, 0.0, full_width - 1, sx, decoded_width);
  taps.rows =
      make_taps(size, 0.0, top, double(full_height) / rh, 0.0, full_height - 1, sy, decoded_height);
  return taps;
}

void resize_center_crop_scaled(const Image& decoded, int full_width, int full_height, double sx,
                               double sy, int resize_to, int size, uint8_t* out) {
  SampleTaps taps = center_crop_taps(full_width, full_height, decoded.width, decoded.height, sx,
                                     sy, resize_to, size);
  resample(decoded, taps.cols, taps.rows, out);
}

void check_size(int size, const char* what) {
  if (size <= 0 || size > 16384)
    throw Error(std::string(what) + ": output size " + std::to_string(size) +
                " is not in 1..16384");
}

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

}  // namespace

CropBox random_resized_crop_box(int width, int height, SampleRng& rng,
                                const RandomResizedCropOptions& o) {
  if (width <= 0 || height <= 0)
    throw Error("random_resized_crop_box: bad image size " + std::to_string(width) + "x" +
                std::to_string(height));
  if (!(o.scale_min > 0 && o.scale_min <= o.scale_max))
    throw Error("RandomResizedCrop: scale range [" + std::to_string(o.scale_min) + ", " +
                std::to_string(o.scale_max) + "] must satisfy 0 < min <= max");
  if (!(o.ratio_min > 0 && o.ratio_min <= o.ratio_max))
    throw Error("RandomResizedCrop: ratio range [" + std::to_string(o.ratio_min) + ", " +
                std::to_string(o.ratio_max) + "] must satisfy 0 < min <= max");
  // torchvision.transforms.RandomResizedCrop.get_params, step by step; Python's round() is
  // half to even, which is std::nearbyint in the default rounding mode.
  const double area = double(height) * width;
  const double log_min = std::log(o.ratio_min), log_max = std::log(o.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    double target_area = area * rng.uniform(o.scale_min, o.scale_max);
    double aspect = std::exp(rng.uniform(log_min, log_max));
    double w = std::nearbyint(std::sqrt(target_area * aspect));
    double h = std::nearbyint(std::sqrt(target_area / aspect));
    if (0 < w && w <= width && 0 < h && h <= height) {
      CropBox box;
      box.width = static_cast<int>(w);
      box.height = static_cast<int>(h);
      box.y = static_cast<int>(rng.integer(0, height - box.height));
      box.x = static_cast<int>(rng.integer(0, width - box.width));
      return box;
    }
  }
  // Fallback: the central crop with the ratio clamped into range.
  CropBox box;
  double in_ratio = double(width) / double(height);
  if (in_ratio < o.ratio_min) {
    box.width = width;
    box.height = static_cast<int>(std::nearbyint(box.width / o.ratio_min));
  } else if (in_ratio > o.ratio_max) {
    box.height = height;
    box.width = static_cast<int>(std::nearbyint(box.height * o.ratio_max));
  } else {
    box.width = width;
    box.height = height;
  }
  box.y = (height - box.height) / 2;
  box.x = (width - box.width) / 2;
  return box;
}

void crop_resize(const Image& decoded, int full_width, int full_height, const CropBox& box,
                 int size, bool flip, uint8_t* out) {
  check_image(decoded, full_width, full_height, "crop_resize");
  check_size(size, "crop_resize");
  if (box.width <= 0 || box.height <= 0 || box.x < 0 || box.y < 0 ||
      int64_t{box.x} + box.width > full_width || int64_t{box.y} + box.height > full_height)
    throw Error("crop_resize: box " + std::to_string(box.width) + "x" + std::to_string(box.height) +
                "+" + std::to_string(box.x) + "+" + std::to_string(box.y) + " is not inside the " +
                std::to_string(full_width) + "x" + std::to_string(full_height) + " image");
  double sx = 1, sy = 1;
  decoded_scale(decoded, full_width, full_height, &sx, &sy);
  crop_resize_scaled(decoded, sx, sy, box, size, flip, out);
}

void resize_center_crop(const Image& decoded, int full_width, int full_height, int resize_to,
                        int size, uint8_t* out) {
  check_image(decoded, full_width, full_height, "resize_center_crop");
  check_size(size, "resize_center_crop");
  if (resize_to < size)
    throw Error("resize_center_crop: resize to " + std::to_string(resize_to) +
                " is smaller than the crop " + std::to_string(size));
  double sx = 1, sy = 1;
  decoded_scale(decoded, full_width, full_height, &sx, &sy);
  resize_center_crop_scaled(decoded, full_width, full_height, sx, sy, resize_to, size, out);
}

int validation_resize(int size) { return static_cast<int>(std::lround(size * 256.0 / 224.0)); }

SampleTaps train_taps(int width, int height, int size, SampleRng& rng,
                      const RandomResizedCropOptions& crop) {
  check_size(size, "train_taps");
  CropBox box = random_resized_crop_box(width, height, rng, crop);
  bool flip = rng.uniform() < 0.5;  // drawn after the box, as train_transform draws it
  return crop_resize_taps(width, height, 1.0, 1.0, box, size, flip);
}

SampleTaps val_taps(int width, int height, int size) {
  check_size(size, "val_taps");
  if (width <= 0 || height <= 0)
    throw Error("val_taps: bad image size " + std::to_string(width) + "x" + std::to_string(height));
  return center_crop_taps(width, height, width, height, 1.0, 1.0, validation_resize(size), size);
}

void resample_taps(const Image& image, const SampleTaps& taps, uint8_t* out) {
  check_image(image, image.width, image.height, "resample_taps");
  if (taps.cols.empty() || taps.rows.empty())
    throw Error("resample_taps: no taps");
  auto inside = [](const std::vector<Tap>& t, int n) {
    return std::all_of(t.begin(), t.end(), [n](const Tap& k) {
      return k.i0 >= 0 && k.i0 < n && k.i1 >= 0 && k.i1 < n;
    });
  };
  if (!inside(taps.cols, image.width) || !inside(taps.rows, image.height))
    throw Error("resample_taps: taps reach outside the " + std::to_string(image.width) + "x" +
                std::to_string(image.height) + " image");
  resample(image, taps.cols, taps.rows, out);
}

void decode_resample(const uint8_t* data, size_t bytes, const std::string& path,
                     const SampleTaps& taps, uint8_t* out) {
  Decoded d = decode_image(data, bytes, path);
  resample_taps(d.image, taps, out);
}

void train_transform(const uint8_t* data, size_t bytes, const std::string& path, int size,
                     SampleRng& rng, uint8_t* out, const RandomResizedCropOptions& crop) {
  check_size(size, "train_transform");
  if (!is_jpeg(data, bytes)) {  // the fallback decoder has no cheap header: decode once
    Decoded d = decode_image(data, bytes, path);
    CropBox box = random_resized_crop_box(d.full_width, d.full_height, rng, crop);
    bool flip = rng.uniform() < 0.5;
    crop_resize_scaled(d.image, 1.0, 1.0, box, size, flip, out);
    return;
  }
  ImageHeader header = read_header(data, bytes, path);
  CropBox box = random_resized_crop_box(header.width, header.height, rng, crop);
  Decoded d = decode_image(data, bytes, path, DecodeRequest{box.width, box.height, size, size});
  bool flip = rng.uniform() < 0.5;  // RandomHorizontalFlip comes after RandomResizedCrop
  crop_resize_scaled(d.image, double(d.scale_num) / d.scale_denom,
                     double(d.scale_num) / d.scale_denom, box, size, flip, out);
}

void val_transform(const uint8_t* data, size_t bytes, const std::string& path, int size,
                   uint8_t* out) {
  check_size(size, "val_transform");
  const int resize_to = validation_resize(size);
  if (!is_jpeg(data, bytes)) {
    Decoded d = decode_image(data, bytes, path);
    resize_center_crop_scaled(d.image, d.full_width, d.full_height, 1.0, 1.0, resize_to, size, out);
    return;
  }
  ImageHeader header = read_header(data, bytes, path);
  int rw = 0, rh = 0;
  resized_size(header.width, header.height, resize_to, &rw, &rh);
  // The centre crop in full-size pixels (rounded down, so the decode keeps enough pixels).
  DecodeRequest request;
  request.region_width = std::max(1, static_cast<int>(double(size) * header.width / rw));
  request.region_height = std::max(1, static_cast<int>(double(size) * header.height / rh));
  request.target_width = request.target_height = size;
  Decoded d = decode_image(data, bytes, path, request);
  resize_center_crop_scaled(d.image, d.full_width, d.full_height,
                            double(d.scale_num) / d.scale_denom,
                            double(d.scale_num) / d.scale_denom, resize_to, size, out);
}

}  // namespace oxtrain::io
