#include "trainer/runtime/threads.h"

#include <cstdlib>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

namespace retina::trainer {
namespace {

TEST(ConfigureTorchThreads, AppliesPlanToLibtorch) {
  ::unsetenv("OMP_NUM_THREADS");
  ThreadPlan plan = ConfigureTorchThreads(/*local_world_size=*/1);
  EXPECT_EQ(plan.threads, AvailableCores());
  EXPECT_EQ(at::get_num_threads(), plan.threads);

  ::setenv("OMP_NUM_THREADS", "1", 1);
  plan = ConfigureTorchThreads(1);
  EXPECT_EQ(plan.threads, 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  ::unsetenv("OMP_NUM_THREADS");

  plan = ConfigureTorchThreads(1, /*requested=*/2);
  EXPECT_EQ(at::get_num_threads(), 2);
}

}  // namespace
}  // namespace retina::trainer
