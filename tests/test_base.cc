// base/: checked size arithmetic, message text, atomic files, confined and non-blocking reads,
// the narrow number types' conversions.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "base/checked.h"
#include "base/files.h"
#include "base/narrow_types.h"
#include "base/text.h"
#include "tests/helpers.h"

namespace fs = std::filesystem;
using namespace oxtrain;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct VerboseGuard {
  explicit VerboseGuard(bool v) { set_verbose_messages(v); }
  ~VerboseGuard() { set_verbose_messages(false); }
};

}  // namespace

TEST(Checked, NumelAndBytesDetectOverflowAndNegatives) {
  const int64_t big = int64_t(1) << 31;
  std::vector<int64_t> ok = {big, big};  // 2^62 fits
  EXPECT_EQ(checked_numel(ok), int64_t(1) << 62);
  EXPECT_EQ(checked_bytes(ok, 1), int64_t(1) << 62);
  EXPECT_FALSE(checked_bytes(ok, 2));  // 2^63 does not
  std::vector<int64_t> wraps = {4611686018427387905LL, 1, 4};  // the product wraps to 4
  EXPECT_FALSE(checked_numel(wraps));
  std::vector<int64_t> negative = {3, -1};
  EXPECT_FALSE(checked_numel(negative));
  std::vector<int64_t> zero = {0, std::numeric_limits<int64_t>::max()};
  EXPECT_EQ(checked_numel(zero), 0);
  EXPECT_EQ(checked_numel(std::vector<int64_t>{}), 1);
  EXPECT_FALSE(checked_add(std::numeric_limits<int64_t>::max(), 1));
  EXPECT_FALSE(checked_add_u64(~uint64_t(0) - 5, 10));
  EXPECT_EQ(checked_add_u64(5, 10), 15u);
}

TEST(Checked, ThrowingFormsNameTheThing) {
  std::vector<int64_t> wraps = {4611686018427387905LL, 1, 4};
  try {
    numel_or_throw(wraps, "initializer 'w'");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "initializer 'w' has shape [4611686018427387905,1,4], whose element count overflows 64 bits");
  }
  std::vector<int64_t> ok = {int64_t(1) << 61, 4};
  EXPECT_THROW(bytes_or_throw(ok, 4, "x"), Error);
  EXPECT_EQ(bytes_or_throw(std::vector<int64_t>{3, 5}, 4, "x"), 60);
}

TEST(Checked, DoubleToInt64RefusesWhatACastCannotHold) {
  EXPECT_EQ(double_to_int64(-3.9), -3);
  EXPECT_EQ(double_to_int64(1e18), 1000000000000000000LL);
  EXPECT_FALSE(double_to_int64(std::nan("")));
  EXPECT_FALSE(double_to_int64(INFINITY));
  EXPECT_FALSE(double_to_int64(9223372036854775808.0));
  EXPECT_EQ(double_to_int64(-9223372036854775808.0), std::numeric_limits<int64_t>::min());
}

TEST(Text, EscapeNameKeepsOneLineAndShortens) {
  EXPECT_EQ(escape_name("conv1"), "conv1");
  EXPECT_EQ(escape_name("a\nb\tc\\d\x01"), "a\\nb\\tc\\\\d\\x01");
  EXPECT_EQ(escape_name("caf\xc3\xa9"), "caf\xc3\xa9");  // valid UTF-8 stays
  EXPECT_EQ(escape_name("bad\xc3"), "bad\\xc3");        // a cut sequence does not
  std::string long_name(500, 'x');
  long_name[0] = 'A';
  long_name.back() = 'Z';
  std::string s = escape_name(long_name);
  EXPECT_EQ(s.size(), kMaxQuotedName);
  EXPECT_EQ(s.front(), 'A');
  EXPECT_EQ(s.back(), 'Z');
  EXPECT_NE(s.find("..."), std::string::npos);
  // Never cuts inside an escape: 200 newlines shorten to whole "\n" pairs.
  std::string nl = escape_name(std::string(200, '\n'));
  EXPECT_LE(nl.size(), kMaxQuotedName);
  std::string without_dots = nl.substr(0, nl.find("...")) + nl.substr(nl.find("...") + 3);
  EXPECT_EQ(without_dots.size() % 2, 0u);
  for (size_t i = 0; i < without_dots.size(); i += 2) EXPECT_EQ(without_dots.substr(i, 2), "\\n");
  VerboseGuard verbose(true);
  EXPECT_EQ(escape_name(long_name).size(), 500u);
}

TEST(Text, JoinLimitedEndsInAndNMore) {
  std::vector<std::string> items;
  for (int i = 0; i < 100; ++i) items.push_back("Node_" + std::to_string(i));
  std::string s = join_limited(items);
  EXPECT_LE(s.size(), kMaxMessageLine);
  EXPECT_EQ(s.rfind("Node_0, Node_1, ", 0), 0u);
  size_t pos = s.find(", and ");
  ASSERT_NE(pos, std::string::npos);
  int shown = 0;
  for (size_t p = 0; (p = s.find("Node_", p)) != std::string::npos; ++p) ++shown;
  EXPECT_EQ(s.substr(pos), ", and " + std::to_string(100 - shown) + " more");
  EXPECT_EQ(join_limited({"a", "b"}), "a, b");
  VerboseGuard verbose(true);
  EXPECT_EQ(join_limited(items).find("more"), std::string::npos);
}

TEST(Text, OneLineEscapesNewlinesAndCuts) {
  EXPECT_EQ(one_line("a\nb"), "a\\nb");
  std::string cut = one_line(std::string(1000, 'y'));
  EXPECT_EQ(cut.size(), 2 * kMaxMessageLine);
  EXPECT_NE(cut.find("(--verbose shows all)"), std::string::npos);
}

TEST(Text, StrictNumberParsing) {
  EXPECT_EQ(parse_int64("42"), 42);
  EXPECT_EQ(parse_int64("-7"), -7);
  EXPECT_FALSE(parse_int64("abc"));
  EXPECT_FALSE(parse_int64("12abc"));
  EXPECT_FALSE(parse_int64(""));
  EXPECT_FALSE(parse_int64("99999999999999999999"));
  EXPECT_FALSE(parse_uint64("-1"));
  EXPECT_EQ(parse_uint64("18446744073709551615"), ~uint64_t(0));
  EXPECT_EQ(parse_double("0.25"), 0.25);
  EXPECT_TRUE(std::isinf(*parse_double("1e400")));
  EXPECT_TRUE(std::isnan(*parse_double("nan")));
  EXPECT_FALSE(parse_double("1.5x"));
}

TEST(Files, AtomicFileReplacesWholeOrNothing) {
  test::ScopedTempDir dir;
  fs::path p = fs::path(dir.path) / "out.bin";
  write_file_atomic(p, "first");
  EXPECT_EQ(slurp(p), "first");
  {
    AtomicFile f(p);
    f.write("second, unfinished");
    EXPECT_TRUE(fs::exists(f.tmp_path()));
    EXPECT_EQ(slurp(p), "first");  // not committed: the old file stands
  }
  EXPECT_EQ(slurp(p), "first");
  EXPECT_FALSE(fs::exists(atomic_tmp_path(p)));  // and the tmp is gone
  write_file_atomic(p, "third");
  EXPECT_EQ(slurp(p), "third");
  // A stale tmp (a killed run) is found and removed.
  write_file_atomic(fs::path(dir.path) / "other", "x");
  std::ofstream(atomic_tmp_path(p)) << "stale";
  EXPECT_TRUE(remove_stale_tmp(p));
  EXPECT_FALSE(fs::exists(atomic_tmp_path(p)));
  EXPECT_FALSE(remove_stale_tmp(p));
  // Writing into a missing folder names the tmp path and the reason.
  try {
    write_file_atomic(fs::path(dir.path) / "missing" / "m.json", "{}");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing/m.json.tmp"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
}

TEST(Files, CopyFileAtomic) {
  test::ScopedTempDir dir;
  std::string big(300000, 'q');
  big[12345] = 'Z';
  write_file_atomic(fs::path(dir.path) / "a", big);
  copy_file_atomic(fs::path(dir.path) / "a", fs::path(dir.path) / "b");
  EXPECT_EQ(slurp(fs::path(dir.path) / "b"), big);
  EXPECT_THROW(copy_file_atomic(fs::path(dir.path) / "nope", fs::path(dir.path) / "c"), Error);
  EXPECT_FALSE(fs::exists(fs::path(dir.path) / "c"));
}

TEST(Files, OpenRegularFileRefusesFifoWithoutBlocking) {
  test::ScopedTempDir dir;
  fs::path fifo = fs::path(dir.path) / "x.JPEG";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  std::string why;
  EXPECT_EQ(open_regular_file(fifo, &why), -1);  // a plain open() would block here forever
  EXPECT_EQ(why, "is a FIFO, not a regular file");
  EXPECT_EQ(open_regular_file(fs::path(dir.path), &why), -1);
  EXPECT_EQ(why, "is a folder, not a regular file");
  write_file_atomic(fs::path(dir.path) / "f", "abc");
  int fd = open_regular_file(fs::path(dir.path) / "f", &why);
  ASSERT_GE(fd, 0);
  char buf[4] = {};
  EXPECT_EQ(::read(fd, buf, 4), 3);  // blocking mode restored, reads normally
  ::close(fd);
  EXPECT_EQ(read_regular_file(fs::path(dir.path) / "f", 3, "data"), "abc");
  EXPECT_THROW(read_regular_file(fs::path(dir.path) / "f", 2, "data"), Error);
  EXPECT_THROW(read_regular_file(fifo, 100, "data"), Error);
}

TEST(Files, PathWithinResolvesDotDotAndSymlinks) {
  test::ScopedTempDir dir;
  fs::create_directories(fs::path(dir.path) / "model" / "sub");
  write_file_atomic(fs::path(dir.path) / "model" / "w.bin", "w");
  write_file_atomic(fs::path(dir.path) / "secret", "s");
  fs::path root = fs::path(dir.path) / "model";
  EXPECT_TRUE(path_within(root, root / "w.bin"));
  EXPECT_TRUE(path_within(root, root / "sub" / ".." / "w.bin"));
  EXPECT_TRUE(path_within(root, root / "not_yet_there.bin"));
  EXPECT_FALSE(path_within(root, root / ".." / "secret"));
  EXPECT_FALSE(path_within(root, "/etc/passwd"));
  EXPECT_FALSE(path_within(root, root / "../../../../../../etc/passwd"));
  EXPECT_FALSE(path_within(root, fs::path(dir.path) / "model_other"));  // a prefix is not a parent
  fs::create_symlink(fs::path(dir.path) / "secret", root / "link.bin");
  EXPECT_FALSE(path_within(root, root / "link.bin"));
  fs::create_directory_symlink(fs::path(dir.path), root / "up");
  EXPECT_FALSE(path_within(root, root / "up" / "secret"));
}

TEST(Text, QuoteNameEscapesInsideQuotes) {
  EXPECT_EQ(quote_name("conv1"), "'conv1'");
  EXPECT_EQ(quote_name("a\nb"), "'a\\nb'");
  EXPECT_EQ(quote_name(std::string(100, 'x'), 20).size(), 22u);
}

// The narrow types' conversions (base/narrow_types.h), at the edges where the formats differ;
// ONNX's node tests check them against ml_dtypes on the published cases too.
TEST(NarrowTypes, Float8RoundsToNearestEvenThenOverflows) {
  using oxtrain::NarrowFloat;
  using oxtrain::narrow_float_code;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  // E4M3FN: largest 448 (0x7E); 464 is the tie with the (NaN-coded) 480 and keeps 448.
  EXPECT_EQ(narrow_float_code(464, NarrowFloat::e4m3fn, false), 0x7E);
  EXPECT_EQ(narrow_float_code(470, NarrowFloat::e4m3fn, false), 0x7F);  // overflow: NaN
  EXPECT_EQ(narrow_float_code(470, NarrowFloat::e4m3fn, true), 0x7E);
  EXPECT_EQ(narrow_float_code(-inf, NarrowFloat::e4m3fn, true), 0xFE);
  EXPECT_EQ(narrow_float_code(-inf, NarrowFloat::e4m3fn, false), 0xFF);
  EXPECT_EQ(narrow_float_code(nan, NarrowFloat::e4m3fn, true), 0x7F);
  EXPECT_EQ(narrow_float_code(-0.0, NarrowFloat::e4m3fn, true), 0x80);
  EXPECT_EQ(narrow_float_code(std::ldexp(1.0, -10), NarrowFloat::e4m3fn, true), 0x00);  // half the smallest: to even
  EXPECT_EQ(narrow_float_code(std::ldexp(1.5, -9), NarrowFloat::e4m3fn, true), 0x02);   // 1.5 subnormal steps: to 2
  // E4M3FNUZ: largest 240; 248 ties toward 256 and overflows; one NaN, no negative zero.
  EXPECT_EQ(narrow_float_code(247, NarrowFloat::e4m3fnuz, false), 0x7F);
  EXPECT_EQ(narrow_float_code(248, NarrowFloat::e4m3fnuz, false), 0x80);
  EXPECT_EQ(narrow_float_code(248, NarrowFloat::e4m3fnuz, true), 0x7F);
  EXPECT_EQ(narrow_float_code(-0.0, NarrowFloat::e4m3fnuz, true), 0x00);
  EXPECT_EQ(narrow_float_code(-1e-7, NarrowFloat::e4m3fnuz, true), 0x00);
  // E5M2: infinity exists; 61440 ties toward 65536 and overflows to it unless saturating.
  EXPECT_EQ(narrow_float_code(61000, NarrowFloat::e5m2, false), 0x7B);
  EXPECT_EQ(narrow_float_code(61440, NarrowFloat::e5m2, false), 0x7C);
  EXPECT_EQ(narrow_float_code(61440, NarrowFloat::e5m2, true), 0x7B);
  EXPECT_EQ(narrow_float_code(-nan, NarrowFloat::e5m2, true), 0xFE);
  EXPECT_EQ(narrow_float_code(inf, NarrowFloat::e5m2fnuz, false), 0x80);
  // E2M1 {0, 0.5, 1, 1.5, 2, 3, 4, 6}: ties to even codes; no NaN or infinity.
  EXPECT_EQ(narrow_float_code(0.25, NarrowFloat::e2m1, false), 0x0);
  EXPECT_EQ(narrow_float_code(0.75, NarrowFloat::e2m1, false), 0x2);
  EXPECT_EQ(narrow_float_code(2.5, NarrowFloat::e2m1, false), 0x4);
  EXPECT_EQ(narrow_float_code(5, NarrowFloat::e2m1, false), 0x6);
  EXPECT_EQ(narrow_float_code(inf, NarrowFloat::e2m1, false), 0x7);
  EXPECT_EQ(narrow_float_code(nan, NarrowFloat::e2m1, false), 0x8);
}

TEST(NarrowTypes, EveryFloat8CodeRoundTrips) {
  using oxtrain::NarrowFloat;
  for (NarrowFloat f : {NarrowFloat::e4m3fn, NarrowFloat::e4m3fnuz, NarrowFloat::e5m2, NarrowFloat::e5m2fnuz}) {
    int finite = 0;
    for (int code = 0; code < 256; ++code) {
      const double v = oxtrain::narrow_float_value(static_cast<uint8_t>(code), f);
      if (std::isnan(v)) continue;
      ++finite;
      EXPECT_EQ(oxtrain::narrow_float_code(v, f, false), code) << static_cast<int>(f) << " " << code << " " << v;
    }
    // NaN codes: E4M3FN 2, FNUZ 1, E5M2 6 (and 2 infinities, which round-trip).
    EXPECT_EQ(finite, f == NarrowFloat::e4m3fn ? 254 : f == NarrowFloat::e5m2 ? 250 : 255) << static_cast<int>(f);
  }
  EXPECT_EQ(oxtrain::narrow_float_value(0x7E, NarrowFloat::e4m3fn), 448.0);
  EXPECT_EQ(oxtrain::narrow_float_value(0x7F, NarrowFloat::e4m3fnuz), 240.0);
  EXPECT_EQ(oxtrain::narrow_float_value(0x7B, NarrowFloat::e5m2), 57344.0);
  EXPECT_EQ(oxtrain::narrow_float_value(0x01, NarrowFloat::e4m3fn), std::ldexp(1.0, -9));
  EXPECT_EQ(oxtrain::narrow_float_value(0x7, NarrowFloat::e2m1), 6.0);
}

TEST(NarrowTypes, IntegersTruncateAndOutOfRangeIsZero) {
  EXPECT_EQ(oxtrain::narrow_int_value(7.9, 4, true), 7);
  EXPECT_EQ(oxtrain::narrow_int_value(-8.9, 4, true), -8);
  EXPECT_EQ(oxtrain::narrow_int_value(-9, 4, true), 0);
  EXPECT_EQ(oxtrain::narrow_int_value(8, 4, true), 0);
  EXPECT_EQ(oxtrain::narrow_int_value(15.5, 4, false), 15);
  EXPECT_EQ(oxtrain::narrow_int_value(16, 4, false), 0);
  EXPECT_EQ(oxtrain::narrow_int_value(-0.5, 2, false), 0);
  EXPECT_EQ(oxtrain::narrow_int_value(-2, 2, true), -2);
  EXPECT_EQ(oxtrain::narrow_int_value(std::numeric_limits<double>::quiet_NaN(), 2, true), 0);
}

TEST(NarrowTypes, E8M0RoundsTheExponent) {
  EXPECT_EQ(oxtrain::e8m0_code(1.1f, true, "up"), 128);  // 2
  EXPECT_EQ(oxtrain::e8m0_code(1.1f, true, "down"), 127);
  EXPECT_EQ(oxtrain::e8m0_code(1.1f, true, "nearest"), 127);
  EXPECT_EQ(oxtrain::e8m0_code(1.75f, true, "nearest"), 128);
  EXPECT_EQ(oxtrain::e8m0_code(0.25f, true, "up"), 125);
  EXPECT_EQ(oxtrain::e8m0_code(-4.0f, true, "up"), 129);  // the sign is dropped
  EXPECT_EQ(oxtrain::e8m0_code(std::numeric_limits<float>::infinity(), true, "up"), 0xFF);
  EXPECT_EQ(oxtrain::e8m0_code(3e38f, true, "up"), 0xFE);  // saturates
  EXPECT_EQ(oxtrain::e8m0_code(3e38f, false, "up"), 0xFF);
  EXPECT_EQ(oxtrain::e8m0_value(127), 1.0);
  EXPECT_TRUE(std::isnan(oxtrain::e8m0_value(0xFF)));
}

