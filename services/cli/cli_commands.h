// The `retina` command: subcommands over JobService. Where to connect comes
// from, highest first: flags (--address, --token-file, --ca), the environment
// (RETINA_ADDRESS, RETINA_TOKEN or RETINA_TOKEN_FILE, RETINA_CA), a config
// file ($RETINA_CONFIG or ~/.config/retina/cli.yaml with keys address,
// token_file, ca), else 127.0.0.1:50051 in plaintext without a token.
#pragma once

#include <string>
#include <vector>

namespace retina::cli {

// Runs `retina <args...>`; returns the process exit status (watch: 0 only
// when the job SUCCEEDED).
int RunCli(const std::vector<std::string>& args);

}  // namespace retina::cli
