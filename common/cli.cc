#include "common/cli.h"

#include <cstdlib>

#include <algorithm>
#include <iostream>

#include "absl/strings/numbers.h"

namespace retina {

std::string CliFlags::Get(const std::string& key, const std::string& fallback) const {
  auto it = values.find(key);
  return it == values.end() ? fallback : it->second;
}

absl::Status CliFlags::GetInt(const std::string& key, int* out) const {
  auto it = values.find(key);
  if (it != values.end() && !absl::SimpleAtoi(it->second, out)) {
    return absl::InvalidArgumentError(key + ": expected an integer, got '" + it->second + "'");
  }
  return absl::OkStatus();
}

absl::Status CliFlags::GetInt64(const std::string& key, int64_t* out) const {
  auto it = values.find(key);
  if (it != values.end() && !absl::SimpleAtoi(it->second, out)) {
    return absl::InvalidArgumentError(key + ": expected an integer, got '" + it->second + "'");
  }
  return absl::OkStatus();
}

absl::Status CliFlags::GetDouble(const std::string& key, double* out) const {
  auto it = values.find(key);
  if (it != values.end() && !absl::SimpleAtod(it->second, out)) {
    return absl::InvalidArgumentError(key + ": expected a number, got '" + it->second + "'");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> TakeRepeatedFlag(std::vector<std::string>* args, const std::string& flag) {
  std::vector<std::string> values, rest;
  for (size_t i = 0; i < args->size(); ++i) {
    const std::string& a = (*args)[i];
    if (a == flag) {
      if (i + 1 >= args->size()) return absl::InvalidArgumentError(flag + " needs a value");
      values.push_back((*args)[++i]);
    } else if (a.rfind(flag + "=", 0) == 0) {
      values.push_back(a.substr(flag.size() + 1));
    } else {
      rest.push_back(a);
    }
  }
  *args = std::move(rest);
  return values;
}

std::string CliFlags::Store(const std::string& fallback) const {
  if (Has("--store")) return Get("--store");
  const char* env = std::getenv("RETINA_STORE");
  return env != nullptr && *env != '\0' ? env : fallback;
}

bool CliFlags::HasStore() const {
  const char* env = std::getenv("RETINA_STORE");
  return Has("--store") || (env != nullptr && *env != '\0');
}

absl::Status CliFlags::Require(const std::vector<std::string>& keys) const {
  for (const std::string& k : keys) {
    if (!Has(k)) return absl::InvalidArgumentError(k + " is required");
  }
  return absl::OkStatus();
}

absl::StatusOr<CliFlags> ParseCliFlags(const std::vector<std::string>& args, const std::vector<std::string>& with_value,
                                       const std::vector<std::string>& switches) {
  CliFlags f;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (std::find(switches.begin(), switches.end(), a) != switches.end()) {
      f.values[a] = "1";
    } else if (std::find(with_value.begin(), with_value.end(), a) != with_value.end()) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(a + " needs a value");
      f.values[a] = args[++i];
    } else if (a.rfind("--", 0) == 0) {
      return absl::InvalidArgumentError("unknown flag " + a);
    } else {
      f.positional.push_back(a);
    }
  }
  return f;
}

bool AsksForHelp(const std::vector<std::string>& args) {
  return std::any_of(args.begin(), args.end(), [](const std::string& a) { return a == "--help" || a == "-h"; }) ||
         (!args.empty() && args[0] == "help");
}

int RunSubcommands(const std::string& program, const std::string& usage, const std::vector<std::string>& args,
                   const std::map<std::string, Subcommand>& subcommands) {
  if (AsksForHelp(args)) {
    std::cout << usage;
    return 0;
  }
  auto it = args.empty() ? subcommands.end() : subcommands.find(args[0]);
  if (it == subcommands.end()) {
    std::cerr << usage;
    return 2;
  }
  return ReportStatus(program, it->second({args.begin() + 1, args.end()}));
}

int RunCommand(const std::string& program, const std::string& usage, const std::vector<std::string>& args,
               const std::function<absl::Status(const std::vector<std::string>&)>& command) {
  if (AsksForHelp(args)) {
    std::cout << usage;
    return 0;
  }
  if (args.empty()) {
    std::cerr << usage;
    return 2;
  }
  try {
    return ReportStatus(program, command(args));
  } catch (const std::exception& e) {
    std::cerr << program << ": " << e.what() << "\n";
    return 1;
  }
}

int ReportStatus(const std::string& program, const absl::Status& s) {
  if (s.ok()) return 0;
  std::cerr << program << ": " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace retina
