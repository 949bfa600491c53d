#include "common/cli.h"

#include <climits>
#include <iostream>

#include "absl/strings/str_split.h"

#ifndef RETINA_VERSION
#error "RETINA_VERSION must be defined by the build (retina_options)"
#endif

namespace retina {
namespace {

// c10::Error's what() is the message, then "Exception raised from ..." and a
// backtrace: the first line is what a user needs.
std::string FirstLine(const char* what) {
  std::string s(what);
  const size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

Cli::Cli(std::string program, std::string description, std::string version_extra, bool version_subcommand)
    : program_(std::move(program)),
      version_extra_(std::move(version_extra)),
      app_(std::make_unique<CLI::App>(std::move(description), program_)) {
  app_->set_version_flag("--version", VersionString(), "Print the version and exit");
  app_->option_defaults()->always_capture_default();
  if (version_subcommand) {
    Command("version", "Print the version", [this]() -> absl::StatusOr<int> {
      std::cout << VersionString() << "\n";
      return 0;
    });
  }
}

std::string Cli::VersionString() const {
  std::string v = program_ + " " + RETINA_VERSION;
  if (!version_extra_.empty()) v += " (" + version_extra_ + ")";
  return v;
}

CLI::App* Cli::AddCommand(const std::string& name, const std::string& description, Action action, CLI::App* parent) {
  CLI::App* sub = (parent ? parent : app_.get())->add_subcommand(name, description);
  actions_.emplace_back(sub, std::move(action));
  return sub;
}

CLI::App* Cli::Group(const std::string& name, const std::string& description, CLI::App* parent) {
  CLI::App* sub = (parent ? parent : app_.get())->add_subcommand(name, description);
  sub->require_subcommand(1);
  return sub;
}

int Cli::Report(const absl::Status& status) const { return ReportStatus(program_, status); }

int Cli::Run(const std::vector<std::string>& args) {
  std::vector<const char*> argv = {program_.c_str()};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return Run(static_cast<int>(argv.size()), argv.data());
}

std::optional<int> Cli::Parse(int argc, const char* const* argv) {
  try {
    app_->parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app_->exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app_->exit(e);
  } catch (const CLI::CallForVersion&) {
    std::cout << VersionString() << "\n";
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << program_ << ": " << e.what() << "\n(run " << program_ << " --help for the flags)\n";
    return 2;
  }
  return std::nullopt;
}

int Cli::Run(int argc, const char* const* argv) {
  // Subcommands need one to be chosen unless the root has an action.
  bool root_acts = false;
  for (const auto& [app, action] : actions_) root_acts = root_acts || app == app_.get();
  if (!root_acts && !app_->get_subcommands({}).empty()) app_->require_subcommand(1);
  if (std::optional<int> rc = Parse(argc, argv)) return *rc;
  // The deepest selected subcommand with an action runs (subcommands are
  // registered after their parents), else the root's action.
  const Action* chosen = nullptr;
  for (const auto& [app, action] : actions_) {
    if (app == app_.get()) chosen = &action;
  }
  for (const auto& [app, action] : actions_) {
    if (app != app_.get() && app->parsed()) chosen = &action;
  }
  if (chosen == nullptr) {
    std::cerr << app_->help();
    return 2;
  }
  try {
    absl::StatusOr<int> rc = (*chosen)();
    return rc.ok() ? *rc : Report(rc.status());
  } catch (const std::exception& e) {
    std::cerr << program_ << ": " << FirstLine(e.what()) << "\n";
    return 1;
  }
}

CLI::Option* AddStoreOption(CLI::App* app, std::string* store, const std::string& what) {
  return app->add_option("--store", *store, what + " (else $RETINA_STORE)")->envname("RETINA_STORE");
}

CLI::Option* AddSetOption(CLI::App* app, std::vector<std::string>* overrides) {
  return app
      ->add_option("--set", *overrides, "override a job-file key, e.g. model.name=tiny (repeatable)")
      ->allow_extra_args(false)
      ->type_name("KEY=VALUE");
}

int ReportStatus(const std::string& program, const absl::Status& s) {
  if (s.ok()) return 0;
  std::cerr << program << ": " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseKeyValues(const std::string& text,
                                                                               const std::string& flag) {
  std::vector<std::pair<std::string, std::string>> out;
  for (absl::string_view kv : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() != 2 || p[0].empty()) {
      return absl::InvalidArgumentError(flag + ": k=v,k=v (got '" + std::string(kv) + "')");
    }
    out.emplace_back(p[0], p[1]);
  }
  return out;
}

}  // namespace retina
