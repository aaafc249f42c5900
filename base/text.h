// Text for one-line error messages, and strict number parsing.
//
// Messages are one line of about 200 characters at most: names that come from files are
// escaped (a newline in a node name prints as \n) and shortened, and lists end in "and N more"
// unless the user asked for --verbose (set_verbose_messages), which lifts every limit.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace oxtrain {

// Set once by the CLI from --verbose; read by everything that shortens a message.
void set_verbose_messages(bool verbose);
bool verbose_messages();

// The longest name quoted in a message (longer ones keep their start and end around "...").
constexpr size_t kMaxQuotedName = 80;
// The longest list or line the CLI prints without --verbose.
constexpr size_t kMaxMessageLine = 200;

// A name from a file, safe to print: control bytes and non-UTF-8 bytes as \n, \t, \xNN,
// backslash doubled, shortened to max_chars (unless verbose) keeping its start and end.
std::string escape_name(std::string_view name, size_t max_chars = kMaxQuotedName);

// escape_name() in single quotes: 'conv1'.
std::string quote_name(std::string_view name, size_t max_chars = kMaxQuotedName);

// "a, b, c" while the text stays within max_chars, then "and N more" (all of them when
// verbose). Items are used as given: escape names before.
std::string join_limited(const std::vector<std::string>& items, size_t max_chars = kMaxMessageLine,
                         std::string_view separator = ", ");

// One line from any message: newlines and control bytes escaped; longer than max_chars
// (unless verbose) it is cut and ends in "... (--verbose shows all)".
std::string one_line(std::string_view message, size_t max_chars = 2 * kMaxMessageLine);

// Whole-string decimal parsing: no leading or trailing junk, no overflow; nullopt otherwise.
std::optional<int64_t> parse_int64(std::string_view text);
std::optional<uint64_t> parse_uint64(std::string_view text);
// Also accepts "inf", "nan" and exponents as strtod does; the caller checks finiteness.
std::optional<double> parse_double(std::string_view text);

}  // namespace oxtrain
