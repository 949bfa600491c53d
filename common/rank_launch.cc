#include "common/rank_launch.h"

namespace retina {

std::vector<std::string> RankLaunch::ServiceArgs() const {
  std::vector<std::string> args;
  if (!job_uid.empty()) args.insert(args.end(), {"--job-uid", job_uid});
  args.push_back("--confine");  // service ranks read only under the store and the roots
  for (const std::filesystem::path& r : allowed_roots) args.insert(args.end(), {"--allowed-root", r.string()});
  for (const std::filesystem::path& r : output_roots) args.insert(args.end(), {"--output-root", r.string()});
  return args;
}

std::vector<std::string> RankLaunch::RunArgs() const {
  std::vector<std::string> args = {"run",  "--config", config.string(), "--store", store.string(),
                                   "--job", job_id,    "--resume",      "auto"};
  const std::vector<std::string> service = ServiceArgs();
  args.insert(args.end(), service.begin(), service.end());
  if (events_fd3) args.insert(args.end(), {"--events", "fd:3"});
  return args;
}

std::map<std::string, std::string> RankLaunch::Env() const {
  std::map<std::string, std::string> env = {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world_size)},
          {"LOCAL_RANK", std::to_string(local_rank)},
          {"LOCAL_WORLD_SIZE", std::to_string(local_world_size)},
          {"MASTER_ADDR", master_addr},
          {"MASTER_PORT", std::to_string(master_port)},
          {"RETINA_JOB_ID", job_id},
          {"RETINA_ATTEMPT", std::to_string(attempt)}};
  if (!host_addr.empty()) env["RETINA_HOST_ADDR"] = host_addr;
  if (!user.empty()) env["RETINA_JOB_USER"] = user;
  if (elastic_world_size > 0) {
    env["RETINA_ELASTIC"] = std::to_string(elastic_world_size) + ":" + std::to_string(elastic_min_world_size);
  }
  return env;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string ShellQuoteArgs(const std::vector<std::string>& args) {
  std::string out;
  for (const std::string& a : args) out += (out.empty() ? "" : " ") + ShellQuote(a);
  return out;
}

}  // namespace retina
