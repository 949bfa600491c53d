#include "common/config_schema.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace retina {

int EditDistance(const std::string& a, const std::string& b) {
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diag = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

void ConfigErrors::Add(const YAML::Mark* mark, const std::string& key_path,
                       const std::string& message) {
  std::string where = file_;
  if (mark != nullptr && !mark->is_null()) {
    absl::StrAppend(&where, ":", mark->line + 1, ":", mark->column + 1);
  }
  errors_.push_back(absl::StrCat(where, ": ", key_path, ": ", message));
}

absl::Status ConfigErrors::ToStatus() const {
  if (errors_.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrJoin(errors_, "\n"));
}

// --- YamlDecoder --------------------------------------------------------------

std::string YamlDecoder::Join(const char* key) const {
  return path_.empty() ? std::string(key) : absl::StrCat(path_, ".", key);
}

YAML::Node YamlDecoder::Lookup(const char* key) const {
  if (!node_ || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  for (const auto& kv : node_) {
    if (kv.first.IsScalar() && kv.first.Scalar() == key) return kv.second;
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

void YamlDecoder::Error(const char* key, const std::string& message) {
  const YAML::Node child = Lookup(key);
  const YAML::Mark mark = child ? child.Mark() : YAML::Mark::null_mark();
  errors_->Add(&mark, Join(key), message);
}

bool YamlDecoder::Present(const char* key, const Spec& spec, YAML::Node* out) {
  known_.emplace_back(key);
  *out = Lookup(key);
  if (*out && !out->IsNull()) return true;
  if (spec.required) errors_->Add(nullptr, Join(key), "required key missing");
  return false;
}

bool YamlDecoder::ScalarDouble(const YAML::Node& node, const std::string& path, double* out) {
  const YAML::Mark mark = node.Mark();
  if (!node.IsScalar()) {
    errors_->Add(&mark, path, "expected a number");
    return false;
  }
  const std::string& s = node.Scalar();
  if (!absl::SimpleAtod(s, out) || !std::isfinite(*out)) {
    errors_->Add(&mark, path, absl::StrCat("expected a number, got '", s, "'"));
    return false;
  }
  return true;
}

void YamlDecoder::CheckRange(const YAML::Node& node, const std::string& path, double v,
                             const Spec& spec) {
  const YAML::Mark mark = node.Mark();
  auto show = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g", x);
    return std::string(buf);
  };
  if (spec.min && (spec.min_exclusive ? !(v > *spec.min) : !(v >= *spec.min))) {
    errors_->Add(&mark, path,
                 absl::StrCat("must be ", spec.min_exclusive ? "> " : ">= ", show(*spec.min),
                              ", got ", show(v)));
  }
  if (spec.max && !(v <= *spec.max)) {
    errors_->Add(&mark, path, absl::StrCat("must be <= ", show(*spec.max), ", got ", show(v)));
  }
}

void YamlDecoder::Field(const char* key, bool* value, const Spec& spec) {
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  const YAML::Mark mark = n.Mark();
  bool b;
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, b)) {
    errors_->Add(&mark, Join(key), absl::StrCat("expected true or false, got '",
                                                n.IsScalar() ? n.Scalar() : "a non-scalar", "'"));
    return;
  }
  *value = b;
}

void YamlDecoder::Field(const char* key, std::int64_t* value, const Spec& spec) {
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  const YAML::Mark mark = n.Mark();
  std::int64_t v;
  if (!n.IsScalar() || !absl::SimpleAtoi(n.Scalar(), &v)) {
    errors_->Add(&mark, Join(key), absl::StrCat("expected an integer, got '",
                                                n.IsScalar() ? n.Scalar() : "a non-scalar", "'"));
    return;
  }
  CheckRange(n, Join(key), static_cast<double>(v), spec);
  *value = v;
}

void YamlDecoder::Field(const char* key, int* value, const Spec& spec) {
  std::int64_t wide = *value;
  Spec bounded = spec;
  if (!bounded.min) bounded.Min(std::numeric_limits<int>::min());
  if (!bounded.max) bounded.Max(std::numeric_limits<int>::max());
  Field(key, &wide, bounded);
  *value = static_cast<int>(std::clamp<std::int64_t>(wide, std::numeric_limits<int>::min(),
                                                     std::numeric_limits<int>::max()));
}

void YamlDecoder::Field(const char* key, double* value, const Spec& spec) {
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  double v;
  if (!ScalarDouble(n, Join(key), &v)) return;
  CheckRange(n, Join(key), v, spec);
  *value = v;
}

void YamlDecoder::Field(const char* key, std::optional<double>* value, const Spec& spec) {
  double v = value->value_or(0.0);
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  if (!ScalarDouble(n, Join(key), &v)) return;
  CheckRange(n, Join(key), v, spec);
  *value = v;
}

void YamlDecoder::Field(const char* key, std::string* value, const Spec& spec) {
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  const YAML::Mark mark = n.Mark();
  if (!n.IsScalar()) {
    errors_->Add(&mark, Join(key), "expected a string");
    return;
  }
  const std::string& s = n.Scalar();
  if (!spec.choices.empty() &&
      std::find(spec.choices.begin(), spec.choices.end(), s) == spec.choices.end()) {
    std::string best = spec.choices[0];
    for (const std::string& c : spec.choices) {
      if (EditDistance(s, c) < EditDistance(s, best)) best = c;
    }
    errors_->Add(&mark, Join(key),
                 absl::StrCat("'", s, "' is not one of ", absl::StrJoin(spec.choices, ", "),
                              " (did you mean '", best, "'?)"));
    return;
  }
  *value = s;
}

void YamlDecoder::Field(const char* key, std::vector<double>* value, const Spec& spec) {
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  const YAML::Mark mark = n.Mark();
  if (!n.IsSequence()) {
    errors_->Add(&mark, Join(key), "expected a list of numbers, e.g. [0.1, 1.0]");
    return;
  }
  std::vector<double> out;
  for (size_t i = 0; i < n.size(); ++i) {
    double v;
    const std::string item = absl::StrCat(Join(key), "[", i, "]");
    if (!ScalarDouble(n[i], item, &v)) return;
    CheckRange(n[i], item, v, spec);
    out.push_back(v);
  }
  *value = std::move(out);
}

void YamlDecoder::Field(const char* key, std::vector<std::string>* value, const Spec& spec) {
  YAML::Node n;
  if (!Present(key, spec, &n)) return;
  const YAML::Mark mark = n.Mark();
  if (n.IsScalar()) {
    *value = {n.Scalar()};
    return;
  }
  if (!n.IsSequence()) {
    errors_->Add(&mark, Join(key), "expected a string or a list of strings");
    return;
  }
  std::vector<std::string> out;
  for (size_t i = 0; i < n.size(); ++i) {
    if (!n[i].IsScalar()) {
      const YAML::Mark item = n[i].Mark();
      errors_->Add(&item, absl::StrCat(Join(key), "[", i, "]"), "expected a string");
      return;
    }
    out.push_back(n[i].Scalar());
  }
  *value = std::move(out);
}

void YamlDecoder::ReportUnknownKeys() {
  if (!node_ || !node_.IsMap()) return;
  std::map<std::string, int> first_line;  // yaml-cpp keeps duplicate keys; the lookup takes the first
  for (const auto& kv : node_) {
    const YAML::Mark mark = kv.first.Mark();
    if (!kv.first.IsScalar()) {
      errors_->Add(&mark, path_.empty() ? "(top level)" : path_, "keys must be strings");
      continue;
    }
    const std::string& key = kv.first.Scalar();
    if (auto [it, fresh] = first_line.emplace(key, mark.line + 1); !fresh) {
      errors_->Add(&mark, Join(key.c_str()),
                   absl::StrCat("duplicate key (first at line ", it->second, "); give each key once"));
      continue;
    }
    if (std::find(known_.begin(), known_.end(), key) != known_.end()) continue;
    std::string message = "unknown key";
    if (!known_.empty()) {
      std::string best = known_[0];
      for (const std::string& k : known_) {
        if (EditDistance(key, k) < EditDistance(key, best)) best = k;
      }
      if (EditDistance(key, best) <= std::max<int>(2, static_cast<int>(key.size()) / 3)) {
        absl::StrAppend(&message, " (did you mean '", best, "'?)");
      } else {
        absl::StrAppend(&message, " (valid keys: ", absl::StrJoin(known_, ", "), ")");
      }
    }
    errors_->Add(&mark, Join(key.c_str()), message);
  }
}

// --- YamlEncoder --------------------------------------------------------------

namespace {
// The shortest decimal that parses back to exactly `v` (0.003, not 0.0030000000000000001).
std::string ShortestDouble(double v) {
  char buf[40];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}
}  // namespace

void YamlEncoder::Emit(const char* key, bool v) { *out_ << YAML::Key << key << YAML::Value << v; }
void YamlEncoder::Emit(const char* key, int v) { *out_ << YAML::Key << key << YAML::Value << v; }
void YamlEncoder::Emit(const char* key, std::int64_t v) {
  *out_ << YAML::Key << key << YAML::Value << static_cast<long long>(v);
}
void YamlEncoder::Emit(const char* key, double v) {
  *out_ << YAML::Key << key << YAML::Value << ShortestDouble(v);
}
void YamlEncoder::Emit(const char* key, const std::string& v) {
  *out_ << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << v;
}
void YamlEncoder::Emit(const char* key, const std::optional<double>& v) {
  *out_ << YAML::Key << key << YAML::Value;
  if (v) *out_ << ShortestDouble(*v);
  else *out_ << YAML::Null;
}
void YamlEncoder::Emit(const char* key, const std::vector<double>& v) {
  *out_ << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (double x : v) *out_ << ShortestDouble(x);
  *out_ << YAML::EndSeq;
}

void YamlEncoder::Emit(const char* key, const std::vector<std::string>& v) {
  *out_ << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const std::string& x : v) *out_ << YAML::DoubleQuoted << x;
  *out_ << YAML::EndSeq;
}

// --- SchemaDoc ----------------------------------------------------------------

namespace {
std::string Num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}
}  // namespace

std::string SchemaDoc::Show(bool v) { return v ? "true" : "false"; }
std::string SchemaDoc::Show(int v) { return absl::StrCat(v); }
std::string SchemaDoc::Show(std::int64_t v) { return absl::StrCat(v); }
std::string SchemaDoc::Show(double v) { return Num(v); }
std::string SchemaDoc::Show(const std::string& v) { return v.empty() ? "\"\"" : v; }
std::string SchemaDoc::Show(const std::optional<double>& v) { return v ? Num(*v) : "unset"; }
std::string SchemaDoc::Show(const std::vector<double>& v) {
  std::vector<std::string> parts;
  for (double x : v) parts.push_back(Num(x));
  return absl::StrCat("[", absl::StrJoin(parts, ", "), "]");
}

std::string SchemaDoc::Show(const std::vector<std::string>& v) {
  return v.empty() ? "[]" : absl::StrCat("[", absl::StrJoin(v, ", "), "]");
}

void SchemaDoc::Row(const char* key, const char* type, const std::string& def, const Spec& spec) {
  std::string allowed;
  if (!spec.choices.empty()) allowed = absl::StrJoin(spec.choices, " \\| ");
  if (spec.min) absl::StrAppend(&allowed, spec.min_exclusive ? "> " : ">= ", Num(*spec.min));
  if (spec.max) absl::StrAppend(&allowed, allowed.empty() ? "" : ", ", "<= ", Num(*spec.max));
  absl::StrAppend(&text_, "| `", Join(key), "` | ", type, " | ",
                  spec.required ? "**required**" : "`" + def + "`", " | ", spec.unit, " | ",
                  allowed, " | ", spec.doc, " |\n");
}

}  // namespace retina
