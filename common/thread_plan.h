// How many intra-op threads a rank should use.
//
// Precedence: OMP_NUM_THREADS when the user set it (a positive integer);
// otherwise the cores this process may run on (its CPU affinity mask, which
// respects cgroups/taskset/Slurm binding) divided by the ranks on this node,
// at least 1. Debian's OpenMP otherwise defaults to a single thread.
#pragma once

#include <string>

namespace retina {

struct ThreadPlan {
  int threads = 1;
  std::string reason;  // human-readable, for the startup log
};

// Cores in this process's affinity mask (std::thread::hardware_concurrency
// as a fallback), at least 1.
int AvailableCores();

// `omp_num_threads_env` is the raw value of OMP_NUM_THREADS or nullptr.
ThreadPlan PlanThreads(int available_cores, int local_world_size, const char* omp_num_threads_env);

}  // namespace retina
