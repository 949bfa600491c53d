// Typed, validated configuration from YAML.
//
// A config struct describes its keys once, in a `Visit` template:
//
//   struct OptimizerConfig {
//     double lr = 0.003;  // the default lives here, and only here
//     template <class V> void Visit(V& v) {
//       v.Field("lr", &lr, Spec("initial learning rate").Unit("1").Above(0));
//     }
//   };
//
// Three visitors walk that description: YamlDecoder (YAML -> struct, with
// validation), YamlEncoder (struct -> YAML, the resolved config written to the
// store) and SchemaDoc (Markdown reference, docs/config.md). Errors name the
// file, line:column, key path and problem; unknown keys are rejected with the
// closest valid key suggested. All errors of a file are reported at once.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "absl/status/status.h"

namespace retina {

// What a key means and which values are allowed.
struct Spec {
  explicit Spec(const char* doc_text) : doc(doc_text) {}
  Spec& Unit(const char* u) { unit = u; return *this; }
  Spec& Min(double v) { min = v; return *this; }        // value >= v
  Spec& Above(double v) { min = v; min_exclusive = true; return *this; }  // value > v
  Spec& Max(double v) { max = v; return *this; }        // value <= v
  Spec& Required() { required = true; return *this; }
  Spec& OneOf(std::vector<std::string> values) { choices = std::move(values); return *this; }

  const char* doc;
  const char* unit = "";
  std::optional<double> min, max;
  bool min_exclusive = false;
  bool required = false;
  std::vector<std::string> choices;  // for strings: the allowed values
};

// An enum a config names by word. Specialise EnumWords<E> with
//   static constexpr std::pair<E, const char*> kWords[] = {{E::kA, "a"}, ...};
// and a field of type E reads, writes and documents those words (an unknown
// word is an error listing them). A missing table fails to compile.
template <class E>
struct EnumWords;

template <class E>
const char* EnumName(E value) {
  for (const auto& [e, word] : EnumWords<E>::kWords) {
    if (e == value) return word;
  }
  return "?";
}

template <class E>
std::optional<E> EnumFromName(std::string_view word) {
  for (const auto& [e, w] : EnumWords<E>::kWords) {
    if (word == w) return e;
  }
  return std::nullopt;
}

template <class E>
std::vector<std::string> EnumNames() {
  std::vector<std::string> names;
  for (const auto& [e, w] : EnumWords<E>::kWords) names.emplace_back(w);
  return names;
}

// Levenshtein distance, for "did you mean" suggestions.
int EditDistance(const std::string& a, const std::string& b);

// Accumulates errors as "file:line:col: key.path: message".
class ConfigErrors {
 public:
  explicit ConfigErrors(std::string file) : file_(std::move(file)) {}
  void Add(const YAML::Mark* mark, const std::string& key_path, const std::string& message);
  bool empty() const { return errors_.empty(); }
  const std::string& file() const { return file_; }
  // INVALID_ARGUMENT listing every error, one per line; OK when none.
  absl::Status ToStatus() const;

 private:
  std::string file_;
  std::vector<std::string> errors_;
};

// YAML -> struct. Keys absent from the YAML keep the struct's defaults.
class YamlDecoder {
 public:
  YamlDecoder(const YAML::Node& node, std::string path, ConfigErrors* errors)
      : node_(node), path_(std::move(path)), errors_(errors) {}

  // Decodes `node` into `config` (calling config.Visit) and reports keys of
  // `node` that no field consumed.
  template <class S>
  static void Decode(const YAML::Node& node, const std::string& path, S* config,
                     ConfigErrors* errors) {
    if (node && !node.IsNull() && !node.IsMap()) {
      const YAML::Mark mark = node.Mark();
      errors->Add(&mark, path.empty() ? "(top level)" : path, "expected a mapping of keys");
      return;
    }
    YamlDecoder decoder(node, path, errors);
    config->Visit(decoder);
    decoder.ReportUnknownKeys();
  }

  void Field(const char* key, bool* value, const Spec& spec);
  void Field(const char* key, int* value, const Spec& spec);
  void Field(const char* key, std::int64_t* value, const Spec& spec);
  void Field(const char* key, double* value, const Spec& spec);
  void Field(const char* key, std::string* value, const Spec& spec);
  void Field(const char* key, std::optional<double>* value, const Spec& spec);
  void Field(const char* key, std::vector<double>* value, const Spec& spec);
  // A list of strings; a single string is taken as a list of one.
  void Field(const char* key, std::vector<std::string>* value, const Spec& spec);
  template <class E, std::enable_if_t<std::is_enum_v<E>, int> = 0>
  void Field(const char* key, E* value, const Spec& spec) {
    std::string word = EnumName(*value);
    Spec with_words = spec;
    with_words.choices = EnumNames<E>();
    Field(key, &word, with_words);  // reports a word not in the table
    if (std::optional<E> e = EnumFromName<E>(word)) *value = *e;
  }

  template <class S>
  void Section(const char* key, S* sub, const char* doc) {
    known_.emplace_back(key);
    const YAML::Node child = Lookup(key);
    Decode(child, Join(key), sub, errors_);
  }

  // Report a cross-field error at `key` (relative to this decoder's path).
  void Error(const char* key, const std::string& message);

 private:
  YAML::Node Lookup(const char* key) const;
  std::string Join(const char* key) const;
  bool Present(const char* key, const Spec& spec, YAML::Node* out);
  bool ScalarDouble(const YAML::Node& node, const std::string& path, double* out);
  void CheckRange(const YAML::Node& node, const std::string& path, double v, const Spec& spec);
  void ReportUnknownKeys();

  YAML::Node node_;
  std::string path_;
  ConfigErrors* errors_;
  std::vector<std::string> known_;
};

// struct -> YAML (every key, resolved), for jobs/<id>/spec.yaml.
class YamlEncoder {
 public:
  explicit YamlEncoder(YAML::Emitter* out) : out_(out) {}
  template <class S>
  static std::string Encode(S& config) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    YamlEncoder encoder(&out);
    config.Visit(encoder);
    out << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
  }
  template <class T>
  void Field(const char* key, T* value, const Spec&) {
    if constexpr (std::is_enum_v<T>) {
      Emit(key, std::string(EnumName(*value)));
    } else {
      Emit(key, *value);
    }
  }
  template <class S>
  void Section(const char* key, S* sub, const char*) {
    *out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
    sub->Visit(*this);
    *out_ << YAML::EndMap;
  }
  void Error(const char*, const std::string&) {}

 private:
  void Emit(const char* key, bool v);
  void Emit(const char* key, int v);
  void Emit(const char* key, std::int64_t v);
  void Emit(const char* key, double v);
  void Emit(const char* key, const std::string& v);
  void Emit(const char* key, const std::optional<double>& v);
  void Emit(const char* key, const std::vector<double>& v);
  void Emit(const char* key, const std::vector<std::string>& v);
  YAML::Emitter* out_;
};

// struct -> Markdown table rows: key path, type, default, unit, allowed, meaning.
class SchemaDoc {
 public:
  template <class S>
  static std::string Document(S& defaults) {
    SchemaDoc doc("");
    defaults.Visit(doc);
    return doc.text_;
  }
  template <class T>
  void Field(const char* key, T* value, const Spec& spec) {
    if constexpr (std::is_enum_v<T>) {
      Spec with_words = spec;
      with_words.choices = EnumNames<T>();
      Row(key, "string", Show(std::string(EnumName(*value))), with_words);
    } else {
      Row(key, TypeName(*value), Show(*value), spec);
    }
  }
  template <class S>
  void Section(const char* key, S* sub, const char* doc) {
    text_ += "| `" + Join(key) + "` | section | | | | " + doc + " |\n";
    SchemaDoc child(Join(key));
    sub->Visit(child);
    text_ += child.text_;
  }
  void Error(const char*, const std::string&) {}

 private:
  explicit SchemaDoc(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string Join(const char* key) const { return prefix_.empty() ? key : prefix_ + "." + key; }
  void Row(const char* key, const char* type, const std::string& def, const Spec& spec);
  static const char* TypeName(bool) { return "bool"; }
  static const char* TypeName(int) { return "int"; }
  static const char* TypeName(std::int64_t) { return "int"; }
  static const char* TypeName(double) { return "number"; }
  static const char* TypeName(const std::string&) { return "string"; }
  static const char* TypeName(const std::optional<double>&) { return "number (optional)"; }
  static const char* TypeName(const std::vector<double>&) { return "list of numbers"; }
  static const char* TypeName(const std::vector<std::string>&) { return "list of strings"; }
  static std::string Show(bool v);
  static std::string Show(int v);
  static std::string Show(std::int64_t v);
  static std::string Show(double v);
  static std::string Show(const std::string& v);
  static std::string Show(const std::optional<double>& v);
  static std::string Show(const std::vector<double>& v);
  static std::string Show(const std::vector<std::string>& v);
  std::string prefix_;
  std::string text_;
};

}  // namespace retina
