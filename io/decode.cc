// JPEG through TurboJPEG (one decompressor and one compressor per thread), decoded in the DCT
// domain at the smallest scale that still covers the request; PNG through libpng. Nothing
// else: both libraries are small, where a general image library (OpenCV's imgcodecs drags in
// GDAL and codecs worth 130 MB) would have to travel with every program.
#include "io/decode.h"

#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <png.h>

#include "base/checked.h"
#include "base/error.h"
#include "base/files.h"

namespace oxtrain::io {

namespace {

// Larger images are refused from their header, before anything is allocated: PIL's
// decompression-bomb limit (Image.MAX_IMAGE_PIXELS = 89,478,485; more than twice that raises
// DecompressionBombError), so oxtrain refuses exactly what torchvision's loader refuses.
constexpr int64_t kPilMaxImagePixels = 89'478'485;
constexpr int64_t kMaxPixels = 2 * kPilMaxImagePixels;

// The largest ratio deflate reaches (a 258-byte match in 2 bits): a PNG's compressed data
// cannot be smaller than its raw rows over this, so a tiny file claiming a huge size is a
// truncated or forged one and is refused before its pixels are allocated.
constexpr int64_t kMaxDeflateRatio = 1032;

// The pixel count of a width x height image, or a DecodeError when it is over the limit.
int64_t checked_pixels(int64_t width, int64_t height, const char* format, const std::string& path) {
  const std::string size = std::to_string(width) + "x" + std::to_string(height);
  if (width <= 0 || height <= 0) throw DecodeError(path, std::string("bad ") + format + " size " + size);
  auto pixels = checked_mul(width, height);
  if (!pixels || *pixels > kMaxPixels)
    throw DecodeError(path, std::string(format) + " of " + size + " pixels is over the limit of " +
                                std::to_string(kMaxPixels) + " (PIL's decompression-bomb limit)");
  return *pixels;
}

// Bytes of an image of `pixels` pixels of `channels` bytes (the pixel limit keeps it far
// below int64's range; the check keeps that true if the limit ever grows).
size_t image_bytes(int64_t width, int64_t height, int channels, const std::string& path) {
  const int64_t dims[] = {width, height, channels};
  auto bytes = checked_bytes(dims, 1);
  if (!bytes) throw DecodeError(path, "image size overflows");
  return static_cast<size_t>(*bytes);
}

// One TurboJPEG handle per thread and kind, created on first use and destroyed when the
// thread exits. A handle that has failed is replaced: TurboJPEG 2.1 can leave the libjpeg
// state of a failed tjDecompressHeader3 mid-stream, and the next image then fails too.
class TjHandle {
 public:
  explicit TjHandle(bool compress) : compress_(compress) {}
  ~TjHandle() { reset(); }
  TjHandle(const TjHandle&) = delete;
  TjHandle& operator=(const TjHandle&) = delete;
  tjhandle get() {
    if (!handle_) {
      handle_ = compress_ ? tjInitCompress() : tjInitDecompress();
      if (!handle_)
        throw Error(std::string("TurboJPEG: cannot create a ") +
                    (compress_ ? "compressor" : "decompressor") + ": " + tjGetErrorStr2(nullptr));
    }
    return handle_;
  }
  // The message of the last failure, then a fresh handle for the next image.
  std::string fail() {
    std::string msg = handle_ ? tjGetErrorStr2(handle_) : "no handle";
    reset();
    return msg;
  }
  void reset() {
    if (handle_) tjDestroy(handle_);
    handle_ = nullptr;
  }

 private:
  bool compress_;
  tjhandle handle_ = nullptr;
};

TjHandle& decompressor() {
  thread_local TjHandle handle(false);
  return handle;
}

TjHandle& compressor() {
  thread_local TjHandle handle(true);
  return handle;
}

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

// The scaling factors used: 1/1, 1/2, 1/4 and 1/8 (those TurboJPEG offers, <= 1, whose
// denominator over numerator is a power of two), largest first. Only these have SIMD inverse
// DCTs and 1:1 chroma upsampling in libjpeg-turbo 2.1; 7/8, 3/4, 5/8 and 3/8 run the plain C
// scaled IDCTs and are slower than decoding at full size (0.9 ms full, 1.1-1.5 ms at 5/8-7/8,
// 0.75 ms at 1/2 for a 500x375 quality-90 JPEG here), so the bilinear resize after the decode
// does the rest (a downscale of less than 2x).
struct Factors {
  std::vector<tjscalingfactor> down;
  Factors() {
    int n = 0;
    tjscalingfactor* all = tjGetScalingFactors(&n);
    for (int i = 0; all && i < n; ++i) {
      const tjscalingfactor& f = all[i];
      if (f.num <= 0 || f.num > f.denom || f.denom % f.num != 0) continue;
      int ratio = f.denom / f.num;
      if ((ratio & (ratio - 1)) == 0) down.push_back({1, ratio});
    }
    std::sort(down.begin(), down.end(),
              [](const tjscalingfactor& a, const tjscalingfactor& b) { return a.denom < b.denom; });
    down.erase(std::unique(down.begin(), down.end(),
                           [](const tjscalingfactor& a, const tjscalingfactor& b) {
                             return a.denom == b.denom;
                           }),
               down.end());
    if (down.empty() || down.front().denom != 1) down.insert(down.begin(), {1, 1});
  }
};

const Factors& factors() {
  static const Factors f;
  return f;
}

// The smallest factor that keeps the region at least the target size in both dimensions.
tjscalingfactor choose_scale(int width, int height, const DecodeRequest& r) {
  if (r.target_width <= 0 || r.target_height <= 0) return {1, 1};
  int64_t rw = r.region_width > 0 ? r.region_width : width;
  int64_t rh = r.region_height > 0 ? r.region_height : height;
  tjscalingfactor best{1, 1};
  for (const auto& f : factors().down) {
    if (rw * f.num >= int64_t{r.target_width} * f.denom &&
        rh * f.num >= int64_t{r.target_height} * f.denom)
      best = f;  // factors are in decreasing order: the last one that fits is the smallest
    else
      break;
  }
  return best;
}

bool is_png(const uint8_t* data, size_t size) {
  return size >= 8 && png_sig_cmp(data, 0, 8) == 0;
}

// What a file that is neither JPEG nor PNG starts like, for the error message.
std::string other_format(const uint8_t* data, size_t size) {
  auto starts = [&](const char* magic) {
    size_t n = std::strlen(magic);
    return size >= n && std::memcmp(data, magic, n) == 0;
  };
  if (starts("BM")) return "a BMP image";
  if (starts("GIF8")) return "a GIF image";
  if (starts("II*") || starts("MM")) return "a TIFF image";
  if (size >= 12 && starts("RIFF") && std::memcmp(data + 8, "WEBP", 4) == 0) return "a WebP image";
  if (size >= 2 && data[0] == 'P' && data[1] >= '1' && data[1] <= '7') return "a PNM image";
  return "not an image oxtrain knows";
}

[[noreturn]] void unsupported(const uint8_t* data, size_t size, const std::string& path) {
  throw DecodeError(path, other_format(data, size) +
                              ": oxtrain decodes JPEG and PNG; convert the file to one of them");
}

// libpng's reader over a memory buffer. libpng reports errors by longjmp, so the two functions
// that call it (png_stage) hold nothing with a destructor; PngRead frees libpng's state however
// the read ends. No gamma or colour-space handling: PIL (torchvision's loader) takes the stored
// values, so oxtrain does too.
struct PngRead {
  png_structp png = nullptr;
  png_infop info = nullptr;
  const uint8_t* data = nullptr;
  size_t size = 0, pos = 0;
  char message[200] = "";
  ~PngRead() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

void png_on_error(png_structp png, png_const_charp msg) {
  auto* r = static_cast<PngRead*>(png_get_error_ptr(png));
  std::snprintf(r->message, sizeof r->message, "%s", msg);
  png_longjmp(png, 1);
}

void png_on_warning(png_structp, png_const_charp) {}

void png_read_memory(png_structp png, png_bytep out, size_t n) {
  auto* r = static_cast<PngRead*>(png_get_io_ptr(png));
  if (n > r->size - r->pos) png_error(png, "file ends inside the image (truncated PNG)");
  std::memcpy(out, r->data + r->pos, n);
  r->pos += n;
}

// Stage 1 (rows == nullptr): reads the header and sets the transformations to 8-bit RGB
// (palette expanded, gray to RGB, 16 bits to their top 8 as PIL does, alpha and tRNS dropped as
// PIL's convert("RGB") does). Stage 2: reads the pixels into `rows`. False on a libpng error.
bool png_stage(PngRead& r, png_bytepp rows) {
  if (setjmp(png_jmpbuf(r.png))) return false;
  if (!rows) {
    png_set_read_fn(r.png, &r, png_read_memory);
    png_read_info(r.png, r.info);
    const int colour = png_get_color_type(r.png, r.info);
    const int depth = png_get_bit_depth(r.png, r.info);
    if (colour == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r.png);
    if (colour == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(r.png);
    if (depth == 16) png_set_strip_16(r.png);
    if (colour == PNG_COLOR_TYPE_GRAY || colour == PNG_COLOR_TYPE_GRAY_ALPHA)
      png_set_gray_to_rgb(r.png);
    if (colour & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(r.png);
    png_set_interlace_handling(r.png);
    png_read_update_info(r.png, r.info);
    return true;
  }
  png_read_image(r.png, rows);
  png_read_end(r.png, nullptr);
  return true;
}

// Opens a PNG and reads its header; `r` then holds the size.
void png_open(PngRead& r, const uint8_t* data, size_t size, const std::string& path) {
  r.data = data;
  r.size = size;
  r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &r, png_on_error, png_on_warning);
  if (r.png) r.info = png_create_info_struct(r.png);
  if (!r.png || !r.info) throw DecodeError(path, "libpng: cannot create a reader");
  if (!png_stage(r, nullptr))
    throw DecodeError(path, std::string("corrupt PNG (") + r.message + ")");
  const png_uint_32 w = png_get_image_width(r.png, r.info), h = png_get_image_height(r.png, r.info);
  checked_pixels(w, h, "PNG", path);
  // At least one bit per pixel plus a filter byte per row, compressed at most 1032:1.
  const int64_t raw_rows = int64_t{h} * (1 + (int64_t{w} + 7) / 8);
  if (int64_t(size) < raw_rows / kMaxDeflateRatio)
    throw DecodeError(path, "truncated PNG: " + std::to_string(size) + " bytes cannot hold " +
                                std::to_string(w) + "x" + std::to_string(h) + " pixels");
  if (png_get_rowbytes(r.png, r.info) != size_t(w) * 3)
    throw DecodeError(path, "PNG rows of " + std::to_string(png_get_rowbytes(r.png, r.info)) +
                                " bytes after conversion to RGB, expected " +
                                std::to_string(size_t(w) * 3));
}

Decoded decode_png(const uint8_t* data, size_t size, const std::string& path) {
  PngRead r;
  png_open(r, data, size, path);
  Decoded d;
  d.full_width = d.image.width = static_cast<int>(png_get_image_width(r.png, r.info));
  d.full_height = d.image.height = static_cast<int>(png_get_image_height(r.png, r.info));
  const size_t row = size_t(d.image.width) * 3;
  d.image.rgb.resize(image_bytes(d.image.width, d.image.height, 3, path));
  std::vector<png_bytep> rows(d.image.height);
  for (int y = 0; y < d.image.height; ++y) rows[y] = d.image.rgb.data() + y * row;
  if (!png_stage(r, rows.data()))
    throw DecodeError(path, std::string("corrupt PNG (") + r.message + ")");
  return d;
}

// libjpeg's warnings that leave every pixel decoded from the file's data: bytes after the
// entropy-coded data, header oddities. Those that mean some pixels were never in the file --
// the data ends early ("premature end of data segment", which libjpeg fills with grey: a
// 10 KB file claiming 16383x16383 came out as a grey image), a bad Huffman or arithmetic
// code, a lost restart marker -- are a corrupt image, refused.
bool is_harmless_warning(const std::string& msg) {
  static const char* const kWarnings[] = {
      "Corrupt JPEG data: ",                        // see below
      "Warning:",                                   // unknown JFIF revision
      "Unknown Adobe color transform",              //
      "Inconsistent progression sequence",          //
      "Invalid SOS parameters for sequential JPEG"  //
  };
  for (const char* w : kWarnings)
    if (msg.rfind(w, 0) == 0)
      return w != kWarnings[0] || msg.find("extraneous bytes before marker") != std::string::npos;
  return false;
}

// TurboJPEG 2.1 returns -1 for warnings and for errors alike, and tjGetErrorCode says
// TJERR_WARNING whenever any warning came first, even when a fatal error followed (a truncated
// progressive JPEG: "Premature end of JPEG file", then "Bogus Huffman table definition"). The
// message is that of the first warning, or of the fatal error that ended the decode, so it is
// the message that decides.
void check_decompress(int rc, TjHandle& handle, const std::string& path) {
  if (rc == 0) return;
  std::string msg = handle.fail();
  if (msg.rfind("Premature end of JPEG file", 0) == 0 ||
      msg.find("premature end of data segment") != std::string::npos)
    throw DecodeError(path, "truncated JPEG (" + msg + ")");
  if (!is_harmless_warning(msg)) throw DecodeError(path, "corrupt JPEG (" + msg + ")");
}

// The size and colour space from the JPEG header.
void jpeg_header(TjHandle& handle, const uint8_t* data, size_t size, const std::string& path,
                 int* width, int* height, int* colorspace) {
  int subsamp = 0;
  if (tjDecompressHeader3(handle.get(), data, static_cast<unsigned long>(size), width, height,
                          &subsamp, colorspace) != 0)
    throw DecodeError(path, "corrupt JPEG header (" + handle.fail() + ")");
  checked_pixels(*width, *height, "JPEG", path);
}

}  // namespace

ImageHeader read_header(const uint8_t* data, size_t size, const std::string& path) {
  ImageHeader header;
  if (is_jpeg(data, size)) {
    int colorspace = 0;
    jpeg_header(decompressor(), data, size, path, &header.width, &header.height, &colorspace);
    header.jpeg = true;
    return header;
  }
  if (!is_png(data, size)) unsupported(data, size, path);
  PngRead r;
  png_open(r, data, size, path);
  header.width = static_cast<int>(png_get_image_width(r.png, r.info));
  header.height = static_cast<int>(png_get_image_height(r.png, r.info));
  return header;
}

Decoded decode_image(const uint8_t* data, size_t size, const std::string& path,
                     const DecodeRequest& request) {
  if (size == 0) throw DecodeError(path, "empty file");
  if (is_png(data, size)) return decode_png(data, size, path);
  if (!is_jpeg(data, size)) unsupported(data, size, path);

  TjHandle& handle = decompressor();
  int width = 0, height = 0, colorspace = 0;
  jpeg_header(handle, data, size, path, &width, &height, &colorspace);

  tjscalingfactor f = choose_scale(width, height, request);
  Decoded d;
  d.full_width = width;
  d.full_height = height;
  d.scale_num = f.num;
  d.scale_denom = f.denom;
  int w = TJSCALED(width, f), hgt = TJSCALED(height, f);
  d.image.width = w;
  d.image.height = hgt;
  d.image.rgb.resize(image_bytes(w, hgt, 3, path));

  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    // libjpeg hands back the stored values; CMYK JPEGs (Adobe's, as in ImageNet) store them
    // inverted (255 = no ink), so R = C' * K' / 255 with C', K' the stored values -- the
    // conversion of libjpeg-turbo's own tools and of PIL.
    std::vector<uint8_t> cmyk(image_bytes(w, hgt, 4, path));
    check_decompress(tjDecompress2(handle.get(), data, static_cast<unsigned long>(size),
                                   cmyk.data(), w, 0, hgt, TJPF_CMYK, 0),
                     handle, path);
    uint8_t* out = d.image.rgb.data();
    const uint8_t* in = cmyk.data();
    for (size_t i = 0, n = size_t(w) * hgt; i < n; ++i, in += 4, out += 3) {
      unsigned k = in[3];
      out[0] = static_cast<uint8_t>((in[0] * k + 127) / 255);
      out[1] = static_cast<uint8_t>((in[1] * k + 127) / 255);
      out[2] = static_cast<uint8_t>((in[2] * k + 127) / 255);
    }
    return d;
  }
  // TJPF_RGB also turns grayscale into R = G = B.
  check_decompress(tjDecompress2(handle.get(), data, static_cast<unsigned long>(size),
                                 d.image.rgb.data(), w, 0, hgt, TJPF_RGB, 0),
                   handle, path);
  return d;
}

void read_image_file(const std::string& path, std::vector<uint8_t>& data) {
  std::string why;
  int fd = open_regular_file(path, &why);
  if (fd < 0) throw DecodeError(path, "cannot open: " + why);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw DecodeError(path, std::string("cannot stat: ") + std::strerror(e));
  }
  data.resize(size_t(st.st_size));
  long done = read_fully(fd, data.data(), data.size());
  int e = errno;
  ::close(fd);
  if (done < 0) throw DecodeError(path, std::string("read error: ") + std::strerror(e));
  data.resize(size_t(done));  // shrank since fstat
  if (done == 0) throw DecodeError(path, "empty file");
}

Decoded decode_file(const std::string& path, const DecodeRequest& request) {
  std::vector<uint8_t> bytes;
  read_image_file(path, bytes);
  return decode_image(bytes.data(), bytes.size(), path, request);
}

std::vector<uint8_t> encode_jpeg(const Image& image, int quality) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != size_t(image.width) * image.height * 3)
    throw Error("encode_jpeg: image of " + std::to_string(image.width) + "x" +
                std::to_string(image.height) + " with " + std::to_string(image.rgb.size()) +
                " bytes is not an RGB image");
  if (quality < 1 || quality > 100)
    throw Error("encode_jpeg: quality " + std::to_string(quality) + " is not in 1..100");
  TjHandle& handle = compressor();
  unsigned char* buf = nullptr;
  unsigned long n = 0;
  if (tjCompress2(handle.get(), image.rgb.data(), image.width, 0, image.height, TJPF_RGB, &buf, &n,
                  TJSAMP_420, quality, 0) != 0) {
    std::string msg = handle.fail();
    if (buf) tjFree(buf);
    throw Error("encode_jpeg: " + msg);
  }
  std::vector<uint8_t> out(buf, buf + n);
  tjFree(buf);
  return out;
}

}  // namespace oxtrain::io
