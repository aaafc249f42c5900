#include "base/text.h"

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdlib>

namespace oxtrain {

namespace {
std::atomic<bool> g_verbose{false};

// Length of the valid UTF-8 sequence starting at s[i], 0 if there is none.
size_t utf8_sequence(std::string_view s, size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  size_t n = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k)
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  return n;
}

// The escaped form of s, one token per source character (or UTF-8 sequence), so that a name
// can be shortened without cutting an escape or a multi-byte character in two.
std::vector<std::string> escape_tokens(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::vector<std::string> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') out.emplace_back("\\n");
    else if (c == '\t') out.emplace_back("\\t");
    else if (c == '\r') out.emplace_back("\\r");
    else if (c == '\\') out.emplace_back("\\\\");
    else if (c >= 0x20 && c < 0x7F) out.emplace_back(1, static_cast<char>(c));
    else if (size_t n = c >= 0x80 ? utf8_sequence(s, i) : 0; n > 0) {
      out.emplace_back(s.substr(i, n));
      i += n;
      continue;
    } else {
      out.push_back(std::string("\\x") + hex[c >> 4] + hex[c & 15]);
    }
    ++i;
  }
  return out;
}

}  // namespace

void set_verbose_messages(bool verbose) { g_verbose = verbose; }
bool verbose_messages() { return g_verbose; }

std::string escape_name(std::string_view name, size_t max_chars) {
  std::vector<std::string> tokens = escape_tokens(name);
  size_t total = 0;
  for (const auto& t : tokens) total += t.size();
  std::string out;
  if (verbose_messages() || total <= max_chars || max_chars < 8) {
    for (const auto& t : tokens) out += t;
    return out;
  }
  // Keep about two thirds of the room for the start and the rest for the end.
  size_t room = max_chars - 3, head_room = room * 2 / 3, tail_room = room - head_room;
  size_t head = 0, used = 0;
  while (head < tokens.size() && used + tokens[head].size() <= head_room) used += tokens[head++].size();
  size_t tail = tokens.size(), tail_used = 0;
  while (tail > head && tail_used + tokens[tail - 1].size() <= tail_room) tail_used += tokens[--tail].size();
  for (size_t i = 0; i < head; ++i) out += tokens[i];
  out += "...";
  for (size_t i = tail; i < tokens.size(); ++i) out += tokens[i];
  return out;
}

std::string quote_name(std::string_view name, size_t max_chars) {
  // Built by appending: GCC 12 flags "'" + s + "'" with a -Wrestrict false positive.
  std::string quoted = "'";
  quoted += escape_name(name, max_chars);
  quoted += '\'';
  return quoted;
}

std::string join_limited(const std::vector<std::string>& items, size_t max_chars,
                         std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    std::string next = (i ? std::string(separator) : std::string()) + items[i];
    size_t rest = items.size() - i;
    std::string more = std::string(i ? separator : "") + "and " + std::to_string(rest) + " more";
    // Keep room for the "and N more" tail unless this is the last item.
    size_t budget = rest > 1 ? max_chars - std::min(max_chars, more.size() + 2) : max_chars;
    if (!verbose_messages() && i > 0 && out.size() + next.size() > budget) return out + more;
    out += next;
  }
  return out;
}

std::string one_line(std::string_view message, size_t max_chars) {
  std::string line;
  for (char c : message) {
    auto u = static_cast<unsigned char>(c);
    if (c == '\n') line += "\\n";
    else if (c == '\r') line += "\\r";
    else if (u < 0x20 || u == 0x7F) line += ' ';
    else line += c;
  }
  if (verbose_messages() || line.size() <= max_chars) return line;
  const std::string tail = "... (--verbose shows all)";
  size_t cut = max_chars - tail.size();
  while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
  return line.substr(0, cut) + tail;
}

std::optional<int64_t> parse_int64(std::string_view text) {
  int64_t value;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::optional<uint64_t> parse_uint64(std::string_view text) {
  uint64_t value;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::optional<double> parse_double(std::string_view text) {
  if (text.empty() || text.size() > 64) return std::nullopt;
  std::string s(text);
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  // ERANGE: overflow gives ±HUGE_VAL (inf: left to the caller's finiteness check); underflow
  // gives a denormal or zero, which is the nearest value and fine.
  return v;
}

}  // namespace oxtrain
