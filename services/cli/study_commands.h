// `retina study status` and `retina study report`: a study's aggregate
// (jobs/<id>/study.json, through GetJobMetrics) as a table, or rendered as
// report.md/report.html with SVG plots (study_report.h).
#pragma once

#include <string>

#include "CLI/CLI.hpp"
#include "common/cli.h"
#include "services/cli/cli_client.h"

namespace retina::cli {

struct StudyFlags {
  std::string id, out, from;
  bool json = false;
};
struct StudyCommands {
  StudyFlags status, report;
};

// Adds `status` and `report` to the `study` group; `flags` and `commands`
// must outlive the CLI's run.
void AddStudyCommands(Cli& cli, CLI::App* study_group, const ConnectFlags* flags, StudyCommands* commands);

}  // namespace retina::cli
