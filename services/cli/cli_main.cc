// retina: the command-line client of the job service (see cli_commands.h).
#include <string>
#include <vector>

#include "services/cli/cli_commands.h"

int main(int argc, char** argv) { return retina::cli::RunCli(std::vector<std::string>(argv + 1, argv + argc)); }
