// Shared, MXNet-independent pieces of the layer library: the protobuf
// text-format parser behind ProtoNode, axis/shape helpers and the layer
// registry's lookup.
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "layer.h"

namespace caffedata {

int canonical_axis(int axis, int num_axes) {
  if (axis < -num_axes || axis >= num_axes) {
    std::ostringstream os;
    os << "axis " << axis << " out of range for a blob with " << num_axes << " axes";
    throw LayerError(os.str());
  }
  return axis < 0 ? axis + num_axes : axis;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) os << ", ";
    os << s[i];
  }
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

// ---------------------------------------------------------------------------
// Protobuf text format parser.
namespace {

class TextParser {
 public:
  explicit TextParser(const std::string& text) : s_(text) {}

  ProtoNode parse_all() {
    ProtoNode root;
    parse_fields(&root, /*closing=*/0);
    return root;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;
  int depth_ = 0;  // current message nesting (parse_fields)

  [[noreturn]] void fail(const std::string& what) const {
    int line = 1, col = 1;
    for (size_t i = 0; i < pos_ && i < s_.size(); ++i) {
      if (s_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::ostringstream os;
    os << "prototxt syntax error at line " << line << ", column " << col << ": " << what;
    size_t b = s_.rfind('\n', pos_ ? pos_ - 1 : 0);
    b = (b == std::string::npos || b >= pos_) ? 0 : b + 1;
    size_t e = s_.find('\n', pos_);
    if (e == std::string::npos) e = s_.size();
    std::string ln = s_.substr(b, e - b);
    if (ln.size() > 120) ln = ln.substr(0, 120) + "...";
    os << "\n  " << ln << "\n  " << std::string(pos_ >= b ? pos_ - b : 0, ' ') << "^";
    throw LayerError(os.str());
  }

  void skip_ws() {
    while (pos_ < s_.size()) {
      char c = s_[pos_];
      if (std::isspace(static_cast<unsigned char>(c))) {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < s_.size() && s_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }

  static bool ident_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
  static bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

  std::string read_ident() {
    size_t b = pos_;
    if (pos_ >= s_.size() || !ident_start(s_[pos_])) fail("expected a field name");
    while (pos_ < s_.size() && ident_char(s_[pos_])) ++pos_;
    return s_.substr(b, pos_ - b);
  }

  // closing: '}' or '>' for a nested message, 0 for the top level.
  // Nested messages deeper than this are refused: the parser recurses, and a
  // hostile prototxt 200,000 levels deep would overflow the stack.  Real
  // Caffe layers nest 3 or 4 levels.
  static constexpr int kMaxDepth = 100;

  void parse_fields(ProtoNode* node, char closing) {
    struct DepthGuard {
      int& d;
      explicit DepthGuard(int& depth) : d(depth) { ++d; }
      ~DepthGuard() { --d; }
    } guard(depth_);
    if (depth_ > kMaxDepth)
      fail("messages nested more than " + std::to_string(kMaxDepth) + " levels deep");
    while (true) {
      skip_ws();
      if (pos_ >= s_.size()) {
        if (closing) fail(std::string("unexpected end of text, expected '") + closing + "'");
        return;
      }
      char c = s_[pos_];
      if (closing && c == closing) {
        ++pos_;
        return;
      }
      if (c == '}' || c == '>') fail(std::string("unexpected '") + c + "'");
      if (c == '[') fail("extension fields ([...]) are not supported");
      ProtoNode::Entry entry;
      entry.name = read_ident();
      skip_ws();
      bool colon = false;
      if (pos_ < s_.size() && s_[pos_] == ':') {
        colon = true;
        ++pos_;
        skip_ws();
      }
      if (pos_ < s_.size() && (s_[pos_] == '{' || s_[pos_] == '<')) {
        char close = s_[pos_] == '{' ? '}' : '>';
        ++pos_;
        entry.is_message = true;
        entry.message = std::make_shared<ProtoNode>();
        parse_fields(entry.message.get(), close);
        node->entries.push_back(std::move(entry));
      } else if (pos_ < s_.size() && s_[pos_] == '[') {
        // Short repeated form: name: [v1, v2] (scalars or messages).
        if (!colon) fail("expected ':' before '['");
        ++pos_;
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == ']') {
          ++pos_;
        } else {
          while (true) {
            skip_ws();
            ProtoNode::Entry item;
            item.name = entry.name;
            if (pos_ < s_.size() && (s_[pos_] == '{' || s_[pos_] == '<')) {
              char close = s_[pos_] == '{' ? '}' : '>';
              ++pos_;
              item.is_message = true;
              item.message = std::make_shared<ProtoNode>();
              parse_fields(item.message.get(), close);
            } else {
              item.scalar = read_scalar();
            }
            node->entries.push_back(std::move(item));
            skip_ws();
            if (pos_ < s_.size() && s_[pos_] == ',') {
              ++pos_;
              continue;
            }
            if (pos_ < s_.size() && s_[pos_] == ']') {
              ++pos_;
              break;
            }
            fail("expected ',' or ']' in a list");
          }
        }
      } else {
        if (!colon) fail("expected ':' or '{' after field name '" + entry.name + "'");
        entry.scalar = read_scalar();
        node->entries.push_back(std::move(entry));
      }
      skip_ws();
      if (pos_ < s_.size() && (s_[pos_] == ';' || s_[pos_] == ',')) ++pos_;
    }
  }

  std::string read_scalar() {
    skip_ws();
    if (pos_ >= s_.size()) fail("expected a value");
    char c = s_[pos_];
    if (c == '"' || c == '\'') {
      // Adjacent string literals concatenate, as in protobuf.
      std::string out;
      while (pos_ < s_.size() && (s_[pos_] == '"' || s_[pos_] == '\'')) {
        out += read_string();
        skip_ws();
      }
      return out;
    }
    size_t b = pos_;
    if (c == '-' || c == '+') ++pos_;
    while (pos_ < s_.size()) {
      char d = s_[pos_];
      if (std::isalnum(static_cast<unsigned char>(d)) || d == '_' || d == '.') {
        ++pos_;
      } else if ((d == '-' || d == '+') && pos_ > b &&
                 (s_[pos_ - 1] == 'e' || s_[pos_ - 1] == 'E') &&
                 (std::isdigit(static_cast<unsigned char>(s_[b])) || s_[b] == '.' ||
                  ((s_[b] == '-' || s_[b] == '+') && pos_ > b + 1 &&
                   (std::isdigit(static_cast<unsigned char>(s_[b + 1])) || s_[b + 1] == '.')))) {
        ++pos_;  // exponent sign
      } else {
        break;
      }
    }
    if (pos_ == b || (pos_ == b + 1 && (c == '-' || c == '+'))) fail("expected a value");
    return s_.substr(b, pos_ - b);
  }

  std::string read_string() {
    char q = s_[pos_++];
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == q) break;
      if (c == '\n') fail("newline inside a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case '?': out += '?'; break;
        case 'x': case 'X': {
          int v = 0, n = 0;
          while (n < 2 && pos_ < s_.size() && std::isxdigit(static_cast<unsigned char>(s_[pos_]))) {
            char h = s_[pos_++];
            v = v * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
            ++n;
          }
          if (!n) fail("bad \\x escape");
          out += static_cast<char>(v);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            int v = e - '0', n = 1;
            while (n < 3 && pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '7') {
              v = v * 8 + (s_[pos_++] - '0');
              ++n;
            }
            out += static_cast<char>(v);
          } else {
            --pos_;
            fail(std::string("unknown escape '\\") + e + "'");
          }
      }
    }
    return out;
  }
};

const ProtoNode& empty_node() {
  static const ProtoNode empty;
  return empty;
}

const ProtoNode::Entry* last_entry(const ProtoNode& n, const std::string& field) {
  for (auto it = n.entries.rbegin(); it != n.entries.rend(); ++it)
    if (it->name == field) return &*it;
  return nullptr;
}

[[noreturn]] void bad_value(const std::string& field, const std::string& value, const char* kind) {
  throw LayerError("prototxt field '" + field + "': cannot read '" + value + "' as " + kind);
}

const ProtoNode::Entry* scalar_entry(const ProtoNode& n, const std::string& field) {
  const ProtoNode::Entry* e = last_entry(n, field);
  if (e && e->is_message) throw LayerError("prototxt field '" + field + "' is a message, expected a value");
  return e;
}

double to_double(const std::string& field, const std::string& v) {
  std::string t = v;
  std::string low;
  for (char c : t) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  bool neg = !low.empty() && low[0] == '-';
  std::string body = (neg || (!low.empty() && low[0] == '+')) ? low.substr(1) : low;
  if (body == "inf" || body == "infinity") return neg ? -HUGE_VAL : HUGE_VAL;
  if (body == "nan") return std::numeric_limits<double>::quiet_NaN();
  // Drop a float suffix ("1.5f") as protobuf does.
  if (!body.empty() && (body.back() == 'f') && body.find('x') == std::string::npos) t.pop_back();
  if (body.size() > 2 && body[0] == '0' && body[1] == 'x') {
    char* end = nullptr;
    long long x = std::strtoll(t.c_str(), &end, 16);
    if (!end || *end) bad_value(field, v, "a number");
    return static_cast<double>(x);
  }
  char* end = nullptr;
  errno = 0;
  double x = std::strtod(t.c_str(), &end);
  if (t.empty() || !end || *end) bad_value(field, v, "a number");
  return x;
}

int64_t to_int(const std::string& field, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  long long x = std::strtoll(v.c_str(), &end, 0);
  if (!v.empty() && end && *end == 0 && errno == 0) return x;
  // Accept integral floats like "1e3" or "3.0".
  double d = to_double(field, v);
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
  bad_value(field, v, "an integer");
}

bool to_bool(const std::string& field, const std::string& v) {
  if (v == "true" || v == "True" || v == "t" || v == "1") return true;
  if (v == "false" || v == "False" || v == "f" || v == "0") return false;
  bad_value(field, v, "a bool");
}

}  // namespace

ProtoNode ProtoNode::parse(const std::string& text) { return TextParser(text).parse_all(); }

bool ProtoNode::has(const std::string& field) const { return last_entry(*this, field) != nullptr; }

int ProtoNode::count(const std::string& field) const {
  int n = 0;
  for (const auto& e : entries) n += e.name == field;
  return n;
}

double ProtoNode::get_float(const std::string& field, double dflt) const {
  const Entry* e = scalar_entry(*this, field);
  return e ? to_double(field, e->scalar) : dflt;
}

int64_t ProtoNode::get_int(const std::string& field, int64_t dflt) const {
  const Entry* e = scalar_entry(*this, field);
  return e ? to_int(field, e->scalar) : dflt;
}

bool ProtoNode::get_bool(const std::string& field, bool dflt) const {
  const Entry* e = scalar_entry(*this, field);
  return e ? to_bool(field, e->scalar) : dflt;
}

std::string ProtoNode::get_string(const std::string& field, const std::string& dflt) const {
  const Entry* e = scalar_entry(*this, field);
  return e ? e->scalar : dflt;
}

std::string ProtoNode::get_enum(const std::string& field, const std::string& dflt) const {
  return get_string(field, dflt);
}

std::vector<double> ProtoNode::get_floats(const std::string& field) const {
  std::vector<double> out;
  for (const auto& e : entries) {
    if (e.name != field) continue;
    if (e.is_message) throw LayerError("prototxt field '" + field + "' is a message, expected a value");
    out.push_back(to_double(field, e.scalar));
  }
  return out;
}

std::vector<int64_t> ProtoNode::get_ints(const std::string& field) const {
  std::vector<int64_t> out;
  for (const auto& e : entries) {
    if (e.name != field) continue;
    if (e.is_message) throw LayerError("prototxt field '" + field + "' is a message, expected a value");
    out.push_back(to_int(field, e.scalar));
  }
  return out;
}

const ProtoNode& ProtoNode::child(const std::string& field) const {
  const Entry* e = last_entry(*this, field);
  if (!e) return empty_node();
  if (!e->is_message) throw LayerError("prototxt field '" + field + "' is a value, expected a message { ... }");
  return *e->message;
}

std::vector<const ProtoNode*> ProtoNode::children(const std::string& field) const {
  std::vector<const ProtoNode*> out;
  for (const auto& e : entries) {
    if (e.name != field) continue;
    if (!e.is_message) throw LayerError("prototxt field '" + field + "' is a value, expected a message { ... }");
    out.push_back(e.message.get());
  }
  return out;
}

// ---------------------------------------------------------------------------
// Registry.
template <typename Dtype>
std::unique_ptr<Layer<Dtype>> LayerRegistry<Dtype>::Create(const ProtoNode& layer_param) {
  if (!layer_param.has("type")) {
    throw LayerError("the layer has no 'type' field; supported types: " + [] {
      std::string s;
      for (const auto& t : Types()) s += (s.empty() ? "" : ", ") + t;
      return s;
    }());
  }
  std::string type = layer_param.get_string("type", "");
  auto& reg = Registry();
  auto it = reg.find(type);
  if (it == reg.end()) {
    std::string s;
    for (const auto& t : Types()) s += (s.empty() ? "" : ", ") + t;
    throw LayerError("unsupported layer type '" + type + "'; supported types: " + s);
  }
  return it->second(layer_param);
}

template <typename Dtype>
std::vector<std::string> LayerRegistry<Dtype>::Types() {
  std::vector<std::string> out;
  for (const auto& kv : Registry()) out.push_back(kv.first);
  return out;
}

// The user's prototxt is a NetParameter text with exactly one `layer { ... }`.
// A bare LayerParameter text (`type: "ReLU" ...`) is accepted too.
ProtoNode layer_node(const std::string& text) {
  ProtoNode root = ProtoNode::parse(text);
  if (root.count("layers"))
    throw LayerError("prototxt uses the V1 'layers { ... }' syntax; write 'layer { type: \"...\" ... }'");
  int n = root.count("layer");
  if (n == 1) return root.child("layer");
  if (n == 0 && root.has("type")) return root;
  std::ostringstream os;
  os << "prototxt must hold exactly one 'layer { ... }', found " << n;
  throw LayerError(os.str());
}

std::string layer_label(const ProtoNode& node) {
  std::string s = "layer type '" + node.get_string("type", "?") + "'";
  if (node.has("name")) s += " (name '" + node.get_string("name", "") + "')";
  return s;
}

Filler Filler::From(const ProtoNode& parent, const std::string& field, const Filler& dflt) {
  if (!parent.has(field)) return dflt;
  const ProtoNode& p = parent.child(field);
  Filler f;
  f.origin = USER;
  f.type = p.get_string("type", "constant");
  f.value = p.get_float("value", 0.0);
  f.min = p.get_float("min", 0.0);
  f.max = p.get_float("max", 1.0);
  f.mean = p.get_float("mean", 0.0);
  f.std = p.get_float("std", 1.0);
  f.sparse = p.get_int("sparse", -1);
  f.variance_norm = p.get_enum("variance_norm", "FAN_IN");
  if (f.variance_norm == "0") f.variance_norm = "FAN_IN";
  if (f.variance_norm == "1") f.variance_norm = "FAN_OUT";
  if (f.variance_norm == "2") f.variance_norm = "AVERAGE";
  return f;
}

template class LayerRegistry<float>;
template class LayerRegistry<double>;

}  // namespace caffedata
