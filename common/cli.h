// The command line of every program, on CLI11 (Debian's libcli11-dev), with
// the project's conventions on top:
//
//   * per-flag help (`--help`, `-h`, also on each subcommand), `--version`
//     printing "<program> <RETINA_VERSION>[ (extra)]";
//   * `--flag value` and `--flag=value`; typed, validated values;
//   * errors as "<program>: <message>" on stderr;
//   * the exit-code table (common/records.h): 0 ok, 2 bad arguments (a parse
//     error, or an action returning INVALID_ARGUMENT), 1 any other failure;
//     an action may return its own code (75 preempted, 1 "job did not
//     succeed").
//
// A main builds a `Cli`, binds flags straight into its Options struct, hangs
// an Action on the root or on each subcommand, and returns `cli.Run(...)`:
//
//   Cli cli("retina-shard", "Packs datasets into shards.");
//   CLI::App* pack = cli.Command("pack", "Pack a volume into shards", [&] { return Pack(o); });
//   pack->add_option("--out", o.out, "output directory")->required();
//   return cli.Run(argc, argv);
#pragma once

#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace retina {

class Cli {
 public:
  // The action of a (sub)command: OK(exit code) or an error to report.
  using Action = std::function<absl::StatusOr<int>()>;

  // `version_extra` is appended to --version in parentheses (e.g. the libtorch
  // version); `version_subcommand` also adds a `version` subcommand (the
  // programs that had one keep it).
  Cli(std::string program, std::string description, std::string version_extra = "", bool version_subcommand = false);

  const std::string& program() const { return program_; }
  std::string VersionString() const;
  CLI::App& app() { return *app_; }

  // A subcommand of `parent` (the root when null) that runs `action` when it
  // is the deepest one selected. `action` returns absl::Status (OK = exit 0)
  // or absl::StatusOr<int> (its own exit code).
  template <typename F>
  CLI::App* Command(const std::string& name, const std::string& description, F&& action, CLI::App* parent = nullptr) {
    return AddCommand(name, description, ToAction(std::forward<F>(action)), parent);
  }
  // A group of subcommands (`retina-train config check`): one is required.
  CLI::App* Group(const std::string& name, const std::string& description, CLI::App* parent = nullptr);
  // The root's action (programs without subcommands, or besides them).
  template <typename F>
  void Root(F&& action) {
    actions_.emplace_back(app_.get(), ToAction(std::forward<F>(action)));
  }

  // Parses and runs the selected action; returns the process exit status.
  // Exceptions from libraries (e.g. libtorch's c10::Error) are reported with
  // their first line, not thrown.
  int Run(int argc, const char* const* argv);
  int Run(const std::vector<std::string>& args);  // args without the program name
  // Parses only (for mains that go on themselves, the benchmarks): nullopt
  // to go on, else the exit status (help and --version printed: 0; a parse
  // error reported: 2).
  std::optional<int> Parse(int argc, const char* const* argv);

  // Prints "<program>: <message>" for a failed status and returns its exit
  // status (see the table above).
  int Report(const absl::Status& status) const;

 private:
  template <typename F>
  static Action ToAction(F&& f) {
    if constexpr (std::is_same_v<std::invoke_result_t<F&>, absl::Status>) {
      return [f = std::forward<F>(f)]() mutable -> absl::StatusOr<int> {
        absl::Status s = f();
        if (!s.ok()) return s;
        return 0;
      };
    } else {
      return Action(std::forward<F>(f));
    }
  }
  CLI::App* AddCommand(const std::string& name, const std::string& description, Action action, CLI::App* parent);

  std::string program_;
  std::string version_extra_;
  std::unique_ptr<CLI::App> app_;
  std::vector<std::pair<CLI::App*, Action>> actions_;
};

// Integer ranges with a readable message ("Value -1 not in range 0 to ...").
inline const CLI::Range kNonNegativeInt(0, std::numeric_limits<int>::max());
inline const CLI::Range kPositiveInt(1, std::numeric_limits<int>::max());
inline const CLI::Range kNonNegativeNumber(0.0, 1e300);
inline const CLI::Range kPositiveNumber(1e-300, 1e300);

// Adds --store DIR bound to `store`, with the documented precedence: the
// flag, else $RETINA_STORE, else the value `store` holds.
CLI::Option* AddStoreOption(CLI::App* app, std::string* store, const std::string& what = "the shared store");

// Adds the repeatable --set KEY=VALUE (one value per occurrence).
CLI::Option* AddSetOption(CLI::App* app, std::vector<std::string>* overrides);

// Prints "<program>: <message>" for a failed status; returns the exit
// status (0 ok, 2 INVALID_ARGUMENT, 1 otherwise). For code outside a Cli.
int ReportStatus(const std::string& program, const absl::Status& status);

// "k=v,k=v" into pairs; INVALID_ARGUMENT naming `flag` when one has no '='.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseKeyValues(const std::string& text,
                                                                               const std::string& flag);

}  // namespace retina
