#include "common/thread_plan.h"

#include <sched.h>

#include <algorithm>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace retina {

int AvailableCores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPlan PlanThreads(int available_cores, int local_world_size,
                       const char* omp_num_threads_env) {
  int from_env = 0;
  if (omp_num_threads_env != nullptr && absl::SimpleAtoi(omp_num_threads_env, &from_env) &&
      from_env > 0) {
    return {from_env, absl::StrCat("OMP_NUM_THREADS=", from_env)};
  }
  const int ranks = std::max(1, local_world_size);
  const int threads = std::max(1, available_cores / ranks);
  return {threads, absl::StrCat(available_cores, " cores / ", ranks, " local rank(s)")};
}

}  // namespace retina
