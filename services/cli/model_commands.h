// `retina models ...`: the model registry (ModelService, docs/models.md):
// register a job's checkpoint, list, show (with --lineage, the chain down to
// the pre-training), tag, delete.
#pragma once

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/cli.h"
#include "services/cli/cli_client.h"

namespace retina::cli {

struct ModelFlags {
  std::string source, name, description, ref, tag;
  std::vector<std::string> tags;
  std::string out, store, license = "CC-BY-4.0", sample;  // export
  std::vector<std::string> authors;
  bool json = false, lineage = false, remove = false;
};
struct ModelCommands {
  ModelFlags register_, list, show, tag, del, export_, import_;
};

// Adds the `models` group; `flags` and `commands` must outlive the CLI's run.
void AddModelCommands(Cli& cli, const ConnectFlags* flags, ModelCommands* commands);

}  // namespace retina::cli
