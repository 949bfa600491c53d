// Small command-line helpers shared by the thin `main`s: "--key value" flags,
// switches, positionals, and subcommand dispatch with uniform error output
// ("<program>: <message>", exit 2 for usage errors, 1 otherwise).
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace retina {

struct CliFlags {
  std::map<std::string, std::string> values;  // "--key" -> value ("1" for switches)
  std::vector<std::string> positional;

  bool Has(const std::string& key) const { return values.count(key) > 0; }
  std::string Get(const std::string& key, const std::string& fallback = "") const;
  // INVALID_ARGUMENT naming the flag when the value is not an integer / number.
  absl::Status GetInt(const std::string& key, int* out) const;
  absl::Status GetInt64(const std::string& key, int64_t* out) const;
  absl::Status GetDouble(const std::string& key, double* out) const;
  absl::Status Require(const std::vector<std::string>& keys) const;
  // The shared store, with the documented precedence: --store, else the
  // RETINA_STORE environment variable, else `fallback` ("." by default).
  std::string Store(const std::string& fallback = ".") const;
  bool HasStore() const;  // --store or RETINA_STORE given
};

// Takes every "FLAG VALUE" and "FLAG=VALUE" of a repeatable flag (e.g.
// "--set") out of `args`, in order; INVALID_ARGUMENT when one has no value.
absl::StatusOr<std::vector<std::string>> TakeRepeatedFlag(std::vector<std::string>* args, const std::string& flag);

// Unknown "--flags" are errors; `with_value` flags take the next argument.
absl::StatusOr<CliFlags> ParseCliFlags(const std::vector<std::string>& args, const std::vector<std::string>& with_value,
                                       const std::vector<std::string>& switches = {});

// Prints "<program>: <message>" for a failed status; returns the exit status
// (0 ok, 2 INVALID_ARGUMENT, 1 otherwise).
int ReportStatus(const std::string& program, const absl::Status& status);

// A single-command program: prints `usage` when there are no arguments,
// otherwise runs `command` and reports its status (see ReportStatus).
// Exceptions from libraries (e.g. libtorch's c10::Error) are reported, not thrown.
int RunCommand(const std::string& program, const std::string& usage, const std::vector<std::string>& args,
               const std::function<absl::Status(const std::vector<std::string>&)>& command);

using Subcommand = std::function<absl::Status(const std::vector<std::string>& args)>;

// Runs subcommands[args[0]] with the remaining arguments; prints `usage` for
// an unknown or missing subcommand. Returns the process exit status.
// True for --help or -h anywhere, or a first argument "help": the Run*
// helpers then print the usage to stdout and return 0.
bool AsksForHelp(const std::vector<std::string>& args);

int RunSubcommands(const std::string& program, const std::string& usage, const std::vector<std::string>& args,
                   const std::map<std::string, Subcommand>& subcommands);

}  // namespace retina
