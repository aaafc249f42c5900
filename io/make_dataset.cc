// make-dataset: an ImageNet-layout folder of procedurally drawn JPEGs. Half of the kinds are
// one large object (circle, square, triangle, cross, ring, star) on a background, the other
// half a texture over the whole picture (stripes of three orientations, checkerboard, dots,
// grid), so that a random crop of a few percent of the area still shows what it is most of
// the time. Features are sized relative to the picture's shorter side (texture periods 14% to
// 30% of it) so they survive the shrink to 64x64. Colours (the foreground always lighter than
// the background), sizes, positions, rotations, noise and the picture's size and aspect ratio
// are random; every picture has its own SampleRng(seed, split, class << 32 | index), so the
// output does not depend on the thread count and growing a split keeps its first pictures.
#include "io/make_dataset.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <unistd.h>
#include <filesystem>
#include <mutex>
#include <numbers>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/files.h"
#include "base/text.h"
#include "io/decode.h"
#include "io/image.h"

namespace oxtrain::io {

namespace {

namespace fs = std::filesystem;

enum class Kind {
  circle,
  square,
  triangle,
  hstripes,
  vstripes,
  checkerboard,
  cross,
  ring,
  diagonal,
  dots,
  star,
  grid
};

struct ClassInfo {
  const char* name;
  Kind kind;
};

// Folder names sort in label order.
constexpr ClassInfo kClasses[] = {
    {"00_circle", Kind::circle},     {"01_square", Kind::square},
    {"02_triangle", Kind::triangle}, {"03_hstripes", Kind::hstripes},
    {"04_vstripes", Kind::vstripes}, {"05_checkerboard", Kind::checkerboard},
    {"06_cross", Kind::cross},       {"07_ring", Kind::ring},
    {"08_diagonal", Kind::diagonal}, {"09_dots", Kind::dots},
    {"10_star", Kind::star},         {"11_grid", Kind::grid},
};
constexpr int kNumClasses = static_cast<int>(sizeof kClasses / sizeof kClasses[0]);

constexpr double kPi = std::numbers::pi;

// The picture being drawn: RGB rows over an Image's pixels.
struct Canvas {
  uint8_t* data;
  int cols, rows;
  uint8_t* ptr(int y) const { return data + size_t(y) * cols * 3; }
};

struct Point {
  double x, y;
};

struct Rgb {
  double r = 0, g = 0, b = 0;
};

Rgb random_colour(SampleRng& rng) {
  return {double(rng.integer(0, 255)), double(rng.integer(0, 255)), double(rng.integer(0, 255))};
}

double luma(const Rgb& c) { return 0.299 * c.r + 0.587 * c.g + 0.114 * c.b; }

// A background and a foreground colour, the foreground always clearly lighter: shapes and
// textures are plain to see, and their edges have one polarity, which a small network learns
// faster than edges of either sign.
void colour_pair(SampleRng& rng, Rgb* bg, Rgb* fg) {
  for (int i = 0; i < 64; ++i) {
    Rgb a = random_colour(rng), b = random_colour(rng);
    if (luma(a) > luma(b)) std::swap(a, b);
    if (luma(b) - luma(a) >= 80) {
      *bg = a;
      *fg = b;
      return;
    }
  }
  *bg = {40, 40, 40};
  *fg = {220, 220, 220};
}

// Photo-like sizes: an aspect ratio from the usual ones, the longer side in range.
void picture_size(SampleRng& rng, int min_side, int max_side, int* width, int* height) {
  static constexpr double kAspects[] = {4.0 / 3,  3.0 / 4, 1.0,     16.0 / 9,
                                        9.0 / 16, 3.0 / 2, 2.0 / 3, 5.0 / 4};
  double aspect = kAspects[rng.integer(0, std::size(kAspects) - 1)];
  int long_side = static_cast<int>(rng.integer(min_side, max_side));
  int short_side = static_cast<int>(std::lround(long_side / std::max(aspect, 1 / aspect)));
  short_side = std::clamp(short_side, min_side, max_side);
  *width = aspect >= 1 ? long_side : short_side;
  *height = aspect >= 1 ? short_side : long_side;
}

// A background: a linear gradient between two nearby colours in a random direction.
void fill_background(const Canvas& img, SampleRng& rng, const Rgb& c1) {
  Rgb c2{std::clamp(c1.r + rng.uniform(-30, 30), 0.0, 255.0),
         std::clamp(c1.g + rng.uniform(-30, 30), 0.0, 255.0),
         std::clamp(c1.b + rng.uniform(-30, 30), 0.0, 255.0)};
  double angle = rng.uniform(0, 2 * kPi);
  double dx = std::cos(angle), dy = std::sin(angle);
  double extent = std::abs(dx) * img.cols + std::abs(dy) * img.rows;
  double start = std::min(0.0, dx * img.cols) + std::min(0.0, dy * img.rows);
  for (int y = 0; y < img.rows; ++y) {
    uint8_t* p = img.ptr(y);
    for (int x = 0; x < img.cols; ++x, p += 3) {
      double t = (dx * x + dy * y - start) / extent;
      p[0] = static_cast<uint8_t>(std::lround(c1.r + (c2.r - c1.r) * t));
      p[1] = static_cast<uint8_t>(std::lround(c1.g + (c2.g - c1.g) * t));
      p[2] = static_cast<uint8_t>(std::lround(c1.b + (c2.b - c1.b) * t));
    }
  }
}

// Blends `fg` over the picture by a coverage computed from a signed distance in pixels
// (positive inside), which gives the edges of shapes and textures one pixel of antialiasing.
template <typename SignedDistance>
void paint_texture(const Canvas& img, const Rgb& fg, SignedDistance sd) {
  for (int y = 0; y < img.rows; ++y) {
    uint8_t* p = img.ptr(y);
    for (int x = 0; x < img.cols; ++x, p += 3) {
      double a = std::clamp(0.5 + sd(x + 0.5, y + 0.5), 0.0, 1.0);
      if (a == 0) continue;
      p[0] = static_cast<uint8_t>(std::lround(p[0] + (fg.r - p[0]) * a));
      p[1] = static_cast<uint8_t>(std::lround(p[1] + (fg.g - p[1]) * a));
      p[2] = static_cast<uint8_t>(std::lround(p[2] + (fg.b - p[2]) * a));
    }
  }
}

// Signed distance to the stripes of period `period` covering `duty` of it along t.
double stripe_distance(double t, double period, double duty) {
  double m = t - std::floor(t / period) * period;  // [0, period)
  double on = duty * period;
  if (m < on) return std::min(m, on - m);
  return -std::min(m - on, period - m);
}

// Signed distance in pixels from (x, y) to a polygon's outline, positive inside (even-odd
// rule; the star is the one polygon that is not convex).
double polygon_distance(const std::vector<Point>& pts, double x, double y) {
  double best = INFINITY;
  bool inside = false;
  for (size_t i = 0, j = pts.size() - 1; i < pts.size(); j = i++) {
    const Point &a = pts[i], &b = pts[j];
    double ex = b.x - a.x, ey = b.y - a.y, wx = x - a.x, wy = y - a.y;
    double t = std::clamp((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0);
    double dx = wx - ex * t, dy = wy - ey * t;
    best = std::min(best, dx * dx + dy * dy);
    if ((a.y > y) != (b.y > y) && x < a.x + (y - a.y) * ex / ey) inside = !inside;
  }
  return inside ? std::sqrt(best) : -std::sqrt(best);
}

void fill_polygon(const Canvas& img, const std::vector<Point>& pts, const Rgb& colour) {
  paint_texture(img, colour, [&](double x, double y) { return polygon_distance(pts, x, y); });
}

std::vector<Point> rotated_rect(double cx, double cy, double w, double h, double angle) {
  double c = std::cos(angle), s = std::sin(angle);
  std::vector<Point> pts;
  for (auto [u, v] : {std::pair{-0.5, -0.5}, {0.5, -0.5}, {0.5, 0.5}, {-0.5, 0.5}}) {
    double x = u * w, y = v * h;
    pts.push_back({cx + c * x - s * y, cy + s * x + c * y});
  }
  return pts;
}

void add_noise(const Canvas& img, SampleRng& rng) {
  double sigma = rng.uniform(1.5, 5);
  // Triangular noise from two bytes: (a + b - 255) has a standard deviation of about 104.
  double k = sigma / 104.0;
  uint64_t bits = 0;
  int left = 0;
  for (int y = 0; y < img.rows; ++y) {
    uint8_t* p = img.ptr(y);
    for (int i = 0; i < img.cols * 3; ++i) {
      if (left == 0) {
        bits = rng.next_u64();
        left = 4;
      }
      int n = int(bits & 0xFF) + int((bits >> 8) & 0xFF) - 255;
      bits >>= 16;
      --left;
      p[i] = static_cast<uint8_t>(std::clamp<long>(std::lround(p[i] + n * k), 0, 255));
    }
  }
}

// One object of `kind` centred at (cx, cy), `r` about half its extent; upright within
// +-10 degrees (pictures have an up, as photos do).
void draw_object(const Canvas& img, Kind kind, SampleRng& rng, double cx, double cy, double r,
                 const Rgb& fg) {
  const double deg = kPi / 180;
  switch (kind) {
    case Kind::circle:
      paint_texture(img, fg, [&](double x, double y) { return r - std::hypot(x - cx, y - cy); });
      break;
    case Kind::square: {
      double s = 1.7 * r;
      fill_polygon(img, rotated_rect(cx, cy, s, s, rng.uniform(-10, 10) * deg), fg);
      break;
    }
    case Kind::triangle: {
      double a0 = (-90 + rng.uniform(-10, 10)) * deg;  // pointing up
      std::vector<Point> pts;
      for (int i = 0; i < 3; ++i) {
        double a = a0 + i * 2 * kPi / 3;
        pts.push_back({cx + 1.15 * r * std::cos(a), cy + 1.15 * r * std::sin(a)});
      }
      fill_polygon(img, pts, fg);
      break;
    }
    case Kind::cross: {
      double len = 2 * r, thick = len * rng.uniform(0.22, 0.3);
      double a = rng.uniform(-10, 10) * deg;
      std::vector<Point> bar = rotated_rect(cx, cy, len, thick, a);
      std::vector<Point> post = rotated_rect(cx, cy, thick, len, a);
      paint_texture(img, fg, [&](double x, double y) {
        return std::max(polygon_distance(bar, x, y), polygon_distance(post, x, y));
      });
      break;
    }
    case Kind::ring: {
      // A band of width t whose outer edge is at r.
      double t = std::max(1.0, r * rng.uniform(0.28, 0.4)), mid = r - t / 2;
      paint_texture(img, fg, [&](double x, double y) {
        return t / 2 - std::abs(std::hypot(x - cx, y - cy) - mid);
      });
      break;
    }
    case Kind::star: {
      double outer = 1.15 * r, inner = outer * rng.uniform(0.38, 0.45);
      double a0 = (-90 + rng.uniform(-10, 10)) * deg;  // pointing up
      std::vector<Point> pts;
      for (int i = 0; i < 10; ++i) {
        double a = a0 + i * kPi / 5, rr = i % 2 == 0 ? outer : inner;
        pts.push_back({cx + rr * std::cos(a), cy + rr * std::sin(a)});
      }
      fill_polygon(img, pts, fg);
      break;
    }
    default:
      break;
  }
}

Image draw_picture(Kind kind, SampleRng& rng, int min_side, int max_side) {
  int width = 0, height = 0;
  picture_size(rng, min_side, max_side, &width, &height);
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(size_t(width) * height * 3);
  const Canvas img{image.rgb.data(), width, height};

  Rgb bg, fg;
  colour_pair(rng, &bg, &fg);
  fill_background(img, rng, bg);

  const double side = std::min(width, height);
  const double deg = kPi / 180;

  switch (kind) {
    case Kind::circle:
    case Kind::square:
    case Kind::triangle:
    case Kind::cross:
    case Kind::ring:
    case Kind::star: {
      // One large object near the centre, off by up to 8% of each dimension.
      double cx = width * (0.5 + rng.uniform(-0.08, 0.08));
      double cy = height * (0.5 + rng.uniform(-0.08, 0.08));
      draw_object(img, kind, rng, cx, cy, side * rng.uniform(0.3, 0.42), fg);
      break;
    }
    case Kind::hstripes:
    case Kind::vstripes:
    case Kind::diagonal: {
      // Angle of the stripes' direction: near 0 (horizontal), near 90 (vertical), or near
      // +-45 degrees.
      double a = rng.uniform(-10, 10);
      if (kind == Kind::vstripes) a += 90;
      if (kind == Kind::diagonal) a += rng.uniform() < 0.5 ? 45 : -45;
      a *= deg;
      double period = side * rng.uniform(0.18, 0.3);
      double duty = kind == Kind::diagonal ? rng.uniform(0.3, 0.45) : rng.uniform(0.4, 0.6);
      double phase = rng.uniform(0, period);
      double nx = -std::sin(a), ny = std::cos(a);  // across the stripes
      paint_texture(img, fg, [&](double x, double y) {
        return stripe_distance(nx * x + ny * y + phase, period, duty);
      });
      break;
    }
    case Kind::checkerboard: {
      double a = rng.uniform(-10, 10) * deg, c = std::cos(a), s = std::sin(a);
      double cell = side * rng.uniform(0.18, 0.28);
      double ox = rng.uniform(0, 2 * cell), oy = rng.uniform(0, 2 * cell);
      paint_texture(img, fg, [&](double x, double y) {
        double u = c * x + s * y + ox, v = -s * x + c * y + oy;
        double du = stripe_distance(u, 2 * cell, 0.5), dv = stripe_distance(v, 2 * cell, 0.5);
        // Inside when exactly one of the two stripe sets covers the point.
        double d = std::min(std::abs(du), std::abs(dv));
        return (du > 0) != (dv > 0) ? d : -d;
      });
      break;
    }
    case Kind::dots: {
      double a = rng.uniform(-10, 10) * deg, c = std::cos(a), s = std::sin(a);
      double cell = side * rng.uniform(0.22, 0.32);
      double radius = cell * rng.uniform(0.3, 0.38);
      double ox = rng.uniform(0, cell), oy = rng.uniform(0, cell);
      paint_texture(img, fg, [&](double x, double y) {
        double u = c * x + s * y + ox, v = -s * x + c * y + oy;
        double du = u - (std::floor(u / cell) + 0.5) * cell;
        double dv = v - (std::floor(v / cell) + 0.5) * cell;
        return radius - std::sqrt(du * du + dv * dv);
      });
      break;
    }
    case Kind::grid: {
      double a = rng.uniform(-10, 10) * deg, c = std::cos(a), s = std::sin(a);
      double cell = side * rng.uniform(0.24, 0.34);
      double line = std::max(1.5, cell * rng.uniform(0.14, 0.2));
      double duty = line / cell;
      double ox = rng.uniform(0, cell), oy = rng.uniform(0, cell);
      paint_texture(img, fg, [&](double x, double y) {
        double u = c * x + s * y + ox, v = -s * x + c * y + oy;
        return std::max(stripe_distance(u, cell, duty), stripe_distance(v, cell, duty));
      });
      break;
    }
  }
  add_noise(img, rng);
  return image;
}

// Names what a previous make-dataset with the same options wrote, so that running the same
// command again (after a kill, or to repair the files) is allowed and anything else in the
// output folder is not: the count reported is then the count the folder holds.
constexpr const char* kMarkerName = ".oxtrain-make-dataset";
// A demo dataset; a larger count is a typo (and would size the job list from it).
constexpr int kMaxPerClass = 100'000;

std::string marker_text(const MakeDatasetOptions& o) {
  return "oxtrain make-dataset 1\nclasses " + std::to_string(o.classes) + "\ntrain_per_class " +
         std::to_string(o.train_per_class) + "\nval_per_class " + std::to_string(o.val_per_class) +
         "\nmin_side " + std::to_string(o.min_side) + "\nmax_side " + std::to_string(o.max_side) +
         "\nquality " + std::to_string(o.quality) + "\nseed " + std::to_string(o.seed) + "\n";
}

std::string image_name(const ClassInfo& info, int index) {
  return std::string(info.name) + "_" + std::to_string(index) + ".JPEG";
}

// Whether `name` in a class folder is one of the images of the class (or the tmp file of one
// being written when a run was killed).
bool expected_image(const std::string& name, const ClassInfo& info, int per_class) {
  std::string stem = name;
  if (stem.size() > 4 && stem.compare(stem.size() - 4, 4, ".tmp") == 0) stem.resize(stem.size() - 4);
  const std::string prefix = std::string(info.name) + "_";
  if (stem.rfind(prefix, 0) != 0 || stem.size() < prefix.size() + 6 ||
      stem.compare(stem.size() - 5, 5, ".JPEG") != 0)
    return false;
  auto index = parse_int64(std::string_view(stem).substr(prefix.size(), stem.size() - prefix.size() - 5));
  return index && *index >= 0 && *index < per_class && image_name(info, int(*index)) == stem;
}

// True when every entry under root is one make-dataset with options `o` writes: its marker
// with the same options, train/ and val/, their class folders and images, and the dataset
// indexes that training writes beside them.
bool is_same_make_dataset_output(const fs::path& root, const MakeDatasetOptions& o) {
  std::string marker;
  try {
    marker = read_regular_file((root / kMarkerName).string(), 4096, "make-dataset marker");
  } catch (const Error&) {
    return false;
  }
  if (marker != marker_text(o)) return false;
  std::error_code ec;
  for (const auto& top : fs::directory_iterator(root, ec)) {
    const std::string name = top.path().filename().string();
    if (name == kMarkerName) continue;
    if (name != "train" && name != "val") return false;
    const int per_class = name == "train" ? o.train_per_class : o.val_per_class;
    if (!top.is_directory(ec) || top.is_symlink(ec)) return false;
    for (const auto& cls : fs::directory_iterator(top.path(), ec)) {
      const std::string cname = cls.path().filename().string();
      if (cname == ".oxtrain-index" || cname == ".oxtrain-index.tmp") continue;
      const ClassInfo* info = nullptr;
      for (int c = 0; c < o.classes; ++c)
        if (cname == kClasses[c].name) info = &kClasses[c];
      if (!info || !cls.is_directory(ec) || cls.is_symlink(ec)) return false;
      for (const auto& file : fs::directory_iterator(cls.path(), ec))
        if (!file.is_regular_file(ec) || file.is_symlink(ec) ||
            !expected_image(file.path().filename().string(), *info, per_class))
          return false;
      if (ec) return false;
    }
    if (ec) return false;
  }
  return !ec;
}

// One sync for all the images written without one: syncfs flushes the file system holding
// the output (data and the folders' entries), so a crash after the report keeps them all.
void sync_folder_tree(const fs::path& root) {
  const int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw Error("make-dataset: cannot open '" + escape_name(root.string()) + "' to sync it: " + std::strerror(errno));
  const int rc = ::syncfs(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) throw Error("make-dataset: syncing '" + escape_name(root.string()) + "' failed: " + std::strerror(err));
}

// Refuses an output folder that holds anything but a previous run of the same command: the
// images written over part of it and the count reported would not be what the folder holds.
void check_output_folder(const fs::path& root, const MakeDatasetOptions& o) {
  std::error_code ec;
  const fs::file_status st = fs::status(root, ec);
  if (!fs::exists(st)) return;
  const std::string name = escape_name(o.output);
  if (!fs::is_directory(st))
    throw Error("make-dataset: '" + name + "' exists and is not a folder; give an empty or new folder");
  if (fs::is_empty(root, ec) || is_same_make_dataset_output(root, o)) return;
  throw Error("make-dataset: output folder '" + name +
              "' is not empty; give an empty or new folder (only a make-dataset output with the "
              "same options is written over)");
}

struct Job {
  int split;  // 0 train, 1 val
  int cls;
  int index;
};

}  // namespace

int max_dataset_classes() { return kNumClasses; }

MakeDatasetResult make_dataset(const MakeDatasetOptions& o) {
  if (o.output.empty()) throw Error("make-dataset: no output folder given");
  if (o.classes < 2 || o.classes > kNumClasses)
    throw Error("make-dataset: " + std::to_string(o.classes) +
                " classes asked for; the generator draws 2 to " + std::to_string(kNumClasses));
  if (o.train_per_class < 1 || o.val_per_class < 1 || o.train_per_class > kMaxPerClass ||
      o.val_per_class > kMaxPerClass)
    throw Error("make-dataset: images per class must be 1 to " + std::to_string(kMaxPerClass) +
                ", got " + std::to_string(o.train_per_class) + " training and " +
                std::to_string(o.val_per_class) + " validation");
  if (o.min_side < 8 || o.max_side > 8192 || o.min_side > o.max_side)
    throw Error("make-dataset: image sides " + std::to_string(o.min_side) + " to " +
                std::to_string(o.max_side) + " must satisfy 8 <= min <= max <= 8192");
  if (o.quality < 1 || o.quality > 100)
    throw Error("make-dataset: JPEG quality " + std::to_string(o.quality) + " is not in 1..100");

  const fs::path root(o.output);
  check_output_folder(root, o);
  std::error_code mkdir_ec;
  fs::create_directories(root, mkdir_ec);
  if (mkdir_ec)
    throw Error("make-dataset: cannot create '" + escape_name(o.output) + "': " + mkdir_ec.message());
  // First: a run killed from here on can be run again with the same options.
  write_file_atomic((root / kMarkerName).string(), marker_text(o));
  const char* splits[] = {"train", "val"};
  for (const char* split : splits) {
    for (int c = 0; c < o.classes; ++c) {
      fs::path dir = root / split / kClasses[c].name;
      std::error_code ec;
      fs::create_directories(dir, ec);
      if (ec) throw Error("make-dataset: cannot create " + dir.string() + ": " + ec.message());
    }
  }

  std::vector<Job> jobs;
  for (int split = 0; split < 2; ++split) {
    int per_class = split == 0 ? o.train_per_class : o.val_per_class;
    for (int c = 0; c < o.classes; ++c)
      for (int i = 0; i < per_class; ++i) jobs.push_back({split, c, i});
  }
  const int64_t total = static_cast<int64_t>(jobs.size());

  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<int64_t> bytes{0};
  std::mutex mutex;  // guards done, error and the progress callback
  int64_t done = 0;
  std::exception_ptr error;

  auto work = [&] {
    try {
      for (size_t j; !failed && (j = next++) < jobs.size();) {
        // Images are not synced one by one (a folder of 1200 would take 1200 fsyncs): the
        // folder's file system is synced once at the end, before the count is reported.
        const Job& job = jobs[j];
        const ClassInfo& info = kClasses[job.cls];
        SampleRng rng(o.seed, job.split, (int64_t{job.cls} << 32) | job.index);
        Image picture = draw_picture(info.kind, rng, o.min_side, o.max_side);
        std::vector<uint8_t> jpeg = encode_jpeg(picture, o.quality);
        fs::path file = root / splits[job.split] / info.name / image_name(info, job.index);
        write_file_atomic(file.string(),
                          std::string_view(reinterpret_cast<const char*>(jpeg.data()), jpeg.size()),
                          AtomicWriteOptions{.durable = false});
        bytes += static_cast<int64_t>(jpeg.size());
        std::lock_guard<std::mutex> lock(mutex);
        ++done;
        if (o.progress) o.progress(done, total);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (!error) error = std::current_exception();
      failed = true;
    }
  };

  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  size_t threads = std::min<size_t>({size_t(hw), size_t(8), jobs.size()});
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  sync_folder_tree(root);

  MakeDatasetResult result;
  result.train_images = int64_t{o.classes} * o.train_per_class;
  result.val_images = int64_t{o.classes} * o.val_per_class;
  result.bytes = bytes;
  return result;
}

}  // namespace oxtrain::io
