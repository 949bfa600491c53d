// Sets libtorch's intra-op thread count for this rank (see common/thread_plan.h
// for the precedence). Call once at startup, after rank discovery, before the
// first tensor operation.
#pragma once

#include "common/thread_plan.h"

namespace retina::trainer {

// `requested` > 0 forces that count (the job's runtime.threads); otherwise
// OMP_NUM_THREADS or cores / local_world_size. Returns the plan applied.
ThreadPlan ConfigureTorchThreads(int local_world_size, int requested = 0);

}  // namespace retina::trainer
