// The training and validation transforms of torchvision's ImageNet recipe, on decoded RGB
// images, producing uint8 HWC output (normalisation with mean/std happens on the device).
//
// Training: RandomResizedCrop(size, scale 0.08-1, ratio 3/4-4/3; 10 attempts, then the
// centre crop fallback, exactly as torchvision samples them) + horizontal flip p=0.5.
// Validation: Resize(shorter side to round(size * 256 / 224)) + CenterCrop(size). Bilinear.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "io/image.h"
#include "runtime/math/resample.h"

namespace oxtrain::io {

// A crop in full-size image pixels.
struct CropBox {
  int x = 0, y = 0, width = 0, height = 0;
};

struct RandomResizedCropOptions {
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
};

// torchvision.transforms.RandomResizedCrop.get_params for an image of width x height.
CropBox random_resized_crop_box(int width, int height, SampleRng& rng,
                                const RandomResizedCropOptions& options = {});

// Crops `box` (in full-size pixels; `decoded` may be a DCT-downscaled image of
// full_width x full_height) and resizes it to size x size with bilinear interpolation,
// mirrored when `flip`; writes size*size*3 bytes to `out`.
void crop_resize(const Image& decoded, int full_width, int full_height, const CropBox& box,
                 int size, bool flip, uint8_t* out);

// The validation transform: Resize(shorter side = resize_to) then CenterCrop(size); writes
// size*size*3 bytes to `out`. `decoded` is full size or DCT-downscaled as above.
void resize_center_crop(const Image& decoded, int full_width, int full_height, int resize_to,
                        int size, uint8_t* out);

int validation_resize(int size);  // round(size * 256 / 224): 256 for 224

// A transform as resampling taps into the image decoded at full size: output pixel (y, x) is
// math::resample_pixel with rows[y] and cols[x]. For a decoder that cannot shrink in the DCT
// domain (nvJPEG on the GPU): the loader draws the taps, the device decodes and resamples.
struct SampleTaps {
  std::vector<runtime::math::ResampleTap> cols, rows;
};
// The training transform of a width x height image: draws the crop box, then the flip, from
// `rng` exactly as train_transform does.
SampleTaps train_taps(int width, int height, int size, SampleRng& rng,
                      const RandomResizedCropOptions& crop = {});
// The validation transform (Resize, CenterCrop) of a width x height image.
SampleTaps val_taps(int width, int height, int size);
// Resamples a full-size RGB image by `taps`: rows.size() x cols.size() x 3 bytes to `out`.
void resample_taps(const Image& image, const SampleTaps& taps, uint8_t* out);
// The GPU decoder's CPU twin: decodes the file at full size (libjpeg-turbo), then resamples it
// by `taps`; throws DecodeError naming `path`.
void decode_resample(const uint8_t* data, size_t bytes, const std::string& path,
                     const SampleTaps& taps, uint8_t* out);

// Both transforms end to end on one encoded file, decoding at the smallest useful DCT scale:
// writes size*size*3 bytes to `out`; throws DecodeError.
void train_transform(const uint8_t* data, size_t bytes, const std::string& path, int size,
                     SampleRng& rng, uint8_t* out, const RandomResizedCropOptions& crop = {});
void val_transform(const uint8_t* data, size_t bytes, const std::string& path, int size,
                   uint8_t* out);

}  // namespace oxtrain::io
