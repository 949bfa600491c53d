#include "trainer/runtime/threads.h"

#include <cstdlib>

#include <ATen/Parallel.h>

#include "absl/strings/str_cat.h"

namespace retina::trainer {

ThreadPlan ConfigureTorchThreads(int local_world_size, int requested) {
  ThreadPlan plan = requested > 0
                        ? ThreadPlan{requested, absl::StrCat("runtime.threads=", requested)}
                        : PlanThreads(AvailableCores(), local_world_size,
                                      std::getenv("OMP_NUM_THREADS"));
  at::set_num_threads(plan.threads);
  return plan;
}

}  // namespace retina::trainer
