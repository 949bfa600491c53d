#include "trainer/dist/launch_env.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace retina::trainer {
namespace {

using Env = std::function<const char*(const char*)>;

// Reads an integer variable; nullopt when unset.
absl::StatusOr<std::optional<int>> Int(const Env& env, const char* name) {
  const char* v = env(name);
  if (v == nullptr || *v == '\0') return std::optional<int>();
  int out;
  if (!absl::SimpleAtoi(v, &out) || out < 0) {
    return absl::InvalidArgumentError(absl::StrCat("environment ", name, "='", v, "' is not a non-negative integer"));
  }
  return std::optional<int>(out);
}

struct Scheme {
  const char* source;
  const char* rank;
  const char* size;
  const char* local_rank;
  const char* local_size;
  bool mpi;
};

constexpr Scheme kSchemes[] = {
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", false},
    {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
     "OMPI_COMM_WORLD_LOCAL_SIZE", true},
    {"pmi", "PMIX_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", true},
    {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", true},
    {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", true},
};

// Splits at commas outside brackets.
std::vector<std::string> TopLevelItems(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  int depth = 0;
  for (char c : s) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

absl::Status ExpandOne(const std::string& item, const std::string& whole, std::vector<std::string>* out) {
  const size_t open = item.find('[');
  if (open == std::string::npos) {
    if (item.find(']') != std::string::npos) return absl::InvalidArgumentError(absl::StrCat("hostlist '", whole, "': unbalanced ']'"));
    out->push_back(item);
    return absl::OkStatus();
  }
  const size_t close = item.find(']', open);
  if (close == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("hostlist '", whole, "': unbalanced '['"));
  const std::string prefix = item.substr(0, open), body = item.substr(open + 1, close - open - 1), suffix = item.substr(close + 1);
  for (const std::string& range : TopLevelItems(body)) {
    const size_t dash = range.find('-');
    const std::string lo_s = range.substr(0, dash), hi_s = dash == std::string::npos ? lo_s : range.substr(dash + 1);
    int64_t lo, hi;
    if (!absl::SimpleAtoi(lo_s, &lo) || !absl::SimpleAtoi(hi_s, &hi) || lo < 0 || hi < lo || hi - lo > 100000) {
      return absl::InvalidArgumentError(absl::StrCat("hostlist '", whole, "': bad range '", range, "'"));
    }
    const size_t width = lo_s.size();
    for (int64_t n = lo; n <= hi; ++n) {
      std::string digits = std::to_string(n);
      if (digits.size() < width) digits.insert(0, width - digits.size(), '0');
      RETURN_IF_ERROR(ExpandOne(prefix + digits + suffix, whole, out));
    }
  }
  return absl::OkStatus();
}

bool Truthy(const char* v) {
  if (v == nullptr) return false;
  const std::string s = v;
  return s == "1" || s == "True" || s == "true" || s == "TRUE" || s == "yes";
}

}  // namespace

absl::StatusOr<std::vector<std::string>> ExpandHostlist(const std::string& hostlist) {
  std::vector<std::string> out;
  for (const std::string& item : TopLevelItems(hostlist)) RETURN_IF_ERROR(ExpandOne(item, hostlist, &out));
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("hostlist '", hostlist, "' names no host"));
  return out;
}

absl::StatusOr<LaunchInfo> DiscoverLaunch(const LaunchOverrides& o, const Env& env) {
  LaunchInfo info;
  const char* rank_without_size = nullptr;  // e.g. PMIX_RANK under `srun --mpi=pmix`: Slurm's variables follow
  bool found = false;
  for (const Scheme& s : kSchemes) {
    ASSIGN_OR_RETURN(std::optional<int> rank, Int(env, s.rank));
    if (!rank) continue;
    ASSIGN_OR_RETURN(std::optional<int> size, Int(env, s.size));
    if (!size) {
      if (rank_without_size == nullptr) rank_without_size = s.rank;
      continue;
    }
    ASSIGN_OR_RETURN(std::optional<int> local_rank, Int(env, s.local_rank));
    ASSIGN_OR_RETURN(std::optional<int> local_size, Int(env, s.local_size));
    found = true;
    info.rank = *rank;
    info.world_size = *size;
    info.local_rank = local_rank.value_or(0);
    info.local_world_size = local_size.value_or(1);
    info.source = s.source;
    info.under_mpi = s.mpi;
    break;
  }
  if (!found && rank_without_size != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(rank_without_size, " is set but no world size variable is"));
  }
  if (o.rank || o.world_size || o.local_rank) {
    info.source = "flags";
    if (o.rank) info.rank = *o.rank;
    if (o.world_size) info.world_size = *o.world_size;
    if (o.local_rank) info.local_rank = *o.local_rank;
  }
  ASSIGN_OR_RETURN(std::optional<int> port, Int(env, "MASTER_PORT"));
  if (const char* addr = env("MASTER_ADDR"); addr != nullptr && *addr != '\0') {
    info.master_addr = addr;
    info.rendezvous_from = "MASTER_ADDR";
  } else if (const char* job = env("SLURM_JOB_ID"); job != nullptr && *job != '\0' && info.world_size > 1) {
    for (const char* var : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
      const char* list = env(var);
      if (list == nullptr || *list == '\0') continue;
      ASSIGN_OR_RETURN(std::vector<std::string> hosts, ExpandHostlist(list), std::string("environment ") + var);
      info.master_addr = hosts.front();
      info.rendezvous_from = var;
      break;
    }
    ASSIGN_OR_RETURN(std::optional<int> job_id, Int(env, "SLURM_JOB_ID"));
    if (!port && job_id) port = 20000 + *job_id % 20000;
  }
  if (port) info.master_port = *port;
  info.agent_store = Truthy(env("TORCHELASTIC_USE_AGENT_STORE"));
  ASSIGN_OR_RETURN(std::optional<int> restart, Int(env, "TORCHELASTIC_RESTART_COUNT"));
  info.agent_restart = restart.value_or(0);
  if (const char* ifname = env("GLOO_SOCKET_IFNAME")) info.gloo_ifname = ifname;
  if (const char* addr = env("RETINA_HOST_ADDR")) info.host_addr = addr;
  if (info.world_size < 1 || info.rank >= info.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", info.rank, " is outside world size ", info.world_size,
                                                   " (from ", info.source, ")"));
  }
  if (info.local_world_size < 1 || info.local_rank >= info.local_world_size) {
    info.local_world_size = std::max(info.local_world_size, info.local_rank + 1);
  }
  if (info.master_port < 1 || info.master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MASTER_PORT=", info.master_port, " is not a TCP port"));
  }
  return info;
}

absl::StatusOr<LaunchInfo> DiscoverLaunch(const LaunchOverrides& overrides) {
  return DiscoverLaunch(overrides, [](const char* name) { return std::getenv(name); });
}

}  // namespace retina::trainer
