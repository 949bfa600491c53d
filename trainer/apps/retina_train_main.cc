// retina-train: the trainer's command line.
//
//   retina-train config schema           print the job-config reference (Markdown)
//   retina-train config check FILE...    validate job YAMLs; print the resolved config
//   retina-train version                 versions of retina and libtorch
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "common/job_config.h"
#include "trainer/torch_compat.h"

namespace {

constexpr char kUsage[] =
    "usage: retina-train config schema\n"
    "       retina-train config check FILE...\n"
    "       retina-train version\n";

int ConfigCheck(const std::vector<std::string>& files) {
  int failures = 0;
  for (const std::string& file : files) {
    absl::StatusOr<retina::JobConfig> config = retina::LoadJobConfig(file);
    if (!config.ok()) {
      std::cerr << config.status().message() << "\n";
      ++failures;
      continue;
    }
    std::cout << "# " << file << ": OK (kind " << config->kind << ")\n"
              << retina::JobConfigToYaml(*config);
  }
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "config" && args[1] == "schema") {
    std::cout << retina::JobConfigSchemaMarkdown();
    return 0;
  }
  if (args.size() >= 3 && args[0] == "config" && args[1] == "check") {
    return ConfigCheck({args.begin() + 2, args.end()});
  }
  if (args.size() == 1 && args[0] == "version") {
    std::cout << "retina-train " << RETINA_VERSION << " (libtorch "
              << retina::trainer::TorchVersionString() << ")\n";
    return 0;
  }
  std::cerr << kUsage;
  return 2;
}
